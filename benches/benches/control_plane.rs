//! The control plane, netplane against Docker's iptables rules and the CNI
//! reference plugins, in the same run: the time to publish 100, 1,000 and
//! 10,000 ports to a running endpoint, and the time to create one bridge
//! endpoint; and the time `up` takes on a host with 1,000 endpoints and
//! 10,000 published ports.

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

/// Endpoints of the host the restart benchmark restarts, and ports
/// published on each.
const RESTART_ENDPOINTS: u16 = 1_000;
const PORTS_EACH: u16 = 10;
/// As many when the benchmark only runs once to show it works (`cargo
/// test`, which does not pass `--bench`): creating 1,000 endpoints takes
/// a minute.
const RESTART_ENDPOINTS_TESTED: u16 = 10;

/// `up` on a host that runs already, from the start to the point where
/// it serves the API: the pinned data path is adopted and every endpoint
/// in the store checked against the kernel and written to the maps again.
fn restart(c: &mut Criterion) {
    let mut group = c.benchmark_group("restart");
    let measured = std::env::args().any(|a| a == "--bench");
    let populated = if measured {
        RESTART_ENDPOINTS
    } else {
        RESTART_ENDPOINTS_TESTED
    };
    for endpoints in [0, populated] {
        let mut topo = Topo::new(Nat::Netplane, 1);
        topo.populate(endpoints, PORTS_EACH);
        group.bench_with_input(
            BenchmarkId::new("netplane", endpoints),
            &endpoints,
            |b, _| b.iter_custom(|iters| (0..iters).map(|_| topo.restart_daemon()).sum()),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(2));
    targets = publish, create_endpoint, restart
}
criterion_main!(benches);
