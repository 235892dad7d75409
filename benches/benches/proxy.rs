//! The memory the userspace forwarder (`up --userland-proxy`) and Docker's
//! `docker-proxy` take to publish 1 TCP port and a 1,000-port range (with
//! a UDP port beside them), measured once: the netplane daemon (the
//! release binary, as run on a host) against the sum over Docker's
//! processes. Their speed is in the traffic benchmark.

use std::{collections::BTreeMap, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use netplane_benches::{
    topo::{Nat, Topo},
    write_measured_once,
};
use netplane_test_support::Host;

/// Where in `target/criterion` the memory figures are written (see
/// `xtask/src/report.rs`).
const MEMORY_FILE: &str = "proxy_memory.json";

/// RSS and PSS of process `pid`, in KiB, from its smaps_rollup: PSS
/// shares each page among the processes mapping it, so that the sum over
/// many processes running one binary counts its pages once.
fn memory_of(pid: u32) -> (u64, u64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_else(|e| panic!("smaps_rollup of {pid}: {e}"));
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in {rollup}"))
    };
    (field("Rss:"), field("Pss:"))
}

/// Memory of the two for `tcp_ports` TCP ports and one UDP port.
fn memory(_: &mut Criterion) {
    let mut figures: BTreeMap<String, BTreeMap<String, BTreeMap<&str, u64>>> = BTreeMap::new();
    let mut record = |who: &str, ports: u16, (rss, pss): (u64, u64)| {
        figures.entry(who.to_string()).or_default().insert(
            ports.to_string(),
            BTreeMap::from([("rss_kib", rss), ("pss_kib", pss)]),
        );
    };
    for tcp_ports in [1u16, 1_000] {
        let h = Host::new();
        h.up(&["--userland-proxy"]);
        let ep = h.name("web");
        h.np_ok(&["create", &ep]);
        let pid = h.daemon_pid().expect("the daemon's pid");
        let before = memory_of(pid);
        let mut publish = vec!["-p".to_string(), "8080:80/udp".to_string()];
        publish.extend(["-p".into(), "8080:80".into()]);
        if tcp_ports > 1 {
            let last = 20_000 + tcp_ports - 2;
            publish.extend(["-p".into(), format!("20000-{last}:20000-{last}")]);
        }
        let served = h.name("served");
        let mut args = vec!["create"];
        args.extend(publish.iter().map(String::as_str));
        args.push(&served);
        h.np_ok(&args);
        // Its listeners are tasks waiting on sockets: give the runtime a
        // moment to have started them all.
        std::thread::sleep(Duration::from_millis(500));
        let after = memory_of(pid);
        record("netplane-proxy", tcp_ports, after);
        record(
            "netplane-proxy-growth",
            tcp_ports,
            (
                after.0.saturating_sub(before.0),
                after.1.saturating_sub(before.1),
            ),
        );
        drop(h);

        let topo = Topo::new(Nat::DockerProxy, tcp_ports);
        let (rss, pss) = topo
            .docker_proxy_pids()
            .into_iter()
            .map(memory_of)
            .fold((0, 0), |(r, p), (r1, p1)| (r + r1, p + p1));
        record("docker-proxy", tcp_ports, (rss, pss));
    }
    write_measured_once(MEMORY_FILE, &figures);
    eprintln!("proxy memory: {figures:?}");
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = memory
}
criterion_main!(benches);
