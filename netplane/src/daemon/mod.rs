//! The daemon: brings the bridge network up, realises endpoint plans with
//! rollback, reconciles its store with the kernel after a restart, and tears
//! everything down on `netplane down`.

pub mod cluster;
mod cni;
mod connections;
pub mod counters;
pub mod drivers;
mod endpoints;
pub mod error;
pub mod forwarder;
mod lifecycle;
mod local_networks;
pub mod metrics;
mod networks;
mod publishing;
pub mod relay;
pub mod resolver;
pub mod steps;
pub mod store;
pub mod tasks;

use netplane_common::abi::{addr_be, addr_from_be};
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::Ipv4Net;
use netplane_common::abi::{
    FlowKey, MASQUERADE_SLOT, NET_FLAG_ICC_DISABLED, NET_FLAG_OVERLAY, NetConfig,
};

use tracing::{info, warn};

use self::steps::KernelSteps;
use crate::{
    daemon::cluster::{ClusterError, ClusterView, Session, StoreUrl},
    daemon::error::{Error, Result},
    daemon::forwarder::Forwarder,
    daemon::resolver::Resolver,
    daemon::store::{NewEndpoint, State, Store, StoredEndpoint},
    kernel::{
        self,
        datapath::{Datapath, EventMaps, Role, TcHook, XdpAttached, XdpSetting},
        host::{self, DaemonLock},
        netlink::{Link, Rtnl},
        netns,
        ports::{self, Reservations},
        tables::{Counters, FlowTable},
    },
    logic::conntrack::{self, Timeouts},
    logic::discovery::{self, PublishedName},
    logic::dns::{self, Zone},
    logic::endpoint::{
        self, BridgeNet, DEFAULT_MTU, EndpointOptions, HOST_VETH_PREFIX, LinkedHost, Mode, Sandbox,
        Step, format_mac, mac_for,
    },
    logic::firewall,
    logic::ipam::{self, Pool},
    logic::monitor::MonitorEvent,
    logic::overlay::{self, OverlayNetwork},
    logic::portspec::{self, PortSpec, PublishedPort},
    types::{
        CreateEndpoint, CreateNetwork, DaemonInfo, EndpointInfo, EndpointNetwork, EndpointState,
        EndpointStats, FlowInfo, HostBinding, InterfaceStats, NatRule, NatTable, NetworkInfo,
        NetworkSettings, PeerInfo, PortInfo, Removed, Stats,
    },
};

/// The bridge of the overlay with `vni`: at most 11 characters.
fn overlay_bridge(vni: u32) -> String {
    format!("npo{vni}")
}

/// Times a host tries for a /24 of an overlay that other hosts are
/// taking leases of at the same moment.
const CLAIM_ATTEMPTS: usize = 8;

/// The network whose names an endpoint attached in `mode` resolves, and
/// is resolved in: endpoints of their own network only.
fn zone_of(mode: &Mode) -> Option<&str> {
    match mode {
        Mode::Bridge => Some(endpoint::BRIDGE_NETWORK),
        Mode::Network(name) => Some(name),
        _ => None,
    }
}

/// Settings of `netplane up`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Bridge device name.
    pub bridge: String,
    /// Bridge subnet; picked from the default pools when absent.
    pub subnet: Option<Ipv4Net>,
    /// IPv6 on the bridge network too.
    pub ipv6: bool,
    /// The bridge network's IPv6 subnet; a unique local /64 when absent.
    pub subnet6: Option<ipnet::Ipv6Net>,
    /// Uplink; the default route's interface when absent.
    pub uplink: Option<String>,
    /// Whether endpoints may talk to each other.
    pub icc: bool,
    /// State directory.
    pub state_dir: PathBuf,
    /// Runtime directory (API socket).
    pub run_dir: PathBuf,
    /// bpffs directory for pins.
    pub bpffs: PathBuf,
    /// Capacity of the connection tracking table, in entries (two per flow).
    pub ct_max: u32,
    /// Lifetimes of tracked flows.
    pub timeouts: Timeouts,
    /// Other hosts' VTEP addresses, for overlay networks without a store.
    pub peers: Vec<Ipv4Addr>,
    /// The cluster store overlay membership lives in, instead of `peers`.
    pub store: Option<StoreUrl>,
    /// How long the store keeps this host's keys after it last heard of it.
    pub store_ttl: Duration,
    /// Resolvers the embedded DNS server forwards to; the host's
    /// resolv.conf's when empty.
    pub dns: Vec<SocketAddr>,
    /// Where Prometheus metrics are served over HTTP, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Relay every published port in the daemon instead of translating it
    /// in the data path (Docker's `--userland-proxy`).
    pub userland_proxy: bool,
    /// Connections and UDP sessions the forwarder relays at once.
    pub proxy_max_connections: usize,
    /// Whether and how the uplink's XDP fast path runs.
    pub xdp: XdpSetting,
}

/// The bridge `up` makes unless told otherwise.
pub const DEFAULT_BRIDGE: &str = "np0";

impl Config {
    /// `up`'s defaults, with the given directories.
    pub fn defaults(state_dir: PathBuf, run_dir: PathBuf, bpffs: PathBuf) -> Self {
        Config {
            bridge: DEFAULT_BRIDGE.into(),
            subnet: None,
            ipv6: false,
            subnet6: None,
            uplink: None,
            icc: true,
            state_dir,
            run_dir,
            bpffs,
            ct_max: netplane_common::abi::DEFAULT_CT_MAX,
            timeouts: Timeouts::default(),
            peers: Vec::new(),
            store: None,
            store_ttl: crate::daemon::cluster::DEFAULT_TTL,
            dns: Vec::new(),
            metrics: None,
            userland_proxy: false,
            proxy_max_connections: forwarder::DEFAULT_MAX_CONNECTIONS,
            xdp: XdpSetting::Off,
        }
    }

    /// Path of the API socket.
    pub fn socket(run_dir: &Path) -> PathBuf {
        run_dir.join("netplane.sock")
    }

    fn db(&self) -> PathBuf {
        self.state_dir.join("netplane.db")
    }
}

mod meta {
    pub const BRIDGE: &str = "bridge";
    pub const SUBNET: &str = "subnet";
    /// The bridge network's IPv6 subnet, when it has IPv6.
    pub const SUBNET6: &str = "subnet6";
    pub const IP_FORWARD_BEFORE: &str = "ip_forward_before";
    pub const BPFFS_MOUNTED: &str = "bpffs_mounted";
    /// The uplink to which netplane added a clsact qdisc (tc hook clsact).
    pub const CLSACT_ADDED: &str = "clsact_added";
    /// The nftables table netplane added (without a data path).
    pub const FIREWALL: &str = "firewall";
}

/// Something `up` changed, to be reverted if a later step fails.
#[derive(Debug)]
enum Undo {
    DeleteLink(String),
    RestoreIpForward(String),
    Unmount(PathBuf),
}

/// What the API and the daemon's tasks share: the daemon, taken out when
/// it goes down, and what reads its tables and records without holding it.
#[derive(Debug)]
pub struct Handles {
    /// The daemon; `None` once it went down.
    pub daemon: tokio::sync::Mutex<Option<Daemon>>,
    pub readers: counters::Readers,
}

impl Handles {
    /// Runs `f` on the daemon, `None` once it went down. Its use cases mix
    /// netlink round trips with SQLite, bpf(2) and namespace threads: they
    /// run on a thread handed over to blocking work, and the async workers
    /// keep serving scrapes, `ct ls`, DNS and the monitor meanwhile.
    pub async fn with_daemon<T>(&self, f: impl AsyncFnOnce(&mut Daemon) -> T) -> Option<T> {
        let mut guard = self.daemon.lock().await;
        let daemon = guard.as_mut()?;
        Some(tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(f(daemon))
        }))
    }
}

/// [`Handles`], shared.
pub type Shared = std::sync::Arc<Handles>;

/// The running daemon's state.
#[derive(Debug)]
pub struct Daemon {
    cfg: Config,
    store: Store,
    rtnl: Rtnl,
    dp: Option<Datapath>,
    net: BridgeNet,
    uplink: Option<String>,
    /// What the data path needs to know of the bridge and the uplink, once
    /// they are up.
    net_config: NetConfig,
    /// The uplink's MTU, which overlay endpoints leave room under.
    uplink_mtu: u32,
    /// The session with the cluster store, while it is reachable.
    session: Option<Session>,
    /// What the cluster store said last, and its revision then; `None`
    /// until it was first read, and the overlay routes an earlier run left
    /// are kept until then.
    view: Option<(ClusterView, i64)>,
    /// The embedded DNS server of every network.
    resolver: Resolver,
    /// How long each reconcile took: `up`'s, and every cluster resync.
    reconciles: metrics::ReconcileDurations,
    /// How the tc programs hang on interfaces, chosen at `up`.
    tc_hook: TcHook,
    /// The MAC of every macvlan parent: the host's own frames leave it
    /// from there.
    parent_macs: BTreeMap<String, [u8; 6]>,
    /// Sockets holding the published host ports.
    reserved: Reservations,
    /// The userspace forwarder, serving the ports the data path does not.
    forwarder: Forwarder,
    /// How the uplink's XDP program runs.
    xdp: XdpAttached,
    /// The endpoints of each overlay network here, for the membership
    /// task to publish in the cluster store.
    names_published: tokio::sync::watch::Sender<discovery::HostNames>,
    /// Names of overlay networks that endpoints on several hosts have.
    name_clashes: BTreeMap<String, Vec<discovery::NameClash>>,
    _lock: DaemonLock,
}

impl Daemon {
    /// Tells the eBPF data path something through `f`; without one
    /// (`--userland-proxy` where eBPF cannot load) there is nobody to tell.
    fn tell_datapath(&mut self, f: impl FnOnce(&mut Datapath) -> kernel::Result<()>) -> Result<()> {
        match self.dp.as_mut() {
            Some(dp) => Ok(f(dp)?),
            None => Ok(()),
        }
    }
}

/// CLOCK_MONOTONIC, the clock the data path stamps flows with.
fn monotonic_ns() -> Result<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_err(|e| Error::io("read", "CLOCK_MONOTONIC", e))?;
    Ok(u64::try_from(Duration::from(now).as_nanos()).unwrap_or(u64::MAX))
}

/// The endpoint among `owners` a flow belongs to: the one that sent its
/// first packet, or the one that packet was translated to.
fn remove_db(db: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", db.display()));
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", p.display(), e)),
        }
    }
    Ok(())
}
