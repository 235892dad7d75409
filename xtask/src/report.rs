//! benches/RESULTS.md from criterion's output: the medians of every
//! benchmark, side by side, with the ratios the benchmark issue asks for.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Context;
use serde::Deserialize;

/// One benchmark's median, as criterion stored it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub group: String,
    pub function: String,
    pub value: Option<String>,
    pub median_ns: f64,
}

#[derive(Deserialize)]
struct BenchmarkJson {
    group_id: String,
    function_id: Option<String>,
    value_str: Option<String>,
}

#[derive(Deserialize)]
struct Estimate {
    point_estimate: f64,
}

#[derive(Deserialize)]
struct Estimates {
    median: Estimate,
}

/// Where in criterion's directory the Podman benchmark writes its runs
/// with many ports, each timed once: `{"ports": N, PLUGINS: seconds...}`.
const PODMAN_PORTS_FILE: &str = "podman_ports.json";
/// The group those runs are rows of.
const PODMAN_PORTS_GROUP: &str = "podman_many_ports";

/// Where in criterion's directory the proxy benchmark writes the memory it
/// measured once: who (`netplane-proxy`, `netplane-proxy-growth`,
/// `docker-proxy`), then TCP ports published, then `rss_kib`/`pss_kib`.
const PROXY_MEMORY_FILE: &str = "proxy_memory.json";

/// What [`PROXY_MEMORY_FILE`] holds.
pub type Memory = BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>;

/// Where in criterion's directory the traffic benchmark writes each eBPF
/// program's own cost under UDP in through a published port: path
/// (`netplane`, `netplane-xdp`), then program, then `runs`/`ns_per_run`.
const PROGRAM_COSTS_FILE: &str = "program_costs.json";

/// What [`PROGRAM_COSTS_FILE`] holds.
pub type ProgramCosts = BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>;

/// Where in criterion's directory the cluster benchmark writes its runs,
/// one per cluster size.
const CLUSTER_FILE: &str = "cluster.json";

/// One run of the cluster benchmark, as it wrote it.
#[derive(Debug, Default, Deserialize)]
pub struct ClusterRun {
    pub hosts: usize,
    pub join_ms: Vec<u64>,
    pub converge_ms: u64,
    pub ping_all_pairs_ms: u64,
    pub rss_kib: Vec<u64>,
    pub store_keys: u64,
    pub host_gone_ms: u64,
}

/// What benchmarks measured once each and wrote beside criterion's
/// results; empty where a benchmark did not run.
#[derive(Debug, Default)]
pub struct MeasuredOnce {
    pub memory: Memory,
    pub costs: ProgramCosts,
    pub cluster: Vec<ClusterRun>,
}

/// Every [`MeasuredOnce`] figure under criterion's directory.
pub fn read_measured_once(dir: &Path) -> anyhow::Result<MeasuredOnce> {
    Ok(MeasuredOnce {
        memory: read_once(dir, PROXY_MEMORY_FILE)?,
        costs: read_once(dir, PROGRAM_COSTS_FILE)?,
        cluster: read_once(dir, CLUSTER_FILE)?,
    })
}

/// Figures a benchmark measured once and wrote to `file` in `dir`.
fn read_once<T: serde::de::DeserializeOwned + Default>(
    dir: &Path,
    file: &str,
) -> anyhow::Result<T> {
    match std::fs::read(dir.join(file)) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {file}")),
        Err(_) => Ok(T::default()),
    }
}

/// Every benchmark under criterion's directory (`target/criterion`), and
/// the Podman benchmark's single runs.
pub fn read(dir: &Path) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    if let Ok(bytes) = std::fs::read(dir.join(PODMAN_PORTS_FILE)) {
        let runs: BTreeMap<String, f64> = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {PODMAN_PORTS_FILE}"))?;
        let ports = runs.get("ports").map(|n| format!("{n:.0}"));
        for (plugins, secs) in runs.iter().filter(|(k, _)| *k != "ports") {
            rows.push(Row {
                group: PODMAN_PORTS_GROUP.into(),
                function: plugins.clone(),
                value: ports.clone(),
                median_ns: secs * 1e9,
            });
        }
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "new") {
                    let bench: BenchmarkJson = serde_json::from_slice(
                        &std::fs::read(path.join("benchmark.json"))
                            .with_context(|| format!("reading {}", path.display()))?,
                    )?;
                    let est: Estimates =
                        serde_json::from_slice(&std::fs::read(path.join("estimates.json"))?)?;
                    rows.push(Row {
                        group: bench.group_id,
                        function: bench.function_id.unwrap_or_default(),
                        value: bench.value_str,
                        median_ns: est.median.point_estimate,
                    });
                } else if path
                    .file_name()
                    .is_none_or(|n| n != "base" && n != "report")
                {
                    stack.push(path);
                }
            }
        }
    }
    Ok(rows)
}

fn median(rows: &[Row], group: &str, function: &str, value: Option<&str>) -> Option<f64> {
    rows.iter()
        .find(|r| r.group == group && r.function == function && r.value.as_deref() == value)
        .map(|r| r.median_ns)
}

fn cell(ns: Option<f64>) -> String {
    ns.map_or("–".into(), |ns| format!("{ns:.0}"))
}

fn ratio(num: Option<f64>, den: Option<f64>) -> String {
    match (num, den) {
        (Some(n), Some(d)) if d > 0.0 => format!("{:.2}x", n / d),
        _ => "–".into(),
    }
}

/// The report, for rows of one run on `machine`.
pub fn render(rows: &[Row], once: &MeasuredOnce, machine: &str) -> String {
    let mut out = String::from(
        "# netplane benchmark results\n\n\
         Written by `cargo xtask bench` from criterion's medians; every figure below\n\
         was measured in the same run.\n\n",
    );
    let _ = writeln!(out, "Machine: {machine}\n");

    let sizes = values(rows, "per_packet");
    if !sizes.is_empty() {
        out.push_str(
            "## Per-packet program cost (BPF_PROG_TEST_RUN)\n\n\
             Median ns per packet, the kernel's own measurement of single runs, with\n\
             as many published ports and tracked flows in the maps as the column says.\n\
             The floor is an empty program measured the same way (the kernel's timer\n\
             and per-run setup); `net` is a path's median minus the floor's, an\n\
             empty XDP program's for the `xdp_` rows. `dnat_established_ack` and\n\
             `xdp_dnat_established_ack` take the same segment of a published-port\n\
             flow, in tc and in XDP.\n\n",
        );
        let _ = writeln!(out, "| path | {} |", sizes.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(sizes.len()));
        let paths: BTreeMap<&str, ()> = rows
            .iter()
            .filter(|r| r.group == "per_packet")
            .map(|r| (r.function.as_str(), ()))
            .collect();
        for path in paths.keys() {
            let cells: Vec<String> = sizes
                .iter()
                .map(|n| {
                    let v = median(rows, "per_packet", path, Some(n));
                    // XDP's runs are set up differently: their own floor.
                    let floor_of = if path.starts_with("xdp_") {
                        "xdp_floor_empty_program"
                    } else {
                        "floor_empty_program"
                    };
                    let floor = median(rows, "per_packet", floor_of, Some(n));
                    match (v, floor) {
                        (Some(v), Some(f)) if *path != floor_of => {
                            format!("{v:.0} (net {:.0})", v - f)
                        }
                        _ => cell(v),
                    }
                })
                .collect();
            let _ = writeln!(out, "| {path} | {} |", cells.join(" | "));
        }
        out.push('\n');
    }

    ms_by_flows_section(
        &mut out,
        rows,
        "flow_table_read",
        "## Reading the flow table\n\n\
         Median ms to read every tracked flow (two entries each) into the\n\
         daemon, as `ct ls`, a metrics scrape and every garbage collection do\n\
         (BPF_MAP_LOOKUP_BATCH).\n\n",
    );
    ms_by_flows_section(
        &mut out,
        rows,
        "full_table_sweep",
        "## Sweeping a full flow table\n\n\
         Median ms of the one packet that runs a sweep: a new flow against a\n\
         full table of live flows, which the programs search for expired ones\n\
         (16,384 entries a sweep, on from where the last stopped; at most one\n\
         sweep a second), finding none, before refusing the flow (the kernel's\n\
         own measurement, BPF_PROG_TEST_RUN).\n\n",
    );

    let published = values(rows, "new_connection");
    if !published.is_empty() {
        out.push_str(
            "## New connections through a published TCP port\n\n\
             Median µs per connection (connect, a byte each way, close; client\n\
             addresses and ports vary, so every connection is new), with this many\n\
             ports published, the measured one last. A speed-up is the other's time\n\
             over netplane's; the ceiling is plain forwarding with nothing published.\n\n\
             | published | netplane | iptables | CNI | ceiling | vs iptables | vs CNI | vs ceiling |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
        let ceiling = median(rows, "new_connection", "ceiling", Some("1"));
        for n in &published {
            let np = median(rows, "new_connection", "netplane", Some(n));
            let ipt = median(rows, "new_connection", "iptables", Some(n));
            let cni = median(rows, "new_connection", "cni", Some(n));
            let us = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.1}", v / 1000.0));
            let _ = writeln!(
                out,
                "| {n} | {} | {} | {} | {} | {} | {} | {} |",
                us(np),
                us(ipt),
                us(cni),
                us(ceiling),
                ratio(ipt, np),
                ratio(cni, np),
                ratio(ceiling, np),
            );
        }
        out.push('\n');
    }

    udp_section(
        &mut out,
        rows,
        ("udp_64b", "udp_64b_cpu"),
        "64-byte UDP in through a published port",
    );
    udp_section(
        &mut out,
        rows,
        ("udp_64b_out", "udp_64b_out_cpu"),
        "64-byte UDP out through masquerade",
    );

    let rtt = |n: &str| median(rows, "tcp_round_trip", n, None);
    if NATS.iter().any(|n| rtt(n).is_some()) {
        out.push_str(
            "## TCP request/response latency through a published port\n\n\
             Median µs per round trip of one byte each way on an established\n\
             connection. On this 2-core VM most of it is waking the two processes\n\
             in turn.\n\n\
             | | µs per round trip | vs netplane |\n|---|---|---|\n",
        );
        for n in NATS {
            let _ = writeln!(
                out,
                "| {n} | {} | {} |",
                rtt(n).map_or("–".into(), |v| format!("{:.1}", v / 1000.0)),
                ratio(rtt(n), rtt("netplane")),
            );
        }
        out.push('\n');
    }

    network_section(&mut out, rows);
    ipv6_section(&mut out, rows);

    let counts = values(rows, "publish");
    if !counts.is_empty() {
        out.push_str(
            "## Publishing ports\n\n\
             Median ms to publish this many more ports to a running endpoint:\n\
             netplane's `port add` of a range (state store, checks, data path),\n\
             one `iptables-restore --noflush` with Docker's DNAT rule per port,\n\
             and a CNI `portmap` ADD with a mapping per port. A speed-up is the\n\
             other's time over netplane's.\n\n\
             | ports | netplane | iptables-restore | CNI portmap | vs iptables | vs CNI |\n\
             |---|---|---|---|---|---|\n",
        );
        for n in &counts {
            let get = |f| median(rows, "publish", f, Some(n));
            let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.2}", v / 1e6));
            let (np, ipt, cni) = (get("netplane"), get("iptables"), get("cni"));
            let _ = writeln!(
                out,
                "| {n} | {} | {} | {} | {} | {} |",
                ms(np),
                ms(ipt),
                ms(cni),
                ratio(ipt, np),
                ratio(cni, np),
            );
        }
        out.push('\n');
    }

    overlay_section(&mut out, rows);

    let create = |n: &str| median(rows, "create_endpoint", n, None);
    if create("netplane").is_some() || create("cni").is_some() {
        let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.1}", v / 1e6));
        let _ = writeln!(
            out,
            "## Creating a bridge endpoint\n\n\
             Median ms: netplane's `create` (namespace, veth, address, route,\n\
             data path attached, state stored) against the CNI `bridge` plugin's\n\
             ADD with `host-local` IPAM into a namespace made beforehand.\n\n\
             | netplane | CNI bridge | vs CNI |\n|---|---|---|\n\
             | {} | {} | {} |\n",
            ms(create("netplane")),
            ms(create("cni")),
            ratio(create("cni"), create("netplane")),
        );
    }

    podman_section(&mut out, rows);
    proxy_section(&mut out, rows, &once.memory);
    xdp_section(&mut out, rows, &once.costs);
    cluster_section(&mut out, &once.cluster);

    let populated = values(rows, "restart");
    if !populated.is_empty() {
        out.push_str(
            "## `up` on a host that runs\n\n\
             Median ms from the start of `up` to the point where it serves the API,\n\
             on a host whose daemon stopped while the data path kept running: the\n\
             pins adopted, the programs loaded and swapped into the links, every\n\
             endpoint in the store checked against the kernel and written to the\n\
             maps again. The benchmark's own endpoint (2 ports) plus this many more,\n\
             with 10 ports published on each.\n\n\
             | endpoints added | ports added | ms |\n|---|---|---|\n",
        );
        for n in &populated {
            let ms = median(rows, "restart", "netplane", Some(n)).map(|v| v / 1e6);
            let ports = n
                .parse::<u32>()
                .map_or("–".into(), |e| (e * 10).to_string());
            let _ = writeln!(
                out,
                "| {n} | {ports} | {} |",
                ms.map_or("–".into(), |v| format!("{v:.0}"))
            );
        }
        out.push('\n');
    }
    out
}

/// Whether any group of `figures` (group, what, unit) has a median for
/// `who`: a section whose benchmark did not run is left out.
fn any_measured(rows: &[Row], figures: &[(&str, &str, f64)], who: &str) -> bool {
    figures
        .iter()
        .any(|(group, _, _)| median(rows, group, who, None).is_some())
}

/// The userspace forwarder against docker-proxy, the eBPF path beside.
fn proxy_section(out: &mut String, rows: &[Row], memory: &Memory) {
    const WHO: [&str; 3] = ["netplane", "netplane-proxy", "docker-proxy"];
    let figures = [
        ("new_connection_proxy", "new TCP connection, µs", 1e3),
        ("udp_64b_proxy", "64-byte UDP datagram in, ns", 1.0),
        ("udp_64b_proxy_cpu", "the same, CPU ns", 1.0),
    ];
    if !any_measured(rows, &figures, "netplane-proxy") {
        return;
    }
    out.push_str(
        "## The userspace forwarder against docker-proxy\n\n\
         One published port (TCP and UDP) to the endpoint, medians: netplane's\n\
         eBPF path, netplane's forwarder (`up --userland-proxy`: one daemon\n\
         relaying every port, TCP spliced) and Docker 20.10's `docker-proxy`\n\
         (Debian's `docker.io`, one process per port and protocol).\n\n\
         | | eBPF | forwarder | docker-proxy | docker-proxy / forwarder | forwarder / eBPF |\n\
         |---|---|---|---|---|---|\n",
    );
    three_way_rows(out, rows, &figures, WHO, [(2, 1), (1, 0)]);
    if memory.is_empty() {
        return;
    }
    out.push_str(
        "Memory to publish TCP ports and one UDP port, measured once after\n\
         they are up: the whole netplane daemon (and its growth over the same\n\
         daemon with nothing published), against the sum over Docker's\n\
         processes. PSS shares each page among the processes mapping it.\n\n\
         | TCP ports | netplane RSS, MiB | netplane PSS, MiB | growth (PSS), MiB | docker-proxy RSS, MiB | docker-proxy PSS, MiB | docker-proxy / netplane (PSS) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let ports: Vec<&String> = memory.values().flat_map(|m| m.keys()).collect();
    let mut ports: Vec<&String> = ports
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    ports.sort_by_key(|p| p.parse::<u64>().unwrap_or(u64::MAX));
    for n in ports {
        let kib = |who: &str, what: &str| memory.get(who)?.get(n)?.get(what).copied();
        let mib = |v: Option<u64>| v.map_or("–".into(), |v| format!("{:.1}", v as f64 / 1024.0));
        let _ = writeln!(
            out,
            "| {n} | {} | {} | {} | {} | {} | {} |",
            mib(kib("netplane-proxy", "rss_kib")),
            mib(kib("netplane-proxy", "pss_kib")),
            mib(kib("netplane-proxy-growth", "pss_kib")),
            mib(kib("docker-proxy", "rss_kib")),
            mib(kib("docker-proxy", "pss_kib")),
            ratio(
                kib("docker-proxy", "pss_kib").map(|v| v as f64),
                kib("netplane-proxy", "pss_kib").map(|v| v as f64)
            ),
        );
    }
    out.push('\n');
}

/// The uplink's XDP program against tc alone, and each program's cost.
fn xdp_section(out: &mut String, rows: &[Row], costs: &ProgramCosts) {
    let figures = [
        ("new_connection_nic", "new TCP connection, µs", 1e3),
        ("udp_64b_nic", "64-byte UDP datagram in, ns", 1.0),
        ("udp_64b_nic_cpu", "the same, CPU ns", 1.0),
    ];
    if !any_measured(rows, &figures, "netplane-xdp") {
        return;
    }
    out.push_str(
        "## XDP on the uplink against tc alone\n\n\
         One published port to the endpoint, medians, with the world's clients\n\
         filling in checksums as a network card does (both columns): netplane\n\
         with its tc programs only, and with `--xdp native` taking established\n\
         flows before the kernel allocates an skb.\n\n\
         | | tc only | XDP | tc / XDP |\n|---|---|---|---|\n",
    );
    for (group, what, unit) in figures {
        let of = |who: &str| median(rows, group, who, None);
        let cell = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.1}", v / unit));
        let (tc, xdp) = (of("netplane"), of("netplane-xdp"));
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {} |",
            cell(tc),
            cell(xdp),
            ratio(tc, xdp)
        );
    }
    out.push('\n');
    if costs.is_empty() {
        return;
    }
    out.push_str(
        "Each program's own cost while 100,000 datagrams went in through the\n\
         published port, from the kernel's statistics (BPF_ENABLE_STATS: run\n\
         time over run count; names cut to 15 bytes by the kernel). The socket\n\
         programs run for the benchmark's own client and server.\n\n\
         | path | program | runs | ns per run |\n|---|---|---|---|\n",
    );
    for (path, programs) in costs {
        for (program, figures) in programs {
            let figure = |name: &str| figures.get(name).copied().unwrap_or(f64::NAN);
            let _ = writeln!(
                out,
                "| {path} | {program} | {:.0} | {:.0} |",
                figure("runs"),
                figure("ns_per_run")
            );
        }
    }
    out.push('\n');
}

/// Hosts through etcd, by cluster size.
fn cluster_section(out: &mut String, runs: &[ClusterRun]) {
    if runs.is_empty() {
        return;
    }
    out.push_str(
        "## A cluster through etcd\n\n\
         Simulated hosts, each its own netplane daemon in a namespace, on one\n\
         switch with a three-member etcd, all on one overlay network, session\n\
         TTL 3 s. Join: from a host's `up` until it knows every host up before\n\
         it. Converged: from the last `up` until every host knows every other.\n\
         Pinged: one ping from each host's endpoint to every other host's, in\n\
         turn. Gone: from kill -9 of a daemon until no other host has its\n\
         route (its endpoint's name goes in the same resync). Once each, in one run.\n\n\
         | hosts | join, median ms | join, max ms | converged, ms | all pairs pinged, ms | daemon RSS, mean MiB | etcd keys | keys per host | killed host gone, ms |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for run in runs {
        let mut join = run.join_ms.clone();
        join.sort_unstable();
        let rss = run.rss_kib.iter().sum::<u64>() as f64 / run.rss_kib.len().max(1) as f64;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1} | {} | {:.1} | {} |",
            run.hosts,
            join.get(join.len() / 2).copied().unwrap_or_default(),
            join.last().copied().unwrap_or_default(),
            run.converge_ms,
            run.ping_all_pairs_ms,
            rss / 1024.0,
            run.store_keys,
            run.store_keys as f64 / run.hosts.max(1) as f64,
            run.host_gone_ms,
        );
    }
    out.push('\n');
}

/// Podman with netplane's CNI plugin against `bridge` + `portmap`.
fn podman_section(out: &mut String, rows: &[Row]) {
    let run = |plugins: &str| median(rows, "podman_run", plugins, None);
    if run("netplane").is_none() && run("cni_portmap").is_none() {
        return;
    }
    let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.0}", v / 1e6));
    let _ = writeln!(
        out,
        "## Podman: from `podman run` to an answer\n\n\
         Podman 4.3 with its CNI backend (runc, a busybox root file system):\n\
         median ms from the start of `podman run -d -p 8080:80 ... httpd` to the\n\
         first page an outside client fetches through the published port, with\n\
         netplane's plugin and with the reference `bridge` (`host-local` IPAM)\n\
         and `portmap` plugins. Podman's own work (storage, runc, conmon) is in\n\
         both.\n\n\
         | ports | netplane | bridge + portmap | vs portmap |\n|---|---|---|---|\n\
         | 1 | {} | {} | {} |",
        ms(run("netplane")),
        ms(run("cni_portmap")),
        ratio(run("cni_portmap"), run("netplane")),
    );
    for n in values(rows, PODMAN_PORTS_GROUP) {
        let once = |plugins: &str| median(rows, PODMAN_PORTS_GROUP, plugins, Some(&n));
        let _ = writeln!(
            out,
            "| {n} (one run each) | {} | {} | {} |",
            ms(once("netplane")),
            ms(once("cni_portmap")),
            ratio(once("cni_portmap"), once("netplane")),
        );
    }
    out.push('\n');
}

/// The ways of joining two hosts' endpoints, in the order the overlay
/// table lists them.
const TUNNELS: [&str; 5] = [
    "netplane",
    "netplane_gre",
    "netplane_none",
    "kernel_vxlan",
    "no_overlay",
];

/// Bytes the bulk benchmark writes per iteration.
const BULK_CHUNK: f64 = 65536.0;

/// The overlay table: netplane's VXLAN against the kernel's and no
/// encapsulation.
fn overlay_section(out: &mut String, rows: &[Row]) {
    let get = |group: &str, t: &str| median(rows, group, t, None);
    if TUNNELS
        .iter()
        .all(|t| get("overlay_tcp_round_trip", t).is_none())
    {
        return;
    }
    out.push_str(
        "## Overlay between two hosts\n\n\
         An endpoint on each of two hosts on one underlay switch, joined by\n\
         netplane's overlay (VXLAN, `netplane_gre` GRE, both pushed and taken\n\
         off in eBPF; `netplane_none` routed by the programs without\n\
         encapsulation), by Linux's vxlan device set up as flannel's vxlan\n\
         backend sets it up, or by plain routes without encapsulation (the\n\
         ceiling). Medians: µs per one-byte\n\
         round trip on an established TCP connection, wall and CPU ns per\n\
         64-byte UDP datagram received, and the rate of a bulk TCP transfer\n\
         written 64 KiB at a time.\n\n\
         | | round trip µs | UDP ns per packet | packets per second | UDP CPU ns per packet | bulk TCP Gbit/s |\n\
         |---|---|---|---|---|---|\n",
    );
    let gbits = |t: &str| get("overlay_tcp_bulk", t).map(|ns| BULK_CHUNK * 8.0 / ns);
    for t in TUNNELS {
        let udp = get("overlay_udp_64b", t);
        let _ = writeln!(
            out,
            "| {t} | {} | {} | {} | {} | {} |",
            get("overlay_tcp_round_trip", t).map_or("–".into(), |v| format!("{:.1}", v / 1e3)),
            cell(udp),
            udp.map_or("–".into(), |v| format!("{:.0}", 1e9 / v)),
            cell(get("overlay_udp_64b_cpu", t)),
            gbits(t).map_or("–".into(), |g| format!("{g:.2}")),
        );
    }
    let vs = |other: &str| {
        format!(
            "round trips {} as fast, UDP packet rate {}, UDP CPU per packet {}, bulk rate {}",
            ratio(
                get("overlay_tcp_round_trip", other),
                get("overlay_tcp_round_trip", "netplane")
            ),
            ratio(
                get("overlay_udp_64b", other),
                get("overlay_udp_64b", "netplane")
            ),
            ratio(
                get("overlay_udp_64b_cpu", "netplane"),
                get("overlay_udp_64b_cpu", other)
            ),
            ratio(gbits("netplane"), gbits(other)),
        )
    };
    let _ = writeln!(
        out,
        "\nnetplane against the kernel's vxlan: {}.\n\
         Against no encapsulation: {}.\n\
         Against netplane in GRE: {}.\n\
         Against netplane without encapsulation: {}.\n",
        vs("kernel_vxlan"),
        vs("no_overlay"),
        vs("netplane_gre"),
        vs("netplane_none"),
    );
}

/// The contenders, in the order the tables list them.
const NATS: [&str; 5] = ["netplane", "netplane-net", "iptables", "cni", "ceiling"];

/// The parameter values benchmarked in `group`, in numeric order.
/// A table of `group`'s medians in ms, by its values (numbers of flows),
/// under `heading`; nothing when the run has no such group.
fn ms_by_flows_section(out: &mut String, rows: &[Row], group: &str, heading: &str) {
    let flows = values(rows, group);
    if flows.is_empty() {
        return;
    }
    out.push_str(heading);
    out.push_str("| flows | ms |\n|---|---|\n");
    for n in &flows {
        let ms = median(rows, group, "", Some(n)).map(|v| v / 1e6);
        let _ = writeln!(
            out,
            "| {n} | {} |",
            ms.map_or("–".into(), |v| format!("{v:.2}"))
        );
    }
    out.push('\n');
}

pub fn values(rows: &[Row], group: &str) -> Vec<String> {
    let mut v: Vec<u64> = rows
        .iter()
        .filter(|r| r.group == group)
        .filter_map(|r| r.value.as_deref()?.parse().ok())
        .collect();
    v.sort_unstable();
    v.dedup();
    v.iter().map(u64::to_string).collect()
}

/// A table of UDP packet rates from the `wall` and `cpu` groups.
/// netplane with the endpoint on a user-defined network beside the same
/// on the bridge network, from the traffic benchmark's groups.
fn network_section(out: &mut String, rows: &[Row]) {
    let figures = [
        ("new_connection", Some("1"), "new connection, µs", 1e3),
        ("tcp_round_trip", None, "TCP round trip, µs", 1e3),
        ("udp_64b", None, "UDP in, ns per packet", 1.0),
        ("udp_64b_cpu", None, "UDP in, CPU ns per packet", 1.0),
        ("udp_64b_out", None, "UDP out, ns per packet", 1.0),
        ("udp_64b_out_cpu", None, "UDP out, CPU ns per packet", 1.0),
    ];
    let pairs: Vec<_> = figures
        .iter()
        .filter_map(|(group, n, what, unit)| {
            let bridge = median(rows, group, "netplane", *n)?;
            let network = median(rows, group, "netplane-net", *n)?;
            Some((what, bridge / unit, network / unit))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    out.push_str(
        "## On a user-defined network\n\n\
         The same traffic with the endpoint on a network made with `network\n\
         create` instead of the bridge network, in the same run (medians; its\n\
         packets look up their network's policy in a map).\n\n\
         | | bridge network | user network | user / bridge |\n|---|---|---|---|\n",
    );
    for (what, bridge, network) in pairs {
        let _ = writeln!(
            out,
            "| {what} | {bridge:.1} | {network:.1} | {:.2} |",
            network / bridge
        );
    }
    out.push('\n');
}

/// The traffic benchmark's IPv6 rows: netplane's published port and
/// NAT66 against ip6tables with Docker's rule shapes and the ceiling.
fn ipv6_section(out: &mut String, rows: &[Row]) {
    const NATS6: [&str; 3] = ["netplane", "iptables", "ceiling"];
    let figures = [
        (
            "new_connection_v6",
            "new connection (the ceiling: routed to the endpoint), µs",
            1e3,
        ),
        (
            "udp_64b_v6",
            "UDP in through a published port, ns per packet",
            1.0,
        ),
        ("udp_64b_v6_cpu", "the same, CPU ns per packet", 1.0),
        (
            "udp_64b_out_v6",
            "UDP out through masquerade (NAT66), ns per packet",
            1.0,
        ),
        ("udp_64b_out_v6_cpu", "the same, CPU ns per packet", 1.0),
    ];
    if figures
        .iter()
        .all(|(group, _, _)| median(rows, group, "netplane", None).is_none())
    {
        return;
    }
    out.push_str(
        "## IPv6\n\n\
         The same host dual-stack, the traffic over IPv6 (medians): netplane's\n\
         published port and NAT66 in eBPF, Docker's rule shapes with ip6tables\n\
         (its NAT66 since Docker 27), and plain forwarding. Each topology\n\
         resolves its neighbours before it is measured.\n\n\
         | | netplane | ip6tables | ceiling | ip6tables / netplane | ceiling / netplane |\n\
         |---|---|---|---|---|---|\n",
    );
    three_way_rows(out, rows, &figures, NATS6, [(1, 0), (2, 0)]);
}

/// Rows of a table comparing three functions `who` in each group of
/// `figures` (group, what it measures, the unit's nanoseconds), then two
/// ratios between them (indices into `who`), and a blank line.
fn three_way_rows(
    out: &mut String,
    rows: &[Row],
    figures: &[(&str, &str, f64)],
    who: [&str; 3],
    ratios: [(usize, usize); 2],
) {
    for &(group, what, unit) in figures {
        let of = |i: usize| median(rows, group, who[i], None);
        let cell = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.1}", v / unit));
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {} | {} | {} |",
            cell(of(0)),
            cell(of(1)),
            cell(of(2)),
            ratio(of(ratios[0].0), of(ratios[0].1)),
            ratio(of(ratios[1].0), of(ratios[1].1)),
        );
    }
    out.push('\n');
}

fn udp_section(out: &mut String, rows: &[Row], (wall, cpu): (&str, &str), title: &str) {
    let udp: Vec<(&str, Option<f64>)> = NATS
        .iter()
        .map(|n| (*n, median(rows, wall, n, None)))
        .collect();
    if udp.iter().all(|(_, v)| v.is_none()) {
        return;
    }
    let _ = writeln!(
        out,
        "## {title}\n\n\
         Median ns of wall time per datagram received, the packet rate that\n\
         makes, and the machine's CPU time per datagram (sender and receiver\n\
         share its cores, so this is the fair figure).\n\n\
         | | ns per packet | packets per second | CPU ns per packet |\n|---|---|---|---|"
    );
    for (name, v) in &udp {
        let pps = v.map_or("–".into(), |v| format!("{:.0}", 1e9 / v));
        let cpu = median(rows, cpu, name, None);
        let _ = writeln!(out, "| {name} | {} | {pps} | {} |", cell(*v), cell(cpu));
    }
    let of = |n| median(rows, wall, n, None);
    let (np, ipt, cni, ceil) = (of("netplane"), of("iptables"), of("cni"), of("ceiling"));
    let cpu = |n| median(rows, cpu, n, None);
    let _ = writeln!(
        out,
        "\nnetplane's packet rate is {} iptables', {} CNI's and {} the ceiling's;\n\
         per packet it spends {} of iptables' CPU time, {} of CNI's and {} of\n\
         the ceiling's.\n",
        ratio(ipt, np),
        ratio(cni, np),
        ratio(ceil, np),
        ratio(cpu("netplane"), cpu("iptables")),
        ratio(cpu("netplane"), cpu("cni")),
        ratio(cpu("netplane"), cpu("ceiling")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(group: &str, function: &str, value: Option<&str>, ns: f64) -> Row {
        Row {
            group: group.into(),
            function: function.into(),
            value: value.map(str::to_string),
            median_ns: ns,
        }
    }

    #[test]
    fn ratios_and_net_costs_come_out_right() {
        let rows = vec![
            row("per_packet", "floor_empty_program", Some("1"), 100.0),
            row("per_packet", "dnat_established", Some("1"), 350.0),
            row("flow_table_read", "", Some("100000"), 82.5e6),
            row("full_table_sweep", "", Some("10000"), 2.8e6),
            row("new_connection", "netplane", Some("1"), 20_000.0),
            row("new_connection", "iptables", Some("1"), 50_000.0),
            row("new_connection", "ceiling", Some("1"), 18_000.0),
            row("udp_64b", "netplane", None, 1_000.0),
            row("udp_64b", "iptables", None, 1_500.0),
            row("udp_64b", "ceiling", None, 900.0),
            row("udp_64b_cpu", "netplane", None, 800.0),
            row("udp_64b_cpu", "iptables", None, 1_600.0),
            row("publish", "netplane", Some("10000"), 2e6),
            row("publish", "iptables", Some("10000"), 300e6),
            row("publish", "netplane", Some("100"), 1e6),
            row("create_endpoint", "netplane", None, 20e6),
            row("create_endpoint", "cni", None, 40e6),
            row("podman_run", "netplane", None, 200e6),
            row("podman_run", "cni_portmap", None, 300e6),
            row("podman_many_ports", "netplane", Some("1000"), 2e9),
            row("podman_many_ports", "cni_portmap", Some("1000"), 40e9),
            row("restart", "netplane", Some("0"), 150e6),
            row("restart", "netplane", Some("1000"), 640e6),
            row("overlay_tcp_round_trip", "netplane", None, 30e3),
            row("overlay_tcp_round_trip", "kernel_vxlan", None, 45e3),
            row("overlay_udp_64b", "netplane", None, 2_000.0),
            row("overlay_udp_64b", "kernel_vxlan", None, 3_000.0),
            row("overlay_udp_64b_cpu", "netplane", None, 1_500.0),
            row("overlay_udp_64b_cpu", "kernel_vxlan", None, 3_000.0),
            row("overlay_tcp_bulk", "netplane", None, 65536.0),
            row("overlay_tcp_bulk", "kernel_vxlan", None, 131072.0),
            row("new_connection_proxy", "netplane", None, 40e3),
            row("new_connection_proxy", "netplane-proxy", None, 60e3),
            row("new_connection_proxy", "docker-proxy", None, 240e3),
            row("udp_64b_nic", "netplane", None, 6_000.0),
            row("udp_64b_nic", "netplane-xdp", None, 4_000.0),
        ];
        let memory: Memory = serde_json::from_str(
            r#"{"netplane-proxy": {"1": {"rss_kib": 20480, "pss_kib": 10240}},
                "netplane-proxy-growth": {"1": {"rss_kib": 100, "pss_kib": 512}},
                "docker-proxy": {"1": {"rss_kib": 40960, "pss_kib": 20480}}}"#,
        )
        .unwrap();
        let costs: ProgramCosts = serde_json::from_str(
            r#"{"netplane-xdp": {"np_uplink_xdp": {"runs": 100000, "ns_per_run": 312.4}}}"#,
        )
        .unwrap();
        let cluster: Vec<ClusterRun> = serde_json::from_str(
            r#"[{"hosts": 5, "join_ms": [900, 300, 400, 500, 350], "converge_ms": 120,
                 "ping_all_pairs_ms": 800, "rss_kib": [20480, 30720], "store_keys": 23,
                 "host_gone_ms": 3100}]"#,
        )
        .unwrap();
        let once = MeasuredOnce {
            memory,
            costs,
            cluster,
        };
        let md = render(&rows, &once, "test box");
        assert!(
            md.contains("| 5 | 400 | 900 | 120 | 800 | 25.0 | 23 | 4.6 | 3100 |"),
            "{md}"
        );
        assert!(
            md.contains("| 64-byte UDP datagram in, ns | 6000.0 | 4000.0 | 1.50x |"),
            "{md}"
        );
        assert!(
            md.contains("| netplane-xdp | np_uplink_xdp | 100000 | 312 |"),
            "{md}"
        );
        assert!(
            md.contains("| new TCP connection, µs | 40.0 | 60.0 | 240.0 | 4.00x | 1.50x |"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | 20.0 | 10.0 | 0.5 | 40.0 | 20.0 | 2.00x |"),
            "{md}"
        );
        assert!(md.contains("| dnat_established | 350 (net 250) |"), "{md}");
        assert!(md.contains("| 100000 | 82.50 |"), "{md}");
        let sweep = md
            .find("## Sweeping a full flow table")
            .expect("sweep section");
        assert!(md[sweep..].contains("| 10000 | 2.80 |"), "{md}");
        assert!(
            md.contains("| 1 | 20.0 | 50.0 | – | 18.0 | 2.50x | – | 0.90x |"),
            "{md}"
        );
        assert!(md.contains("| netplane | 1000 | 1000000 |"), "{md}");
        assert!(
            md.contains("1.50x iptables', – CNI's and 0.90x the ceiling's"),
            "{md}"
        );
        let publish = md.find("| 100 | 1.00 |").expect("100 ports first");
        assert!(
            md[publish..].contains("| 10000 | 2.00 | 300.00 | – | 150.00x | – |"),
            "{md}"
        );
        assert!(md.contains("| 20.0 | 40.0 | 2.00x |"), "{md}");
        assert!(md.contains("| 1 | 200 | 300 | 1.50x |"), "{md}");
        assert!(
            md.contains("| 1000 (one run each) | 2000 | 40000 | 20.00x |"),
            "{md}"
        );
        assert!(md.contains("| 1000 | 10000 | 640 |"), "{md}");
        assert!(
            !md.lines().any(|l| l.starts_with("    ")),
            "no line reads as a code block: {md}"
        );
        assert!(
            md.contains("| netplane | 30.0 | 2000 | 500000 | 1500 | 8.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| kernel_vxlan | 45.0 | 3000 | 333333 | 3000 | 4.00 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "kernel's vxlan: round trips 1.50x as fast, UDP packet rate 1.50x, \
                 UDP CPU per packet 0.50x, bulk rate 2.00x."
            ),
            "{md}"
        );
    }
}
