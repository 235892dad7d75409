//! Published ports: resolving `-p` against the host, publishing into the
//! data path, `port add`/`port rm`/`port ls`, and the NAT table.

use super::*;
use crate::logic::forwarding::{self, Plan};

impl Daemon {
    /// Zeroes the counters of newly published rules, whose slots may have
    /// served rules since withdrawn.
    pub(super) fn reset_counters(&mut self, ports: &[PublishedPort]) -> Result<()> {
        for p in ports {
            self.forwarder.reset(p.slot);
            self.tell_datapath(|dp| dp.reset_nat_counters(p.slot))?;
        }
        Ok(())
    }

    /// Holds the host ports `name` published before this daemon started.
    /// A host process that bound one while no daemon ran keeps it: its
    /// traffic goes to the endpoint, and the log says so.
    pub(super) fn hold_published(&mut self, ep: &endpoint::Endpoint, ports: &[PublishedPort]) {
        if let Err(e) = self
            .reserved
            .reserve(ports, ep.sandbox.is_some(), ep.ip6.is_some())
        {
            warn!(endpoint = %ep.name, "published port not held: {e}");
        }
    }

    /// How each rule of `ep` is served: by the data path, the forwarder,
    /// or both (see [`forwarding::plan`]).
    fn forwarding_plan(&self, ep: &endpoint::Endpoint, port: &PublishedPort) -> Option<Plan> {
        let ip = ep.ip?;
        Some(forwarding::plan(
            port,
            ip,
            ep.ip6,
            self.cfg.userland_proxy,
            ep.sandbox.is_some(),
        ))
    }

    /// Writes the published ports of `ep` into the data path, and has the
    /// forwarder serve what the data path does not translate, on the
    /// sockets holding those ports (held before).
    pub(super) fn publish(
        &mut self,
        ep: &endpoint::Endpoint,
        ports: &[PublishedPort],
    ) -> Result<()> {
        let Some(ip) = ep.ip else {
            return Ok(());
        };
        if let Some(port) = ports.iter().find(|p| p.host_ip.is_ipv6())
            && ep.ip6.is_none()
            && ep.sandbox.is_some()
        {
            return Err(Error::PortNeedsIpv6 {
                port: format!("[{}]:{}", port.host_ip, port.host_ports),
                endpoint: ep.name.clone(),
            });
        }
        for port in ports {
            let plan = self
                .forwarding_plan(ep, port)
                .expect("the endpoint has an address");
            self.tell_datapath(|dp| {
                // The list first: a port never accepts more than it says.
                dp.set_publish_from(port.slot, &port.from)?;
                if plan.ebpf4 {
                    dp.publish(&port.map_entries(ip))?;
                }
                if let (true, Some(ip6)) = (plan.ebpf6, ep.ip6) {
                    dp.publish6(&port.map_entries6(ip6))?;
                }
                Ok(())
            })?;
            for route in plan.routes {
                // A port an earlier run published and a host process took
                // while no daemon ran is that process's (see
                // `hold_published`).
                let socket = match self.reserved.lend(route.listen, route.port, route.proto) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(endpoint = %ep.name, "port not forwarded: {e}");
                        continue;
                    }
                };
                let at = route.listen_addr();
                self.forwarder
                    .serve(route, socket)
                    .map_err(|e| Error::io("forward the published port", at, e))?;
            }
        }
        Ok(())
    }

    /// Withdraws published ports and their flows from the data path and
    /// the forwarder, and lets their host ports go.
    pub(super) fn unpublish(
        &mut self,
        ep: &endpoint::Endpoint,
        ports: &[PublishedPort],
    ) -> Result<()> {
        for port in ports {
            for route in self
                .forwarding_plan(ep, port)
                .into_iter()
                .flat_map(|p| p.routes)
            {
                self.forwarder.stop(route.listen_addr(), route.proto);
            }
        }
        self.reserved.release(ports);
        let Some(ip) = ep.ip else {
            return Ok(());
        };
        self.tell_datapath(|dp| {
            for port in ports {
                let keys: Vec<_> = port.map_entries(ip).into_iter().map(|(k, _)| k).collect();
                dp.unpublish(&keys, port.slot)?;
                if let Some(ip6) = ep.ip6 {
                    let keys: Vec<_> = port.map_entries6(ip6).into_iter().map(|(k, _)| k).collect();
                    dp.unpublish6(&keys, port.slot)?;
                }
                dp.set_publish_from(port.slot, &[])?;
            }
            Ok(())
        })
    }

    /// Checks `-p` specs against the host and the ports already published,
    /// and picks the host ports and counter slots they leave open. (Takes
    /// the netlink handle, not `&self`: the daemon is not `Sync`, and API
    /// futures must be `Send`.)
    pub(super) async fn resolve_ports(
        rtnl: &Rtnl,
        specs: &[PortSpec],
        records: &[StoredEndpoint],
        from: &[Ipv4Net],
        proxy_protocol: bool,
    ) -> Result<Vec<PublishedPort>> {
        let mut local: Vec<std::net::IpAddr> = rtnl
            .addresses()
            .await?
            .iter()
            .map(|(n, _)| std::net::IpAddr::V4(n.addr()))
            .collect();
        local.extend(
            rtnl.addresses6()
                .await?
                .iter()
                .map(|(a, _)| std::net::IpAddr::V6(*a)),
        );
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
            port.proxy_protocol = proxy_protocol;
        }
        Ok(ports)
    }

    /// The ready endpoint `name`, if ports can be published to it.
    pub(super) fn publishable(&self, name: &str) -> Result<StoredEndpoint> {
        let rec = self.store.endpoint(name)?;
        if rec.state != State::Ready {
            return Err(Error::NotApplicable {
                flag: "-p",
                mode: rec.ep.mode.to_string(),
            });
        }
        self.check_publishing(name, &rec.ep.mode)?;
        Ok(rec)
    }

    /// Publishes one more port of a running endpoint: `port add`.
    pub async fn add_port(
        &mut self,
        name: &str,
        spec: &str,
        from: &[String],
        proxy_protocol: bool,
    ) -> Result<Vec<PortInfo>> {
        let spec: PortSpec = spec.parse()?;
        let from = portspec::parse_sources(from)?;
        let rec = self.publishable(name)?;
        let records = self.store.endpoints()?;
        let added =
            Self::resolve_ports(&self.rtnl, &[spec], &records, &from, proxy_protocol).await?;
        let mut ports = rec.ports.clone();
        ports.extend(added.iter().cloned());
        self.store.set_ports(name, &ports)?;
        let mut activate = || {
            self.reserved
                .reserve(&added, rec.ep.sandbox.is_some(), rec.ep.ip6.is_some())?;
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

    /// The masquerade rule of `nat ls`, its counters left to
    /// [`Readers::nat_table`](super::counters::Readers::nat_table).
    pub fn masquerade_rule(&self) -> Result<NatRule> {
        // The bridge network's and every local bridge's but internal ones.
        let locals = self.store.local_networks()?;
        let sources: Vec<String> = std::iter::once(self.net.subnet.trunc())
            .chain(
                locals
                    .iter()
                    .filter(|n| n.spec.parent().is_none() && !n.spec.internal)
                    .map(|n| n.spec.subnet),
            )
            .map(|n| n.to_string())
            .collect();
        Ok(NatRule {
            target: "MASQUERADE".into(),
            prot: "all".into(),
            source: sources.join(","),
            destination: "0.0.0.0/0".into(),
            detail: match &self.uplink {
                Some(u) => format!(
                    "out:{u} to:{}",
                    addr_from_be(self.net_config.uplink_addr_be)
                ),
                None => "no uplink".into(),
            },
            packets: 0,
            bytes: 0,
            drops: BTreeMap::new(),
            proxied: None,
        })
    }
}
