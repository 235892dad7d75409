//! Traffic between endpoints on two hosts: netplane's overlay in VXLAN,
//! in GRE and routed without encapsulation, against Linux's own vxlan
//! device configured as flannel configures it, and plain routes without
//! encapsulation (the ceiling), in the same run: one-byte
//! request/response latency, 64-byte UDP datagrams (wall and CPU time per
//! datagram), and a bulk TCP transfer.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use netplane_benches::{
    load::Cost,
    overlay::{CHUNK, OverlayPair, OverlayServers, Tunnel, bulk, datagrams, round_trips},
};

const TUNNELS: [Tunnel; 5] = [
    Tunnel::Netplane,
    Tunnel::NetplaneGre,
    Tunnel::NetplaneDirect,
    Tunnel::KernelVxlan,
    Tunnel::Routed,
];

fn overlay(c: &mut Criterion) {
    for tunnel in TUNNELS {
        let pair = OverlayPair::new(tunnel);
        let servers = OverlayServers::start(&pair);
        let mut group = c.benchmark_group("overlay_tcp_round_trip");
        group.throughput(Throughput::Elements(1));
        group.bench_function(tunnel.name(), |b| {
            b.iter_custom(|iters| round_trips(&pair, iters))
        });
        group.finish();
        for (name, cost) in [
            ("overlay_udp_64b", Cost::Wall),
            ("overlay_udp_64b_cpu", Cost::Cpu),
        ] {
            let mut group = c.benchmark_group(name);
            group.throughput(Throughput::Elements(1));
            group.bench_function(tunnel.name(), |b| {
                b.iter_custom(|iters| datagrams(&pair, &servers, iters, cost))
            });
            group.finish();
        }
        let mut group = c.benchmark_group("overlay_tcp_bulk");
        group.throughput(Throughput::Bytes(CHUNK as u64));
        group.bench_function(tunnel.name(), |b| b.iter_custom(|iters| bulk(&pair, iters)));
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = overlay
}
criterion_main!(benches);
