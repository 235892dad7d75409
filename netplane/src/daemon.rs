//! The daemon: brings the bridge network up, realises endpoint plans with
//! rollback, reconciles its store with the kernel after a restart, and tears
//! everything down on `netplane down`.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use netplane_common::abi::{NET_FLAG_ICC_DISABLED, NetConfig};
use tracing::{info, warn};

use crate::{
    api::{CreateEndpoint, DaemonInfo, EndpointInfo, HostBinding, NetworkInfo, NetworkSettings},
    endpoint::{
        self, BridgeNet, ENDPOINT_IFNAME, HOST_VETH_PREFIX, LinkedHost, Mode, Step, format_mac,
        mac_for,
    },
    error::{Error, Result},
    ipam::{self, Pool},
    portspec::{self, PortSpec},
    store::{NewEndpoint, State, Store, StoredEndpoint},
    sys::{
        datapath::{Datapath, Role, Traffic},
        host::{self, DaemonLock},
        netlink::Rtnl,
        netns,
    },
};

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
}

impl Config {
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
}

/// Something `up` changed, to be reverted if a later step fails.
#[derive(Debug)]
enum Undo {
    DeleteLink(String),
    RestoreIpForward(String),
    Unmount(PathBuf),
}

/// The running daemon's state.
#[derive(Debug)]
pub struct Daemon {
    cfg: Config,
    store: Store,
    rtnl: Rtnl,
    dp: Option<Datapath>,
    net: BridgeNet,
    uplink: Option<String>,
    _lock: DaemonLock,
}

impl Daemon {
    /// Validates the settings against the store and the host, then brings
    /// the network up (or adopts what an earlier run left), reverting what it
    /// did if a step fails.
    pub async fn start(cfg: Config) -> Result<Self> {
        let lock = DaemonLock::acquire()?;
        for dir in [&cfg.state_dir, &cfg.run_dir] {
            fs::create_dir_all(dir).map_err(|e| Error::io("create", dir.display(), e))?;
        }
        let store = Store::open(&cfg.db())?;
        let rtnl = Rtnl::current()?;

        let stored_bridge = store.meta(meta::BRIDGE)?;
        let stored_subnet = store
            .meta(meta::SUBNET)?
            .map(|s| s.parse::<Ipv4Net>())
            .transpose()
            .ok()
            .flatten();
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
            return Err(Error::Foreign(format!("bridge {}", cfg.bridge)));
        }
        let uplink = match &cfg.uplink {
            Some(u) => Some(
                rtnl.link(u)
                    .await?
                    .ok_or_else(|| Error::InterfaceNotFound(u.clone()))?
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
                if let Some(other) = in_use.iter().find(|u| ipam::overlaps(&want, u)) {
                    return Err(Error::SubnetOverlaps {
                        subnet: want,
                        other: *other,
                    });
                }
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
        };

        let mut undo = Vec::new();
        let mut daemon = Daemon {
            cfg,
            store,
            rtnl,
            dp: None,
            net,
            uplink,
            _lock: lock,
        };
        match daemon.bring_up(existing_bridge.is_none(), &mut undo).await {
            Ok(()) => Ok(daemon),
            Err(e) => {
                warn!("netplane up failed, reverting: {e}");
                if let Some(dp) = daemon.dp.take() {
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
        let bridge = self
            .rtnl
            .link(&net.bridge)
            .await?
            .ok_or_else(|| Error::InterfaceNotFound(net.bridge.clone()))?;
        self.rtnl
            .add_address(
                bridge.index,
                &net.bridge,
                net.gateway,
                net.subnet.prefix_len(),
            )
            .await?;
        self.rtnl.set_up(bridge.index, &net.bridge).await?;

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
        let mut dp = Datapath::load(&self.cfg.bpffs, self.net_config())?;
        dp.attach(&net.bridge, Role::Counted)?;
        if let Some(uplink) = &self.uplink {
            dp.attach(uplink, Role::Counted)?;
        }
        self.dp = Some(dp);
        self.store.set_meta(meta::BRIDGE, &net.bridge)?;
        self.store
            .set_meta(meta::SUBNET, &net.subnet.trunc().to_string())?;
        self.reconcile().await
    }

    async fn revert(&self, step: Undo) -> Result<()> {
        match step {
            Undo::DeleteLink(name) => self.rtnl.delete_link(&name).await,
            Undo::RestoreIpForward(v) => host::write_sysctl(host::IP_FORWARD, &v),
            Undo::Unmount(p) => host::unmount_bpffs(&p),
        }
    }

    fn net_config(&self) -> NetConfig {
        NetConfig {
            subnet_be: u32::from(self.net.subnet.network()).to_be(),
            mask_be: u32::from(self.net.subnet.netmask()).to_be(),
            gateway_be: u32::from(self.net.gateway).to_be(),
            flags: if self.cfg.icc {
                0
            } else {
                NET_FLAG_ICC_DISABLED
            },
        }
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
                    if let Some(veth) = rec.ep.host_veth() {
                        self.dp().attach(&veth, Role::Endpoint)?;
                    }
                }
                State::Ready => {
                    warn!(endpoint = %rec.ep.name, "kernel objects missing: rebuilding");
                    self.teardown(&rec.ep).await?;
                    self.apply_plan(&rec.ep).await?;
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
        Ok(())
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

    fn plan(&self, ep: &endpoint::Endpoint) -> Vec<Step> {
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
        endpoint::plan(
            &self.resolved(ep),
            &self.net,
            &host::host_resolv_conf(),
            &links,
        )
    }

    /// Applies the plan of `ep`; on failure undoes the applied steps.
    async fn apply_plan(&mut self, ep: &endpoint::Endpoint) -> Result<()> {
        let steps = self.plan(ep);
        for (done, step) in steps.iter().enumerate() {
            if let Err(e) = self.apply(step).await {
                for applied in steps[..=done].iter().rev() {
                    if let Err(u) = self.undo(applied).await {
                        warn!("rolling back {}: {u}", ep.name);
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Undoes every step of the plan of `ep`, continuing past failures and
    /// returning the first.
    async fn teardown(&mut self, ep: &endpoint::Endpoint) -> Result<()> {
        let mut first = None;
        for step in self.plan(ep).iter().rev() {
            if let Err(e) = self.undo(step).await {
                warn!("removing {}: {e}", ep.name);
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    async fn apply(&mut self, step: &Step) -> Result<()> {
        match step {
            Step::Netns { name } => {
                let path = netns::create(name)?;
                Rtnl::in_netns(&netns::open(&path)?)?.loopback_up().await
            }
            Step::ShareNetns { name, from } => netns::share(name, &netns::path(from)).map(drop),
            Step::Veth {
                host,
                netns: ns,
                ip,
                prefix_len,
                gateway,
                bridge,
            } => {
                let ns_file = netns::open(&netns::path(ns))?;
                let peer = format!("{host}p");
                self.rtnl.create_veth(host, &peer, bridge, &ns_file).await?;
                Rtnl::in_netns(&ns_file)?
                    .configure_endpoint(
                        &peer,
                        ENDPOINT_IFNAME,
                        mac_for(*ip),
                        *ip,
                        *prefix_len,
                        *gateway,
                    )
                    .await
            }
            Step::AttachDatapath { ifname } => self.dp().attach(ifname, Role::Endpoint),
            Step::EtcFiles {
                name,
                hosts,
                resolv,
            } => host::write_etc_files(name, hosts, resolv),
        }
    }

    async fn undo(&mut self, step: &Step) -> Result<()> {
        match step {
            Step::Netns { name } | Step::ShareNetns { name, .. } => netns::delete(name),
            Step::Veth { host, .. } => self.rtnl.delete_link(host).await,
            Step::AttachDatapath { ifname } => self.dp().detach(ifname),
            Step::EtcFiles { name, .. } => host::remove_etc_files(name),
        }
    }

    /// Validates a create request, records the endpoint, applies its plan.
    pub async fn create(&mut self, req: CreateEndpoint) -> Result<EndpointInfo> {
        endpoint::validate_name(&req.name)?;
        let mode: Mode = req.net.parse()?;
        if let Some(h) = &req.hostname {
            endpoint::validate_name(h)?;
        }
        let specs = req
            .publish
            .iter()
            .map(|s| s.parse::<PortSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        if mode != Mode::Bridge {
            if req.ip.is_some() {
                return Err(Error::NotApplicable {
                    flag: "--ip",
                    mode: mode.to_string(),
                });
            }
            if !specs.is_empty() {
                return Err(Error::NotApplicable {
                    flag: "-p",
                    mode: mode.to_string(),
                });
            }
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
        for link in &req.links {
            let (other, alias) = endpoint::parse_link(link);
            endpoint::validate_name(alias)?;
            ready(other).ok_or_else(|| Error::EndpointNotFound(other.to_string()))?;
        }
        let local: Vec<Ipv4Addr> = self
            .rtnl
            .addresses()
            .await?
            .iter()
            .map(|(n, _)| n.addr())
            .collect();
        if let Some(ip) = specs
            .iter()
            .filter_map(|s| s.host_ip)
            .find(|ip| !ip.is_loopback() && !local.contains(ip))
        {
            return Err(Error::HostIpNotLocal(ip));
        }
        let taken: Vec<_> = records
            .iter()
            .flat_map(|r| r.ports.iter().map(|p| (r.ep.name.clone(), *p)))
            .collect();
        let ports = portspec::assign_host_ports(&specs, &taken, host::ephemeral_ports()?)?;
        let pool = Pool::new(self.net.subnet)?;
        let ep = self.store.insert_endpoint(
            NewEndpoint {
                name: &req.name,
                mode: &mode,
                ip: req.ip,
                hostname: req.hostname.as_deref(),
                ports: &ports,
                links: &req.links,
            },
            (mode == Mode::Bridge).then_some(&pool),
        )?;
        if let Err(e) = self.apply_plan(&ep).await {
            self.store.delete_endpoint(&ep.name)?;
            return Err(e);
        }
        self.store.set_state(&ep.name, State::Ready)?;
        info!(endpoint = %ep.name, mode = %ep.mode, ip = ?ep.ip, "created");
        self.inspect(&ep.name)
    }

    /// Removes an endpoint and every endpoint sharing its namespace.
    pub async fn remove(&mut self, name: &str) -> Result<()> {
        let records = self.store.endpoints()?;
        let rec = records
            .iter()
            .find(|r| r.ep.name == name)
            .ok_or_else(|| Error::EndpointNotFound(name.into()))?;
        for dependent in records
            .iter()
            .filter(|r| r.ep.mode == Mode::Container(name.to_string()))
        {
            Box::pin(self.remove(&dependent.ep.name)).await?;
        }
        self.store.set_state(name, State::Removing)?;
        self.teardown(&rec.ep).await?;
        self.store.delete_endpoint(name)?;
        info!(endpoint = %name, "removed");
        Ok(())
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
                let r = self.remove(&rec.ep.name).await;
                note(r);
            }
        }
        if let Some(dp) = self.dp.take() {
            note(dp.remove_pins());
        }
        note(self.rtnl.delete_link(&self.net.bridge).await);
        if let Some(before) = self.store.meta(meta::IP_FORWARD_BEFORE)? {
            note(host::write_sysctl(host::IP_FORWARD, &before));
        }
        if let Some(mounted) = self.store.meta(meta::BPFFS_MOUNTED)? {
            note(host::unmount_bpffs(Path::new(&mounted)));
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
        }
    }

    /// `ep` with the address it has in the kernel: a `container:` endpoint
    /// has the address of the endpoint whose namespace it shares.
    fn resolved(&self, ep: &endpoint::Endpoint) -> endpoint::Endpoint {
        let mut ep = ep.clone();
        if let Mode::Container(other) = &ep.mode {
            ep.ip = self.store.endpoint(other).ok().and_then(|o| o.ep.ip);
        }
        ep
    }

    fn to_info(&self, rec: &StoredEndpoint) -> EndpointInfo {
        let ep = &self.resolved(&rec.ep);
        let bridged = matches!(ep.mode, Mode::Bridge | Mode::Container(_)) && ep.ip.is_some();
        let mut ports: BTreeMap<String, Vec<HostBinding>> = BTreeMap::new();
        for p in &rec.ports {
            for (i, cport) in (p.container_ports.start..=p.container_ports.end).enumerate() {
                ports
                    .entry(format!("{cport}/{}", p.proto))
                    .or_default()
                    .push(HostBinding {
                        host_ip: p.host_ip.to_string(),
                        host_port: (usize::from(p.host_ports.start) + i).to_string(),
                    });
            }
        }
        EndpointInfo {
            name: ep.name.clone(),
            mode: ep.mode.to_string(),
            hostname: ep.hostname.clone(),
            links: rec.links.clone(),
            network_settings: NetworkSettings {
                sandbox_key: match ep.netns_name() {
                    Some(n) => netns::path(n).to_string_lossy().into_owned(),
                    None => self.info().netns,
                },
                ip_address: ep
                    .ip
                    .filter(|_| bridged)
                    .map(|ip| ip.to_string())
                    .unwrap_or_default(),
                ip_prefix_len: if bridged {
                    self.net.subnet.prefix_len()
                } else {
                    0
                },
                gateway: if bridged {
                    self.net.gateway.to_string()
                } else {
                    String::new()
                },
                mac_address: ep
                    .ip
                    .filter(|_| bridged)
                    .map(|ip| format_mac(&mac_for(ip)))
                    .unwrap_or_default(),
                ports,
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
            },
            simple("host", "host", members(&|m| *m == Mode::Host)),
            simple("none", "null", members(&|m| *m == Mode::None)),
        ])
    }

    /// Counters of the bridge, the uplink and every endpoint veth, and drops.
    pub fn stats(&self) -> Result<crate::api::Stats> {
        let dp = self
            .dp
            .as_ref()
            .expect("data path is loaded while the daemon runs");
        let mut interfaces: BTreeMap<String, Traffic> = BTreeMap::new();
        let records = self.store.endpoints()?;
        let names = std::iter::once(self.net.bridge.clone())
            .chain(self.uplink.clone())
            .chain(records.iter().filter_map(|r| r.ep.host_veth()));
        for name in names {
            interfaces.insert(name.clone(), dp.traffic(&name)?);
        }
        Ok(crate::api::Stats {
            interfaces,
            drops: dp.drops()?,
        })
    }
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
