//! Networks: the bridge network and overlay networks, their bridges,
//! routes and DNS servers, and following the cluster store.

use super::{
    drivers::{self, NetworkDriver},
    local_networks, *,
};
use crate::logic::network::LocalDriver;

impl Daemon {
    /// Serves the DNS of `network`, attached at `net`, on its gateway's
    /// addresses; if the port is taken, its endpoints keep the host's
    /// resolvers.
    pub(super) async fn serve_dns(&mut self, network: &str, net: &BridgeNet) {
        let subnet6 = net.ipv6.map(|v6| {
            ipnet::Ipv6Net::new(v6.gateway, v6.subnet.prefix_len()).expect("a valid prefix")
        });
        if let Err(e) = self.resolver.serve(network, net.subnet, subnet6).await {
            warn!(
                network,
                "no embedded DNS, endpoints use the host's resolvers: {e}"
            );
        }
    }

    /// `GET /v1/networks`: the built-in ones, then local networks, then
    /// overlays.
    pub fn networks(&self) -> Result<Vec<NetworkInfo>> {
        let records = self.store.endpoints()?;
        let members = |mode: &Mode| local_networks::members(&records, mode);
        let names = |members: &[local_networks::Member<'_>]| -> Vec<String> {
            members.iter().map(|(r, _)| r.ep.name.clone()).collect()
        };
        let builtin = |name: &str, driver: &str, mode: Mode| -> Result<NetworkInfo> {
            Ok(NetworkInfo {
                name: name.into(),
                id: self.store.builtin_uid(name)?,
                driver: driver.into(),
                scope: "local".into(),
                endpoints: names(&members(&mode)),
                ..NetworkInfo::default()
            })
        };
        let on_bridge = members(&Mode::Bridge);
        let mut all = vec![
            NetworkInfo {
                bridge: Some(self.net.bridge.clone()),
                subnet: Some(self.net.subnet.trunc().to_string()),
                gateway: Some(self.net.gateway.to_string()),
                icc: Some(self.cfg.icc),
                ipam: local_networks::ipam_of(
                    self.net.subnet,
                    self.net.gateway,
                    None,
                    self.net.ipv6,
                ),
                enable_ipv6: self.net.ipv6.is_some(),
                containers: local_networks::containers(&on_bridge, self.net.subnet.prefix_len()),
                ..builtin(endpoint::BRIDGE_NETWORK, "bridge", Mode::Bridge)?
            },
            builtin("host", "host", Mode::Host)?,
            builtin("none", "null", Mode::None)?,
        ];
        for net in self.store.local_networks()? {
            all.push(self.local_network_info(&net, &records));
        }
        let state = match (&self.cfg.store, &self.session) {
            (None, _) => "static",
            (Some(_), Some(_)) => "registered",
            (Some(_), None) => "last known",
        };
        for net in self.store.networks()? {
            let (Ok(driver), Ok(leases)) = (self.overlay_driver(&net), self.leases(&net)) else {
                continue;
            };
            let on_host = driver.on_host;
            let here = members(&Mode::Network(net.name.clone()));
            all.push(NetworkInfo {
                name: net.name.clone(),
                // The same on every host.
                id: format!("{:064x}", net.vni),
                driver: "overlay".into(),
                scope: "global".into(),
                bridge: Some(on_host.bridge),
                subnet: Some(net.subnet.to_string()),
                gateway: Some(on_host.gateway.to_string()),
                ipam: local_networks::ipam_of(net.subnet, on_host.gateway, None, None),
                endpoints: names(&here),
                containers: local_networks::containers(&here, on_host.subnet.prefix_len()),
                vni: Some(net.vni),
                encap: Some(net.encap),
                name_clashes: self
                    .name_clashes
                    .get(&net.name)
                    .cloned()
                    .unwrap_or_default(),
                lease: Some(on_host.subnet.trunc().to_string()),
                peers: leases
                    .iter()
                    .map(|(vtep, lease)| PeerInfo {
                        vtep: vtep.to_string(),
                        lease: lease.to_string(),
                        state: state.into(),
                    })
                    .collect(),
                ..NetworkInfo::default()
            });
        }
        Ok(all)
    }

    /// This host's VTEP: the uplink's address.
    pub(super) fn vtep(&self) -> Result<Ipv4Addr> {
        match addr_from_be(self.net_config.uplink_addr_be) {
            Ipv4Addr::UNSPECIFIED => Err(Error::NoVtep),
            vtep => Ok(vtep),
        }
    }

    /// The hosts of overlay `net`, this one first, with the /24 each
    /// holds: computed from the static peers, or as the cluster store last
    /// said, with this host's own lease as it recorded it.
    pub(super) fn leases(&self, net: &OverlayNetwork) -> Result<Vec<(Ipv4Addr, Ipv4Net)>> {
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
            .flat_map(|(view, _)| view.holders(&net.name))
            .filter(|h| h.vtep != vtep)
            .map(|h| (h.vtep, h.lease));
        Ok(std::iter::once((vtep, own)).chain(others).collect())
    }

    /// The driver of overlay `net` on this host: a bridge at the first
    /// address of this host's lease, endpoints with room left for the
    /// encapsulation.
    pub(super) fn overlay_driver(&self, net: &OverlayNetwork) -> Result<drivers::Overlay> {
        let (_, lease) = self.leases(net)?[0];
        let gateway = lease.hosts().next().expect("a /24 has hosts");
        Ok(drivers::Overlay {
            network: net.clone(),
            on_host: BridgeNet {
                bridge: overlay_bridge(net.vni),
                subnet: Ipv4Net::new(gateway, lease.prefix_len()).expect("prefix of a valid net"),
                gateway,
                mtu: Some(net.encap.endpoint_mtu(self.uplink_mtu)),
                vni: net.vni,
                macvlan: false,
                ipv6: None,
            },
        })
    }

    /// The default bridge network's driver.
    pub(super) fn bridge_driver(&self) -> drivers::Bridge {
        drivers::Bridge {
            net: BridgeNet {
                mtu: endpoint::bridge_endpoint_mtu(self.uplink_mtu),
                ..self.net.clone()
            },
        }
    }

    /// The driver of the network an endpoint attached in `mode` joins.
    pub(super) fn driver_of(&self, mode: &Mode) -> Result<Box<dyn NetworkDriver>> {
        Ok(match mode {
            Mode::Network(name) => match self.store.local_network(name)? {
                Some(net) => Box::new(self.local_driver(&net)),
                None => Box::new(self.overlay_driver(&self.store.network(name)?)?),
            },
            _ => Box::new(self.bridge_driver()),
        })
    }

    /// The bridge an endpoint attached in `mode` joins.
    pub(super) fn bridge_net_of(&self, mode: &Mode) -> Result<BridgeNet> {
        Ok(self.driver_of(mode)?.attachment().clone())
    }

    /// Creates a network of `req.driver`.
    pub async fn create_network(&mut self, req: CreateNetwork) -> Result<NetworkInfo> {
        endpoint::validate_name(&req.name)?;
        // `bridge`, `host`, `none` and `container:` name attachments, in
        // any case: names differing only in case would be told apart by
        // nobody reading them.
        let builtin = ["bridge", "host", "none"]
            .iter()
            .any(|b| b.eq_ignore_ascii_case(&req.name));
        if builtin || req.name.parse::<Mode>()? != Mode::Network(req.name.clone()) {
            return Err(Error::NetworkNameReserved(req.name));
        }
        if self.store.local_network(&req.name)?.is_some() {
            return Err(Error::NetworkNameTaken(req.name));
        }
        match req.driver.as_str() {
            "bridge" => {
                if let Some(other) = self.overlay_named(&req.name) {
                    return Err(Error::NetworkNameTaken(other));
                }
                self.create_local_network(req, LocalDriver::Bridge).await
            }
            "macvlan" => {
                if let Some(other) = self.overlay_named(&req.name) {
                    return Err(Error::NetworkNameTaken(other));
                }
                self.create_local_network(req, LocalDriver::Macvlan).await
            }
            "overlay" => self.create_overlay(req).await,
            _ => Err(Error::UnsupportedDriver(req.driver)),
        }
    }

    /// Creates an overlay network: recorded, its bridge up, the routes to
    /// the other hosts' leases in the data path.
    async fn create_overlay(&mut self, req: CreateNetwork) -> Result<NetworkInfo> {
        if self.dp.is_none() {
            let what = "an overlay network";
            return Err(Error::NeedsDatapath { what });
        }
        for (given, flag) in [
            (req.gateway.is_some(), "--gateway"),
            (req.ip_range.is_some(), "--ip-range"),
            (req.internal, "--internal"),
            (!req.icc, "--icc=false"),
            (req.mtu.is_some(), "--mtu"),
            (!req.options.is_empty(), "-o"),
            (!req.labels.is_empty(), "--label"),
            (req.ipv6, "--ipv6"),
            (!req.ipv6_masquerade, "--ipv6-masquerade=false"),
        ] {
            if given {
                return Err(Error::NotForOverlays(flag));
            }
        }
        let subnet = req.subnet.ok_or(Error::OverlayNeedsSubnet)?;
        let net = OverlayNetwork {
            vni: match req.vni {
                Some(vni) => overlay::check_vni(vni)?,
                None => overlay::default_vni(&req.name),
            },
            name: req.name,
            subnet: subnet.trunc(),
            encap: req.encap.unwrap_or_default(),
        };
        if net.encap == overlay::Encap::None {
            self.check_direct_peers().await?;
        }
        if let Some(other) = self.overlay_named(&net.name) {
            return Err(Error::NetworkExists {
                name: net.name,
                vni: net.vni,
                other,
            });
        }
        Self::check_overlay_subnet(&self.rtnl, &net, self.subnets_besides(Some(&net.name))?)
            .await?;
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
        let driver = self.overlay_driver(&net)?;
        self.store.insert_network(&net)?;
        let brought_up = match self.bring_up_overlay(&driver).await {
            Ok(()) => self.sync_overlay_routes(),
            Err(e) => Err(e),
        };
        if let Err(e) = brought_up {
            let _ = driver.teardown(&self.rtnl).await;
            self.store.delete_network(&net.name)?;
            return Err(e);
        }
        info!(network = %net.name, vni = net.vni, lease = %driver.on_host.subnet.trunc(), "overlay created");
        self.network(&net.name)
    }

    /// Refuses `--encap none` unless every other host known (the static
    /// peers, or those in the cluster store) is on the uplink's subnet.
    async fn check_direct_peers(&self) -> Result<()> {
        let vtep = self.vtep()?;
        let link = self
            .rtnl
            .addresses()
            .await?
            .into_iter()
            .map(|(net, _)| net)
            .find(|net| net.addr() == vtep)
            .ok_or(Error::NoVtep)?;
        let peers: Vec<Ipv4Addr> = match &self.view {
            Some((view, _)) => view
                .networks
                .keys()
                .flat_map(|n| view.holders(n))
                .map(|h| h.vtep)
                .collect(),
            None => self.cfg.peers.clone(),
        };
        Ok(overlay::check_direct_peers(link, &peers).map_err(crate::logic::Error::from)?)
    }

    /// The overlay network, here or elsewhere in the cluster, named `name`
    /// in any case.
    pub(super) fn overlay_named(&self, name: &str) -> Option<String> {
        let here = self.store.networks().ok()?.into_iter().map(|n| n.name);
        let cluster = self
            .view
            .iter()
            .flat_map(|(v, _)| v.networks.keys().cloned());
        here.chain(cluster).find(|n| n.eq_ignore_ascii_case(name))
    }

    /// The subnets of the bridge network, of local networks and of every
    /// overlay, here and in the cluster, but the overlay named `except`.
    pub(super) fn subnets_besides(&self, except: Option<&str>) -> Result<Vec<Ipv4Net>> {
        let overlays = self.store.networks()?;
        let locals = self.store.local_networks()?;
        Ok(std::iter::once(self.net.subnet.trunc())
            .chain(locals.iter().map(|l| l.spec.subnet))
            .chain(
                overlays
                    .iter()
                    .chain(self.view.iter().flat_map(|(v, _)| v.networks.values()))
                    .filter(|other| Some(other.name.as_str()) != except)
                    .map(|other| other.subnet),
            )
            .collect())
    }

    /// Refuses an overlay whose subnet overlaps a route or an address of
    /// this host, or another network (`networks`): its route would replace
    /// theirs, and removing it would take theirs away. (Takes the netlink
    /// handle, not `&self`: API futures must be `Send`.)
    pub(super) async fn check_overlay_subnet(
        rtnl: &Rtnl,
        net: &OverlayNetwork,
        mut networks: Vec<Ipv4Net>,
    ) -> Result<()> {
        networks.extend(rtnl.networks_in_use(None).await?);
        Ok(ipam::check_subnet(net.subnet, &networks)?)
    }

    /// Removes a network that has no endpoints.
    pub async fn remove_network(&mut self, name: &str) -> Result<()> {
        let local = self.store.local_network(name)?;
        let name = local.as_ref().map_or(name, |l| l.name.as_str());
        let members = self.members_of(name)?;
        if !members.is_empty() {
            return Err(Error::NetworkInUse {
                network: name.to_string(),
                endpoint: members.join(", "),
            });
        }
        if let Some(local) = &local {
            return self.remove_local_network(local).await;
        }
        let net = self.store.network(name)?;
        if self.cfg.store.is_some() {
            // Every host, this one included, drops it on seeing it go.
            self.connected()?.delete_network(&net).await?;
            return self.resync().await.map(drop);
        }
        self.drop_network(&net).await
    }

    /// Forgets overlay `net` on this host.
    pub(super) async fn drop_network(&mut self, net: &OverlayNetwork) -> Result<()> {
        let driver = self.overlay_driver(net);
        self.resolver.stop(&net.name);
        self.store.delete_network(&net.name)?;
        self.sync_overlay_routes()?;
        // Without a lease here, it was never set up here.
        if let Ok(driver) = driver {
            driver.teardown(&self.rtnl).await?;
        }
        info!(network = %net.name, "overlay removed");
        Ok(())
    }

    /// The session with the cluster store, or why there is none.
    pub(super) fn connected(&self) -> Result<Session> {
        self.session.clone().ok_or_else(|| {
            let url = self.cfg.store.as_ref().map(ToString::to_string);
            ClusterError::Disconnected(url.unwrap_or_default()).into()
        })
    }

    /// A new session with the cluster store, or `None` once it is lost.
    pub fn set_session(&mut self, session: Option<Session>) {
        // A store started anew counts its revisions from the start again.
        if let (Some(_), Some((_, seen))) = (&session, &mut self.view) {
            *seen = i64::MIN;
        }
        self.session = session;
    }

    /// Brings this host in line with the cluster store: takes a /24 of
    /// every overlay network there (the one it held before while still
    /// free), takes up networks other hosts created, drops those removed,
    /// and writes the routes to every other host's lease. Returns the
    /// revision of the store it read.
    pub async fn resync(&mut self) -> Result<i64> {
        let started = std::time::Instant::now();
        let claim = self.lease_claim()?;
        let resynced = match claim.run().await {
            Ok((view, revision)) => self.follow_view(view, revision).await.map(|()| revision),
            Err(e) => Err(e),
        };
        self.reconciles
            .observe(metrics::Reconcile::Cluster, started.elapsed());
        resynced
    }

    /// What taking leases in the store needs of this daemon, read now so
    /// that the round trips to the store can go on without it.
    pub fn lease_claim(&self) -> Result<LeaseClaim> {
        let mut held = BTreeMap::new();
        for net in self.store.networks()? {
            if let Some(lease) = self.store.network_lease(&net.name)? {
                held.insert(net.name, lease);
            }
        }
        Ok(LeaseClaim {
            session: self.connected()?,
            vtep: self.vtep()?,
            held,
        })
    }

    /// How long each cluster resync took, for those run from outside.
    pub fn reconcile_durations(&self) -> metrics::ReconcileDurations {
        self.reconciles.clone()
    }

    /// Makes this host's overlays what `view`, read at `revision`, says;
    /// a view older than the one followed last (read by a resync that
    /// waited for the daemon meanwhile) is not followed.
    pub async fn follow_view(&mut self, view: ClusterView, revision: i64) -> Result<()> {
        if self.view.as_ref().is_some_and(|(_, seen)| *seen > revision) {
            return Ok(());
        }
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
                let others = self.subnets_besides(Some(&net.name))?;
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
        self.view = Some((view, revision));
        self.restore_overlays().await?;
        self.sync_zones()
    }

    /// What the membership task publishes: this host's VTEP, and the
    /// endpoints of each overlay here as they change.
    pub fn names_to_publish(
        &self,
    ) -> Result<(Ipv4Addr, tokio::sync::watch::Receiver<discovery::HostNames>)> {
        Ok((self.vtep()?, self.names_published.subscribe()))
    }

    /// Overlay `driver`'s network on this host: its bridge, its address,
    /// its route and its DNS server; the data path's routes are the
    /// caller's to write, once for every overlay it brings up.
    pub(super) async fn bring_up_overlay(&mut self, driver: &drivers::Overlay) -> Result<()> {
        driver.setup(&self.rtnl).await?;
        self.serve_dns(&driver.network.name, &driver.on_host).await;
        // Its gateway is closed to the uplink from now, not from the next
        // housekeeping tick.
        self.sync_host_addrs().await
    }

    /// Brings up every overlay recorded here (after a restart, before
    /// their endpoints are reconciled; after a change of the cluster or
    /// of the uplink's MTU), and writes the data path's routes once.
    pub(super) async fn restore_overlays(&mut self) -> Result<()> {
        for net in self.store.networks()? {
            let driver = self.overlay_driver(&net)?;
            self.bring_up_overlay(&driver).await?;
        }
        self.sync_overlay_routes()
    }

    /// Writes the routes to every other host's lease of every overlay, and
    /// whether the data path takes VXLAN to this host apart at all. Until
    /// the cluster store was first read, the routes stay as they are.
    pub(super) fn sync_overlay_routes(&mut self) -> Result<()> {
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
            self.tell_datapath(|dp| dp.set_overlay_routes(&routes))?;
        }
        self.sync_network_policies()
    }

    /// One network, as `network inspect` shows it.
    pub fn network(&self, name: &str) -> Result<NetworkInfo> {
        self.networks()?
            .into_iter()
            .find(|n| n.name == name || (n.scope == "local" && n.name.eq_ignore_ascii_case(name)))
            .ok_or_else(|| Error::NetworkNotFound(name.to_string()))
    }
}

/// Taking this host's lease of every overlay network in the cluster
/// store, done without the daemon (see [`Daemon::lease_claim`]).
#[derive(Debug)]
pub struct LeaseClaim {
    session: Session,
    vtep: Ipv4Addr,
    /// The lease this host recorded for each network it has.
    held: BTreeMap<String, Ipv4Net>,
}

impl LeaseClaim {
    /// Claims the leases this host lacks and returns the store as it then
    /// is, with its revision.
    pub async fn run(&self) -> Result<(ClusterView, i64)> {
        let (session, vtep) = (&self.session, self.vtep);
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
                let previous = held
                    .map(|h| h.lease)
                    .or_else(|| self.held.get(&name).copied());
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
        Ok((view, revision))
    }
}
