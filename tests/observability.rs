//! Observability: what the data path counted, as the CLI shows it.

use netplane_test_support as support;

use serde_json::Value;
use support::{HOST_IP, Host, WORLD_IP, rule, sample, sh_ok};

/// Where the hosts of these tests serve metrics, in their own namespaces.
const METRICS: &str = "127.0.0.1:9464";

/// A UDP server on port argv[1] that answers every datagram with argv[2]
/// bytes.
const ANSWER: &str = "import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((\"0.0.0.0\", int(sys.argv[1])))
while True:
    _, peer = s.recvfrom(2048); s.sendto(b\"r\" * int(sys.argv[2]), peer)";

/// From source port argv[1], argv[4] datagrams of argv[5] bytes to
/// argv[2]:argv[3], each waiting for its answer.
const ASK: &str = "import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((\"\", int(sys.argv[1]))); s.settimeout(2)
for _ in range(int(sys.argv[4])):
    s.sendto(b\"q\" * int(sys.argv[5]), (sys.argv[2], int(sys.argv[3]))); s.recvfrom(2048)";

/// Ethernet, IPv4 and UDP headers: what a datagram's packet adds to its
/// payload in the counters, which count skb lengths from the MAC header.
const UDP_OVERHEAD: u64 = 14 + 20 + 8;

fn answer(h: &Host, netns: &str, port: u16, size: u64) -> support::Background {
    h.spawn_ready(
        netns,
        &format!("python3 -c '{ANSWER}' {port} {size}"),
        |_| sh_ok(&format!("ip netns exec {netns} ss -Huln sport = :{port}")).contains(':'),
    )
}

fn ask(netns: &str, sport: u16, dst: &str, dport: u16, count: u64, size: u64) {
    sh_ok(&format!(
        "ip netns exec {netns} python3 -c '{ASK}' {sport} {dst} {dport} {count} {size}"
    ));
}

fn flows(h: &Host, endpoint: &str) -> Vec<Value> {
    serde_json::from_str(&h.np_ok(&["ct", "ls", "--json", "--endpoint", endpoint])).unwrap()
}

/// The tuple and counters of one direction of a flow.
fn direction(v: &Value) -> (String, u64, String, u64, u64, u64) {
    (
        v["Src"].as_str().unwrap().to_string(),
        v["Sport"].as_u64().unwrap(),
        v["Dst"].as_str().unwrap().to_string(),
        v["Dport"].as_u64().unwrap(),
        v["Packets"].as_u64().unwrap(),
        v["Bytes"].as_u64().unwrap(),
    )
}

#[test]
fn ct_ls_shows_both_directions_of_each_flow_with_exact_counters_and_flush_forgets_them() {
    let h = Host::new();
    h.up(&[]);
    let (srv, cli) = (h.name("srv"), h.name("cli"));
    h.np_ok(&["create", &srv, "-p", "8080:80/udp"]);
    h.np_ok(&["create", &cli]);
    let (srv_ip, cli_ip) = (h.ip_of(&srv), h.ip_of(&cli));
    let _in = answer(&h, &srv, 80, 30);
    let _out = answer(&h, &h.world, 9999, 10);

    // Through the published port, and out through masquerade.
    ask(&h.world, 40000, HOST_IP, 8080, 5, 100);
    ask(&cli, 40001, WORLD_IP, 9999, 3, 50);

    let published = flows(&h, &srv);
    assert_eq!(published.len(), 1, "{published:#?}");
    let f = &published[0];
    assert_eq!(
        (f["Proto"].as_str(), f["State"].as_str()),
        (Some("udp"), Some("REPLIED"))
    );
    assert_eq!(f["Endpoint"], srv.as_str());
    assert_eq!(
        direction(&f["Original"]),
        (
            WORLD_IP.into(),
            40000,
            HOST_IP.into(),
            8080,
            5,
            5 * (UDP_OVERHEAD + 100)
        )
    );
    assert_eq!(
        direction(&f["Reply"]),
        (
            srv_ip.clone(),
            80,
            WORLD_IP.into(),
            40000,
            5,
            5 * (UDP_OVERHEAD + 30)
        )
    );
    let masqueraded = flows(&h, &cli);
    assert_eq!(masqueraded.len(), 1, "{masqueraded:#?}");
    let f = &masqueraded[0];
    assert_eq!(
        direction(&f["Original"]),
        (
            cli_ip,
            40001,
            WORLD_IP.into(),
            9999,
            3,
            3 * (UDP_OVERHEAD + 50)
        )
    );
    // The source port was free on the host, so masquerade kept it.
    assert_eq!(
        direction(&f["Reply"]),
        (
            WORLD_IP.into(),
            9999,
            HOST_IP.into(),
            40001,
            3,
            3 * (UDP_OVERHEAD + 10)
        )
    );
    assert!(f["AgeSecs"].as_u64().unwrap() < 60);
    // Within the UDP lifetime (RFC 4787's two minutes).
    assert!(f["ExpiresSecs"].as_u64().unwrap() <= 120);

    // The text listing reads like `conntrack -L`.
    let listing = h.np_ok(&["ct", "ls"]);
    let line = format!(
        "src={WORLD_IP} dst={HOST_IP} sport=40000 dport=8080 packets=5 bytes={} src={srv_ip} dst={WORLD_IP} sport=80 dport=40000 packets=5 bytes={}",
        5 * (UDP_OVERHEAD + 100),
        5 * (UDP_OVERHEAD + 30)
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("udp   REPLIED     ") && l.contains(&line)),
        "{listing}"
    );

    let flushed = h.np(&["ct", "flush", "--endpoint", &cli]);
    assert!(flushed.status.success());
    assert_eq!(
        String::from_utf8_lossy(&flushed.stderr).trim(),
        "1 flows removed"
    );
    assert!(flows(&h, &cli).is_empty());
    assert_eq!(flows(&h, &srv).len(), 1, "other endpoints' flows stay");
    let err = h.np_err(&["ct", "ls", "--endpoint", "nosuch"]);
    assert!(err.contains("nosuch"), "{err}");
}

/// A host up with `args` whose interfaces send no IPv6 link-local chatter
/// (MLD, router solicitations): counters compared across two reads move
/// only with the test's own packets.
fn ipv4_only_host(args: &[&str]) -> Host {
    let h = Host::new();
    h.in_host("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
    h.up(args);
    h
}

/// `create NAME ARGS` on such a host, IPv4 only inside too, and with its
/// gateway's MAC pinned: no ARP probe of the gateway can slip into the
/// packets a test counts.
fn ipv4_only_endpoint(h: &Host, short: &str, args: &[&str]) -> String {
    let name = h.name(short);
    h.np_ok(&[&["create", name.as_str()], args].concat());
    h.in_endpoint(&name, "sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
    let bridge: Value = serde_json::from_str(&h.np_ok(&["network", "inspect", "bridge"])).unwrap();
    let bridge_mac = support::mac_of(&h.netns, bridge["Bridge"].as_str().unwrap());
    sh_ok(&format!(
        "ip -n {name} neigh replace {} lladdr {bridge_mac} dev eth0 nud permanent",
        bridge["Gateway"].as_str().unwrap()
    ));
    name
}

/// The endpoint's counters once nothing has moved them for half a
/// second: a link that just came up may still see a packet or two of its
/// own (one in about six runs did), which an exact count must not take for
/// the traffic it measures.
fn settled_stats(h: &Host, endpoint: &str) -> Value {
    let mut last = endpoint_stats(h, endpoint);
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = endpoint_stats(h, endpoint);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

fn endpoint_stats(h: &Host, endpoint: &str) -> Value {
    serde_json::from_str(&h.np_ok(&["stats", endpoint, "--json"])).unwrap()
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats[name].as_u64().unwrap()
}

#[test]
fn stats_of_an_endpoint_count_its_traffic_and_its_drops_by_reason_exactly() {
    let h = ipv4_only_host(&[]);
    let cli = ipv4_only_endpoint(&h, "cli", &[]);
    // Neighbours resolved beforehand: the counted exchange is the
    // datagrams only.
    let _out = answer(&h, &h.world, 9999, 10);
    ask(&cli, 40001, WORLD_IP, 9999, 1, 1);

    let before = settled_stats(&h, &cli);
    ask(&cli, 40001, WORLD_IP, 9999, 3, 50);
    let after = endpoint_stats(&h, &cli);
    let delta = |name| counter(&after, name) - counter(&before, name);
    assert_eq!(delta("TxPackets"), 3, "{after}");
    assert_eq!(delta("TxBytes"), 3 * (UDP_OVERHEAD + 50));
    assert_eq!(delta("RxPackets"), 3);
    assert_eq!(delta("RxBytes"), 3 * (UDP_OVERHEAD + 10));

    // Three pings from an address that is not the endpoint's: spoofed.
    let spoofed_before = h.drops("spoofed");
    sh_ok(&format!("ip -n {cli} addr add 10.99.0.5/32 dev eth0"));
    let pinged = h.in_endpoint(
        &cli,
        &format!("ping -c 3 -i 0.2 -W 1 -I 10.99.0.5 {WORLD_IP}"),
    );
    assert!(!pinged.status.success(), "spoofed pings get no answer");
    let stats = endpoint_stats(&h, &cli);
    assert_eq!(stats["Drops"]["spoofed"], 3, "{stats}");
    assert_eq!(h.drops("spoofed") - spoofed_before, 3);
    let nonzero: Vec<&String> = stats["Drops"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, n)| n.as_u64() != Some(0))
        .map(|(reason, _)| reason)
        .collect();
    assert_eq!(nonzero, ["spoofed"]);
    let text = h.np_ok(&["stats", &cli]);
    assert!(text.contains("dropped: spoofed 3"), "{text}");
    let err = h.np_err(&["stats", "nosuch"]);
    assert!(err.contains("nosuch"), "{err}");
}

#[test]
fn metrics_are_scraped_over_http_parse_as_openmetrics_and_agree_with_the_cli() {
    let h = ipv4_only_host(&["--metrics", METRICS]);
    let srv = ipv4_only_endpoint(&h, "srv", &["-p", "8080:80/udp"]);
    let _in = answer(&h, &srv, 80, 30);
    ask(&h.world, 40000, HOST_IP, 8080, 4, 100);
    let dug = h.in_endpoint(&srv, &format!("dig +short +tries=1 +timeout=2 {srv}"));
    assert_eq!(String::from_utf8_lossy(&dug.stdout).trim(), h.ip_of(&srv));

    // The endpoint's own counters may move between two reads (an ARP
    // probe of its gateway): the scrape must lie between a read before it
    // and one after.
    let stats_before = endpoint_stats(&h, &srv);
    let samples = h.scrape(METRICS);
    let stats_after = endpoint_stats(&h, &srv);

    let flows: Vec<Value> = serde_json::from_str(&h.np_ok(&["ct", "ls", "--json"])).unwrap();
    assert_eq!(
        sample(
            &samples,
            "netplane_table_entries",
            &[("map", "NP_CONNTRACK")]
        ),
        2.0 * flows.len() as f64,
        "two entries per flow ct ls shows"
    );
    assert_eq!(
        sample(
            &samples,
            "netplane_table_capacity",
            &[("map", "NP_CONNTRACK")]
        ),
        262_144.0
    );
    for (direction, packets, bytes) in [
        ("rx", "RxPackets", "RxBytes"),
        ("tx", "TxPackets", "TxBytes"),
    ] {
        let labels = [("endpoint", srv.as_str()), ("direction", direction)];
        for (metric, field) in [
            ("netplane_endpoint_packets_total", packets),
            ("netplane_endpoint_bytes_total", bytes),
        ] {
            let scraped = sample(&samples, metric, &labels);
            let (low, high) = (
                counter(&stats_before, field) as f64,
                counter(&stats_after, field) as f64,
            );
            assert!(
                low <= scraped && scraped <= high,
                "{metric} {direction}: {scraped} outside {low}..={high}"
            );
        }
    }
    let nat = h.nat();
    let port_rule = rule(&nat, "udp dpt:8080");
    let port = [
        ("endpoint", srv.as_str()),
        ("protocol", "udp"),
        ("host_port", "8080"),
    ];
    assert_eq!(
        sample(&samples, "netplane_published_port_packets_total", &port),
        port_rule["Packets"].as_f64().unwrap()
    );
    assert_eq!(port_rule["Packets"], 8, "4 datagrams each way");
    assert_eq!(sample(&samples, "netplane_dns_queries_total", &[]), 1.0);
    assert_eq!(sample(&samples, "netplane_dns_failures_total", &[]), 0.0);
    assert_eq!(
        sample(&samples, "netplane_drops_total", &[("reason", "spoofed")]),
        nat["Drops"]["spoofed"].as_f64().unwrap()
    );
    let up = [("trigger", "up")];
    assert_eq!(
        sample(&samples, "netplane_reconcile_duration_seconds_count", &up),
        1.0,
        "one up, no cluster store"
    );
    assert!(sample(&samples, "netplane_reconcile_duration_seconds_sum", &up) > 0.0);
}

/// From argv[3] sockets, source ports 30000 on, one datagram each to
/// argv[1]:argv[2]: prints how many got an answer within 2 s.
const ONE_EACH: &str = "import select, socket, sys, time
socks = []
for i in range(int(sys.argv[3])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((\"\", 30000 + i))
    s.sendto(b\"q\", (sys.argv[1], int(sys.argv[2]))); socks.append(s)
answered, end = set(), time.time() + 2
while time.time() < end and len(answered) < len(socks):
    ready, _, _ = select.select([s for s in socks if s not in answered], [], [], 0.2)
    for s in ready: s.recv(64); answered.add(s)
print(len(answered))";

/// Three later fragments of a datagram to argv[1] whose first fragment
/// never comes: masquerade cannot translate them without its ports.
const LATER_FRAGMENTS: &str = "import sys
from scapy.all import IP, Raw, send
send(IP(dst=sys.argv[1], id=4242, frag=10, proto=17) / Raw(b\"x\" * 16), count=3, verbose=False)";

#[test]
fn drops_count_under_the_nat_rule_that_was_translating_and_a_reused_rule_starts_clean() {
    // 64 entries: 32 flows, a direction each.
    let h = ipv4_only_host(&["--ct-max", "64", "--metrics", METRICS]);
    let srv = ipv4_only_endpoint(&h, "srv", &["-p", "8080:80/udp"]);
    let cli = ipv4_only_endpoint(&h, "cli", &[]);
    let _in = answer(&h, &srv, 80, 30);
    let full_before = h.drops("ct_full");
    let fragment_before = h.drops("fragment");

    let sent = 100;
    let answered: u64 = sh_ok(&format!(
        "ip netns exec {} python3 -c '{ONE_EACH}' {HOST_IP} 8080 {sent}",
        h.world
    ))
    .trim()
    .parse()
    .unwrap();
    let refused = h.drops("ct_full") - full_before;
    assert!(
        answered > 0 && refused > 0,
        "{answered} answered, {refused} refused"
    );
    assert_eq!(
        answered + refused,
        sent,
        "every datagram answered or refused"
    );
    sh_ok(&format!(
        "ip netns exec {cli} /usr/bin/python3 -c '{LATER_FRAGMENTS}' {WORLD_IP}"
    ));
    assert_eq!(h.drops("fragment") - fragment_before, 3);

    let nat = h.nat();
    let rules = nat["Rules"].as_array().unwrap();
    assert_eq!(rules[0]["Target"], "MASQUERADE");
    assert_eq!(rules[0]["Drops"], serde_json::json!({"fragment": 3}));
    let port = rule(&nat, "udp dpt:8080");
    assert_eq!(port["Drops"], serde_json::json!({"ct_full": refused}));
    assert_eq!(
        port["Packets"],
        2 * answered,
        "a datagram each way per flow"
    );
    let listing = h.np_ok(&["nat", "ls"]);
    assert!(
        listing.lines().any(|l| l.contains("udp dpt:8080")
            && l.ends_with(&format!("/* dropped: ct_full={refused} */"))),
        "{listing}"
    );

    let samples = h.scrape(METRICS);
    assert_eq!(
        sample(
            &samples,
            "netplane_published_port_drops_total",
            &[
                ("endpoint", srv.as_str()),
                ("host_port", "8080"),
                ("reason", "ct_full")
            ]
        ),
        refused as f64
    );
    assert_eq!(
        sample(
            &samples,
            "netplane_masquerade_drops_total",
            &[("reason", "fragment")]
        ),
        3.0
    );

    // The rule's slot goes to the next port published, counters cleared.
    h.np_ok(&["rm", &srv]);
    ipv4_only_endpoint(&h, "next", &["-p", "8081:80/udp"]);
    let nat = h.nat();
    let port = rule(&nat, "udp dpt:8081");
    assert_eq!(port["Drops"], serde_json::json!({}));
    assert_eq!(port["Packets"], 0);
}

/// A `netplane monitor` with its output in a file, stopped on drop.
struct Watch {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Watch {
    /// `netplane monitor --json ARGS`, once it says it is monitoring.
    fn start(h: &Host, args: &[&str], name: &str) -> Watch {
        let out = h.dir.join(format!("{name}.out"));
        let err = h.dir.join(format!("{name}.err"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_netplane"))
            .args(["monitor", "--json"])
            .args(args)
            .env("NETPLANE_RUN_DIR", h.run_dir())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        support::retry(|| {
            std::fs::read_to_string(&err)
                .unwrap()
                .contains("monitoring")
                .then_some(())
        })
        .expect("the monitor starts");
        Watch { child, out }
    }

    /// The records it printed so far.
    fn records(&self) -> Vec<Value> {
        let printed = std::fs::read_to_string(&self.out).unwrap();
        // The monitor may be writing a line as it is read: whole lines only.
        let whole = printed.rfind('\n').map_or("", |end| &printed[..end]);
        whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn events(&self) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["Type"] == "event")
            .collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn monitor_shows_drops_with_their_reason_and_new_flows_with_their_translation() {
    let h = Host::new();
    h.up(&["--icc=false"]);
    let (a, b) = (h.name("a"), h.name("b"));
    h.np_ok(&["create", &a]);
    h.np_ok(&["create", &b]);
    let (a_ip, b_ip) = (h.ip_of(&a), h.ip_of(&b));
    let everything = Watch::start(&h, &[], "all");
    let drops_of_a = Watch::start(&h, &["--drops", "--endpoint", &a], "a");
    let drops_of_b = Watch::start(&h, &["--drops", "--endpoint", &b], "b");

    // A flow out, a packet to an isolated endpoint, and a spoofed packet.
    assert!(h.pings(&a, WORLD_IP));
    assert!(!h.pings(&a, &b_ip), "--icc=false isolates a from b");
    sh_ok(&format!("ip -n {a} addr add 10.99.0.5/32 dev eth0"));
    h.in_endpoint(&a, &format!("ping -c 1 -W 1 -I 10.99.0.5 {WORLD_IP}"));

    let has = |events: &[Value], kind: &str, reason: Option<&str>, summary: &str| {
        events.iter().any(|e| {
            e["Kind"] == kind
                && e["Reason"].as_str() == reason
                && e["Endpoint"] == a.as_str()
                && e["Summary"].as_str().unwrap().contains(summary)
        })
    };
    let seen = support::retry(|| {
        let events = everything.events();
        (has(
            &events,
            "drop",
            Some("spoofed"),
            &format!("IP 10.99.0.5 > {WORLD_IP}: ICMP type 8"),
        ) && has(
            &events,
            "drop",
            Some("icc_denied"),
            &format!("IP {a_ip} > {b_ip}: ICMP type 8"),
        ) && has(&events, "flow", None, &format!("icmp {a_ip}."))
            && has(&events, "flow", None, &format!(" as icmp {HOST_IP}.")))
        .then_some(events)
    });
    assert!(seen.is_some(), "{:#?}", everything.events());
    let events = seen.unwrap();
    let line = events.iter().find(|e| e["Reason"] == "spoofed").unwrap();
    assert_eq!(
        line["Interface"],
        h.np_ok(&["stats", &a, "--json"]).parse::<Value>().unwrap()["Interface"]
    );
    // The filtered watchers: a's drops are those two; b sent nothing.
    let reasons: Vec<Value> = drops_of_a
        .events()
        .iter()
        .map(|e| e["Reason"].clone())
        .collect();
    assert_eq!(
        reasons,
        ["icc_denied", "spoofed"],
        "{:#?}",
        drops_of_a.events()
    );
    assert!(drops_of_b.events().is_empty(), "{:#?}", drops_of_b.events());
}

#[test]
fn a_watcher_that_stops_reading_loses_events_counted_and_the_data_path_never_waits() {
    let h = ipv4_only_host(&[]);
    let a = ipv4_only_endpoint(&h, "a", &[]);
    // The gateway's MAC known first: a spoofed source gets no ARP answer.
    assert!(h.pings(&a, WORLD_IP));
    sh_ok(&format!("ip -n {a} addr add 10.99.0.5/32 dev eth0"));
    let stalled = Watch::start(&h, &[], "stalled");
    sh_ok(&format!("kill -STOP {}", stalled.child.id()));

    const SENT: u64 = 20_000;
    let spoofed_before = h.drops("spoofed");
    let flood = format!(
        "python3 -c 'import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((\"10.99.0.5\", 0))\nfor _ in range({SENT}): s.sendto(b\"x\", (\"{WORLD_IP}\", 9))'"
    );
    sh_ok(&format!("ip netns exec {a} {flood}"));
    assert_eq!(
        h.drops("spoofed") - spoofed_before,
        SENT,
        "every packet was dropped and counted while the watcher stalled"
    );

    sh_ok(&format!("kill -CONT {}", stalled.child.id()));
    let accounted = || {
        let records = stalled.records();
        let seen = records
            .iter()
            .filter(|r| r["Type"] == "event" && r["Reason"] == "spoofed")
            .count() as u64;
        let lost: u64 = records
            .iter()
            .filter(|r| r["Type"] == "lost")
            .map(|r| r["Events"].as_u64().unwrap())
            .sum();
        (seen, lost)
    };
    let (seen, lost) = support::retry(|| {
        let (seen, lost) = accounted();
        (seen + lost == SENT).then_some((seen, lost))
    })
    .unwrap_or_else(|| panic!("every event shown or counted lost: {:?}", accounted()));
    assert!(lost > 0, "a stalled watcher loses events");
    println!(
        "figure: monitor.stalled = {SENT} drops while the watcher was stopped: {seen} events shown, {lost} counted lost"
    );
}

#[test]
fn the_programs_log_through_aya_log_into_the_daemon_log_at_the_rust_log_level() {
    let spoof_from = |h: &Host, a: &str| {
        // The first ping of a new endpoint waits for two neighbours, on a
        // machine busy with the other tests.
        assert!(support::retry(|| h.pings(a, WORLD_IP).then_some(())).is_some());
        sh_ok(&format!("ip -n {a} addr add 10.99.0.5/32 dev eth0"));
        h.in_endpoint(a, &format!("ping -c 1 -W 1 -I 10.99.0.5 {WORLD_IP}"));
    };
    let line = "dropped packet: spoofed";

    let debug = Host::new();
    debug.up_with_env(&[], &[("RUST_LOG", "debug")]);
    let a = debug.name("a");
    debug.np_ok(&["create", &a]);
    spoof_from(&debug, &a);
    assert!(
        support::retry(|| debug.log().contains(line).then_some(())).is_some(),
        "at debug, the program's record is in the log:\n{}",
        debug.log()
    );

    // At the default level the programs skip the record altogether.
    let quiet = Host::new();
    quiet.up(&[]);
    let a = quiet.name("a");
    quiet.np_ok(&["create", &a]);
    spoof_from(&quiet, &a);
    assert_eq!(quiet.drops("spoofed"), 1);
    assert!(!quiet.log().contains(line), "{}", quiet.log());
}
