//! The daemon: brings the bridge network up, realises endpoint plans with
//! rollback, reconciles its store with the kernel after a restart, and tears
//! everything down on `netplane down`.

pub mod cluster;
pub mod error;
pub mod metrics;
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
use netplane_common::{
    abi::{
        CtEntry, FlowKey, MASQUERADE_SLOT, NET_FLAG_ICC_DISABLED, NET_FLAG_OVERLAY, NetConfig,
        PortKey, PortTarget, maps,
    },
    vxlan,
};

use tracing::{info, warn};

use self::steps::KernelSteps;
use crate::{
    daemon::cluster::{ClusterError, ClusterView, Session, StoreUrl},
    daemon::error::{Error, Result},
    daemon::resolver::Resolver,
    daemon::store::{NewEndpoint, State, Store, StoredEndpoint},
    kernel::{
        self,
        datapath::{Datapath, EventMaps, Role, TcHook},
        host::{self, DaemonLock},
        netlink::{Link, Rtnl},
        netns,
        ports::{self, Reservations},
    },
    logic::conntrack::{self, Timeouts},
    logic::dns::{self, Zone},
    logic::endpoint::{
        self, BridgeNet, DEFAULT_MTU, EndpointOptions, HOST_VETH_PREFIX, LinkedHost, Mode, Step,
        format_mac, mac_for,
    },
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
}

/// The bridge `up` makes unless told otherwise.
pub const DEFAULT_BRIDGE: &str = "np0";

impl Config {
    /// `up`'s defaults, with the given directories.
    pub fn defaults(state_dir: PathBuf, run_dir: PathBuf, bpffs: PathBuf) -> Self {
        Config {
            bridge: DEFAULT_BRIDGE.into(),
            subnet: None,
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
    pub const IP_FORWARD_BEFORE: &str = "ip_forward_before";
    pub const BPFFS_MOUNTED: &str = "bpffs_mounted";
    /// The uplink to which netplane added a clsact qdisc (tc hook clsact).
    pub const CLSACT_ADDED: &str = "clsact_added";
}

/// Something `up` changed, to be reverted if a later step fails.
#[derive(Debug)]
enum Undo {
    DeleteLink(String),
    RestoreIpForward(String),
    Unmount(PathBuf),
}

/// The daemon as its tasks share it: taken out when it goes down.
pub type Shared = std::sync::Arc<tokio::sync::Mutex<Option<Daemon>>>;

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
    /// What the cluster store said last; `None` until it was first read,
    /// and the overlay routes an earlier run left are kept until then.
    view: Option<ClusterView>,
    /// The embedded DNS server of every network.
    resolver: Resolver,
    /// How long each reconcile took: `up`'s, and every cluster resync.
    reconciles: metrics::ReconcileDurations,
    /// How the tc programs hang on interfaces, chosen at `up`.
    tc_hook: TcHook,
    /// Sockets holding the published host ports.
    reserved: Reservations,
    _lock: DaemonLock,
}

impl Daemon {
    /// Validates the settings against the store and the host, then brings
    /// the network up (or adopts what an earlier run left), reverting what it
    /// did if a step fails.
    pub async fn start(cfg: Config) -> Result<Self> {
        let lock = DaemonLock::acquire()?;
        ports::allow_held_ports()?;
        for dir in [&cfg.state_dir, &cfg.run_dir] {
            fs::create_dir_all(dir).map_err(|e| Error::io("create", dir.display(), e))?;
        }
        let store = Store::open(&cfg.db())?;
        let rtnl = Rtnl::current()?;

        let stored_bridge = store.meta(meta::BRIDGE)?;
        let stored_subnet = store
            .meta(meta::SUBNET)?
            .map(|s| {
                s.parse::<Ipv4Net>().map_err(|_| {
                    Error::Corrupt(format!(
                        "unreadable subnet {s:?} in the meta table of {}",
                        cfg.db().display()
                    ))
                })
            })
            .transpose()?;
        if let Some(b) = stored_bridge.as_ref().filter(|b| **b != cfg.bridge) {
            return Err(Error::ConfigChanged {
                what: "bridge",
                stored: b.clone(),
                dir: cfg.state_dir.clone(),
            });
        }
        if let (Some(s), Some(want)) = (stored_subnet, cfg.subnet)
            && s != want
        {
            return Err(Error::ConfigChanged {
                what: "subnet",
                stored: s.to_string(),
                dir: cfg.state_dir.clone(),
            });
        }
        let existing_bridge = rtnl.link(&cfg.bridge).await?;
        if existing_bridge.is_some() && stored_bridge.is_none() {
            return Err(kernel::Error::Foreign(format!("bridge {}", cfg.bridge)).into());
        }
        let uplink = match &cfg.uplink {
            Some(u) => Some(
                rtnl.link(u)
                    .await?
                    .ok_or_else(|| kernel::Error::InterfaceNotFound(u.clone()))?
                    .name,
            ),
            None => rtnl.default_route_interface().await?,
        };
        let subnet = match (stored_subnet, cfg.subnet) {
            (Some(s), _) => s,
            (None, Some(want)) => {
                let in_use = rtnl
                    .networks_in_use(existing_bridge.as_ref().map(|b| b.index))
                    .await?;
                ipam::check_subnet(want, &in_use)?;
                want
            }
            (None, None) => {
                let in_use = rtnl
                    .networks_in_use(existing_bridge.as_ref().map(|b| b.index))
                    .await?;
                ipam::pick_subnet(ipam::default_pools(), &in_use).ok_or(Error::NoFreeSubnet)?
            }
        };
        let pool = Pool::new(subnet)?;
        let net = BridgeNet {
            bridge: cfg.bridge.clone(),
            subnet: Ipv4Net::new(pool.gateway, subnet.prefix_len()).expect("prefix of a valid net"),
            gateway: pool.gateway,
            mtu: None,
            vni: 0,
        };

        let upstream = if cfg.dns.is_empty() {
            dns::upstream_servers(&host::host_resolv_conf())
        } else {
            cfg.dns.clone()
        };
        let mut undo = Vec::new();
        let mut daemon = Daemon {
            cfg,
            store,
            rtnl,
            dp: None,
            net,
            uplink,
            net_config: NetConfig::default(),
            uplink_mtu: DEFAULT_MTU,
            session: None,
            view: None,
            resolver: Resolver::new(upstream),
            reconciles: metrics::ReconcileDurations::default(),
            reserved: Reservations::default(),
            tc_hook: TcHook::choose()?,
            _lock: lock,
        };
        match daemon.bring_up(existing_bridge.is_none(), &mut undo).await {
            Ok(()) => Ok(daemon),
            Err(e) => {
                warn!("netplane up failed, reverting: {e}");
                // Pins an earlier run left carry the running data path:
                // only a first `up` removes what it pinned.
                if let Some(dp) = daemon.dp.take()
                    && stored_bridge.is_none()
                {
                    let _ = dp.remove_pins();
                }
                for step in undo.into_iter().rev() {
                    if let Err(u) = daemon.revert(step).await {
                        warn!("revert: {u}");
                    }
                }
                if stored_bridge.is_none() {
                    let _ = remove_db(&daemon.cfg.db());
                }
                Err(e)
            }
        }
    }

    async fn bring_up(&mut self, create_bridge: bool, undo: &mut Vec<Undo>) -> Result<()> {
        let net = self.net.clone();
        if create_bridge {
            self.rtnl.create_bridge(&net.bridge).await?;
            undo.push(Undo::DeleteLink(net.bridge.clone()));
        }
        let bridge = Self::address_bridge(&self.rtnl, &net).await?;
        self.serve_dns(endpoint::BRIDGE_NETWORK, net.subnet).await;

        if self.store.meta(meta::IP_FORWARD_BEFORE)?.is_none() {
            let before = host::read_sysctl(host::IP_FORWARD)?;
            self.store.set_meta(meta::IP_FORWARD_BEFORE, &before)?;
            undo.push(Undo::RestoreIpForward(before));
        }
        host::write_sysctl(host::IP_FORWARD, "1")?;

        if let Some(mounted) = host::ensure_bpffs(&self.cfg.bpffs)? {
            self.store
                .set_meta(meta::BPFFS_MOUNTED, &mounted.to_string_lossy())?;
            undo.push(Undo::Unmount(mounted));
        }
        self.net_config = self.build_net_config(&bridge).await?;
        let mut dp = Datapath::load(&self.cfg.bpffs, self.net_config, self.cfg.ct_max)?;
        dp.use_hook(self.tc_hook);
        dp.set_ct_timeouts(self.cfg.timeouts.to_abi())?;
        dp.attach(&net.bridge, Role::Counted)?;
        if let Some(uplink) = &self.uplink
            && dp.attach(uplink, Role::Uplink)?
        {
            self.store.set_meta(meta::CLSACT_ADDED, uplink)?;
        }
        dp.reset_nat_counters(MASQUERADE_SLOT)?;
        dp.attach_sockets(&host::cgroup2_root()?)?;
        self.dp = Some(dp);
        if let Some(uplink) = &self.uplink {
            let link = self.rtnl.link(uplink).await?;
            self.uplink_mtu = link.and_then(|l| l.mtu).unwrap_or(DEFAULT_MTU);
        }
        self.sync_host_addrs().await?;
        self.restore_overlays().await?;
        self.store.set_meta(meta::BRIDGE, &net.bridge)?;
        self.store
            .set_meta(meta::SUBNET, &net.subnet.trunc().to_string())?;
        let reconciling = std::time::Instant::now();
        self.reconcile().await?;
        self.reconciles
            .observe(metrics::Reconcile::Up, reconciling.elapsed());
        Ok(self.dp().finish_migration()?)
    }

    async fn revert(&self, step: Undo) -> kernel::Result<()> {
        match step {
            Undo::DeleteLink(name) => self.rtnl.delete_link(&name).await,
            Undo::RestoreIpForward(v) => host::write_sysctl(host::IP_FORWARD, &v),
            Undo::Unmount(p) => host::unmount_bpffs(&p),
        }
    }

    async fn build_net_config(&self, bridge: &Link) -> Result<NetConfig> {
        let (uplink_ifindex, uplink_addr) = match &self.uplink {
            Some(name) => {
                let link = self
                    .rtnl
                    .link(name)
                    .await?
                    .ok_or_else(|| kernel::Error::InterfaceNotFound(name.clone()))?;
                let addr = self
                    .rtnl
                    .addresses()
                    .await?
                    .iter()
                    .find(|(_, index)| *index == link.index)
                    .map(|(net, _)| net.addr());
                match addr {
                    Some(addr) => (link.index, addr),
                    None => {
                        warn!(uplink = %name, "the uplink has no IPv4 address: no masquerade");
                        (0, Ipv4Addr::UNSPECIFIED)
                    }
                }
            }
            None => (0, Ipv4Addr::UNSPECIFIED),
        };
        let nat_ports = host::ephemeral_ports()?;
        Ok(NetConfig {
            subnet_be: addr_be(self.net.subnet.network()),
            mask_be: addr_be(self.net.subnet.netmask()),
            gateway_be: addr_be(self.net.gateway),
            flags: if self.cfg.icc {
                0
            } else {
                NET_FLAG_ICC_DISABLED
            },
            uplink_addr_be: addr_be(uplink_addr),
            uplink_ifindex,
            bridge_ifindex: bridge.index,
            nat_port_min: nat_ports.start,
            nat_port_max: nat_ports.end,
            bridge_mac: mac_for(self.net.gateway),
            _pad: [0; 2],
            netns_cookie: host::netns_cookie()?,
        })
    }

    /// Tells the data path which addresses are the host's own, the ones
    /// published ports answer on. Loopback is not among them: ports
    /// published on 127.0.0.1 are reachable from the host only.
    pub async fn sync_host_addrs(&mut self) -> Result<()> {
        let addrs: Vec<Ipv4Addr> = self
            .rtnl
            .addresses()
            .await?
            .iter()
            .map(|(net, _)| net.addr())
            .filter(|a| !a.is_loopback())
            .collect();
        // The networks' gateways; an overlay without its lease yet has none.
        let mut gateways = vec![self.net.gateway];
        for net in self.store.networks()? {
            if let Ok(on_host) = self.overlay_bridge_net(&net) {
                gateways.push(on_host.gateway);
            }
        }
        Ok(self.dp().set_host_addrs(&addrs, &gateways)?)
    }

    /// Serves `network`'s endpoints DNS on its gateway (`subnet`'s
    /// address); if the port is taken, they keep the host's resolvers.
    async fn serve_dns(&mut self, network: &str, subnet: Ipv4Net) {
        if let Err(e) = self.resolver.serve(network, subnet).await {
            warn!(
                network,
                "no embedded DNS, endpoints use the host's resolvers: {e}"
            );
        }
    }

    /// Gives the DNS server every ready endpoint's names, by network.
    fn sync_zones(&self) -> Result<()> {
        let mut zones: BTreeMap<String, Zone> = BTreeMap::new();
        for rec in self.store.endpoints()? {
            if let (State::Ready, Some(ip), Some(zone)) =
                (rec.state, rec.ep.ip, zone_of(&rec.ep.mode))
            {
                let zone = zones.entry(zone.to_string()).or_default();
                zone.insert(&rec.ep.name, &rec.aliases, ip);
                zone.set_upstream(ip, &rec.ep.options.dns);
            }
        }
        self.resolver.set_zones(zones);
        Ok(())
    }

    /// Follows a change of the uplink's MTU: overlays get the MTU left
    /// under the new one, for new endpoints and for the routes the stack
    /// answers "fragmentation needed" along, so that endpoints created
    /// before find the smaller path MTU.
    pub async fn sync_uplink_mtu(&mut self) -> Result<()> {
        let Some(uplink) = self.uplink.clone() else {
            return Ok(());
        };
        let link = self.rtnl.link(&uplink).await?;
        let mtu = link.and_then(|l| l.mtu).unwrap_or(DEFAULT_MTU);
        if mtu == self.uplink_mtu {
            return Ok(());
        }
        info!(uplink, mtu, before = self.uplink_mtu, "uplink MTU changed");
        self.uplink_mtu = mtu;
        self.restore_overlays().await
    }

    /// Removes the flows whose lifetime has passed, both directions at once.
    pub fn collect_garbage(&mut self) -> Result<usize> {
        let now_ns = monotonic_ns()?;
        let timeouts = self.cfg.timeouts;
        let dp = self.dp();
        let doomed = conntrack::expired(&dp.flows()?, now_ns, &timeouts);
        // A packet may have refreshed a flow since the dump (of many
        // thousand entries): read the doomed ones again, and keep those.
        let doomed = conntrack::expired(&dp.flows_of(&doomed)?, now_ns, &timeouts);
        dp.delete_flow_keys(&doomed)?;
        Ok(doomed.len())
    }

    /// Tracked flows, of endpoint `only` or of all: `ct ls`.
    pub fn flows(&mut self, only: Option<&str>) -> Result<Vec<FlowInfo>> {
        let owners = self.flow_owners(only)?;
        let now_ns = monotonic_ns()?;
        let timeouts = self.cfg.timeouts;
        let entries = self.dp().flows()?;
        Ok(conntrack::flows(&entries)
            .iter()
            .filter_map(|flow| {
                let owner = owner_of(flow, &owners);
                if only.is_some() && owner.is_none() {
                    return None;
                }
                let mut info = conntrack::describe(flow, now_ns, &timeouts);
                info.endpoint = owner.cloned();
                Some(info)
            })
            .collect())
    }

    /// Forgets tracked flows, of endpoint `only` or all: `ct flush`. Their
    /// next packets start new flows, as after `conntrack -F`.
    pub fn flush_flows(&mut self, only: Option<&str>) -> Result<usize> {
        let owners = self.flow_owners(only)?;
        let entries = self.dp().flows()?;
        let doomed: Vec<conntrack::Flow> = conntrack::flows(&entries)
            .into_iter()
            .filter(|flow| only.is_none() || owner_of(flow, &owners).is_some())
            .collect();
        let keys: Vec<FlowKey> = doomed.iter().flat_map(|f| [f.key, f.reply_key]).collect();
        self.dp().delete_flow_keys(&keys)?;
        Ok(doomed.len())
    }

    /// Endpoint names by address (network byte order): every endpoint's,
    /// or only the one named `only`, which must exist.
    fn flow_owners(&self, only: Option<&str>) -> Result<HashMap<u32, String>> {
        let records = self.store.endpoints()?;
        if let Some(name) = only
            && !records.iter().any(|r| r.ep.name == name)
        {
            return Err(Error::EndpointNotFound(name.to_string()));
        }
        Ok(records
            .into_iter()
            .filter(|r| only.is_none_or(|name| r.ep.name == name))
            .filter_map(|r| Some((addr_be(r.ep.ip?), r.ep.name)))
            .collect())
    }

    /// How often [`Daemon::collect_garbage`] should run: often enough for
    /// the shortest lifetime to be honoured within a quarter of it.
    pub fn gc_interval(&self) -> Duration {
        let t = self.cfg.timeouts;
        [t.tcp_syn, t.tcp_fin_wait, t.tcp_closing, t.udp, t.icmp]
            .into_iter()
            .min()
            .unwrap_or_default()
            .div_f64(4.0)
            .clamp(Duration::from_millis(250), Duration::from_secs(10))
    }

    fn dp(&mut self) -> &mut Datapath {
        self.dp
            .as_mut()
            .expect("data path is loaded while the daemon runs")
    }

    /// Brings the kernel in line with the store after a restart: finishes
    /// interrupted removals, undoes interrupted creations, rebuilds endpoints
    /// whose kernel objects went missing, swaps the new programs into the
    /// pinned links of the others, and removes veths no record owns.
    async fn reconcile(&mut self) -> Result<()> {
        let records = self.store.endpoints()?;
        for rec in &records {
            match rec.state {
                State::Creating | State::Removing => {
                    info!(endpoint = %rec.ep.name, state = ?rec.state, "finishing interrupted operation: removing");
                    self.teardown(&rec.ep).await?;
                    self.store.delete_endpoint(&rec.ep.name)?;
                }
                State::Ready if self.is_intact(&rec.ep).await? => {
                    if let (Some(veth), Some(ip), Some(mac)) =
                        (rec.ep.host_veth(), rec.ep.ip, rec.ep.mac())
                    {
                        let vni = self.bridge_net_of(&rec.ep.mode)?.vni;
                        self.kernel_steps().attach_endpoint(&veth, ip, mac, vni)?;
                    }
                    self.publish(&rec.ep, &rec.ports)?;
                    self.hold_published(&rec.ep.name, &rec.ports);
                }
                State::Ready => {
                    warn!(endpoint = %rec.ep.name, "kernel objects missing: rebuilding");
                    self.teardown(&rec.ep).await?;
                    self.apply_plan(&rec.ep).await?;
                    self.publish(&rec.ep, &rec.ports)?;
                    self.hold_published(&rec.ep.name, &rec.ports);
                }
            }
        }
        let owned: Vec<String> = self
            .store
            .endpoints()?
            .iter()
            .filter_map(|r| r.ep.host_veth())
            .collect();
        for link in self.rtnl.links().await? {
            if link.name.starts_with(HOST_VETH_PREFIX) && !owned.contains(&link.name) {
                info!(link = %link.name, "removing veth no endpoint owns");
                self.dp().detach(&link.name)?;
                self.rtnl.delete_link(&link.name).await?;
            }
        }
        self.sync_zones()
    }

    async fn is_intact(&self, ep: &endpoint::Endpoint) -> Result<bool> {
        if let Some(name) = ep.netns_name()
            && !netns::is_mounted(&netns::path(name))
        {
            return Ok(false);
        }
        match ep.host_veth() {
            Some(veth) => Ok(self.rtnl.link(&veth).await?.is_some()),
            None => Ok(true),
        }
    }

    fn plan(&self, ep: &endpoint::Endpoint) -> Result<Vec<Step>> {
        let links: Vec<LinkedHost> = self
            .store
            .endpoint(&ep.name)
            .map(|rec| rec.links)
            .unwrap_or_default()
            .iter()
            .filter_map(|spec| {
                let (other, alias) = endpoint::parse_link(spec);
                let other = self.resolved(&self.store.endpoint(other).ok()?.ep);
                Some(LinkedHost {
                    ip: other.ip?,
                    alias: alias.to_string(),
                    name: other.name,
                })
            })
            .collect();
        let net = self.bridge_net_of(&ep.mode)?;
        let dns = zone_of(&ep.mode)
            .filter(|zone| self.resolver.serves(zone))
            .map(|_| net.gateway);
        Ok(endpoint::plan(
            &self.resolved(ep),
            &net,
            &host::host_resolv_conf(),
            dns,
            &links,
        ))
    }

    /// Applies the plan of `ep`; on failure undoes the applied steps.
    async fn apply_plan(&mut self, ep: &endpoint::Endpoint) -> Result<()> {
        let steps = self.plan(ep)?;
        Ok(steps::apply_all(&mut self.kernel_steps(), &steps, &ep.name).await?)
    }

    /// The kernel, as what applies and undoes plan steps.
    fn kernel_steps(&mut self) -> KernelSteps<'_> {
        KernelSteps {
            rtnl: &self.rtnl,
            dp: self
                .dp
                .as_mut()
                .expect("data path is loaded while the daemon runs"),
        }
    }

    /// Zeroes the counters of newly published rules, whose slots may have
    /// served rules since withdrawn.
    fn reset_counters(&mut self, ports: &[PublishedPort]) -> Result<()> {
        let dp = self.dp();
        Ok(ports
            .iter()
            .try_for_each(|p| dp.reset_nat_counters(p.slot))?)
    }

    /// Holds the host ports `name` published before this daemon started.
    /// A host process that bound one while no daemon ran keeps it: its
    /// traffic goes to the endpoint, and the log says so.
    fn hold_published(&mut self, name: &str, ports: &[PublishedPort]) {
        if let Err(e) = self.reserved.reserve(ports) {
            warn!(endpoint = %name, "published port not held: {e}");
        }
    }

    /// Writes the published ports of `ep` into the data path.
    fn publish(&mut self, ep: &endpoint::Endpoint, ports: &[PublishedPort]) -> Result<()> {
        let Some(ip) = ep.ip.filter(|_| ep.mode == Mode::Bridge) else {
            return Ok(());
        };
        let dp = self.dp();
        for port in ports {
            // The list first: a port never accepts more than it says.
            dp.set_publish_from(port.slot, &port.from)?;
            dp.publish(&port.map_entries(ip))?;
        }
        Ok(())
    }

    /// Withdraws published ports and their flows from the data path, and
    /// lets their host ports go.
    fn unpublish(&mut self, ep: &endpoint::Endpoint, ports: &[PublishedPort]) -> Result<()> {
        self.reserved.release(ports);
        let Some(ip) = ep.ip.filter(|_| ep.mode == Mode::Bridge) else {
            return Ok(());
        };
        let dp = self.dp();
        for port in ports {
            let keys: Vec<_> = port.map_entries(ip).into_iter().map(|(k, _)| k).collect();
            dp.unpublish(&keys, port.slot)?;
            dp.set_publish_from(port.slot, &[])?;
        }
        Ok(())
    }

    /// Rewrites the pairs of endpoints joined with `--link`, which talk even
    /// with `--icc=false`, and the hosts files naming linked endpoints: one
    /// recreated with another address is found at the new one.
    fn sync_linked(&mut self) -> Result<()> {
        let records = self.store.endpoints()?;
        let ip_of = |name: &str| {
            records
                .iter()
                .find(|r| r.ep.name == name)
                .and_then(|r| self.resolved(&r.ep).ip)
        };
        let pairs: Vec<(Ipv4Addr, Ipv4Addr)> = records
            .iter()
            .flat_map(|r| {
                r.links
                    .iter()
                    .filter_map(|spec| {
                        Some((ip_of(&r.ep.name)?, ip_of(endpoint::parse_link(spec).0)?))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        self.dp().set_linked(&pairs)?;
        for rec in records
            .iter()
            .filter(|r| r.state == State::Ready && !r.links.is_empty())
        {
            for step in self.plan(&rec.ep)? {
                if let Step::EtcFiles {
                    name,
                    hosts,
                    resolv,
                } = step
                {
                    host::write_etc_files(&name, &hosts, &resolv)?;
                }
            }
        }
        Ok(())
    }

    /// Undoes every step of the plan of `ep`, continuing past failures and
    /// returning the first.
    async fn teardown(&mut self, ep: &endpoint::Endpoint) -> Result<()> {
        let mut first = None;
        if let Ok(rec) = self.store.endpoint(&ep.name)
            && let Err(e) = self.unpublish(ep, &rec.ports)
        {
            warn!("removing {}: {e}", ep.name);
            first.get_or_insert(e);
        }
        let steps = self.plan(ep)?;
        if let Err(e) = steps::undo_all(&mut self.kernel_steps(), &steps, &ep.name).await {
            first.get_or_insert(e.into());
        }
        first.map_or(Ok(()), Err)
    }

    /// Validates a create request, records the endpoint, applies its plan.
    pub async fn create(&mut self, req: CreateEndpoint) -> Result<EndpointInfo> {
        endpoint::validate_name(&req.name)?;
        let mode: Mode = req.net.parse()?;
        if let Some(h) = &req.hostname {
            if mode == Mode::Host {
                return Err(Error::HostnameOfHost);
            }
            endpoint::validate_name(h)?;
        }
        let specs = req
            .publish
            .iter()
            .map(|s| s.parse::<PortSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        let from = portspec::parse_sources(&req.publish_from)?;
        if !from.is_empty() && specs.is_empty() {
            return Err(Error::NotApplicable {
                flag: "--publish-from",
                mode: "an endpoint without -p".into(),
            });
        }
        if !mode.has_veth() && req.ip.is_some() {
            return Err(Error::NotApplicable {
                flag: "--ip",
                mode: mode.to_string(),
            });
        }
        if mode != Mode::Bridge && !specs.is_empty() {
            return Err(Error::NotApplicable {
                flag: "-p",
                mode: mode.to_string(),
            });
        }
        let records = self.store.endpoints()?;
        let ready = |name: &str| {
            records
                .iter()
                .find(|r| r.ep.name == name && r.state == State::Ready)
        };
        if let Mode::Container(other) = &mode {
            let other = ready(other).ok_or_else(|| Error::EndpointNotFound(other.clone()))?;
            if other.ep.netns_name().is_none() {
                return Err(Error::NoNamespace(other.ep.name.clone()));
            }
        }
        for alias in &req.network_aliases {
            endpoint::validate_name(alias)?;
        }
        if !req.network_aliases.is_empty() && zone_of(&mode).is_none() {
            return Err(Error::NotApplicable {
                flag: "--network-alias",
                mode: mode.to_string(),
            });
        }
        // An alias never answers for a name; asking for one is a mistake.
        if let Some((alias, other)) = req.network_aliases.iter().find_map(|alias| {
            records
                .iter()
                .find(|r| {
                    r.ep.name.eq_ignore_ascii_case(alias) && zone_of(&r.ep.mode) == zone_of(&mode)
                })
                .map(|r| (alias.clone(), r.ep.name.clone()))
        }) {
            return Err(Error::AliasIsName { alias, other });
        }
        for link in &req.links {
            let (other, alias) = endpoint::parse_link(link);
            endpoint::validate_name(alias)?;
            ready(other).ok_or_else(|| Error::EndpointNotFound(other.to_string()))?;
        }
        let options = self.endpoint_options(&req, &mode, &records)?;
        let ports = Self::resolve_ports(&self.rtnl, &specs, &records, &from).await?;
        // The bridge's, or the overlay's (which must exist) on this host.
        let pool = Pool::new(self.bridge_net_of(&mode)?.subnet)?;
        let ep = self.store.insert_endpoint(
            NewEndpoint {
                name: &req.name,
                mode: &mode,
                ip: req.ip,
                hostname: req.hostname.as_deref(),
                ports: &ports,
                links: &req.links,
                aliases: &req.network_aliases,
                options: &options,
            },
            mode.has_veth().then_some(&pool),
        )?;
        if let Err(e) = self.apply_plan(&ep).await {
            self.store.delete_endpoint(&ep.name)?;
            return Err(e);
        }
        let mut activate = || {
            self.reserved.reserve(&ports)?;
            self.reset_counters(&ports)?;
            self.publish(&ep, &ports)?;
            self.sync_linked()
        };
        if let Err(e) = activate() {
            let _ = self.teardown(&ep).await;
            self.store.delete_endpoint(&ep.name)?;
            return Err(e);
        }
        self.store.set_state(&ep.name, State::Ready)?;
        self.sync_zones()?;
        info!(endpoint = %ep.name, mode = %ep.mode, ip = ?ep.ip, "created");
        self.inspect(&ep.name)
    }

    /// The `docker run`-style options of a create request, checked.
    fn endpoint_options(
        &self,
        req: &CreateEndpoint,
        mode: &Mode,
        records: &[StoredEndpoint],
    ) -> Result<EndpointOptions> {
        let not_for = |flag| {
            Err(Error::NotApplicable {
                flag,
                mode: mode.to_string(),
            })
        };
        let own_resolv = mode.owns_netns();
        if !own_resolv && !req.dns.is_empty() {
            return not_for("--dns");
        }
        if !own_resolv && !req.dns_search.is_empty() {
            return not_for("--dns-search");
        }
        if !own_resolv && !req.add_hosts.is_empty() {
            return not_for("--add-host");
        }
        endpoint::check_search_domains(&req.dns_search)?;
        let mac = match &req.mac_address {
            // Overlay peers derive an endpoint's MAC from its address.
            Some(_) if *mode != Mode::Bridge => return not_for("--mac-address"),
            Some(mac) => {
                let mac = endpoint::parse_mac(mac)?;
                endpoint::check_mac_free(mac, self.net.subnet.trunc())?;
                Some(mac)
            }
            None => None,
        };
        if let Some(mac) = mac
            && let Some(other) = records.iter().find(|r| r.ep.mac() == Some(mac))
        {
            return Err(Error::MacInUse {
                mac: format_mac(&mac),
                other: other.ep.name.clone(),
            });
        }
        Ok(EndpointOptions {
            mac,
            dns: req.dns.clone(),
            dns_search: req.dns_search.clone(),
            extra_hosts: req
                .add_hosts
                .iter()
                .map(|h| endpoint::parse_extra_host(h, self.net.gateway))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Checks `-p` specs against the host and the ports already published,
    /// and picks the host ports and counter slots they leave open. (Takes
    /// the netlink handle, not `&self`: the daemon is not `Sync`, and API
    /// futures must be `Send`.)
    async fn resolve_ports(
        rtnl: &Rtnl,
        specs: &[PortSpec],
        records: &[StoredEndpoint],
        from: &[Ipv4Net],
    ) -> Result<Vec<PublishedPort>> {
        let local: Vec<Ipv4Addr> = rtnl
            .addresses()
            .await?
            .iter()
            .map(|(n, _)| n.addr())
            .collect();
        if let Some(ip) = specs
            .iter()
            .filter_map(|s| s.host_ip)
            .find(|ip| !ip.is_loopback() && !ip.is_unspecified() && !local.contains(ip))
        {
            return Err(Error::HostIpNotLocal(ip));
        }
        let taken: Vec<_> = records
            .iter()
            .flat_map(|r| r.ports.iter().map(|p| (r.ep.name.clone(), p.clone())))
            .collect();
        let mut ports =
            portspec::assign_host_ports(specs, &taken, host::ephemeral_ports()?, |p| {
                ports::check_free(p).map_err(Error::from)
            })?;
        for port in &mut ports {
            port.from = from.to_vec();
        }
        Ok(ports)
    }

    /// The ready bridge endpoint `name`, which ports can be published to.
    fn publishable(&self, name: &str) -> Result<StoredEndpoint> {
        let rec = self.store.endpoint(name)?;
        if rec.ep.mode != Mode::Bridge || rec.state != State::Ready {
            return Err(Error::NotApplicable {
                flag: "-p",
                mode: rec.ep.mode.to_string(),
            });
        }
        Ok(rec)
    }

    /// Publishes one more port of a running endpoint: `port add`.
    pub async fn add_port(
        &mut self,
        name: &str,
        spec: &str,
        from: &[String],
    ) -> Result<Vec<PortInfo>> {
        let spec: PortSpec = spec.parse()?;
        let from = portspec::parse_sources(from)?;
        let rec = self.publishable(name)?;
        let records = self.store.endpoints()?;
        let added = Self::resolve_ports(&self.rtnl, &[spec], &records, &from).await?;
        let mut ports = rec.ports.clone();
        ports.extend(added.iter().cloned());
        self.store.set_ports(name, &ports)?;
        let mut activate = || {
            self.reserved.reserve(&added)?;
            self.reset_counters(&added)?;
            self.publish(&rec.ep, &added)
        };
        if let Err(e) = activate() {
            let _ = self.unpublish(&rec.ep, &added);
            self.store.set_ports(name, &rec.ports)?;
            return Err(e);
        }
        info!(endpoint = %name, %spec, "published");
        self.ports(Some(name))
    }

    /// Withdraws the published ports of `name` that `spec` names: `port rm`.
    pub fn remove_port(&mut self, name: &str, spec: &str) -> Result<Vec<PortInfo>> {
        let parsed: PortSpec = spec.parse()?;
        let rec = self.publishable(name)?;
        let (gone, kept): (Vec<PublishedPort>, Vec<PublishedPort>) =
            rec.ports.iter().cloned().partition(|p| p.matches(&parsed));
        if gone.is_empty() {
            return Err(Error::PortNotPublished {
                spec: spec.to_string(),
                endpoint: name.to_string(),
            });
        }
        self.unpublish(&rec.ep, &gone)?;
        self.store.set_ports(name, &kept)?;
        info!(endpoint = %name, %spec, "withdrawn");
        self.ports(Some(name))
    }

    /// Published ports, of one endpoint or all: `port ls`.
    pub fn ports(&self, name: Option<&str>) -> Result<Vec<PortInfo>> {
        if let Some(name) = name {
            self.store.endpoint(name)?;
        }
        Ok(self
            .store
            .endpoints()?
            .iter()
            .filter(|r| name.is_none_or(|n| r.ep.name == n))
            .flat_map(|r| {
                r.ports.iter().filter_map(|p| {
                    Some(PortInfo {
                        endpoint: r.ep.name.clone(),
                        endpoint_ip: r.ep.ip?,
                        host_ip: p.host_ip,
                        host_port: p.host_ports.start,
                        host_port_end: p.host_ports.end,
                        container_port: p.container_ports.start,
                        container_port_end: p.container_ports.end,
                        proto: p.proto.to_string(),
                        from: p.from.iter().map(|n| n.to_string()).collect(),
                    })
                })
            })
            .collect())
    }

    /// The NAT rules with their counters: `nat ls`.
    pub fn nat_table(&self) -> Result<NatTable> {
        let dp = self
            .dp
            .as_ref()
            .expect("data path is loaded while the daemon runs");
        let (packets, bytes) = dp.nat_counters(MASQUERADE_SLOT)?;
        let mut drops = dp.rule_drops()?;
        let mut rules = vec![NatRule {
            target: "MASQUERADE".into(),
            prot: "all".into(),
            source: self.net.subnet.trunc().to_string(),
            destination: "0.0.0.0/0".into(),
            detail: match &self.uplink {
                Some(u) => format!(
                    "out:{u} to:{}",
                    addr_from_be(self.net_config.uplink_addr_be)
                ),
                None => "no uplink".into(),
            },
            packets,
            bytes,
            drops: drops.remove(&MASQUERADE_SLOT).unwrap_or_default(),
        }];
        for rec in self.store.endpoints()? {
            let Some(ip) = rec.ep.ip else { continue };
            for p in &rec.ports {
                let (packets, bytes) = dp.nat_counters(p.slot)?;
                rules.push(NatRule {
                    target: "DNAT".into(),
                    prot: p.proto.to_string(),
                    source: if p.from.is_empty() {
                        "0.0.0.0/0".into()
                    } else {
                        let nets: Vec<String> = p.from.iter().map(|n| n.to_string()).collect();
                        nets.join(",")
                    },
                    destination: if p.host_ip.is_unspecified() {
                        "0.0.0.0/0".into()
                    } else {
                        format!("{}/32", p.host_ip)
                    },
                    detail: format!(
                        "{} dpt:{} to:{ip}:{}",
                        p.proto, p.host_ports, p.container_ports
                    ),
                    packets,
                    bytes,
                    drops: drops.remove(&p.slot).unwrap_or_default(),
                });
            }
        }
        Ok(NatTable {
            rules,
            tracked_flows: dp.flows()?.len() / 2,
            drops: dp.drops()?,
        })
    }

    /// Removes an endpoint, killing the processes in its namespace as
    /// removing a container does. Endpoints sharing its namespace are
    /// removed first with `force`, and refused without.
    pub async fn remove(&mut self, name: &str, force: bool) -> Result<Removed> {
        let records = self.store.endpoints()?;
        let rec = records
            .iter()
            .find(|r| r.ep.name == name)
            .ok_or_else(|| Error::EndpointNotFound(name.into()))?;
        let dependents: Vec<&str> = records
            .iter()
            .filter(|r| r.ep.mode == Mode::Container(name.to_string()))
            .map(|r| r.ep.name.as_str())
            .collect();
        if !dependents.is_empty() && !force {
            return Err(Error::HasDependents {
                endpoint: name.to_string(),
                dependents: dependents.join(", "),
            });
        }
        let mut removed = Removed::default();
        for dependent in dependents {
            let gone = Box::pin(self.remove(dependent, true)).await?;
            removed.endpoints.extend(gone.endpoints);
            removed.killed.extend(gone.killed);
        }
        self.store.set_state(name, State::Removing)?;
        if rec.ep.mode.owns_netns() {
            for process in netns::kill_all(name)? {
                info!(endpoint = %name, %process, "killed");
                removed.killed.push(process.to_string());
            }
        }
        self.teardown(&rec.ep).await?;
        self.store.delete_endpoint(name)?;
        self.sync_linked()?;
        self.sync_zones()?;
        info!(endpoint = %name, "removed");
        removed.endpoints.push(name.to_string());
        Ok(removed)
    }

    /// `netplane down` with no daemon running (killed, or the host
    /// rebooted): takes up what the state in `cfg.state_dir` and the pins
    /// record, as `up` would, then removes all of it. `false` when there is
    /// no state to remove.
    pub async fn down_from_state(mut cfg: Config) -> Result<bool> {
        let db = cfg.db();
        if !db.exists() {
            return Ok(false);
        }
        if let Some(bridge) = Store::open(&db)?.meta(meta::BRIDGE)? {
            cfg.bridge = bridge;
        }
        Self::start(cfg).await?.down().await?;
        Ok(true)
    }

    /// Removes everything netplane created and forgets it: `netplane down`.
    pub async fn down(mut self) -> Result<()> {
        let mut first: Option<Error> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                warn!("down: {e}");
                first.get_or_insert(e);
            }
        };
        for rec in self.store.endpoints()? {
            if self.store.endpoint(&rec.ep.name).is_ok() {
                let r = self.remove(&rec.ep.name, true).await.map(drop);
                note(r);
            }
        }
        if let Some(mut dp) = self.dp.take() {
            if let Some(uplink) = &self.uplink {
                note(dp.detach(uplink).map_err(Error::from));
            }
            note(dp.remove_pins().map_err(Error::from));
        }
        if let Some(uplink) = self.store.meta(meta::CLSACT_ADDED)? {
            note(self.rtnl.delete_clsact(&uplink).await.map_err(Error::from));
        }
        if let Some(session) = self.session.take() {
            // The other hosts drop this one now, not when its keys expire.
            note(session.close().await.map_err(Error::from));
        }
        for net in self.store.networks()? {
            note(
                self.rtnl
                    .delete_link(&overlay_bridge(net.vni))
                    .await
                    .map_err(Error::from),
            );
        }
        note(
            self.rtnl
                .delete_link(&self.net.bridge)
                .await
                .map_err(Error::from),
        );
        if let Some(before) = self.store.meta(meta::IP_FORWARD_BEFORE)? {
            note(host::write_sysctl(host::IP_FORWARD, &before).map_err(Error::from));
        }
        if let Some(mounted) = self.store.meta(meta::BPFFS_MOUNTED)? {
            note(host::unmount_bpffs(Path::new(&mounted)).map_err(Error::from));
        } else {
            note(
                fs::remove_dir(&self.cfg.bpffs)
                    .map_err(|e| Error::io("remove", self.cfg.bpffs.display(), e)),
            );
        }
        note(remove_db(&self.cfg.db()));
        let _ = fs::remove_file(Config::socket(&self.cfg.run_dir));
        first.map_or(Ok(()), Err)
    }

    /// `GET /v1/info`.
    pub fn info(&self) -> DaemonInfo {
        let pid = std::process::id();
        DaemonInfo {
            pid,
            netns: format!("/proc/{pid}/ns/net"),
            bridge: self.net.bridge.clone(),
            uplink: self.uplink.clone(),
            subnet: self.net.subnet.trunc().to_string(),
            tc_hook: self.tc_hook.name().into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// `ep` with the address it has in the kernel: a `container:` endpoint
    /// has the address of the endpoint whose namespace it shares.
    fn resolved(&self, ep: &endpoint::Endpoint) -> endpoint::Endpoint {
        let mut ep = ep.clone();
        if let Mode::Container(other) = &ep.mode
            && let Ok(other) = self.store.endpoint(other)
        {
            ep.ip = other.ep.ip;
            ep.options.mac = other.ep.options.mac;
        }
        ep
    }

    fn to_info(&self, rec: &StoredEndpoint) -> EndpointInfo {
        let ep = &self.resolved(&rec.ep);
        // The bridge or overlay the endpoint (or the one whose namespace it
        // shares) is attached to.
        let attached = match &ep.mode {
            Mode::Container(other) => self.store.endpoint(other).ok().map(|o| o.ep.mode),
            mode => Some(mode.clone()),
        };
        let net = attached
            .clone()
            .filter(Mode::has_veth)
            .and_then(|mode| self.bridge_net_of(&mode).ok())
            .filter(|_| ep.ip.is_some());
        let bridged = net.is_some();
        let mut ports: BTreeMap<String, Vec<HostBinding>> = BTreeMap::new();
        for p in &rec.ports {
            for (i, cport) in (p.container_ports.start..=p.container_ports.end).enumerate() {
                ports
                    .entry(format!("{cport}/{}", p.proto))
                    .or_default()
                    .push(HostBinding {
                        host_ip: p.host_ip.to_string(),
                        host_port: (usize::from(p.host_ports.start) + i).to_string(),
                        allowed_from: p.from.iter().map(|n| n.to_string()).collect(),
                    });
            }
        }
        let ip_address = ep
            .ip
            .filter(|_| bridged)
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        let ip_prefix_len = net.as_ref().map_or(0, |n| n.subnet.prefix_len());
        let gateway = net
            .as_ref()
            .map(|n| n.gateway.to_string())
            .unwrap_or_default();
        let mac_address = ep
            .mac()
            .filter(|_| bridged)
            .map(|mac| format_mac(&mac))
            .unwrap_or_default();
        // Docker lists a container: endpoint under no network of its own.
        let networks = match attached {
            Some(Mode::Container(_)) | None => BTreeMap::new(),
            Some(mode) => BTreeMap::from([(
                zone_of(&mode).map_or_else(|| mode.to_string(), str::to_string),
                EndpointNetwork {
                    ip_address: ip_address.clone(),
                    ip_prefix_len,
                    gateway: gateway.clone(),
                    mac_address: mac_address.clone(),
                    aliases: rec.aliases.clone(),
                },
            )]),
        };
        EndpointInfo {
            id: rec.uid.clone(),
            name: ep.name.clone(),
            created: rec.created.clone(),
            state: EndpointState {
                status: rec.state.as_str().to_string(),
            },
            mode: ep.mode.to_string(),
            hostname: ep.hostname.clone(),
            links: rec.links.clone(),
            network_aliases: rec.aliases.clone(),
            network_settings: NetworkSettings {
                sandbox_key: match ep.netns_name() {
                    Some(n) => netns::path(n).to_string_lossy().into_owned(),
                    None => self.info().netns,
                },
                ip_address,
                ip_prefix_len,
                gateway,
                mac_address,
                ports,
                networks,
            },
        }
    }

    /// `GET /v1/endpoints/NAME`.
    pub fn inspect(&self, name: &str) -> Result<EndpointInfo> {
        Ok(self.to_info(&self.store.endpoint(name)?))
    }

    /// `GET /v1/endpoints`.
    pub fn list(&self) -> Result<Vec<EndpointInfo>> {
        Ok(self
            .store
            .endpoints()?
            .iter()
            .filter(|r| r.state == State::Ready)
            .map(|r| self.to_info(r))
            .collect())
    }

    /// `GET /v1/networks`.
    pub fn networks(&self) -> Result<Vec<NetworkInfo>> {
        let records = self.store.endpoints()?;
        let members = |pred: &dyn Fn(&Mode) -> bool| -> Vec<String> {
            records
                .iter()
                .filter(|r| pred(&r.ep.mode))
                .map(|r| r.ep.name.clone())
                .collect()
        };
        let simple = |name: &str, driver: &str, endpoints| NetworkInfo {
            name: name.into(),
            driver: driver.into(),
            bridge: None,
            subnet: None,
            gateway: None,
            icc: None,
            endpoints,
            vni: None,
            lease: None,
            peers: Vec::new(),
        };
        Ok(vec![
            NetworkInfo {
                name: endpoint::BRIDGE_NETWORK.into(),
                driver: "bridge".into(),
                bridge: Some(self.net.bridge.clone()),
                subnet: Some(self.net.subnet.trunc().to_string()),
                gateway: Some(self.net.gateway.to_string()),
                icc: Some(self.cfg.icc),
                endpoints: members(&|m| *m == Mode::Bridge),
                vni: None,
                lease: None,
                peers: Vec::new(),
            },
            simple("host", "host", members(&|m| *m == Mode::Host)),
            simple("none", "null", members(&|m| *m == Mode::None)),
        ]
        .into_iter()
        .chain(self.store.networks()?.iter().filter_map(|net| {
            let on_host = self.overlay_bridge_net(net).ok()?;
            let leases = self.leases(net).ok()?;
            let state = match (&self.cfg.store, &self.session) {
                (None, _) => "static",
                (Some(_), Some(_)) => "registered",
                (Some(_), None) => "last known",
            };
            Some(NetworkInfo {
                name: net.name.clone(),
                driver: "overlay".into(),
                bridge: Some(on_host.bridge),
                subnet: Some(net.subnet.to_string()),
                gateway: Some(on_host.gateway.to_string()),
                icc: None,
                endpoints: members(&|m| *m == Mode::Network(net.name.clone())),
                vni: Some(net.vni),
                lease: Some(on_host.subnet.trunc().to_string()),
                peers: leases
                    .iter()
                    .map(|(vtep, lease)| PeerInfo {
                        vtep: vtep.to_string(),
                        lease: lease.to_string(),
                        state: state.into(),
                    })
                    .collect(),
            })
        }))
        .collect())
    }

    /// This host's VTEP: the uplink's address.
    fn vtep(&self) -> Result<Ipv4Addr> {
        match addr_from_be(self.net_config.uplink_addr_be) {
            Ipv4Addr::UNSPECIFIED => Err(Error::NoVtep),
            vtep => Ok(vtep),
        }
    }

    /// The hosts of overlay `net`, this one first, with the /24 each
    /// holds: computed from the static peers, or as the cluster store last
    /// said, with this host's own lease as it recorded it.
    fn leases(&self, net: &OverlayNetwork) -> Result<Vec<(Ipv4Addr, Ipv4Net)>> {
        let vtep = self.vtep()?;
        if self.cfg.store.is_none() {
            let members: Vec<Ipv4Addr> = std::iter::once(vtep)
                .chain(self.cfg.peers.iter().copied())
                .collect();
            let mut leases = overlay::static_leases(net.subnet, &members)?;
            leases.sort_by_key(|(v, _)| *v != vtep);
            return Ok(leases);
        }
        let own = self
            .store
            .network_lease(&net.name)?
            .ok_or_else(|| Error::NoLease(net.name.clone()))?;
        let others = self
            .view
            .iter()
            .flat_map(|view| view.holders(&net.name))
            .filter(|h| h.vtep != vtep)
            .map(|h| (h.vtep, h.lease));
        Ok(std::iter::once((vtep, own)).chain(others).collect())
    }

    /// What overlay `net` is on this host: a bridge at the first address of
    /// this host's lease, endpoints with room left for the encapsulation.
    fn overlay_bridge_net(&self, net: &OverlayNetwork) -> Result<BridgeNet> {
        let (_, lease) = self.leases(net)?[0];
        let gateway = lease.hosts().next().expect("a /24 has hosts");
        Ok(BridgeNet {
            bridge: overlay_bridge(net.vni),
            subnet: Ipv4Net::new(gateway, lease.prefix_len()).expect("prefix of a valid net"),
            gateway,
            mtu: Some(vxlan::overlay_mtu(self.uplink_mtu)),
            vni: net.vni,
        })
    }

    /// The bridge an endpoint attached in `mode` joins.
    fn bridge_net_of(&self, mode: &Mode) -> Result<BridgeNet> {
        match mode {
            Mode::Network(name) => self.overlay_bridge_net(&self.store.network(name)?),
            _ => Ok(BridgeNet {
                mtu: endpoint::bridge_endpoint_mtu(self.uplink_mtu),
                ..self.net.clone()
            }),
        }
    }

    /// Creates an overlay network: recorded, its bridge up, the routes to
    /// the other hosts' leases in the data path.
    pub async fn create_network(&mut self, req: CreateNetwork) -> Result<NetworkInfo> {
        endpoint::validate_name(&req.name)?;
        if req.driver != "overlay" {
            return Err(Error::UnsupportedDriver(req.driver));
        }
        // `bridge`, `host`, `none` and `container:` name attachments.
        if req.name.parse::<Mode>()? != Mode::Network(req.name.clone()) {
            return Err(Error::NetworkNameReserved(req.name));
        }
        let net = OverlayNetwork {
            vni: match req.vni {
                Some(vni) => overlay::check_vni(vni)?,
                None => overlay::default_vni(&req.name),
            },
            name: req.name,
            subnet: req.subnet.trunc(),
        };
        if let Some(other) = self.overlay_named(&net.name) {
            return Err(Error::NetworkExists {
                name: net.name,
                vni: net.vni,
                other,
            });
        }
        Self::check_overlay_subnet(&self.rtnl, &net, self.subnets_besides(&net)?).await?;
        if self.cfg.store.is_some() {
            // Every host, this one included, takes it up from the store.
            if let Some(other) = self.connected()?.create_network(&net).await? {
                return Err(Error::NetworkExists {
                    name: net.name,
                    vni: net.vni,
                    other,
                });
            }
            self.resync().await?;
            self.store.network(&net.name)?;
            return self.network(&net.name);
        }
        let on_host = self.overlay_bridge_net(&net)?;
        self.store.insert_network(&net)?;
        let brought_up = match self.bring_up_overlay(&net, &on_host).await {
            Ok(()) => self.sync_overlay_routes(),
            Err(e) => Err(e),
        };
        if let Err(e) = brought_up {
            let _ = self.rtnl.delete_link(&on_host.bridge).await;
            self.store.delete_network(&net.name)?;
            return Err(e);
        }
        info!(network = %net.name, vni = net.vni, lease = %on_host.subnet.trunc(), "overlay created");
        self.network(&net.name)
    }

    /// The overlay network, here or elsewhere in the cluster, named `name`
    /// in any case.
    fn overlay_named(&self, name: &str) -> Option<String> {
        let here = self.store.networks().ok()?.into_iter().map(|n| n.name);
        let cluster = self.view.iter().flat_map(|v| v.networks.keys().cloned());
        here.chain(cluster).find(|n| n.eq_ignore_ascii_case(name))
    }

    /// The subnets of the bridge network and of every overlay but `net`.
    fn subnets_besides(&self, net: &OverlayNetwork) -> Result<Vec<Ipv4Net>> {
        let overlays = self.store.networks()?;
        Ok(std::iter::once(self.net.subnet.trunc())
            .chain(
                overlays
                    .iter()
                    .chain(self.view.iter().flat_map(|v| v.networks.values()))
                    .filter(|other| other.name != net.name)
                    .map(|other| other.subnet),
            )
            .collect())
    }

    /// Refuses an overlay whose subnet overlaps a route or an address of
    /// this host, or another network (`networks`): its route would replace
    /// theirs, and removing it would take theirs away. (Takes the netlink
    /// handle, not `&self`: API futures must be `Send`.)
    async fn check_overlay_subnet(
        rtnl: &Rtnl,
        net: &OverlayNetwork,
        mut networks: Vec<Ipv4Net>,
    ) -> Result<()> {
        networks.extend(rtnl.networks_in_use(None).await?);
        Ok(ipam::check_subnet(net.subnet, &networks)?)
    }

    /// Removes an overlay network that has no endpoints.
    pub async fn remove_network(&mut self, name: &str) -> Result<()> {
        let net = self.store.network(name)?;
        let mode = Mode::Network(name.to_string());
        if let Some(rec) = self.store.endpoints()?.iter().find(|r| r.ep.mode == mode) {
            return Err(Error::NetworkInUse {
                network: name.to_string(),
                endpoint: rec.ep.name.clone(),
            });
        }
        if self.cfg.store.is_some() {
            // Every host, this one included, drops it on seeing it go.
            self.connected()?.delete_network(&net).await?;
            return self.resync().await.map(drop);
        }
        self.drop_network(&net).await
    }

    /// Forgets overlay `net` on this host.
    async fn drop_network(&mut self, net: &OverlayNetwork) -> Result<()> {
        self.resolver.stop(&net.name);
        self.store.delete_network(&net.name)?;
        self.sync_overlay_routes()?;
        self.rtnl.delete_link(&overlay_bridge(net.vni)).await?;
        info!(network = %net.name, "overlay removed");
        Ok(())
    }

    /// The session with the cluster store, or why there is none.
    fn connected(&self) -> Result<Session> {
        self.session.clone().ok_or_else(|| {
            let url = self.cfg.store.as_ref().map(ToString::to_string);
            ClusterError::Disconnected(url.unwrap_or_default()).into()
        })
    }

    /// A new session with the cluster store, or `None` once it is lost.
    pub fn set_session(&mut self, session: Option<Session>) {
        self.session = session;
    }

    /// Brings this host in line with the cluster store: takes a /24 of
    /// every overlay network there (the one it held before while still
    /// free), takes up networks other hosts created, drops those removed,
    /// and writes the routes to every other host's lease. Returns the
    /// revision of the store it read.
    pub async fn resync(&mut self) -> Result<i64> {
        let started = std::time::Instant::now();
        let resynced = self.resync_with_store().await;
        self.reconciles
            .observe(metrics::Reconcile::Cluster, started.elapsed());
        resynced
    }

    async fn resync_with_store(&mut self) -> Result<i64> {
        let session = self.connected()?;
        let vtep = self.vtep()?;
        let (mut view, mut revision) = session.snapshot().await?;
        let names: Vec<String> = view.networks.keys().cloned().collect();
        for name in names {
            // Another host may take the same /24 first: read again, pick
            // again.
            for _ in 0..CLAIM_ATTEMPTS {
                let Some(net) = view.networks.get(&name) else {
                    break;
                };
                let held = view.held_by(&name, vtep);
                if held.is_some_and(|h| h.session == session.id) {
                    break;
                }
                let previous = match held {
                    Some(h) => Some(h.lease),
                    None => self.store.network_lease(&name)?,
                };
                let taken: Vec<Ipv4Net> = view
                    .holders(&name)
                    .iter()
                    .filter(|h| h.vtep != vtep)
                    .map(|h| h.lease)
                    .collect();
                match overlay::pick_lease(net.subnet, &taken, previous) {
                    Ok(lease) => session.claim(&name, lease, vtep).await?,
                    Err(e) => {
                        warn!(network = %name, "no lease for this host: {e}");
                        break;
                    }
                };
                (view, revision) = session.snapshot().await?;
            }
        }
        self.follow_view(view).await?;
        Ok(revision)
    }

    /// Makes this host's overlays what `view` says.
    async fn follow_view(&mut self, view: ClusterView) -> Result<()> {
        let vtep = self.vtep()?;
        let endpoints = self.store.endpoints()?;
        for net in self.store.networks()? {
            if view.networks.contains_key(&net.name) {
                continue;
            }
            let mode = Mode::Network(net.name.clone());
            match endpoints.iter().find(|r| r.ep.mode == mode) {
                Some(rec) => warn!(
                    network = %net.name,
                    endpoint = %rec.ep.name,
                    "removed from the cluster, kept here while it has endpoints"
                ),
                None => self.drop_network(&net).await?,
            }
        }
        for net in view.networks.values() {
            // Without a lease of its own a host has no part in it yet.
            let Some(own) = view.held_by(&net.name, vtep) else {
                continue;
            };
            if self.store.network_lease(&net.name)?.is_none() {
                let others = self.subnets_besides(net)?;
                let refused = match Self::check_overlay_subnet(&self.rtnl, net, others).await {
                    Ok(()) => self.store.insert_network(net),
                    Err(e) => Err(e),
                };
                if let Err(e) = refused {
                    warn!(network = %net.name, "cannot take up the network: {e}");
                    continue;
                }
                info!(network = %net.name, vni = net.vni, lease = %own.lease, "overlay taken up");
            }
            self.store.set_network_lease(&net.name, own.lease)?;
        }
        self.view = Some(view);
        self.restore_overlays().await
    }

    /// The bridge of overlay `net` on this host (`on_host`), with its
    /// address, its route and its DNS server; the data path's routes are
    /// the caller's to write, once for every overlay it brings up.
    async fn bring_up_overlay(&mut self, net: &OverlayNetwork, on_host: &BridgeNet) -> Result<()> {
        if self.rtnl.link(&on_host.bridge).await?.is_none() {
            self.rtnl.create_bridge(&on_host.bridge).await?;
        }
        let bridge = Self::address_bridge(&self.rtnl, on_host).await?;
        // The data path hands a DF packet too big to encapsulate to the
        // stack, which answers "fragmentation needed" along this route's
        // MTU: endpoints created before the uplink's MTU shrank still find
        // the path MTU, where a drop would be a black hole.
        let mtu = on_host.mtu.expect("overlays have an MTU");
        self.rtnl
            .route_subnet(net.subnet, bridge.index, &on_host.bridge, mtu)
            .await?;
        self.serve_dns(&net.name, on_host.subnet).await;
        // Its gateway is closed to the uplink from now, not from the next
        // housekeeping tick.
        self.sync_host_addrs().await
    }

    /// Gives the bridge of `net` its gateway address and a MAC of its own,
    /// and brings it up. A bridge without a MAC set takes its ports'
    /// lowest, which changes when that port goes: endpoints would keep
    /// sending to the old one until their neighbour entry for the gateway
    /// expires. (Takes the netlink handle, not `&self`: API futures must
    /// be `Send`.)
    async fn address_bridge(rtnl: &Rtnl, net: &BridgeNet) -> Result<Link> {
        let bridge = rtnl
            .link(&net.bridge)
            .await?
            .ok_or_else(|| kernel::Error::InterfaceNotFound(net.bridge.clone()))?;
        rtnl.set_mac(bridge.index, &net.bridge, mac_for(net.gateway))
            .await?;
        rtnl.add_address(
            bridge.index,
            &net.bridge,
            net.gateway,
            net.subnet.prefix_len(),
        )
        .await?;
        rtnl.set_up(bridge.index, &net.bridge).await?;
        Ok(bridge)
    }

    /// Brings up every overlay recorded here (after a restart, before
    /// their endpoints are reconciled; after a change of the cluster or
    /// of the uplink's MTU), and writes the data path's routes once.
    async fn restore_overlays(&mut self) -> Result<()> {
        for net in self.store.networks()? {
            let on_host = self.overlay_bridge_net(&net)?;
            self.bring_up_overlay(&net, &on_host).await?;
        }
        self.sync_overlay_routes()
    }

    /// Writes the routes to every other host's lease of every overlay, and
    /// whether the data path takes VXLAN to this host apart at all. Until
    /// the cluster store was first read, the routes stay as they are.
    fn sync_overlay_routes(&mut self) -> Result<()> {
        let networks = self.store.networks()?;
        if self.cfg.store.is_none() || self.view.is_some() {
            let mut routes = Vec::new();
            for net in &networks {
                routes.extend(overlay::peer_routes(
                    &self.leases(net)?,
                    self.vtep()?,
                    net.vni,
                ));
            }
            self.dp().set_overlay_routes(&routes)?;
        }
        self.net_config.flags = if networks.is_empty() {
            self.net_config.flags & !NET_FLAG_OVERLAY
        } else {
            self.net_config.flags | NET_FLAG_OVERLAY
        };
        let cfg = self.net_config;
        Ok(self.dp().set_config(cfg)?)
    }

    /// One network, as `network inspect` shows it.
    pub fn network(&self, name: &str) -> Result<NetworkInfo> {
        self.networks()?
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| Error::NetworkNotFound(name.to_string()))
    }

    /// Counters of the bridge, the uplink and every endpoint veth, and drops.
    pub fn stats(&self) -> Result<Stats> {
        let dp = self
            .dp
            .as_ref()
            .expect("data path is loaded while the daemon runs");
        let records = self.store.endpoints()?;
        let names = std::iter::once(self.net.bridge.clone())
            .chain(self.uplink.clone())
            .chain(records.iter().filter_map(|r| r.ep.host_veth()));
        let mut interfaces = BTreeMap::new();
        for name in names {
            let counters = InterfaceStats {
                traffic: dp.traffic(&name)?,
                drops: dp.interface_drops(&name)?,
            };
            interfaces.insert(name, counters);
        }
        Ok(Stats {
            interfaces,
            drops: dp.drops()?,
        })
    }

    /// What a Prometheus scrape shows.
    pub fn metrics(&mut self) -> Result<metrics::Snapshot> {
        let records = self.store.endpoints()?;
        let mut endpoints = Vec::new();
        for rec in records.iter().filter(|r| r.ep.host_veth().is_some()) {
            endpoints.push(self.stats_of(rec)?);
        }
        let dp = self
            .dp
            .as_ref()
            .expect("data path is loaded while the daemon runs");
        let mut drops = dp.rule_drops()?;
        let mut ports = Vec::new();
        for rec in &records {
            for p in &rec.ports {
                let (packets, bytes) = dp.nat_counters(p.slot)?;
                ports.push(metrics::PortCounters {
                    labels: metrics::PortLabels {
                        endpoint: rec.ep.name.clone(),
                        protocol: p.proto.to_string(),
                        host_ip: p.host_ip.to_string(),
                        host_port: p.host_ports.to_string(),
                        container_port: p.container_ports.to_string(),
                    },
                    packets,
                    bytes,
                    drops: drops.remove(&p.slot).unwrap_or_default(),
                });
            }
        }
        let tables = vec![
            dp.table_use::<FlowKey, CtEntry>(maps::CONNTRACK)?,
            dp.table_use::<PortKey, PortTarget>(maps::PUBLISHED)?,
        ];
        let mut peers = Vec::new();
        for net in self.networks()? {
            peers.extend(net.peers.into_iter().map(|p| (net.name.clone(), p.state)));
        }
        let dp = self
            .dp
            .as_ref()
            .expect("data path is loaded while the daemon runs");
        Ok(metrics::Snapshot {
            endpoints,
            drops: dp.drops()?,
            ports,
            masquerade: dp.nat_counters(MASQUERADE_SLOT)?,
            masquerade_drops: drops.remove(&MASQUERADE_SLOT).unwrap_or_default(),
            tables,
            peers,
            dns: self.resolver.counts(),
            reconciles: self.reconciles.clone(),
        })
    }

    /// The data path's event maps, for the monitor's relay.
    pub fn take_event_maps(&mut self) -> Result<EventMaps> {
        Ok(self.dp().take_event_maps()?)
    }

    /// Names each event's endpoint: the one behind the interface the packet
    /// arrived on, else the one holding one of its addresses.
    pub fn name_endpoints(&self, events: &mut [(MonitorEvent, Vec<Ipv4Addr>)]) -> Result<()> {
        let records = self.store.endpoints()?;
        for (event, addrs) in events {
            let by_interface = records
                .iter()
                .find(|r| r.ep.host_veth().as_deref() == Some(event.interface.as_str()));
            let by_address = || {
                addrs
                    .iter()
                    .find_map(|a| records.iter().find(|r| r.ep.ip == Some(*a)))
            };
            event.endpoint = by_interface.or_else(by_address).map(|r| r.ep.name.clone());
        }
        Ok(())
    }

    /// One endpoint's counters, from its side: `stats NAME`.
    pub fn endpoint_stats(&self, name: &str) -> Result<EndpointStats> {
        self.stats_of(&self.store.endpoint(name)?)
    }

    fn stats_of(&self, rec: &StoredEndpoint) -> Result<EndpointStats> {
        let Some(veth) = rec.ep.host_veth() else {
            return Err(Error::NotApplicable {
                flag: "stats",
                mode: rec.ep.mode.to_string(),
            });
        };
        let dp = self
            .dp
            .as_ref()
            .expect("data path is loaded while the daemon runs");
        let host_side = dp.traffic(&veth)?;
        Ok(EndpointStats {
            endpoint: rec.ep.name.clone(),
            rx_packets: host_side.tx_packets,
            rx_bytes: host_side.tx_bytes,
            tx_packets: host_side.rx_packets,
            tx_bytes: host_side.rx_bytes,
            drops: dp.interface_drops(&veth)?,
            interface: veth,
        })
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
fn owner_of<'a>(flow: &conntrack::Flow, owners: &'a HashMap<u32, String>) -> Option<&'a String> {
    owners
        .get(&flow.key.saddr_be)
        .or_else(|| owners.get(&flow.entry.daddr_be))
}

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
