//! Endpoints: validate a request, record it, apply its plan with
//! rollback, show it, and remove it.

use super::*;

impl Daemon {
    /// Gives the DNS server every ready endpoint's names, by network.
    /// Brings what depends on the set of endpoints up to date: the
    /// embedded DNS's names and who may send out of macvlan parents.
    pub(super) fn endpoints_changed(&mut self) -> Result<()> {
        self.sync_zones()?;
        self.sync_macvlan_sources()
    }

    /// Gives the DNS server the names of every network: a local one's
    /// from its ready endpoints; an overlay's from every host's (see
    /// [`Daemon::overlay_names`]). Hands what this host publishes to the
    /// membership task.
    pub(super) fn sync_zones(&mut self) -> Result<()> {
        let mut zones: BTreeMap<String, Zone> = BTreeMap::new();
        let records = self.store.endpoints()?;
        let overlays: Vec<String> = self.store.networks()?.into_iter().map(|n| n.name).collect();
        let mut published: discovery::HostNames =
            overlays.iter().map(|n| (n.clone(), Vec::new())).collect();
        let mut add =
            |zone: &str, name: &str, aliases: &[String], ip, ip6| match published.get_mut(zone) {
                Some(overlay) => overlay.push(PublishedName::new(name, ip, aliases)),
                None => zones
                    .entry(zone.to_string())
                    .or_default()
                    .insert(name, aliases, ip, ip6),
            };
        let ready = || records.iter().filter(|r| r.state == State::Ready);
        for rec in ready() {
            if let (Some(ip), Some(zone)) = (rec.ep.ip, zone_of(&rec.ep.mode)) {
                add(zone, &rec.ep.name, &rec.aliases, ip, rec.ep.ip6);
            }
            for att in &rec.attachments {
                add(&att.network, &rec.ep.name, &att.aliases, att.ip, att.ip6);
            }
        }
        for rec in ready() {
            if let (Some(ip), Some(zone)) = (rec.ep.ip, zone_of(&rec.ep.mode)) {
                let zone = zones.entry(zone.to_string()).or_default();
                for addr in own_addrs(ip, rec.ep.ip6) {
                    zone.set_upstream(addr, &rec.ep.options.dns);
                }
            }
        }
        self.name_clashes.clear();
        for (network, here) in &published {
            let (claims, clashes) = self.overlay_names(network, here.clone());
            let zone = zones.entry(network.clone()).or_default();
            for c in claims {
                let e = c.endpoint;
                if c.answers_name {
                    zone.insert(&e.name, &e.aliases, e.address, None);
                } else {
                    zone.add_aliases(&e.aliases, &[e.address.into()]);
                }
            }
            if !clashes.is_empty() {
                self.name_clashes.insert(network.clone(), clashes);
            }
        }
        self.names_published.send_if_modified(|before| {
            let changed = *before != published;
            *before = published;
            changed
        });
        // An endpoint on several networks asks its first network's server,
        // which answers it the names of all of them.
        let mut views = Vec::new();
        for rec in ready().filter(|r| !r.attachments.is_empty()) {
            if let (Some(ip), Some(first)) = (rec.ep.ip, zone_of(&rec.ep.mode)) {
                let mut view = zones.get(first).cloned().unwrap_or_default();
                for att in &rec.attachments {
                    if let Some(other) = zones.get(&att.network) {
                        view.absorb(other);
                    }
                }
                views.push((first.to_string(), own_addrs(ip, rec.ep.ip6), view));
            }
        }
        for (first, addrs, view) in views {
            for addr in addrs {
                zones
                    .entry(first.clone())
                    .or_default()
                    .set_view(addr, view.clone());
            }
        }
        self.resolver.set_zones(zones);
        Ok(())
    }

    /// The endpoints of overlay `network` across the hosts: `here`, this
    /// host's, and those the other hosts published in the cluster store,
    /// each marked whether its name answers (see [`discovery::settle`]).
    /// With static peers there is no store: names stay on their host.
    fn overlay_names(
        &self,
        network: &str,
        here: Vec<PublishedName>,
    ) -> (Vec<discovery::Claim>, Vec<discovery::NameClash>) {
        let Ok(vtep) = self.vtep() else {
            return (Vec::new(), Vec::new());
        };
        let mut hosts = self
            .view
            .as_ref()
            .and_then(|(view, _)| view.names(network))
            .cloned()
            .unwrap_or_default();
        hosts.insert(vtep, here);
        discovery::settle(&hosts)
    }

    pub(super) fn plan(&self, ep: &endpoint::Endpoint) -> Result<Vec<Step>> {
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
        let mut steps = endpoint::plan(
            &self.resolved(ep),
            &net,
            &host::host_resolv_conf(),
            dns,
            &links,
        );
        // The networks it was connected to later, rebuilt and removed with it.
        if let Ok(rec) = self.store.endpoint(&ep.name) {
            for att in &rec.attachments {
                steps.extend(self.attachment_steps(ep, att)?);
            }
        }
        Ok(steps)
    }

    /// Applies the plan of `ep`; on failure undoes the applied steps.
    pub(super) async fn apply_plan(&mut self, ep: &endpoint::Endpoint) -> Result<()> {
        let steps = self.plan(ep)?;
        Ok(steps::apply_all(&mut self.kernel_steps(), &steps, &ep.name).await?)
    }

    /// The kernel, as what applies and undoes plan steps.
    pub(super) fn kernel_steps(&mut self) -> KernelSteps<'_> {
        KernelSteps {
            xdp: self.xdp != XdpAttached::Off,
            rtnl: &self.rtnl,
            dp: self.dp.as_mut(),
        }
    }

    /// Rewrites the pairs of endpoints joined with `--link`, which talk even
    /// with `--icc=false`, and the hosts files naming linked endpoints: one
    /// recreated with another address is found at the new one.
    pub(super) fn sync_linked(&mut self) -> Result<()> {
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
        self.tell_datapath(|dp| dp.set_linked(&pairs))?;
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
    pub(super) async fn teardown(&mut self, ep: &endpoint::Endpoint) -> Result<()> {
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
        self.create_in(req, None).await
    }

    /// [`Daemon::create`] in a namespace of its own, or in `sandbox`, a
    /// container runtime's.
    pub(super) async fn create_in(
        &mut self,
        req: CreateEndpoint,
        sandbox: Option<Sandbox>,
    ) -> Result<EndpointInfo> {
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
        for (flag, given) in [
            ("--publish-from", !from.is_empty()),
            ("--proxy-protocol", req.proxy_protocol),
        ] {
            if given && specs.is_empty() {
                return Err(Error::NotApplicable {
                    flag,
                    mode: "an endpoint without -p".into(),
                });
            }
        }
        if !mode.has_veth() && req.ip.is_some() {
            return Err(Error::NotApplicable {
                flag: "--ip",
                mode: mode.to_string(),
            });
        }
        if !specs.is_empty() {
            self.check_publishing(&req.name, &mode)?;
        }
        let records = self.store.endpoints()?;
        let ready = |name: &str| {
            records
                .iter()
                .find(|r| r.ep.name == name && r.state == State::Ready)
        };
        if let Mode::Container(other) = &mode {
            let other = ready(other).ok_or_else(|| Error::EndpointNotFound(other.clone()))?;
            if other.ep.netns().is_none() {
                return Err(Error::NoNamespace(other.ep.name.clone()));
            }
            not_runtime_owned(&other.ep)?;
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
        let ports =
            Self::resolve_ports(&self.rtnl, &specs, &records, &from, req.proxy_protocol).await?;
        // The network's (which must exist) on this host.
        let driver = self.driver_of(&mode)?;
        let pool6 = mode.has_veth().then(|| driver.pool6()).flatten();
        if req.ip6.is_some() && pool6.is_none() {
            return Err(Error::NotApplicable {
                flag: "--ip6",
                mode: format!("{mode}, a network without IPv6"),
            });
        }
        let pool = driver.pool();
        let ep = self.store.insert_endpoint(
            NewEndpoint {
                name: &req.name,
                mode: &mode,
                ip: req.ip,
                ip6: req.ip6,
                hostname: req.hostname.as_deref(),
                ports: &ports,
                links: &req.links,
                aliases: &req.network_aliases,
                options: &options,
                sandbox: sandbox.as_ref(),
            },
            mode.has_veth().then_some(&pool),
            pool6.as_ref(),
        )?;
        if let Err(e) = self.apply_plan(&ep).await {
            self.store.delete_endpoint(&ep.name)?;
            return Err(e);
        }
        let mut activate = || {
            self.reserved
                .reserve(&ports, ep.sandbox.is_some(), ep.ip6.is_some())?;
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
        self.endpoints_changed()?;
        info!(endpoint = %ep.name, mode = %ep.mode, ip = ?ep.ip, "created");
        self.inspect(&ep.name)
    }

    /// The `docker run`-style options of a create request, checked.
    pub(super) fn endpoint_options(
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
        let local = match mode {
            Mode::Network(name) => self.store.local_network(name)?.is_some(),
            _ => false,
        };
        let mac = match &req.mac_address {
            // Overlay peers derive an endpoint's MAC from its address.
            Some(_) if *mode != Mode::Bridge && !local => return not_for("--mac-address"),
            Some(mac) => {
                let mac = endpoint::parse_mac(mac)?;
                endpoint::check_mac_free(mac, self.bridge_net_of(mode)?.subnet.trunc())?;
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
        // `host-gateway` is the gateway of the endpoint's network.
        let gateway = self.bridge_net_of(mode)?.gateway;
        Ok(EndpointOptions {
            mac,
            dns: req.dns.clone(),
            dns_search: req.dns_search.clone(),
            extra_hosts: req
                .add_hosts
                .iter()
                .map(|h| endpoint::parse_extra_host(h, gateway))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Removes an endpoint, killing the processes in its namespace as
    /// removing a container does. Endpoints sharing its namespace are
    /// removed first with `force`, and refused without. One a container
    /// runtime made is refused: its runtime removes it.
    pub async fn remove(&mut self, name: &str, force: bool) -> Result<Removed> {
        not_runtime_owned(&self.store.endpoint(name)?.ep)?;
        self.remove_any(name, force).await
    }

    /// [`Daemon::remove`] of any endpoint, a runtime's too (CNI DEL,
    /// `down`), whose namespace and processes are the runtime's to end.
    pub(super) async fn remove_any(&mut self, name: &str, force: bool) -> Result<Removed> {
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
        if rec.ep.mode.owns_netns() && rec.ep.sandbox.is_none() {
            // Rounds of SIGKILL with pauses between: a blocking thread's.
            let netns_name = name.to_string();
            let killed = tokio::task::spawn_blocking(move || netns::kill_all(&netns_name))
                .await
                .map_err(|e| Error::io("kill in", name, std::io::Error::other(e)))??;
            for process in killed {
                info!(endpoint = %name, %process, "killed");
                removed.killed.push(process.to_string());
            }
        }
        self.teardown(&rec.ep).await?;
        self.store.delete_endpoint(name)?;
        self.sync_linked()?;
        self.endpoints_changed()?;
        info!(endpoint = %name, "removed");
        removed.endpoints.push(name.to_string());
        Ok(removed)
    }

    /// `ep` with the address it has in the kernel: a `container:` endpoint
    /// has the address of the endpoint whose namespace it shares.
    pub(super) fn resolved(&self, ep: &endpoint::Endpoint) -> endpoint::Endpoint {
        let mut ep = ep.clone();
        if let Mode::Container(other) = &ep.mode
            && let Ok(other) = self.store.endpoint(other)
        {
            ep.ip = other.ep.ip;
            ep.ip6 = other.ep.ip6;
            ep.options.mac = other.ep.options.mac;
        }
        ep
    }

    pub(super) fn to_info(&self, rec: &StoredEndpoint) -> EndpointInfo {
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
        let v6 = net
            .as_ref()
            .and_then(|n| n.ipv6)
            .zip(ep.ip6)
            .map(|(side, ip)| {
                (
                    ip.to_string(),
                    side.subnet.prefix_len(),
                    side.gateway.to_string(),
                )
            })
            .unwrap_or_default();
        // Docker lists a container: endpoint under no network of its own.
        let mut networks = match attached {
            Some(Mode::Container(_)) | None => BTreeMap::new(),
            Some(mode) => BTreeMap::from([(
                zone_of(&mode).map_or_else(|| mode.to_string(), str::to_string),
                EndpointNetwork {
                    ip_address: ip_address.clone(),
                    ip_prefix_len,
                    gateway: gateway.clone(),
                    mac_address: mac_address.clone(),
                    aliases: rec.aliases.clone(),
                    global_ipv6_address: v6.0,
                    global_ipv6_prefix_len: v6.1,
                    ipv6_gateway: v6.2,
                },
            )]),
        };
        for att in &rec.attachments {
            let Ok(net) = self.bridge_net_of(&att.mode()) else {
                continue;
            };
            networks.insert(
                att.network.clone(),
                EndpointNetwork {
                    ip_address: att.ip.to_string(),
                    ip_prefix_len: net.subnet.prefix_len(),
                    gateway: net.gateway.to_string(),
                    mac_address: format_mac(&mac_for(att.ip)),
                    aliases: att.aliases.clone(),
                    global_ipv6_address: att.ip6.map(|ip| ip.to_string()).unwrap_or_default(),
                    global_ipv6_prefix_len: net
                        .ipv6
                        .filter(|_| att.ip6.is_some())
                        .map_or(0, |v6| v6.subnet.prefix_len()),
                    ipv6_gateway: net
                        .ipv6
                        .filter(|_| att.ip6.is_some())
                        .map(|v6| v6.gateway.to_string())
                        .unwrap_or_default(),
                },
            );
        }
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
            container_id: ep.sandbox.as_ref().map(|sb| sb.container_id.clone()),
            network_settings: NetworkSettings {
                sandbox_key: match ep.netns() {
                    Some(path) => path.to_string_lossy().into_owned(),
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
}

/// Refuses to remove or rewire `ep` when a container runtime made it: the
/// runtime removes it (CNI DEL), and would find it changed under it.
pub(super) fn not_runtime_owned(ep: &endpoint::Endpoint) -> Result<()> {
    match &ep.sandbox {
        Some(sandbox) => Err(Error::RuntimeOwned {
            endpoint: ep.name.clone(),
            container_id: sandbox.container_id.clone(),
        }),
        None => Ok(()),
    }
}

/// An endpoint's addresses on its first network, as its queries come from
/// them: the IPv4 one, and the IPv6 one on a dual-stack network.
fn own_addrs(ip: Ipv4Addr, ip6: Option<std::net::Ipv6Addr>) -> Vec<std::net::IpAddr> {
    std::iter::once(ip.into())
        .chain(ip6.map(Into::into))
        .collect()
}
