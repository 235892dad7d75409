//! Prometheus metrics: what the daemon reads from the data path and its own
//! state at a scrape, encoded in the OpenMetrics text format with
//! prometheus-client. Pure: [`crate::daemon::Daemon::metrics`] takes the
//! snapshot.

use std::{collections::BTreeMap, sync::atomic::AtomicU64, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use crate::types::{EndpointStats, ProxyCounters, TableUse};

/// A published port rule and what was translated under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortCounters {
    pub labels: PortLabels,
    pub packets: u64,
    pub bytes: u64,
    /// Drops while translating under the rule, by reason.
    pub drops: BTreeMap<String, u64>,
    /// What the userspace forwarder relayed under the rule, if it serves
    /// any of its ports.
    pub proxied: Option<ProxyCounters>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    pub endpoint: String,
    pub protocol: String,
    /// `0.0.0.0` for every address of the host.
    pub host_ip: String,
    /// A port, or a range `first-last`.
    pub host_port: String,
    pub container_port: String,
}

/// What made the daemon bring the kernel in line with its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconcile {
    /// `up`, with the endpoints in the store.
    Up,
    /// A change in the cluster store, with the overlay networks there.
    Cluster,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Trigger {
    trigger: &'static str,
}

/// Durations of the daemon's reconciles, by [`Reconcile`]: kept by the
/// daemon for its whole life, shown by every scrape.
#[derive(Clone, Debug)]
pub struct ReconcileDurations(Family<Trigger, Histogram, fn() -> Histogram>);

impl Default for ReconcileDurations {
    fn default() -> Self {
        // 1 ms to about 33 s.
        ReconcileDurations(Family::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        }))
    }
}

impl ReconcileDurations {
    pub fn observe(&self, what: Reconcile, took: Duration) {
        let trigger = match what {
            Reconcile::Up => "up",
            Reconcile::Cluster => "cluster",
        };
        self.0
            .get_or_create(&Trigger { trigger })
            .observe(took.as_secs_f64());
    }
}

/// Everything one scrape shows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub endpoints: Vec<EndpointStats>,
    /// Drops by reason, every interface together.
    pub drops: BTreeMap<String, u64>,
    pub ports: Vec<PortCounters>,
    /// Packets and bytes translated by masquerade.
    pub masquerade: (u64, u64),
    /// Drops while masquerading, by reason.
    pub masquerade_drops: BTreeMap<String, u64>,
    pub tables: Vec<TableUse>,
    /// One (network, state) per overlay peer.
    pub peers: Vec<(String, String)>,
    /// DNS queries, and those no upstream resolver answered.
    pub dns: (u64, u64),
    pub reconciles: ReconcileDurations,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Traffic {
    endpoint: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointDrop {
    endpoint: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortDirection {
    #[prometheus(flatten)]
    port: PortLabels,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortDrop {
    #[prometheus(flatten)]
    port: PortLabels,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Table {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Peer {
    network: String,
    state: String,
}

/// A counter family registered under `name` (without `_total`).
fn counters<L>(registry: &mut Registry, name: &str, help: &str) -> Family<L, Counter>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauges<L>(registry: &mut Registry, name: &str, help: &str) -> Family<L, Gauge>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

/// A counter family labelled only by `reason`, registered under `name`.
fn by_reason(registry: &mut Registry, name: &str, help: &str, counts: &BTreeMap<String, u64>) {
    let family = counters(registry, name, help);
    for (reason, n) in counts {
        family
            .get_or_create(&Reason {
                reason: reason.clone(),
            })
            .inc_by(*n);
    }
}

/// `s` in the OpenMetrics text format.
pub fn render(s: &Snapshot) -> String {
    let mut registry = <Registry>::with_prefix("netplane");

    let packets = counters(
        &mut registry,
        "endpoint_packets",
        "Packets an endpoint received (rx) or sent (tx)",
    );
    let bytes = counters(
        &mut registry,
        "endpoint_bytes",
        "Bytes an endpoint received (rx) or sent (tx), Ethernet header included",
    );
    let endpoint_drops = counters(
        &mut registry,
        "endpoint_drops",
        "Packets an endpoint sent that the data path dropped, by reason",
    );
    for e in &s.endpoints {
        for (direction, p, b) in [
            ("rx", e.rx_packets, e.rx_bytes),
            ("tx", e.tx_packets, e.tx_bytes),
        ] {
            let labels = Traffic {
                endpoint: e.endpoint.clone(),
                direction,
            };
            packets.get_or_create(&labels).inc_by(p);
            bytes.get_or_create(&labels).inc_by(b);
        }
        for (reason, n) in &e.drops {
            endpoint_drops
                .get_or_create(&EndpointDrop {
                    endpoint: e.endpoint.clone(),
                    reason: reason.clone(),
                })
                .inc_by(*n);
        }
    }

    by_reason(
        &mut registry,
        "drops",
        "Packets the data path dropped, by reason",
        &s.drops,
    );

    let port_packets = counters(
        &mut registry,
        "published_port_packets",
        "Packets translated under a published port, both directions",
    );
    let port_bytes = counters(
        &mut registry,
        "published_port_bytes",
        "Bytes translated under a published port, both directions",
    );
    let port_drops = counters(
        &mut registry,
        "published_port_drops",
        "Packets dropped while being translated under a published port, by reason",
    );
    let proxy_connections = counters(
        &mut registry,
        "proxy_connections",
        "TCP connections and UDP sessions the userspace forwarder opened under a published port",
    );
    let proxy_active = gauges(
        &mut registry,
        "proxy_active_connections",
        "TCP connections and UDP sessions the userspace forwarder relays now under a published port",
    );
    let proxy_bytes = counters(
        &mut registry,
        "proxy_bytes",
        "Payload bytes the userspace forwarder relayed under a published port, by direction",
    );
    let proxy_refused = counters(
        &mut registry,
        "proxy_refused",
        "Connections and UDP sessions the userspace forwarder refused under a published port, by reason",
    );
    for p in &s.ports {
        port_packets.get_or_create(&p.labels).inc_by(p.packets);
        port_bytes.get_or_create(&p.labels).inc_by(p.bytes);
        for (reason, n) in &p.drops {
            port_drops
                .get_or_create(&PortDrop {
                    port: p.labels.clone(),
                    reason: reason.clone(),
                })
                .inc_by(*n);
        }
        let Some(proxied) = &p.proxied else { continue };
        proxy_connections
            .get_or_create(&p.labels)
            .inc_by(proxied.connections);
        proxy_active
            .get_or_create(&p.labels)
            .set(saturating_i64(proxied.active));
        for (direction, n) in [("in", proxied.bytes_in), ("out", proxied.bytes_out)] {
            proxy_bytes
                .get_or_create(&PortDirection {
                    port: p.labels.clone(),
                    direction,
                })
                .inc_by(n);
        }
        for (reason, n) in &proxied.refused {
            proxy_refused
                .get_or_create(&PortDrop {
                    port: p.labels.clone(),
                    reason: reason.clone(),
                })
                .inc_by(*n);
        }
    }
    let masquerade_packets = Counter::<u64, AtomicU64>::default();
    masquerade_packets.inc_by(s.masquerade.0);
    registry.register(
        "masquerade_packets",
        "Packets translated by masquerade, both directions",
        masquerade_packets,
    );
    let masquerade_bytes = Counter::<u64, AtomicU64>::default();
    masquerade_bytes.inc_by(s.masquerade.1);
    registry.register(
        "masquerade_bytes",
        "Bytes translated by masquerade, both directions",
        masquerade_bytes,
    );
    by_reason(
        &mut registry,
        "masquerade_drops",
        "Packets dropped while being masqueraded, by reason",
        &s.masquerade_drops,
    );

    let entries = gauges(
        &mut registry,
        "table_entries",
        "Entries in a data path table",
    );
    let capacity = gauges(
        &mut registry,
        "table_capacity",
        "Entries a data path table holds at most",
    );
    for t in &s.tables {
        let labels = Table { map: t.map.clone() };
        entries
            .get_or_create(&labels)
            .set(saturating_i64(t.entries));
        capacity
            .get_or_create(&labels)
            .set(saturating_i64(t.capacity));
    }

    let peers = gauges(
        &mut registry,
        "overlay_peers",
        "Hosts this one sends overlay traffic to, by network and state",
    );
    for (network, state) in &s.peers {
        peers
            .get_or_create(&Peer {
                network: network.clone(),
                state: state.clone(),
            })
            .inc();
    }

    let queries = Counter::<u64, AtomicU64>::default();
    queries.inc_by(s.dns.0);
    registry.register(
        "dns_queries",
        "DNS queries endpoints sent to the embedded server",
        queries,
    );
    let failures = Counter::<u64, AtomicU64>::default();
    failures.inc_by(s.dns.1);
    registry.register(
        "dns_failures",
        "DNS queries no upstream resolver answered",
        failures,
    );

    registry.register_with_unit(
        "reconcile_duration",
        "How long the daemon took to bring the kernel in line with its state, by trigger",
        Unit::Seconds,
        s.reconciles.0.clone(),
    );

    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_figure_appears_with_its_labels() {
        let s = Snapshot {
            endpoints: vec![EndpointStats {
                endpoint: "web".into(),
                interface: "npv1".into(),
                rx_packets: 3,
                rx_bytes: 300,
                tx_packets: 2,
                tx_bytes: 200,
                drops: BTreeMap::from([("spoofed".into(), 4)]),
            }],
            drops: BTreeMap::from([("spoofed".into(), 4), ("ct_full".into(), 0)]),
            ports: vec![PortCounters {
                labels: PortLabels {
                    endpoint: "web".into(),
                    protocol: "tcp".into(),
                    host_ip: "0.0.0.0".into(),
                    host_port: "8080".into(),
                    container_port: "80".into(),
                },
                packets: 7,
                bytes: 700,
                drops: BTreeMap::from([("ct_full".into(), 2)]),
                proxied: Some(ProxyCounters {
                    connections: 4,
                    active: 1,
                    bytes_in: 10,
                    bytes_out: 20,
                    refused: BTreeMap::from([("over_limit".into(), 6)]),
                }),
            }],
            masquerade: (5, 500),
            masquerade_drops: BTreeMap::from([("nat_ports_exhausted".into(), 3)]),
            tables: vec![TableUse {
                map: "NP_CONNTRACK".into(),
                entries: 4,
                capacity: 262_144,
            }],
            peers: vec![("ov".into(), "static".into())],
            dns: (9, 1),
            reconciles: ReconcileDurations::default(),
        };
        s.reconciles
            .observe(Reconcile::Up, Duration::from_millis(250));
        s.reconciles
            .observe(Reconcile::Cluster, Duration::from_micros(1500));
        s.reconciles
            .observe(Reconcile::Cluster, Duration::from_millis(3));
        let text = render(&s);
        for line in [
            "netplane_endpoint_packets_total{endpoint=\"web\",direction=\"rx\"} 3",
            "netplane_endpoint_bytes_total{endpoint=\"web\",direction=\"tx\"} 200",
            "netplane_endpoint_drops_total{endpoint=\"web\",reason=\"spoofed\"} 4",
            "netplane_drops_total{reason=\"ct_full\"} 0",
            "netplane_published_port_packets_total{endpoint=\"web\",protocol=\"tcp\",host_ip=\"0.0.0.0\",host_port=\"8080\",container_port=\"80\"} 7",
            "netplane_masquerade_bytes_total 500",
            "netplane_table_entries{map=\"NP_CONNTRACK\"} 4",
            "netplane_table_capacity{map=\"NP_CONNTRACK\"} 262144",
            "netplane_overlay_peers{network=\"ov\",state=\"static\"} 1",
            "netplane_dns_queries_total 9",
            "netplane_dns_failures_total 1",
            "netplane_published_port_drops_total{endpoint=\"web\",protocol=\"tcp\",host_ip=\"0.0.0.0\",host_port=\"8080\",container_port=\"80\",reason=\"ct_full\"} 2",
            "netplane_masquerade_drops_total{reason=\"nat_ports_exhausted\"} 3",
            "netplane_proxy_connections_total{endpoint=\"web\",protocol=\"tcp\",host_ip=\"0.0.0.0\",host_port=\"8080\",container_port=\"80\"} 4",
            "netplane_proxy_active_connections{endpoint=\"web\",protocol=\"tcp\",host_ip=\"0.0.0.0\",host_port=\"8080\",container_port=\"80\"} 1",
            "netplane_proxy_bytes_total{endpoint=\"web\",protocol=\"tcp\",host_ip=\"0.0.0.0\",host_port=\"8080\",container_port=\"80\",direction=\"out\"} 20",
            "netplane_proxy_refused_total{endpoint=\"web\",protocol=\"tcp\",host_ip=\"0.0.0.0\",host_port=\"8080\",container_port=\"80\",reason=\"over_limit\"} 6",
            "netplane_reconcile_duration_seconds_sum{trigger=\"up\"} 0.25",
            "netplane_reconcile_duration_seconds_count{trigger=\"up\"} 1",
            "netplane_reconcile_duration_seconds_count{trigger=\"cluster\"} 2",
            "netplane_reconcile_duration_seconds_bucket{le=\"0.002\",trigger=\"cluster\"} 1",
            "netplane_reconcile_duration_seconds_bucket{le=\"0.004\",trigger=\"cluster\"} 2",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
