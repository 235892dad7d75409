//! Podman 4.3 with its CNI backend, netplane's plugin against the
//! reference `bridge` + `portmap` plugins, in the same run: the time from
//! `podman run -d -p 8080:80` to the container answering an outside
//! client on the published port; and the same with 1,000 ports published,
//! once each (portmap's iptables calls take most of a minute for that),
//! written beside criterion's results for the report.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use netplane_benches::write_measured_once;
use netplane_test_support::{HOST_IP, Host, WORLD_IP, podman::Podman, sh};

/// Where in `target/criterion` the many-ports runs are written; the
/// report reads them from there.
const PODMAN_PORTS_FILE: &str = "podman_ports.json";

/// The CNI plugins Podman's network is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plugins {
    /// netplane's plugin, its daemon up on the host.
    Netplane,
    /// `bridge` with `host-local` IPAM, then `portmap`, as the CNI
    /// project ships them.
    BridgePortmap,
}

impl Plugins {
    fn name(self) -> &'static str {
        match self {
            Plugins::Netplane => "netplane",
            Plugins::BridgePortmap => "cni_portmap",
        }
    }

    /// A host with Podman, whose CNI network `bench` is of these plugins.
    fn host(self) -> (Host, Podman) {
        let h = Host::new();
        let p = Podman::new(&h);
        match self {
            Plugins::Netplane => {
                h.up(&["--dns", WORLD_IP]);
                p.add_netplane_network(&h, "bench", "bench", "10.89.0.0/24");
            }
            Plugins::BridgePortmap => p.add_network(
                "bench",
                &format!(
                    r#"[{{"type":"bridge","bridge":"{}b","isGateway":true,"ipMasq":true,
                        "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.89.0.0/24"}}]],
                                 "routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{}"}}}},
                       {{"type":"portmap","capabilities":{{"portMappings":true}}}}]"#,
                    h.prefix,
                    h.dir.join("ipam").display()
                ),
            ),
        }
        (h, p)
    }
}

/// `podman run -d` of an HTTP server publishing `publish`, until a client
/// in the world fetches its page through port 8080; the container is
/// removed afterwards, untimed.
fn run_until_answered(h: &Host, p: &Podman, publish: &[&str]) -> Duration {
    let start = Instant::now();
    p.httpd("bench", "bench", publish);
    let fetch = format!(
        "ip netns exec {} curl -s --max-time 1 http://{HOST_IP}:8080/",
        h.world
    );
    let deadline = start + Duration::from_secs(600);
    while !sh(&fetch).status.success() {
        assert!(Instant::now() < deadline, "the container never answered");
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed();
    p.ok(&["rm", "-f", "-t", "0", "bench"]);
    took
}

fn podman_run(c: &mut Criterion) {
    let mut group = c.benchmark_group("podman_run");
    for plugins in [Plugins::Netplane, Plugins::BridgePortmap] {
        let (h, p) = plugins.host();
        group.bench_function(plugins.name(), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| run_until_answered(&h, &p, &["-p", "8080:80"]))
                    .sum()
            })
        });
    }
    group.finish();
}

/// Ports published by the many-ports run: 8080 and a range.
const MANY_PORTS: u32 = 1_000;
/// As many when the benchmark only runs once to show it works (`cargo
/// test`, which does not pass `--bench`).
const MANY_PORTS_TESTED: u32 = 10;

/// One `podman run` with [`MANY_PORTS`] published, for each set of
/// plugins; the seconds written to [`PODMAN_PORTS_FILE`].
fn many_ports(_: &mut Criterion) {
    let measured = std::env::args().any(|a| a == "--bench");
    let ports = if measured {
        MANY_PORTS
    } else {
        MANY_PORTS_TESTED
    };
    let range = format!("20000-{0}:20000-{0}", 20000 + ports - 2);
    let mut runs = serde_json::Map::new();
    runs.insert("ports".into(), ports.into());
    for plugins in [Plugins::Netplane, Plugins::BridgePortmap] {
        let (h, p) = plugins.host();
        let took = run_until_answered(&h, &p, &["-p", "8080:80", "-p", &range]);
        println!("podman run, {ports} ports, {}: {took:?}", plugins.name());
        runs.insert(plugins.name().into(), took.as_secs_f64().into());
    }
    if measured {
        write_measured_once(PODMAN_PORTS_FILE, &serde_json::Value::Object(runs));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(5));
    targets = podman_run, many_ports
}
criterion_main!(benches);
