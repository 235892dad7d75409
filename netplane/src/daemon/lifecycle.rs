//! The daemon's life: `up` (bring the network up, or adopt what an
//! earlier run left, and reconcile), following the host, and `down`.

use super::{drivers::NetworkDriver, *};

impl Daemon {
    /// GRO on every veth interface of an endpoint an earlier run made,
    /// perhaps without XDP: before the data path may redirect to it.
    fn enable_endpoint_gro(&self, rec: &StoredEndpoint) -> Result<()> {
        let Some(ns) = rec.ep.netns() else {
            return Ok(());
        };
        let ns = netns::open(&ns)?;
        let mut ifnames = Vec::new();
        if rec.ep.host_veth().is_some() && !self.bridge_net_of(&rec.ep.mode)?.macvlan {
            ifnames.push(rec.ep.first_ifname());
        }
        for att in &rec.attachments {
            if !self.bridge_net_of(&att.mode())?.macvlan {
                ifnames.push(endpoint::interface_name(att.seq));
            }
        }
        for ifname in ifnames {
            netns::enable_gro(&ns, &ifname)?;
        }
        Ok(())
    }

    /// Validates the settings against the store and the host, then brings
    /// the network up (or adopts what an earlier run left), reverting what it
    /// did if a step fails.
    pub async fn start(cfg: Config) -> Result<Self> {
        // Waits up to a second for a daemon killed just before to let go:
        // on a blocking thread, not an async worker.
        let lock = tokio::task::spawn_blocking(DaemonLock::acquire)
            .await
            .map_err(|e| Error::io("wait for", "the daemon lock", std::io::Error::other(e)))??;
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
        let ipv6 = Self::bridge_ipv6(&cfg, &store)?;
        let net = BridgeNet {
            bridge: cfg.bridge.clone(),
            subnet: Ipv4Net::new(pool.gateway, subnet.prefix_len()).expect("prefix of a valid net"),
            gateway: pool.gateway,
            mtu: None,
            vni: 0,
            macvlan: false,
            ipv6,
        };

        let upstream = if cfg.dns.is_empty() {
            dns::upstream_servers(&host::host_resolv_conf())
        } else {
            cfg.dns.clone()
        };
        if cfg.userland_proxy {
            warn!(
                "--userland-proxy: published ports are relayed by the daemon; endpoints see \
                 the host as every client (unless --proxy-protocol) and nat ls counts \
                 connections and bytes, not packets"
            );
        }
        let mut undo = Vec::new();
        let mut daemon = Daemon {
            forwarder: Forwarder::new(cfg.proxy_max_connections, cfg.timeouts.udp),
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
            parent_macs: BTreeMap::new(),
            resolver: Resolver::new(upstream),
            reconciles: metrics::ReconcileDurations::default(),
            reserved: Reservations::default(),
            xdp: XdpAttached::Off,
            names_published: tokio::sync::watch::Sender::new(BTreeMap::new()),
            name_clashes: BTreeMap::new(),
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

    /// The bridge network's IPv6 side: the one recorded, which a later
    /// `up` keeps (as it keeps the subnet), else the one `--ipv6` asks for.
    fn bridge_ipv6(cfg: &Config, store: &Store) -> Result<Option<crate::logic::network::Ipv6Side>> {
        let stored = store
            .meta(meta::SUBNET6)?
            .map(|s| {
                s.parse::<ipnet::Ipv6Net>().map_err(|_| {
                    Error::Corrupt(format!("unreadable IPv6 subnet {s:?} in the meta table"))
                })
            })
            .transpose()?;
        let subnet = match (stored, cfg.subnet6) {
            (Some(s), Some(want)) if s != want => {
                return Err(Error::ConfigChanged {
                    what: "IPv6 subnet",
                    stored: s.to_string(),
                    dir: cfg.state_dir.clone(),
                });
            }
            (Some(s), _) => s,
            (None, _) if !cfg.ipv6 => return Ok(None),
            (None, Some(want)) => want.trunc(),
            (None, None) => ipam::pick_ula(&cfg.bridge, &[]).ok_or(Error::NoFreeSubnet)?,
        };
        let pool = Pool::new(subnet)?;
        Ok(Some(crate::logic::network::Ipv6Side {
            subnet,
            gateway: pool.gateway,
            routed: false,
        }))
    }

    pub(super) async fn bring_up(
        &mut self,
        create_bridge: bool,
        undo: &mut Vec<Undo>,
    ) -> Result<()> {
        let net = self.net.clone();
        if create_bridge {
            self.rtnl.create_bridge(&net.bridge).await?;
            undo.push(Undo::DeleteLink(net.bridge.clone()));
        }
        let bridge = self.bridge_driver().setup(&self.rtnl).await?;
        self.serve_dns(endpoint::BRIDGE_NETWORK, &net).await;

        if self.store.meta(meta::IP_FORWARD_BEFORE)?.is_none() {
            let before = host::read_sysctl(host::IP_FORWARD)?;
            self.store.set_meta(meta::IP_FORWARD_BEFORE, &before)?;
            undo.push(Undo::RestoreIpForward(before));
        }
        host::write_sysctl(host::IP_FORWARD, "1")?;
        // The data path asks the FIB about IPv6 as if the bridge forwarded;
        // the bridge is netplane's, and goes with `down`.
        host::enable_ipv6_forwarding(&net.bridge)?;

        if let Some(mounted) = host::ensure_bpffs(&self.cfg.bpffs)? {
            self.store
                .set_meta(meta::BPFFS_MOUNTED, &mounted.to_string_lossy())?;
            undo.push(Undo::Unmount(mounted));
        }
        self.net_config = self.build_net_config(&bridge).await?;
        let uplink_kind = match &self.uplink {
            Some(uplink) => {
                let link = self.rtnl.link(uplink).await?;
                self.uplink_mtu = link.as_ref().and_then(|l| l.mtu).unwrap_or(DEFAULT_MTU);
                link.and_then(|l| l.kind)
            }
            None => None,
        };
        match Datapath::load(&self.cfg.bpffs, self.net_config, self.cfg.ct_max) {
            Ok(dp) => self.start_datapath(dp, uplink_kind.as_deref())?,
            Err(e) if self.cfg.userland_proxy => self.go_without_datapath(e)?,
            Err(e) => return Err(Error::DatapathUnavailable(e)),
        }
        self.sync_host_addrs().await?;
        self.restore_overlays().await?;
        self.restore_local_networks().await?;
        self.store.set_meta(meta::BRIDGE, &net.bridge)?;
        self.store
            .set_meta(meta::SUBNET, &net.subnet.trunc().to_string())?;
        if let Some(v6) = net.ipv6 {
            self.store.set_meta(meta::SUBNET6, &v6.subnet.to_string())?;
        }
        let reconciling = std::time::Instant::now();
        self.reconcile().await?;
        self.reconciles
            .observe(metrics::Reconcile::Up, reconciling.elapsed());
        self.tell_datapath(Datapath::finish_migration)
    }

    /// Hangs the loaded data path `dp` on the bridge, the uplink (whose
    /// link kind is `uplink_kind`) and the cgroup's sockets.
    fn start_datapath(&mut self, mut dp: Datapath, uplink_kind: Option<&str>) -> Result<()> {
        dp.use_hook(self.tc_hook);
        dp.set_ct_timeouts(self.cfg.timeouts.to_abi())?;
        dp.attach(&self.net.bridge, Role::Counted)?;
        if let Some(uplink) = &self.uplink {
            if dp.attach(uplink, Role::Uplink)? {
                self.store.set_meta(meta::CLSACT_ADDED, uplink)?;
            }
            let xdp = self.cfg.xdp.for_uplink(uplink_kind);
            if xdp != self.cfg.xdp {
                info!(
                    uplink = %uplink,
                    kind = uplink_kind.unwrap_or_default(),
                    "--xdp auto: XDP stays off on a virtual uplink, whose senders may leave checksums partial"
                );
            }
            self.xdp = dp.attach_xdp(uplink, xdp)?;
        }
        dp.reset_nat_counters(MASQUERADE_SLOT)?;
        dp.attach_sockets(&host::cgroup2_root()?)?;
        self.dp = Some(dp);
        // An earlier run without the data path left its rules: the data
        // path does all they did.
        if self.store.meta(meta::FIREWALL)?.is_some() {
            kernel::nft::apply(&firewall::removal())?;
            self.store.delete_meta(meta::FIREWALL)?;
        }
        Ok(())
    }

    /// `--userland-proxy` where the data path did not load (`why`): the
    /// forwarder serves every published port, nftables masquerades and
    /// keeps networks apart, and the log says what is lost. Refuses what
    /// only the data path does.
    fn go_without_datapath(&mut self, why: kernel::Error) -> Result<()> {
        if !self.cfg.icc {
            return Err(Error::NeedsDatapath {
                what: "--icc=false",
            });
        }
        if !self.store.networks()?.is_empty() {
            return Err(Error::NeedsDatapath {
                what: "an overlay network (one is recorded here)",
            });
        }
        warn!(
            "the eBPF data path did not load ({why}); --userland-proxy runs without it. Lost: \
             endpoints see the host instead of the client behind a published port (unless \
             --proxy-protocol); no per-packet counters (stats, ct ls, monitor; nat ls counts \
             the forwarder's connections and bytes); no anti-spoofing of endpoints' and \
             macvlan sources; overlay networks and --icc=false are refused. Masquerade and \
             network isolation are nftables rules (table inet {})",
            firewall::TABLE
        );
        self.sync_firewall()
    }

    pub(super) async fn revert(&self, step: Undo) -> kernel::Result<()> {
        match step {
            Undo::DeleteLink(name) => self.rtnl.delete_link(&name).await,
            Undo::RestoreIpForward(v) => host::write_sysctl(host::IP_FORWARD, &v),
            Undo::Unmount(p) => host::unmount_bpffs(&p),
        }
    }

    pub(super) async fn build_net_config(&self, bridge: &Link) -> Result<NetConfig> {
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
            if let Ok(driver) = self.overlay_driver(&net) {
                gateways.push(driver.on_host.gateway);
            }
        }
        // A macvlan network's gateway is a router of its parent's network.
        gateways.extend(
            self.store
                .local_networks()?
                .iter()
                .filter(|n| n.spec.parent().is_none())
                .map(|n| n.spec.gateway),
        );
        self.tell_datapath(|dp| dp.set_host_addrs(&addrs, &gateways))?;
        self.sync_host_addrs6().await
    }

    /// The same for IPv6, with the uplink's address NAT66 masquerades to:
    /// a global one rather than a unique local one, as source address
    /// selection would pick.
    async fn sync_host_addrs6(&mut self) -> Result<()> {
        let addrs = self.rtnl.addresses6().await?;
        let uplink_index = match &self.uplink {
            Some(name) => self.rtnl.link(name).await?.map(|l| l.index),
            None => None,
        };
        let uplink = host_addr6_for_masquerade(
            addrs
                .iter()
                .filter(|(_, index)| Some(*index) == uplink_index)
                .map(|(a, _)| *a),
        );
        let gateways: Vec<std::net::Ipv6Addr> = self
            .net
            .ipv6
            .iter()
            .map(|v6| v6.gateway)
            .chain(
                self.store
                    .local_networks()?
                    .iter()
                    .filter_map(|n| n.spec.ipv6.map(|v6| v6.gateway)),
            )
            .collect();
        let addrs: Vec<std::net::Ipv6Addr> = addrs.into_iter().map(|(a, _)| a).collect();
        self.tell_datapath(|dp| dp.set_host_addrs6(&addrs, &gateways, uplink))
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

    /// How often [`counters::collect_garbage`] should run: often enough for
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

    /// Brings the kernel in line with the store after a restart: finishes
    /// interrupted removals, undoes interrupted creations, rebuilds endpoints
    /// whose kernel objects went missing, swaps the new programs into the
    /// pinned links of the others, and removes veths no record owns.
    pub(super) async fn reconcile(&mut self) -> Result<()> {
        let records = self.store.endpoints()?;
        for rec in &records {
            match rec.state {
                State::Creating | State::Removing => {
                    info!(endpoint = %rec.ep.name, state = ?rec.state, "finishing interrupted operation: removing");
                    self.teardown(&rec.ep).await?;
                    self.store.delete_endpoint(&rec.ep.name)?;
                }
                State::Ready if self.is_intact(&rec.ep).await? => {
                    if self.xdp != XdpAttached::Off {
                        self.enable_endpoint_gro(rec)?;
                    }
                    // The new programs on every veth (macvlan interfaces
                    // have none: their parent's way out checks them).
                    if let (Some(veth), Some(ip), Some(mac)) =
                        (rec.ep.host_veth(), rec.ep.ip, rec.ep.mac())
                        && let net = self.bridge_net_of(&rec.ep.mode)?
                        && !net.macvlan
                    {
                        self.kernel_steps()
                            .attach_endpoint(&veth, ip, rec.ep.ip6, mac, net.vni)?;
                    }
                    for att in &rec.attachments {
                        let net = self.bridge_net_of(&att.mode())?;
                        if !net.macvlan {
                            let veth = att.host_veth(&rec.ep);
                            self.kernel_steps().attach_endpoint(
                                &veth,
                                att.ip,
                                att.ip6,
                                mac_for(att.ip),
                                net.vni,
                            )?;
                        }
                    }
                    self.hold_published(&rec.ep, &rec.ports);
                    self.publish(&rec.ep, &rec.ports)?;
                }
                // The runtime removed the container while the daemon was
                // down: its DEL will find nothing to do.
                State::Ready
                    if rec.ep.netns().is_some_and(|ns| !netns::is_mounted(&ns))
                        && rec.ep.sandbox.is_some() =>
                {
                    info!(endpoint = %rec.ep.name, "container runtime's namespace gone: removing");
                    self.teardown(&rec.ep).await?;
                    self.store.delete_endpoint(&rec.ep.name)?;
                }
                State::Ready => {
                    warn!(endpoint = %rec.ep.name, "kernel objects missing: rebuilding");
                    self.teardown(&rec.ep).await?;
                    self.apply_plan(&rec.ep).await?;
                    self.hold_published(&rec.ep, &rec.ports);
                    self.publish(&rec.ep, &rec.ports)?;
                }
            }
        }
        let owned: Vec<String> = self
            .store
            .endpoints()?
            .iter()
            .flat_map(|r| {
                let connected = r.attachments.iter().map(|a| a.host_veth(&r.ep));
                r.ep.host_veth().into_iter().chain(connected)
            })
            .collect();
        for link in self.rtnl.links().await? {
            if link.name.starts_with(HOST_VETH_PREFIX) && !owned.contains(&link.name) {
                info!(link = %link.name, "removing veth no endpoint owns");
                self.tell_datapath(|dp| dp.detach(&link.name))?;
                self.rtnl.delete_link(&link.name).await?;
            }
        }
        self.endpoints_changed()
    }

    pub(super) async fn is_intact(&self, ep: &endpoint::Endpoint) -> Result<bool> {
        if let Some(path) = ep.netns()
            && !netns::is_mounted(&path)
        {
            return Ok(false);
        }
        match ep.host_veth() {
            Some(_) if self.bridge_net_of(&ep.mode)?.macvlan => Ok(true),
            Some(veth) => Ok(self.rtnl.link(&veth).await?.is_some()),
            None => Ok(true),
        }
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
        // What a daemon without a data path made goes down the same way.
        cfg.userland_proxy = true;
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
                let r = self.remove_any(&rec.ep.name, true).await.map(drop);
                note(r);
            }
        }
        if let Some(mut dp) = self.dp.take() {
            let parents = self
                .parent_macs
                .keys()
                .filter(|p| self.uplink.as_ref() != Some(*p));
            for hooked in self.uplink.iter().chain(parents) {
                note(dp.detach(hooked).map_err(Error::from));
            }
            note(dp.remove_pins().map_err(Error::from));
        }
        if self.store.meta(meta::FIREWALL)?.is_some() {
            note(kernel::nft::apply(&firewall::removal()).map_err(Error::from));
        }
        if let Some(uplink) = self.store.meta(meta::CLSACT_ADDED)? {
            note(self.rtnl.delete_clsact(&uplink).await.map_err(Error::from));
        }
        if let Some(session) = self.session.take() {
            // The other hosts drop this one now, not when its keys expire.
            note(session.close().await.map_err(Error::from));
        }
        for net in self.store.networks()? {
            match self.overlay_driver(&net) {
                Ok(driver) => note(driver.teardown(&self.rtnl).await),
                // Without a lease here, it was never set up here.
                Err(e) => warn!("down: network {}: {e}", net.name),
            }
        }
        for net in self.store.local_networks()? {
            note(self.local_driver(&net).teardown(&self.rtnl).await);
        }
        note(self.bridge_driver().teardown(&self.rtnl).await);
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
            tc_hook: match self.dp {
                Some(_) => self.tc_hook.name().into(),
                None => "none".into(),
            },
            datapath: match self.dp {
                Some(_) => "ebpf".into(),
                None => "none".into(),
            },
            userland_proxy: self.cfg.userland_proxy,
            xdp: self.xdp.name().into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// Of an interface's global IPv6 addresses, the one to masquerade to: a
/// global unicast one before a unique local one (fc00::/7).
fn host_addr6_for_masquerade(
    addrs: impl Iterator<Item = std::net::Ipv6Addr>,
) -> Option<std::net::Ipv6Addr> {
    addrs.min_by_key(|a| a.is_unique_local())
}
