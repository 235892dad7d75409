//! Real traffic through the host, netplane against Docker's iptables rules,
//! the CNI reference plugins, and plain forwarding (the ceiling), in the
//! same run: the time per
//! new connection through a published TCP port with 1, 1,000 and 10,000
//! ports published (the measured one last), and the wall and CPU time per
//! 64-byte UDP datagram through a published port.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use netplane_benches::{
    load::{Cost, Servers, connections, datagrams},
    topo::{Nat, Topo},
};

const NATS: [Nat; 4] = [Nat::Netplane, Nat::Iptables, Nat::Cni, Nat::Ceiling];

fn new_connections(c: &mut Criterion) {
    let mut group = c.benchmark_group("new_connection");
    group.throughput(Throughput::Elements(1));
    for published in [1u16, 1_000, 10_000] {
        for nat in NATS {
            // The ceiling has nothing published: measure it once. CNI's
            // portmap adds its rules one iptables call at a time: 10,000
            // take it longer to set up than this whole suite may run.
            if (nat == Nat::Ceiling && published > 1) || (nat == Nat::Cni && published > 1_000) {
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

/// Wall time per datagram, and the machine's CPU time per datagram.
fn udp_packets(c: &mut Criterion) {
    for (group_name, cost) in [("udp_64b", Cost::Wall), ("udp_64b_cpu", Cost::Cpu)] {
        let mut group = c.benchmark_group(group_name);
        group.throughput(Throughput::Elements(1));
        for nat in NATS {
            let topo = Topo::new(nat, 1);
            let servers = Servers::start(&topo);
            group.bench_function(nat.name(), |b| {
                b.iter_custom(|iters| datagrams(&topo, &servers, iters, cost))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = new_connections, udp_packets
}
criterion_main!(benches);
