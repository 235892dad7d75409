//! The control plane, netplane against Docker's iptables rules and the CNI
//! reference plugins, in the same run: the time to publish 100, 1,000 and
//! 10,000 ports to a running endpoint, and the time to create one bridge
//! endpoint.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use netplane_benches::topo::{Nat, Topo};

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    for ports in [100u16, 1_000, 10_000] {
        for nat in [Nat::Netplane, Nat::Iptables, Nat::Cni] {
            // portmap adds its rules with an iptables call or more per
            // mapping, each reading the whole ruleset: 1,000 already take
            // minutes to add once.
            if nat == Nat::Cni && ports > 100 {
                continue;
            }
            let mut topo = Topo::new(nat, 1);
            group.bench_with_input(BenchmarkId::new(nat.name(), ports), &ports, |b, &n| {
                b.iter_custom(|iters| (0..iters).map(|_| topo.publish_ports(n)).sum())
            });
        }
    }
    group.finish();
}

fn create_endpoint(c: &mut Criterion) {
    let mut group = c.benchmark_group("create_endpoint");
    for nat in [Nat::Netplane, Nat::Cni] {
        let mut topo = Topo::new(nat, 1);
        group.bench_function(nat.name(), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| topo.create_endpoint()).sum())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(2));
    targets = publish, create_endpoint
}
criterion_main!(benches);
