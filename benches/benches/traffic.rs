//! Real traffic through the host, netplane (with the endpoint on the
//! bridge network, and on a user-defined network) against Docker's
//! iptables rules, the CNI reference plugins, and plain forwarding (the
//! ceiling), in the same run: the time per
//! new connection through a published TCP port with 1, 1,000 and 10,000
//! ports published (the measured one last), and the wall and CPU time per
//! 64-byte UDP datagram through a published port and out through
//! masquerade, and the latency of a one-byte request/response on an
//! established connection. Over IPv6 too: netplane's NAT66 and published
//! ports against ip6tables with Docker's rule shapes and the ceiling. And
//! the userspace forwarder (`--userland-proxy`) against Docker's
//! docker-proxy, the eBPF path beside them. And the uplink's XDP program
//! against tc alone, with each program's own cost from the kernel.

use std::{collections::BTreeMap, time::Duration};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use netplane_benches::{
    costs::Measurement,
    load::{Cost, Direction, Servers, connections, datagrams, round_trips},
    topo::{Nat, Topo},
    write_measured_once,
};

/// How long each benchmark is measured, unless it says otherwise.
const MEASURE: Duration = Duration::from_secs(3);

/// Those measured over IPv6 as well.
const NATS6: [Nat; 3] = [Nat::Netplane, Nat::Iptables, Nat::Ceiling];

const NATS: [Nat; 5] = [
    Nat::Netplane,
    Nat::NetplaneNetwork,
    Nat::Iptables,
    Nat::Cni,
    Nat::Ceiling,
];

fn new_connections(c: &mut Criterion) {
    let mut group = c.benchmark_group("new_connection");
    group.throughput(Throughput::Elements(1));
    for published in [1u16, 1_000, 10_000] {
        for nat in NATS {
            // The ceiling has nothing published: measure it once. CNI's
            // portmap adds its rules one iptables call at a time: 10,000
            // take it longer to set up than this whole suite may run.
            // On a user network netplane does the same per port: one count.
            let once = matches!(nat, Nat::Ceiling | Nat::NetplaneNetwork);
            if (once && published > 1) || (nat == Nat::Cni && published > 1_000) {
                continue;
            }
            let mut topo = Topo::new(nat, published);
            let _servers = Servers::start(&topo);
            group.bench_with_input(
                BenchmarkId::new(nat.name(), published),
                &published,
                |b, _| {
                    b.iter_custom(|iters| {
                        topo.collect_garbage();
                        connections(&topo, iters)
                    })
                },
            );
        }
    }
    group.finish();
}

/// Round trips of one byte each way on an established connection through
/// the published port.
fn request_response(c: &mut Criterion) {
    let mut group = c.benchmark_group("tcp_round_trip");
    group.throughput(Throughput::Elements(1));
    for nat in NATS {
        let topo = Topo::new(nat, 1);
        let _servers = Servers::start(&topo);
        group.bench_function(nat.name(), |b| {
            b.iter_custom(|iters| round_trips(&topo, iters))
        });
    }
    group.finish();
}

/// Both ways of UDP datagrams, by the name of their groups.
const BOTH_WAYS: [(Direction, &str); 2] = [
    (Direction::Inbound, "udp_64b"),
    (Direction::Outbound, "udp_64b_out"),
];

/// Wall time per datagram, and the machine's CPU time per datagram, in
/// through the published port and out through masquerade.
fn udp_packets(c: &mut Criterion) {
    udp_groups(c, "", &NATS, Topo::new, &BOTH_WAYS);
}

/// The groups of [`udp_packets`] for the `ways` given, their names ending
/// in `suffix`, for `nats` on the topologies `topo` makes.
fn udp_groups(
    c: &mut Criterion,
    suffix: &str,
    nats: &[Nat],
    topo: fn(Nat, u16) -> Topo,
    ways: &[(Direction, &str)],
) {
    for &(way, base) in ways {
        for (cost, cost_suffix) in [(Cost::Wall, ""), (Cost::Cpu, "_cpu")] {
            let mut group = c.benchmark_group(format!("{base}{suffix}{cost_suffix}"));
            group.throughput(Throughput::Elements(1));
            for &nat in nats {
                let topo = topo(nat, 1);
                let servers = Servers::start(&topo);
                group.bench_function(nat.name(), |b| {
                    b.iter_custom(|iters| datagrams(&topo, &servers, way, iters, cost))
                });
            }
            group.finish();
        }
    }
}

/// New connections through one published port, group `name`, for `nats`
/// on the topologies `topo` makes, each measured for `measure`.
fn connection_group(
    c: &mut Criterion,
    name: &str,
    nats: &[Nat],
    topo: fn(Nat, u16) -> Topo,
    measure: Duration,
) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    group.measurement_time(measure);
    for &nat in nats {
        let mut topo = topo(nat, 1);
        let _servers = Servers::start(&topo);
        group.bench_function(nat.name(), |b| {
            b.iter_custom(|iters| {
                topo.collect_garbage();
                connections(&topo, iters)
            })
        });
    }
    group.finish();
}

/// New connections and UDP both ways over IPv6, one port published.
fn ipv6(c: &mut Criterion) {
    connection_group(c, "new_connection_v6", &NATS6, Topo::new6, MEASURE);
    udp_groups(c, "_v6", &NATS6, Topo::new6, &BOTH_WAYS);
}

/// The eBPF path, netplane's userspace forwarder and Docker's
/// docker-proxy side by side: new connections and UDP in through one
/// published port (nothing is proxied on the way out).
fn proxies(c: &mut Criterion) {
    const PROXIES: [Nat; 3] = [Nat::Netplane, Nat::NetplaneProxy, Nat::DockerProxy];
    // A proxy's own connection to the endpoint closes first, so each
    // leaves a TIME_WAIT of 60 s on the host's side: one port of the
    // 28,232 of the ephemeral range. A sample run of 3 s made more
    // connections than that through the forwarder; 1.5 s (with the
    // warm-up) stays under it.
    connection_group(
        c,
        "new_connection_proxy",
        &PROXIES,
        Topo::new,
        Duration::from_millis(1500),
    );
    udp_groups(c, "_proxy", &PROXIES, Topo::new, &BOTH_WAYS[..1]);
}

/// Where in `target/criterion` each program's own cost is written (see
/// `xtask/src/report.rs`).
const PROGRAM_COSTS_FILE: &str = "program_costs.json";

/// Datagrams sent in through the published port while the kernel counts
/// each program's run time.
const COSTED_DATAGRAMS: u64 = 100_000;

/// The uplink's XDP program against tc alone, both with the world's
/// clients filling in checksums as a network card does: new connections
/// and UDP in through the published port, and each program's own cost
/// (run time over run count, from the kernel's statistics) under that
/// UDP, written to [`PROGRAM_COSTS_FILE`].
fn xdp(c: &mut Criterion) {
    const PATHS: [Nat; 2] = [Nat::Netplane, Nat::NetplaneXdp];
    connection_group(
        c,
        "new_connection_nic",
        &PATHS,
        Topo::with_nic_checksums,
        MEASURE,
    );
    udp_groups(
        c,
        "_nic",
        &PATHS,
        Topo::with_nic_checksums,
        &[(Direction::Inbound, "udp_64b")],
    );
    let mut figures = BTreeMap::new();
    for nat in PATHS {
        let topo = Topo::with_nic_checksums(nat, 1);
        let servers = Servers::start(&topo);
        // One run first, so that the flow exists and ARP is resolved.
        datagrams(&topo, &servers, Direction::Inbound, 1_000, Cost::Wall);
        let measurement = Measurement::start();
        datagrams(
            &topo,
            &servers,
            Direction::Inbound,
            COSTED_DATAGRAMS,
            Cost::Wall,
        );
        let costs = measurement.finish();
        assert!(!costs.is_empty(), "no program of netplane ran for {nat:?}");
        let costs: BTreeMap<String, serde_json::Value> = costs
            .into_iter()
            .map(|(name, cost)| {
                let figures = serde_json::json!({
                    "runs": cost.runs,
                    "ns_per_run": cost.ns_per_run(),
                });
                (name, figures)
            })
            .collect();
        eprintln!("program costs, {}: {costs:?}", nat.name());
        figures.insert(nat.name(), costs);
    }
    write_measured_once(PROGRAM_COSTS_FILE, &figures);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(MEASURE);
    targets = new_connections, request_response, udp_packets, ipv6, proxies, xdp
}
criterion_main!(benches);
