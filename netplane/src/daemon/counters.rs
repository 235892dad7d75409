//! Flows and counters: tracked flows, statistics, metrics and the names
//! monitor events carry.

use super::*;

/// Removes the flows of `table` whose lifetime has passed, both
/// directions at once. Runs without the daemon, on a blocking thread.
pub fn collect_garbage(table: &FlowTable, timeouts: &Timeouts) -> Result<usize> {
    let now_ns = monotonic_ns()?;
    let doomed = conntrack::expired(&table.entries()?, now_ns, timeouts);
    // A packet may have refreshed a flow since the dump (of many thousand
    // entries): read the doomed ones again, and keep those.
    let doomed = conntrack::expired(&table.entries_of(&doomed)?, now_ns, timeouts);
    table.delete(&doomed)?;
    Ok(doomed.len())
}

/// The tracked flows of `table`, each with its endpoint from `owners`;
/// only those of an owner if `only_owned`: `ct ls`.
pub fn flows(
    table: &FlowTable,
    owners: &HashMap<u32, String>,
    only_owned: bool,
    timeouts: &Timeouts,
) -> Result<Vec<FlowInfo>> {
    let now_ns = monotonic_ns()?;
    let entries = table.entries()?;
    Ok(conntrack::flows(&entries)
        .iter()
        .filter_map(|flow| {
            let owner = owner_of(flow, owners);
            if only_owned && owner.is_none() {
                return None;
            }
            let mut info = conntrack::describe(flow, now_ns, timeouts);
            info.endpoint = owner.cloned();
            Some(info)
        })
        .collect())
}

/// Forgets the tracked flows of `table`, only those of an owner in
/// `owners` if `only_owned`: `ct flush`. Their next packets start new
/// flows, as after `conntrack -F`.
pub fn flush_flows(
    table: &FlowTable,
    owners: &HashMap<u32, String>,
    only_owned: bool,
) -> Result<usize> {
    let entries = table.entries()?;
    let doomed: Vec<conntrack::Flow> = conntrack::flows(&entries)
        .into_iter()
        .filter(|flow| !only_owned || owner_of(flow, owners).is_some())
        .collect();
    let keys: Vec<FlowKey> = doomed.iter().flat_map(|f| [f.key, f.reply_key]).collect();
    table.delete(&keys)?;
    Ok(doomed.len())
}

impl Daemon {
    /// Its flow table, opened apart from it (see [`FlowTable`]).
    pub fn flow_table(&self) -> Result<FlowTable> {
        Ok(FlowTable::open(&self.cfg.bpffs)?)
    }

    /// Lifetimes of tracked flows.
    pub fn timeouts(&self) -> Timeouts {
        self.cfg.timeouts
    }

    /// Endpoint names by address (network byte order): every endpoint's,
    /// or only the one named `only`, which must exist.
    pub fn flow_owners(&self, only: Option<&str>) -> Result<HashMap<u32, String>> {
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
        // The flow table's use is the scrape's to read, without the daemon.
        let tables = vec![dp.published_use()?];
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

    pub(super) fn stats_of(&self, rec: &StoredEndpoint) -> Result<EndpointStats> {
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
