//! Flows and counters: tracked flows, statistics, metrics and the names
//! monitor events carry.

use super::*;
use crate::logic::conntrack::FlowAddr;
use netplane_common::abi::CtEntry;
use std::net::IpAddr;

/// Removes the flows of `table` whose lifetime has passed, both
/// directions at once. Runs without the daemon, on a blocking thread.
fn collect_garbage<A: FlowAddr>(table: &FlowTable<A>, timeouts: &Timeouts) -> Result<usize>
where
    FlowKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
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
fn flows<A: FlowAddr>(
    table: &FlowTable<A>,
    owners: &HashMap<IpAddr, String>,
    only_owned: bool,
    timeouts: &Timeouts,
) -> Result<Vec<FlowInfo>>
where
    FlowKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
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
fn flush_flows<A: FlowAddr>(
    table: &FlowTable<A>,
    owners: &HashMap<IpAddr, String>,
    only_owned: bool,
) -> Result<usize>
where
    FlowKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    let entries = table.entries()?;
    let doomed: Vec<conntrack::Flow<A>> = conntrack::flows(&entries)
        .into_iter()
        .filter(|flow| !only_owned || owner_of(flow, owners).is_some())
        .collect();
    let keys: Vec<FlowKey<A>> = doomed.iter().flat_map(|f| [f.key, f.reply_key]).collect();
    table.delete(&keys)?;
    Ok(doomed.len())
}

/// The endpoint a flow belongs to: its sender, or where it was sent.
fn owner_of<'a, A: FlowAddr>(
    flow: &conntrack::Flow<A>,
    owners: &'a HashMap<IpAddr, String>,
) -> Option<&'a String> {
    owners
        .get(&flow.key.saddr_be.ip())
        .or_else(|| owners.get(&flow.entry.daddr_be.ip()))
}

/// A running daemon's tables, counters and records, read on blocking
/// threads without holding it: `ct ls`, housekeeping, `stats`, `nat ls`, a
/// metrics scrape and naming monitor events never wait behind `create`.
#[derive(Debug)]
pub struct Readers {
    /// The data path's tables; none when the daemon runs without one.
    tables: Option<Tables>,
    /// A read-only connection to the daemon's state database.
    records: std::sync::Mutex<Store>,
    /// Lifetimes of tracked flows.
    pub timeouts: Timeouts,
    /// The interfaces counted besides endpoints: the bridge and the uplink.
    host_interfaces: Vec<String>,
    /// What the userspace forwarder relayed.
    proxied: forwarder::Counters,
}

/// The tables of a loaded data path.
#[derive(Debug)]
struct Tables {
    /// The flow tables, for housekeeping and `ct ls`/`ct flush`.
    flows: FlowTable,
    flows6: FlowTable<[u8; 16]>,
    counters: Counters,
}

impl Readers {
    /// The data path's tables, for `what`, which has no meaning without.
    fn tables(&self, what: &'static str) -> Result<&Tables> {
        self.tables.as_ref().ok_or(Error::NeedsDatapath { what })
    }

    /// The packets and bytes the data path translated under `slot`: none
    /// without a data path.
    fn nat_counters(&self, slot: u32) -> Result<(u64, u64)> {
        self.tables
            .as_ref()
            .map_or(Ok((0, 0)), |t| Ok(t.counters.nat_counters(slot)?))
    }

    /// The data path's drops by rule slot, then reason.
    fn rule_drops(&self) -> Result<BTreeMap<u32, BTreeMap<String, u64>>> {
        self.tables
            .as_ref()
            .map_or(Ok(BTreeMap::new()), |t| Ok(t.counters.rule_drops()?))
    }

    /// The data path's drops by reason.
    fn drops(&self) -> Result<BTreeMap<String, u64>> {
        self.tables
            .as_ref()
            .map_or(Ok(BTreeMap::new()), |t| Ok(t.counters.drops()?))
    }

    fn endpoints(&self) -> Result<Vec<StoredEndpoint>> {
        // A panic elsewhere while reading leaves the connection as it was.
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.endpoints()
    }

    /// Removes expired flows of both families (see [`collect_garbage`]).
    pub fn collect_garbage(&self) -> Result<usize> {
        let Some(t) = &self.tables else {
            return Ok(0);
        };
        Ok(
            collect_garbage(&t.flows, &self.timeouts)?
                + collect_garbage(&t.flows6, &self.timeouts)?,
        )
    }

    /// The tracked flows of both families, of endpoint `only` or all:
    /// `ct ls`.
    pub fn flows(&self, only: Option<&str>) -> Result<Vec<FlowInfo>> {
        let t = self.tables("ct ls")?;
        let owners = self.flow_owners(only)?;
        let mut all = flows(&t.flows, &owners, only.is_some(), &self.timeouts)?;
        all.extend(flows(&t.flows6, &owners, only.is_some(), &self.timeouts)?);
        Ok(all)
    }

    /// Forgets the tracked flows of both families, of endpoint `only` or
    /// all: `ct flush`.
    pub fn flush_flows(&self, only: Option<&str>) -> Result<usize> {
        let t = self.tables("ct flush")?;
        let owners = self.flow_owners(only)?;
        Ok(flush_flows(&t.flows, &owners, only.is_some())?
            + flush_flows(&t.flows6, &owners, only.is_some())?)
    }

    /// Endpoint names by address, of both families: every endpoint's, or
    /// only the one named `only`, which must exist.
    fn flow_owners(&self, only: Option<&str>) -> Result<HashMap<IpAddr, String>> {
        let records = self.endpoints()?;
        if let Some(name) = only
            && !records.iter().any(|r| r.ep.name == name)
        {
            return Err(Error::EndpointNotFound(name.to_string()));
        }
        Ok(records
            .into_iter()
            .filter(|r| only.is_none_or(|name| r.ep.name == name))
            .flat_map(|r| {
                let addrs = [r.ep.ip.map(IpAddr::V4), r.ep.ip6.map(IpAddr::V6)];
                addrs
                    .into_iter()
                    .flatten()
                    .map(move |a| (a, r.ep.name.clone()))
            })
            .collect())
    }

    /// Counters of the bridge, the uplink and every endpoint veth, and drops.
    pub fn stats(&self) -> Result<Stats> {
        let counters = &self.tables("stats")?.counters;
        let records = self.endpoints()?;
        let names = self
            .host_interfaces
            .iter()
            .cloned()
            .chain(records.iter().filter_map(|r| r.ep.host_veth()));
        let mut interfaces = BTreeMap::new();
        for name in names {
            let counters = InterfaceStats {
                traffic: counters.traffic(&name)?,
                drops: counters.interface_drops(&name)?,
            };
            interfaces.insert(name, counters);
        }
        Ok(Stats {
            interfaces,
            drops: counters.drops()?,
        })
    }

    /// One endpoint's counters, from its side: `stats NAME`.
    pub fn endpoint_stats(&self, name: &str) -> Result<EndpointStats> {
        match self.endpoints()?.iter().find(|r| r.ep.name == name) {
            Some(rec) => self.stats_of(rec),
            None => Err(Error::EndpointNotFound(name.to_string())),
        }
    }

    fn stats_of(&self, rec: &StoredEndpoint) -> Result<EndpointStats> {
        let Some(veth) = rec.ep.host_veth() else {
            return Err(Error::NotApplicable {
                flag: "stats",
                mode: rec.ep.mode.to_string(),
            });
        };
        let counters = &self.tables("stats")?.counters;
        let host_side = counters.traffic(&veth)?;
        Ok(EndpointStats {
            endpoint: rec.ep.name.clone(),
            rx_packets: host_side.tx_packets,
            rx_bytes: host_side.tx_bytes,
            tx_packets: host_side.rx_packets,
            tx_bytes: host_side.rx_bytes,
            drops: counters.interface_drops(&veth)?,
            interface: veth,
        })
    }

    /// The NAT rules with their counters, masquerade (`masquerade`, as the
    /// daemon describes it) first: `nat ls`.
    pub fn nat_table(&self, mut masquerade: NatRule) -> Result<NatTable> {
        let mut drops = self.rule_drops()?;
        (masquerade.packets, masquerade.bytes) = self.nat_counters(MASQUERADE_SLOT)?;
        masquerade.drops = drops.remove(&MASQUERADE_SLOT).unwrap_or_default();
        let mut rules = vec![masquerade];
        for rec in self.endpoints()? {
            let Some(ip) = rec.ep.ip else { continue };
            for p in &rec.ports {
                let (packets, bytes) = self.nat_counters(p.slot)?;
                rules.push(NatRule {
                    target: "DNAT".into(),
                    prot: p.proto.to_string(),
                    source: if p.from.is_empty() {
                        "0.0.0.0/0".into()
                    } else {
                        let nets: Vec<String> = p.from.iter().map(|n| n.to_string()).collect();
                        nets.join(",")
                    },
                    destination: nat_destination(
                        p,
                        rec.ep.ip6.is_some() || rec.ep.sandbox.is_none(),
                    ),
                    detail: {
                        let mut to = vec![format!("to:{ip}:{}", p.container_ports)];
                        if let (Some(_), Some(ip6)) = (p.host_ip6(), rec.ep.ip6) {
                            to.push(format!("to:[{ip6}]:{}", p.container_ports));
                        }
                        format!("{} dpt:{} {}", p.proto, p.host_ports, to.join(" "))
                    },
                    packets,
                    bytes,
                    drops: drops.remove(&p.slot).unwrap_or_default(),
                    proxied: self.proxied.of(p.slot),
                });
            }
        }
        Ok(NatTable {
            rules,
            tracked_flows: match &self.tables {
                Some(t) => (t.flows.entries()?.len() + t.flows6.entries()?.len()) / 2,
                None => 0,
            },
            drops: self.drops()?,
        })
    }

    /// A metrics snapshot of everything but what only the daemon knows
    /// (overlay peers, DNS and reconciles: [`Daemon::cluster_metrics`]).
    pub fn metrics(&self) -> Result<metrics::Snapshot> {
        let records = self.endpoints()?;
        let mut endpoints = Vec::new();
        if self.tables.is_some() {
            for rec in records.iter().filter(|r| r.ep.host_veth().is_some()) {
                endpoints.push(self.stats_of(rec)?);
            }
        }
        let mut drops = self.rule_drops()?;
        let mut ports = Vec::new();
        for rec in &records {
            for p in &rec.ports {
                let (packets, bytes) = self.nat_counters(p.slot)?;
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
                    proxied: self.proxied.of(p.slot),
                });
            }
        }
        Ok(metrics::Snapshot {
            endpoints,
            drops: self.drops()?,
            ports,
            masquerade: self.nat_counters(MASQUERADE_SLOT)?,
            masquerade_drops: drops.remove(&MASQUERADE_SLOT).unwrap_or_default(),
            tables: match &self.tables {
                Some(t) => vec![
                    t.flows.table_use()?,
                    t.flows6.table_use()?,
                    t.counters.published_use()?,
                ],
                None => Vec::new(),
            },
            peers: Vec::new(),
            dns: (0, 0),
            reconciles: metrics::ReconcileDurations::default(),
        })
    }

    /// Names each event's endpoint: the one behind the interface the packet
    /// arrived on, else the one holding one of its addresses.
    pub fn name_endpoints(&self, events: &mut [(MonitorEvent, Vec<IpAddr>)]) -> Result<()> {
        let records = self.endpoints()?;
        for (event, addrs) in events {
            let by_interface = records
                .iter()
                .find(|r| r.ep.host_veth().as_deref() == Some(event.interface.as_str()));
            let by_address = || {
                addrs.iter().find_map(|a| {
                    records.iter().find(|r| match a {
                        IpAddr::V4(a) => r.ep.ip == Some(*a),
                        IpAddr::V6(a) => r.ep.ip6 == Some(*a),
                    })
                })
            };
            event.endpoint = by_interface.or_else(by_address).map(|r| r.ep.name.clone());
        }
        Ok(())
    }
}

impl Daemon {
    /// Its readers, opened apart from it (see [`Readers`]).
    pub fn readers(&self) -> Result<Readers> {
        let tables = match self.dp {
            Some(_) => Some(Tables {
                flows: FlowTable::open(&self.cfg.bpffs, netplane_common::abi::maps::CONNTRACK)?,
                flows6: FlowTable::open(&self.cfg.bpffs, netplane_common::abi::maps::CONNTRACK6)?,
                counters: Counters::open(&self.cfg.bpffs)?,
            }),
            None => None,
        };
        Ok(Readers {
            tables,
            records: std::sync::Mutex::new(Store::open_reader(&self.cfg.db())?),
            timeouts: self.cfg.timeouts,
            host_interfaces: std::iter::once(self.net.bridge.clone())
                .chain(self.uplink.clone())
                .collect(),
            proxied: self.forwarder.counters(),
        })
    }

    /// The data path's event maps, for the monitor's relay; none without
    /// a data path.
    pub fn take_event_maps(&mut self) -> Result<Option<EventMaps>> {
        self.dp
            .as_mut()
            .map(|dp| dp.take_event_maps().map_err(Error::from))
            .transpose()
    }

    /// What a metrics scrape takes from the daemon itself: overlay peers,
    /// DNS counts and reconcile durations, into `snapshot`.
    pub fn cluster_metrics(&self, snapshot: &mut metrics::Snapshot) -> Result<()> {
        for net in self.networks()? {
            snapshot
                .peers
                .extend(net.peers.into_iter().map(|p| (net.name.clone(), p.state)));
        }
        snapshot.dns = self.resolver.counts();
        snapshot.reconciles = self.reconciles.clone();
        Ok(())
    }
}

/// The destination column of `nat ls` for published rule `p`, served to
/// IPv6 clients too on every address or not (an IPv4-only endpoint's
/// port is, through the forwarder, unless a runtime shares it).
fn nat_destination(p: &PublishedPort, dual_stack: bool) -> String {
    match p.host_ip {
        IpAddr::V4(ip) if ip.is_unspecified() && dual_stack => "0.0.0.0/0,::/0".into(),
        IpAddr::V4(ip) if ip.is_unspecified() => "0.0.0.0/0".into(),
        IpAddr::V4(ip) => format!("{ip}/32"),
        IpAddr::V6(ip) if ip.is_unspecified() => "::/0".into(),
        IpAddr::V6(ip) => format!("{ip}/128"),
    }
}
