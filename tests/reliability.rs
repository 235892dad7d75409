//! Reliability: traffic through the data path while the daemon dies and
//! comes back, crash-safe state, hostile input.
//!
//! Tests here print their figures as `figure: NAME = VALUE` lines, which
//! `cargo xtask report` collects into the README.

use netplane_test_support as support;

use std::{
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use netplane_common::abi::{CtEntry, LAYOUT_VERSION, maps, programs};
use serde_json::Value;
use support::{HOST_IP, Host, SCAPY_PYTHON, WORLD_IP, figure, mac_of, sh_ok};

const STREAM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/support/stream.py");

/// Connections per direction in the restart test.
const CONNECTIONS: usize = 4;
const RESTARTS: usize = 5;
/// How long each stream runs: long enough for every restart to happen
/// while bytes flow.
const STREAM_SECONDS: u64 = 20;

/// `stream.py recv` in `netns`, towards `addr`:`port`, running.
fn receive(netns: &str, addr: &str, port: u16) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", netns, "python3", STREAM, "recv", addr])
        .arg(port.to_string())
        .arg(CONNECTIONS.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Counter `name` of section `section` ("Tcp", "TcpExt") in
/// /proc/net/`file` of `netns`.
fn tcp_counter(netns: &str, file: &str, section: &str, name: &str) -> u64 {
    let table = sh_ok(&format!("ip netns exec {netns} cat /proc/net/{file}"));
    let mut rows = table
        .lines()
        .filter(|l| l.starts_with(&format!("{section}:")));
    let (names, values) = (rows.next().unwrap(), rows.next().unwrap());
    let at = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// Segments the senders in `netns` sent again, and how many of those the
/// receiver reported as duplicates (D-SACK): a retransmission the receiver
/// did not already have is a packet lost on the way.
fn retransmits(netns: &str) -> (u64, u64) {
    (
        tcp_counter(netns, "snmp", "Tcp", "RetransSegs"),
        tcp_counter(netns, "netstat", "TcpExt", "TCPDSACKRecv"),
    )
}

/// `stream.py serve` on `port` in `netns`, streaming `seconds` on each
/// connection and reporting what it sent to `report`.
fn serve(
    h: &Host,
    netns: &str,
    port: u16,
    seconds: u64,
    report: &std::path::Path,
) -> support::Background {
    let cmd = format!(
        "python3 {STREAM} serve {port} {seconds} {}",
        report.display()
    );
    h.spawn_ready(netns, &cmd, |_| {
        sh_ok(&format!("ip netns exec {netns} ss -Htln sport = :{port}")).contains("LISTEN")
    })
}

/// Waits for the receiving side of [`CONNECTIONS`] streams and checks
/// that every byte the sender wrote arrived, in order, with no error on
/// either side. Returns the bytes received and the longest wait between
/// two reads, in milliseconds.
fn assert_streams_complete(
    what: &str,
    receiver: std::process::Child,
    report: &std::path::Path,
) -> (u64, f64) {
    let out = receiver.wait_with_output().unwrap();
    let received = json_lines(&String::from_utf8_lossy(&out.stdout));
    let sent = json_lines(&std::fs::read_to_string(report).unwrap());
    assert_eq!(received.len(), CONNECTIONS, "{what}: {received:?}");
    assert_eq!(sent.len(), CONNECTIONS, "{what}: {sent:?}");
    let mut max_gap_ms: f64 = 0.0;
    for r in &received {
        assert!(r["error"].is_null(), "{what}: no reset, no timeout: {r}");
        assert_eq!(r["in_order"], true, "{what}: every byte in order: {r}");
        max_gap_ms = max_gap_ms.max(r["max_gap_ms"].as_f64().unwrap());
    }
    for s in &sent {
        assert!(s["error"].is_null(), "{what}: the sender saw no error: {s}");
    }
    let total = |v: &[Value], key: &str| v.iter().map(|r| r[key].as_u64().unwrap()).sum::<u64>();
    assert_eq!(
        total(&received, "received"),
        total(&sent, "sent"),
        "{what}: every byte sent arrived"
    );
    (total(&received, "received"), max_gap_ms)
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn streams_through_published_ports_and_masquerade_survive_kill_9_and_up() {
    let h = Host::new();
    h.up(&[]);
    let (srv, cli) = (h.name("srv"), h.name("cli"));
    h.np_ok(&["create", &srv, "-p", "9000:9000"]);
    h.np_ok(&["create", &cli]);
    let (sent_in, sent_out) = (h.dir.join("sent-in"), h.dir.join("sent-out"));
    let _inbound_server = serve(&h, &srv, 9000, STREAM_SECONDS, &sent_in);
    let _outbound_server = serve(&h, &h.world, 9001, STREAM_SECONDS, &sent_out);

    // Through the published port (DNAT) and through masquerade (SNAT).
    let inbound = receive(&h.world, HOST_IP, 9000);
    let outbound = receive(&cli, WORLD_IP, 9001);
    let started = Instant::now();
    sleep(Duration::from_secs(1));
    let mut down_for = Vec::new();
    for _ in 0..RESTARTS {
        let killed = Instant::now();
        h.kill_daemon();
        sleep(Duration::from_millis(500));
        h.up(&[]);
        down_for.push(killed.elapsed());
        sleep(Duration::from_millis(1000));
    }
    assert!(
        started.elapsed() < Duration::from_secs(STREAM_SECONDS - 2),
        "the restarts took {:?}, longer than the streams last",
        started.elapsed()
    );

    // The senders: the endpoint behind the published port, the world
    // behind masquerade.
    // A busy CPU can delay acknowledgements past the 10 ms after which a
    // sender probes with a copy of its last segment; the copy then arrives
    // as a duplicate. Every other retransmission repairs a loss.
    let (resent, duplicates) = [&srv, &h.world]
        .map(|netns| retransmits(netns))
        .into_iter()
        .fold((0, 0), |(r, d), (r2, d2)| (r + r2, d + d2));
    assert!(
        resent <= duplicates,
        "{resent} segments sent again, only {duplicates} of them arrived twice: packets were lost"
    );
    let mut max_gap_ms: f64 = 0.0;
    let mut bytes = 0;
    for (what, child, report) in [
        ("published port", inbound, &sent_in),
        ("masquerade", outbound, &sent_out),
    ] {
        let (received, gap_ms) = assert_streams_complete(what, child, report);
        max_gap_ms = max_gap_ms.max(gap_ms);
        bytes += received;
    }
    let longest_down = down_for.iter().max().unwrap();
    figure(
        "restart.connections",
        format!(
            "{} TCP connections (published port and masquerade)",
            2 * CONNECTIONS
        ),
    );
    figure("restart.restarts", format!("{RESTARTS} × kill -9 + up"));
    figure(
        "restart.bytes",
        format!("{bytes} bytes, all in order, no reset"),
    );
    figure(
        "restart.retransmits",
        format!(
            "{resent} TCP segments sent again, {duplicates} of them reported as duplicates by the receiver"
        ),
    );
    figure(
        "restart.max_gap",
        format!("{max_gap_ms} ms longest wait between two reads (sender writes every 5 ms)"),
    );
    figure(
        "restart.daemon_down",
        format!(
            "{} ms longest from kill to API up again",
            longest_down.as_millis()
        ),
    );
}

/// Endpoints the crash test's client works on.
const CHURNED: usize = 6;
/// Host ports it publishes: endpoint `i` gets `LOOPBACK_PORT + i` on
/// 127.0.0.1 and `ANY_PORT + i` on every address.
const LOOPBACK_PORT: u16 = 21000;
const ANY_PORT: u16 = 22000;
const KILLS: usize = 8;

/// xorshift64: the test's choices, reproducible from the seed it prints.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> Rng {
        let seed = std::env::var("NETPLANE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("seed {seed} (NETPLANE_TEST_SEED={seed} repeats this run)");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One request of the crash test's client: it may fail (the daemon is
/// down, the endpoint exists already or not yet), only its effect counts.
fn churn_once(h: &Host, rng: &mut Rng) -> bool {
    let i = rng.below(CHURNED as u64) as u16;
    let name = h.name(&format!("c{i}"));
    let loopback = format!("127.0.0.1:{}:80", LOOPBACK_PORT + i);
    let any = format!("{}:81", ANY_PORT + i);
    let args: Vec<&str> = match rng.below(5) {
        0 => vec!["create", &name, "-p", &loopback],
        1 => vec!["create", &name],
        2 => vec!["rm", &name],
        3 => vec!["port", "add", &name, &any],
        _ => vec!["port", "rm", &name, &any],
    };
    h.np(&args).status.success()
}

/// Entries of the pinned map `name`, as (key, value) bytes.
fn map_entries(h: &Host, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let pin = h.dir.join("bpf").join("maps").join(name);
    let dump: Value = serde_json::from_str(&sh_ok(&format!(
        "bpftool -j map dump pinned {}",
        pin.display()
    )))
    .unwrap();
    dump.as_array()
        .unwrap()
        .iter()
        .map(|e| (hex_bytes(&e["key"]), hex_bytes(&e["value"])))
        .collect()
}

/// Bytes as bpftool's JSON gives them: `["0x0a", ...]`.
fn hex_bytes(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect()
}

fn ipv4(bytes: &[u8]) -> String {
    std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// Checks that every endpoint in the store exists in the kernel and the
/// data path's maps, and that nothing else does.
fn assert_store_and_kernel_agree(h: &Host) {
    let endpoints: Vec<Value> = serde_json::from_str(&h.np_ok(&["ls", "--json"])).unwrap();
    let names = sorted(
        endpoints
            .iter()
            .map(|e| e["Name"].as_str().unwrap().to_string())
            .collect(),
    );
    let ips: Vec<String> = endpoints
        .iter()
        .map(|e| {
            e["NetworkSettings"]["IPAddress"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let ips = sorted(ips);
    let mut unique = ips.clone();
    unique.dedup();
    assert_eq!(unique, ips, "no address leased twice");
    assert_eq!(
        sorted(h.own_netns()),
        names,
        "a namespace per endpoint, no other"
    );

    // Host-side veths, and the one each endpoint's eth0 is paired with.
    let links: Vec<Value> = serde_json::from_str(&h.in_host("ip -j link show type veth")).unwrap();
    let veths: Vec<(u64, String)> = links
        .iter()
        .filter(|l| l["ifname"].as_str().unwrap().starts_with("npv"))
        .map(|l| {
            (
                l["ifindex"].as_u64().unwrap(),
                l["ifname"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let peers = sorted(
        names
            .iter()
            .map(|n| {
                let eth0: Value =
                    serde_json::from_str(&sh_ok(&format!("ip -n {n} -j link show eth0"))).unwrap();
                eth0[0]["link_index"].as_u64().unwrap()
            })
            .collect(),
    );
    assert_eq!(
        sorted(veths.iter().map(|(i, _)| *i).collect()),
        peers,
        "a host veth per endpoint, no orphan"
    );

    let endpoint_ips = sorted(
        map_entries(h, "NP_ENDPOINTS")
            .iter()
            .map(|(k, _)| ipv4(k))
            .collect(),
    );
    assert_eq!(
        endpoint_ips, ips,
        "the data path knows exactly the endpoints"
    );
    let identities = sorted(
        map_entries(h, "NP_ENDPOINT_IFACES")
            .iter()
            .map(|(k, _)| u64::from(u32::from_ne_bytes(k[..4].try_into().unwrap())))
            .collect(),
    );
    assert_eq!(identities, peers, "and exactly their veths");
    let attached: Vec<String> = support::attached_hooks(h)
        .into_iter()
        .filter(|hook| hook.starts_with("npv"))
        .collect();
    let hooks = sorted(
        veths
            .iter()
            .flat_map(|(_, n)| [format!("{n}@ingress"), format!("{n}@egress")])
            .collect(),
    );
    assert_eq!(
        sorted(attached),
        hooks,
        "programs on both hooks of every endpoint veth, no other"
    );

    // Published ports: the store's, as `port ls` shows them, against the
    // hash map (127.0.0.1) and the slots of every-address ports.
    let ports: Vec<Value> = serde_json::from_str(&h.np_ok(&["port", "ls", "--json"])).unwrap();
    let published = |host_ip: &str| -> Vec<(u16, String)> {
        sorted(
            ports
                .iter()
                .filter(|p| p["HostIp"] == host_ip)
                .map(|p| {
                    (
                        p["HostPort"].as_u64().unwrap() as u16,
                        p["EndpointIp"].as_str().unwrap().to_string(),
                    )
                })
                .collect(),
        )
    };
    let in_hash = sorted(
        map_entries(h, "NP_PUBLISHED")
            .iter()
            .map(|(k, v)| (u16::from_be_bytes([k[4], k[5]]), ipv4(v)))
            .collect(),
    );
    assert_eq!(in_hash, published("127.0.0.1"), "ports on 127.0.0.1");
    let pin = h.dir.join("bpf").join("maps").join("NP_PUBLISHED_ANY");
    let in_slots: Vec<(u16, String)> = (0..CHURNED as u16)
        .map(|i| ANY_PORT + i)
        .filter_map(|port| {
            let key = u32::from(port)
                .to_le_bytes()
                .map(|b| format!("{b}"))
                .join(" ");
            let found: Value = serde_json::from_str(&sh_ok(&format!(
                "bpftool -j map lookup pinned {} key {key}",
                pin.display()
            )))
            .unwrap();
            let target = hex_bytes(&found["value"]);
            (target[..4] != [0; 4]).then(|| (port, ipv4(&target)))
        })
        .collect();
    assert_eq!(in_slots, published("0.0.0.0"), "ports on every address");
}

#[test]
fn random_kill_9_during_changes_leaves_store_and_kernel_in_step() {
    let h = Host::new();
    let before = h.residue();
    h.up(&[]);
    let mut rng = Rng::from_env_or_clock();
    let mut client_rng = Rng(rng.below(u64::MAX) | 1);
    let stop = AtomicBool::new(false);
    let mut interrupted = 0;
    let (requests, succeeded) = std::thread::scope(|s| {
        let client = s.spawn(|| {
            let (mut requests, mut succeeded) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                requests += 1;
                succeeded += usize::from(churn_once(&h, &mut client_rng));
            }
            (requests, succeeded)
        });
        // Stops the client also when a kill or an up below panics.
        let _stop = StopOnDrop(&stop);
        for _ in 0..KILLS {
            sleep(Duration::from_millis(200 + rng.below(800)));
            h.kill_daemon();
            h.up(&[]);
            interrupted += h.log().matches("finishing interrupted operation").count();
        }
        sleep(Duration::from_millis(500));
        drop(_stop);
        client.join().unwrap()
    });
    assert!(
        succeeded > 0,
        "the client got work done: {succeeded}/{requests}"
    );
    assert_store_and_kernel_agree(&h);

    // What the store holds works: a new endpoint reaches every survivor.
    let probe = h.name("probe");
    h.np_ok(&["create", &probe]);
    let endpoints: Vec<Value> = serde_json::from_str(&h.np_ok(&["ls", "--json"])).unwrap();
    for e in &endpoints {
        let ip = e["NetworkSettings"]["IPAddress"].as_str().unwrap();
        assert!(h.pings(&probe, ip), "{probe} reaches {} at {ip}", e["Name"]);
    }
    figure(
        "crash.kills",
        format!(
            "{KILLS} × kill -9 at random points of {requests} create/rm/port add/port rm requests ({succeeded} succeeded)"
        ),
    );
    figure(
        "crash.interrupted",
        format!("{interrupted} operations found interrupted and finished by up"),
    );
    figure(
        "crash.endpoints_after",
        format!("{} endpoints, store and kernel in step", endpoints.len()),
    );
    h.down();
    assert_eq!(h.residue(), before, "down leaves nothing behind");
}

const HOSTILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/support/hostile.py");
/// A second address of the simulated host: ports published on
/// [`HOST_IP`] alone must not answer on it.
const OTHER_HOST_IP: &str = "198.18.0.3";

/// `tcpdump` of the IPv4 packets `ifname` in `netns` receives, running.
fn capture(h: &Host, netns: &str, ifname: &str, file: &std::path::Path) -> support::Background {
    // IGMP: the host's own multicast membership reports.
    capture_of(h, netns, ifname, file, "ip and not igmp")
}

/// [`capture`] of what tcpdump's `filter` takes. Immediate mode:
/// otherwise libpcap hands packets over a block at a time, up to a second
/// late, and a busy machine stops the capture before they are written.
fn capture_of(
    h: &Host,
    netns: &str,
    ifname: &str,
    file: &std::path::Path,
    filter: &str,
) -> support::Background {
    let cmd = format!(
        "tcpdump -i {ifname} -Q in -n -U --immediate-mode -w {} {filter}",
        file.display()
    );
    h.spawn_ready(netns, &cmd, |bg| {
        std::fs::read_to_string(&bg.log)
            .unwrap_or_default()
            .contains("listening on")
    })
}

/// What `hostile.py` needs to send from the world to the host.
fn world_sender(h: &Host) -> serde_json::Map<String, Value> {
    let world_if = format!("{}x", h.prefix);
    let sender = serde_json::json!({
        "src_mac": mac_of(&h.world, &world_if),
        "iface": world_if,
        "src_ip": WORLD_IP,
        "dst_mac": mac_of(&h.netns, &h.uplink),
        "host_ip": HOST_IP,
    });
    sender.as_object().unwrap().clone()
}

fn hostile(netns: &str, args: &str) -> Value {
    let out = sh_ok(&format!(
        "ip netns exec {netns} {SCAPY_PYTHON} {HOSTILE} {args}"
    ));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Sends `side`'s hostile packets and checks that each category named
/// after a drop reason raised exactly that counter by its count.
fn barrage(h: &Host, netns: &str, side: &str, config: &Value) -> (u64, Value) {
    let before = h.nat()["Drops"].clone();
    let sent = hostile(netns, &format!("{side} '{config}'"));
    let after = h.nat()["Drops"].clone();
    let mut total = 0;
    for (category, count) in sent.as_object().unwrap() {
        let count = count.as_u64().unwrap();
        total += count;
        if category != "any" {
            let delta = after[category].as_u64().unwrap() - before[category].as_u64().unwrap();
            assert_eq!(
                delta, count,
                "{side}: {count} packets dropped as {category}"
            );
        }
    }
    (total, sent)
}

#[test]
fn hostile_packets_from_both_sides_leak_nothing_and_every_drop_is_counted() {
    let h = Host::new();
    h.in_host(&format!("ip addr add {OTHER_HOST_IP}/24 dev {}", h.uplink));
    h.up(&["--icc=false", "--peer", WORLD_IP]);
    h.create_overlay("ov", "10.201.0.0/16");
    let (atk, vic, srv, ovx) = (h.name("atk"), h.name("vic"), h.name("srv"), h.name("ovx"));
    h.np_ok(&["create", &atk]);
    h.np_ok(&["create", &vic]);
    let host_ip_port = format!("{HOST_IP}:8082:80");
    h.np_ok(&[
        "create",
        &srv,
        "-p",
        "8080:80",
        "-p",
        "127.0.0.1:8081:80",
        "-p",
        &host_ip_port,
    ]);
    h.np_ok(&["create", &ovx, "--net", "ov"]);
    let bridge: Value = serde_json::from_str(&h.np_ok(&["network", "inspect", "bridge"])).unwrap();
    let overlay: Value = serde_json::from_str(&h.np_ok(&["network", "inspect", "ov"])).unwrap();
    let world_lease = overlay["Peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["Vtep"] == WORLD_IP)
        .expect("the world is a peer")["Lease"]
        .as_str()
        .unwrap()
        .to_string();
    let peer_lease_ip = world_lease.replace(".0/24", ".9");
    // This host's own /24 of the overlay: its bridge has the first address.
    let overlay_gateway = overlay["Lease"].as_str().unwrap().replace(".0/24", ".1");

    let dir = &h.dir;
    let world_if = format!("{}x", h.prefix);
    let _captures = [
        capture(&h, &h.world, &world_if, &dir.join("world.pcap")),
        capture(&h, &vic, "eth0", &dir.join("vic.pcap")),
        capture(&h, &ovx, "eth0", &dir.join("ovx.pcap")),
        capture(&h, &srv, "eth0", &dir.join("srv.pcap")),
    ];

    let from_endpoint = serde_json::json!({
        "iface": "eth0",
        "src_mac": mac_of(&atk, "eth0"),
        "src_ip": h.ip_of(&atk),
        "dst_mac": mac_of(&h.netns, bridge["Bridge"].as_str().unwrap()),
        "world_ip": WORLD_IP,
        "victim_ip": h.ip_of(&vic),
    });
    let mut from_world = world_sender(&h);
    from_world.extend(
        serde_json::json!({
            "other_host_ip": OTHER_HOST_IP,
            "gateway_ip": bridge["Gateway"],
            "overlay_gateway_ip": overlay_gateway,
            "victim_ip": h.ip_of(&vic),
            "published_ip": h.ip_of(&srv),
            "overlay_ip": h.ip_of(&ovx),
            "peer_lease_ip": peer_lease_ip,
            "vni": overlay["VNI"],
            "any_port": 8080,
            "loopback_port": 8081,
            "host_ip_port": 8082,
        })
        .as_object()
        .unwrap()
        .clone(),
    );
    let from_world = Value::Object(from_world);
    let (from_endpoint_n, endpoint_sent) = barrage(&h, &atk, "endpoint", &from_endpoint);
    let (from_world_n, world_sent) = barrage(&h, &h.world, "world", &from_world);
    sleep(Duration::from_millis(500));
    drop(_captures);

    let check = |pcap: &str, nets: &str| {
        hostile(
            &h.world,
            &format!("check {} {nets}", dir.join(pcap).display()),
        )
    };
    let private = format!("{} 10.201.0.0/16", bridge["Subnet"].as_str().unwrap());
    let uplink = check("world.pcap", &private);
    assert!(
        uplink["ipv4"].as_u64().unwrap() > 0,
        "the capture works: {uplink}"
    );
    assert_eq!(
        uplink["leaked"],
        serde_json::json!([]),
        "no private address leaves the uplink"
    );
    for pcap in ["vic.pcap", "ovx.pcap"] {
        let seen = check(pcap, &private);
        assert_eq!(seen["ipv4"], 0, "{pcap}: nothing was meant for it: {seen}");
    }
    let published = check("srv.pcap", &private);
    assert!(published["ipv4"].as_u64().unwrap() > 0, "{published}");
    assert_eq!(
        published["unexpected"],
        serde_json::json!([]),
        "the published endpoint gets its port 80 and ICMP errors only"
    );

    // Still forwarding, both ways, and the daemon lives.
    let curl = h.in_world(&format!(
        "curl -s -m 2 -o /dev/null -w %{{http_code}} http://{HOST_IP}:8080/"
    ));
    assert!(h.daemon_pid().is_some());
    assert!(
        h.pings(&atk, WORLD_IP),
        "the attacker's own traffic still flows"
    );
    let _ = curl;
    let drops = h.nat()["Drops"].clone();
    figure(
        "hostile.packets",
        format!(
            "{} crafted packets ({from_endpoint_n} from an endpoint: {endpoint_sent}; {from_world_n} from the world: {world_sent})",
            from_endpoint_n + from_world_n
        ),
    );
    figure("hostile.drops", drops);
    figure(
        "hostile.uplink",
        format!(
            "{} IPv4 packets left the uplink, none with a private address",
            uplink["ipv4"]
        ),
    );
}

/// The endpoint's IPv6 address on its first network.
fn ip6_of(h: &Host, endpoint: &str) -> String {
    let inspect: Value = serde_json::from_str(&h.np_ok(&["inspect", endpoint])).unwrap();
    let networks = inspect[0]["NetworkSettings"]["Networks"]
        .as_object()
        .unwrap();
    networks.values().next().unwrap()["GlobalIPv6Address"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn hostile_ipv6_from_both_sides_leaks_nothing_and_every_drop_is_counted() {
    let h = Host::new();
    h.add_ipv6();
    h.up(&["--icc=false", "--ipv6", "--subnet6", "fd00:61::/64"]);
    let (atk, vic, srv) = (h.name("atk"), h.name("vic"), h.name("srv"));
    h.np_ok(&["create", &atk]);
    h.np_ok(&["create", &vic]);
    h.np_ok(&["create", &srv, "-p", "8080:80", "-p", "[::1]:8081:80"]);
    let bridge: Value = serde_json::from_str(&h.np_ok(&["network", "inspect", "bridge"])).unwrap();
    let gateway6 = bridge["IPAM"]["Config"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["Subnet"] == "fd00:61::/64")
        .expect("the IPv6 side")["Gateway"]
        .clone();
    let link_local = |netns: &str| {
        let out = sh_ok(&format!(
            "ip -n {netns} -6 -o addr show dev eth0 scope link"
        ));
        out.split_whitespace()
            .nth(3)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("{netns}: no link-local address: {out}"))
            .to_string()
    };

    let dir = &h.dir;
    let world_if = format!("{}x", h.prefix);
    let _captures = [
        capture_of(&h, &h.world, &world_if, &dir.join("world6.pcap"), "ip6"),
        capture_of(&h, &vic, "eth0", &dir.join("vic6.pcap"), "ip6"),
        capture_of(&h, &srv, "eth0", &dir.join("srv6.pcap"), "ip6"),
    ];
    let from_endpoint = serde_json::json!({
        "iface": "eth0",
        "src_mac": mac_of(&atk, "eth0"),
        "src_ip6": ip6_of(&h, &atk),
        "src_ll": link_local(&atk),
        "dst_mac": mac_of(&h.netns, bridge["Bridge"].as_str().unwrap()),
        "world_ip6": support::WORLD_IP6,
        "victim_ip6": ip6_of(&h, &vic),
        "victim_ll": link_local(&vic),
        "gateway_ip6": gateway6,
    });
    let mut from_world = world_sender(&h);
    from_world.extend(
        serde_json::json!({
            "src_ip6": support::WORLD_IP6,
            "host_ip6": support::HOST_IP6,
            "gateway_ip6": gateway6,
            "victim_ip6": ip6_of(&h, &vic),
            "published_ip6": ip6_of(&h, &srv),
            "any_port": 8080,
            "loopback_port": 8081,
        })
        .as_object()
        .unwrap()
        .clone(),
    );
    let from_world = Value::Object(from_world);
    let (from_endpoint_n, endpoint_sent) = barrage(&h, &atk, "endpoint6", &from_endpoint);
    let (from_world_n, world_sent) = barrage(&h, &h.world, "world6", &from_world);
    sleep(Duration::from_millis(500));
    drop(_captures);

    let check = |pcap: &str| {
        hostile(
            &h.world,
            &format!("check6 {} fd00:61::/64", dir.join(pcap).display()),
        )
    };
    let uplink = check("world6.pcap");
    assert!(
        uplink["ipv6"].as_u64().unwrap() > 0,
        "the capture works: {uplink}"
    );
    assert_eq!(
        uplink["leaked"],
        serde_json::json!([]),
        "no address of the endpoints' prefix leaves the uplink"
    );
    let victim = check("vic6.pcap");
    assert_eq!(
        victim["ipv6"], 0,
        "nothing was meant for the victim: {victim}"
    );
    let published = check("srv6.pcap");
    assert!(published["ipv6"].as_u64().unwrap() > 0, "{published}");
    assert_eq!(
        published["unexpected"],
        serde_json::json!([]),
        "the published endpoint gets its port 80 and ICMPv6 errors only"
    );

    assert!(h.daemon_pid().is_some());
    assert!(
        h.in_endpoint(&atk, &format!("ping -6 -c1 -W2 {}", support::WORLD_IP6))
            .status
            .success(),
        "the attacker's own IPv6 traffic still flows"
    );
    figure(
        "hostile6.packets",
        format!(
            "{} crafted IPv6 packets ({from_endpoint_n} from an endpoint: {endpoint_sent}; {from_world_n} from the world: {world_sent})",
            from_endpoint_n + from_world_n
        ),
    );
    figure("hostile6.drops", h.nat()["Drops"].clone());
    figure(
        "hostile6.uplink",
        format!(
            "{} IPv6 packets left the uplink (neighbour discovery aside), none with an address of the endpoints' prefix",
            uplink["ipv6"]
        ),
    );
}

#[test]
fn a_syn_flood_fills_the_flow_table_but_established_flows_keep_streaming_and_it_recovers() {
    let h = Host::new();
    // 64 entries: 32 flows, a direction each. SYN-only flows live 2 s.
    h.up(&["--ct-max", "64", "--ct-tcp-syn", "2"]);
    let srv = h.name("srv");
    h.np_ok(&["create", &srv, "-p", "9000:9000"]);
    let sent = h.dir.join("sent");
    let _server = serve(&h, &srv, 9000, 8, &sent);
    let streams = receive(&h.world, HOST_IP, 9000);
    sleep(Duration::from_secs(1));

    let full_before = h.drops("ct_full");
    let mut config = world_sender(&h);
    config.insert("port".into(), 9000.into());
    config.insert("count".into(), 300.into());
    let config = Value::Object(config);
    let syn = hostile(&h.world, &format!("flood '{config}'"))["syn"]
        .as_u64()
        .unwrap();
    let refused = h.drops("ct_full") - full_before;
    assert!(
        refused > 0,
        "a full table refuses new flows, counted as ct_full"
    );
    let (bytes, gap_ms) = assert_streams_complete("during a SYN flood", streams, &sent);

    // The flood's flows expire and new connections get through again.
    let flooded = Instant::now();
    let connects = || {
        h.in_world(&format!(
            "python3 -c \"import socket; socket.create_connection(('{HOST_IP}', 9000), timeout=1)\""
        ))
        .status
        .success()
        .then_some(())
    };
    support::retry(connects).expect("a new connection once the flood's flows expired");
    figure(
        "flood.syn",
        format!(
            "{syn} SYNs to a published port with a 64-entry table: {refused} refused as ct_full"
        ),
    );
    figure(
        "flood.established",
        format!(
            "{CONNECTIONS} established streams: {bytes} bytes, all in order, longest wait {gap_ms} ms"
        ),
    );
    figure(
        "flood.recovered",
        format!(
            "new connections accepted again {} ms after the flood",
            flooded.elapsed().as_millis()
        ),
    );
}

#[test]
fn with_the_daemon_down_a_full_flow_table_takes_new_flows_as_old_ones_expire() {
    let h = Host::new();
    // 32 flows fit; the flood's half-open and reset flows live 2 s.
    h.up(&[
        "--ct-max",
        "64",
        "--ct-tcp-syn",
        "2",
        "--ct-tcp-closing",
        "2",
    ]);
    let srv = h.name("srv");
    h.np_ok(&["create", &srv, "-p", "9000:9000"]);
    let _server = h.tcp_server(&srv, 9000, "true");
    // Nothing collects flows from now on.
    h.kill_daemon();
    let mut config = world_sender(&h);
    config.insert("port".into(), 9000.into());
    config.insert("count".into(), 200.into());
    let config = Value::Object(config);
    hostile(&h.world, &format!("flood '{config}'"));
    let flooded = Instant::now();
    let connects = || {
        h.in_world(&format!(
            "python3 -c \"import socket; socket.create_connection(('{HOST_IP}', 9000), timeout=0.5)\""
        ))
        .status
        .success()
    };
    assert!(!connects(), "the table is full of the flood's live flows");
    support::retry(|| connects().then_some(()))
        .expect("a new connection once the flood's flows expired, with no daemon");
    figure(
        "flood.daemon_down",
        format!(
            "with the daemon killed, a table filled by 200 SYNs took a new connection {} ms after the flood (flows live 2 s; the programs sweep a full table at most once a second)",
            flooded.elapsed().as_millis()
        ),
    );
}

/// A server in the world that answers each connection's first line with
/// that line and the peer's address:port as it saw it, then holds the
/// connection until the client closes it.
const ECHO_PEER: &str = "import socket, threading
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((\"0.0.0.0\", 7000)); l.listen(8)
def answer(c, peer):
    c.sendall(b\"%s %s:%d\\n\" % (c.recv(64).strip(), peer[0].encode(), peer[1])); c.recv(1); c.close()
while True:
    c, peer = l.accept(); threading.Thread(target=answer, args=(c, peer), daemon=True).start()";

/// A client connecting from source port 40000 to ECHO_PEER, which prints
/// the answer and holds the connection until it is killed.
const HOLD_FROM_40000: &str = "import socket, sys, time
s = socket.create_connection((sys.argv[1], 7000), timeout=2.5, source_address=(\"\", 40000))
s.sendall(sys.argv[2].encode() + b\"\\n\"); print(s.makefile().readline().strip(), flush=True)
time.sleep(60)";

/// A client process in an endpoint, killed on drop.
struct Held(std::process::Child);

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects from `endpoint` with [`HOLD_FROM_40000`]: the held connection
/// and the server's answer, or `None` when the connection failed.
fn hold(endpoint: &str) -> (Held, Option<String>) {
    use std::io::BufRead;
    let mut child = Command::new("ip")
        .args(["netns", "exec", endpoint, "python3", "-c", HOLD_FROM_40000])
        .args([WORLD_IP, endpoint])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let answer = (!line.is_empty()).then(|| line.trim().to_string());
    (Held(child), answer)
}

#[test]
fn masquerade_towards_one_destination_runs_out_of_ports_counted_and_never_mistranslated() {
    let h = Host::new();
    // Two ports for masquerade, the clients' own among them; closed flows
    // leave the table after a second.
    h.in_host("sysctl -qw net.ipv4.ip_local_port_range='40000 40001'");
    h.up(&["--ct-tcp-closing", "1"]);
    let _server = h.spawn_ready(&h.world, &format!("python3 -c '{ECHO_PEER}'"), |_| {
        sh_ok(&format!("ip netns exec {} ss -Htln sport = :7000", h.world)).contains("LISTEN")
    });
    let [a, b, c] = ["a", "b", "c"].map(|n| h.name(n));
    for e in [&a, &b, &c] {
        h.np_ok(&["create", e]);
    }
    let exhausted_before = h.drops("nat_ports_exhausted");

    // a keeps its own port; b's collides with a's and gets the other.
    let (held_a, answer_a) = hold(&a);
    assert_eq!(answer_a, Some(format!("{a} {HOST_IP}:40000")));
    let (_held_b, answer_b) = hold(&b);
    assert_eq!(answer_b, Some(format!("{b} {HOST_IP}:40001")));
    assert_eq!(h.drops("nat_ports_exhausted"), exhausted_before);

    // Nothing is left for c: each of its SYNs is refused and counted.
    let (_, answer_c) = hold(&c);
    assert_eq!(answer_c, None, "c cannot connect: no source port is free");
    sleep(Duration::from_millis(200));
    let syns = 1 + tcp_counter(&c, "netstat", "TcpExt", "TCPSynRetrans");
    let refused = h.drops("nat_ports_exhausted") - exhausted_before;
    assert_eq!(
        refused, syns,
        "every SYN of c is counted as nat_ports_exhausted"
    );

    // Once a's flow has closed and left the table, c gets its port.
    drop(held_a);
    let closed = Instant::now();
    let answer_c = loop {
        if let (held, Some(answer)) = hold(&c) {
            drop(held);
            break answer;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(10),
            "c connects once a's flow expired"
        );
    };
    assert_eq!(answer_c, format!("{c} {HOST_IP}:40000"));
    figure(
        "ports.exhausted",
        format!(
            "with 2 ports to pick towards one destination, a third flow's {syns} SYNs were refused as nat_ports_exhausted; a free port again {} ms after a flow closed",
            closed.elapsed().as_millis()
        ),
    );
}

/// The netplane binary the upgrade test starts from: `cargo xtask test`
/// builds it from an earlier commit and names it here.
fn previous_netplane() -> std::path::PathBuf {
    std::env::var_os("NETPLANE_UPGRADE_FROM")
        .expect(
            "NETPLANE_UPGRADE_FROM names an earlier netplane's binary; cargo xtask test builds it",
        )
        .into()
}

/// `bpftool -j KIND show pinned` for every pin under the host's `dir`
/// (`links`, `maps`), by pin name.
fn pinned(h: &Host, kind: &str, dir: &str) -> std::collections::BTreeMap<String, Value> {
    std::fs::read_dir(h.dir.join("bpf").join(dir))
        .unwrap()
        .map(|pin| {
            let pin = pin.unwrap().path();
            let show = sh_ok(&format!("bpftool -j {kind} show pinned {}", pin.display()));
            let name = pin.file_name().unwrap().to_string_lossy().into_owned();
            (name, serde_json::from_str(&show).unwrap())
        })
        .collect()
}

/// Ids of the pinned links and of the programs in them.
fn link_and_program_ids(h: &Host) -> std::collections::BTreeMap<String, (u64, u64)> {
    pinned(h, "link", "links")
        .into_iter()
        .map(|(name, l)| {
            (
                name,
                (l["id"].as_u64().unwrap(), l["prog_id"].as_u64().unwrap()),
            )
        })
        .collect()
}

/// Stops the daemon as a service manager would: SIGTERM, which leaves the
/// data path in place.
fn stop_daemon(h: &Host) {
    let pid = h.daemon_pid().expect("the daemon runs");
    sh_ok(&format!("kill -TERM {pid}"));
    assert!(
        support::retry(|| h.daemon_pid().is_none().then_some(())).is_some(),
        "the daemon stops on SIGTERM"
    );
}

/// Writes `version` as the layout version stamped on the pinned maps.
fn stamp_layout(h: &Host, version: u32) {
    let pin = h.dir.join("bpf/maps").join(maps::LAYOUT);
    let value: Vec<String> = version
        .to_ne_bytes()
        .iter()
        .map(|b| b.to_string())
        .collect();
    sh_ok(&format!(
        "bpftool map update pinned {} key 0 0 0 0 value {}",
        pin.display(),
        value.join(" ")
    ));
}

#[test]
fn an_upgrade_swaps_programs_into_the_same_links_keeps_maps_and_flows_and_refuses_another_layout() {
    let h = Host::new();
    let previous = previous_netplane();
    let out = h.up_cmd_of(&previous, &["--detach"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (srv, cli) = (h.name("srv"), h.name("cli"));
    h.np_ok(&["create", &srv, "-p", "9000:9000"]);
    h.np_ok(&["create", &cli]);
    let (sent_in, sent_out) = (h.dir.join("sent-in"), h.dir.join("sent-out"));
    let _inbound_server = serve(&h, &srv, 9000, 10, &sent_in);
    let _outbound_server = serve(&h, &h.world, 9001, 10, &sent_out);
    let inbound = receive(&h.world, HOST_IP, 9000);
    let outbound = receive(&cli, WORLD_IP, 9001);
    sleep(Duration::from_secs(1));

    let links_before = link_and_program_ids(&h);
    let maps_before = pinned(&h, "map", "maps");
    assert!(
        !maps_before.contains_key(maps::LAYOUT),
        "the earlier netplane pins no layout version"
    );
    let flows_before = map_entries(&h, maps::CONNTRACK);
    assert!(
        flows_before.len() >= 4 * CONNECTIONS,
        "{} entries",
        flows_before.len()
    );

    // The upgrade: the earlier daemon stops, this one starts on its pins.
    stop_daemon(&h);
    let upgrading = Instant::now();
    h.up(&[]);
    let upgraded_in = upgrading.elapsed();
    // Every link stays; this netplane also counts what endpoints receive,
    // on links of its own at their veths' egress, and hooks IPv6 sockets
    // and getpeername.
    let links_after = link_and_program_ids(&h);
    let added: Vec<&String> = links_after
        .keys()
        .filter(|pin| !links_before.contains_key(*pin))
        .collect();
    let new_socket_hooks = [
        programs::GETPEERNAME4,
        programs::CONNECT6,
        programs::SENDMSG6,
        programs::RECVMSG6,
        programs::GETPEERNAME6,
    ]
    .map(|p| format!("cgroup@{p}"));
    assert!(
        added
            .iter()
            .all(|pin| (pin.starts_with("npv") && pin.ends_with("@egress"))
                || new_socket_hooks.contains(pin)),
        "{added:?}"
    );
    assert_eq!(
        added
            .iter()
            .filter(|pin| pin.starts_with("cgroup@"))
            .count(),
        new_socket_hooks.len()
    );
    for (pin, (link, program)) in &links_before {
        let (link_after, program_after) = links_after[pin];
        assert_eq!(link_after, *link, "{pin}: the same link");
        assert_ne!(program_after, *program, "{pin}: a new program in it");
    }
    // The flow table's entries changed shape since (layout version 1 to
    // 2): it is made anew and its entries converted. The other maps stay.
    let maps_after = pinned(&h, "map", "maps");
    let added: Vec<&String> = maps_after
        .keys()
        .filter(|name| !maps_before.contains_key(*name))
        .collect();
    assert_eq!(
        added,
        [
            maps::CONNTRACK6,
            maps::CT_TIMEOUTS,
            maps::ENDPOINT6_IFACES,
            maps::ENDPOINTS6,
            maps::HOST_ADDRS6,
            maps::IF_DROPS,
            maps::LAYOUT,
            maps::MACVLAN_SOURCES,
            maps::NETWORKS,
            maps::PUBLISHED6,
            maps::PUBLISH_FROM,
            maps::RULE_DROPS,
            maps::SOCK_REV6,
            maps::UPLINK6,
            maps::XDP_PORTS,
        ],
        "only the maps this netplane added; the old table's pin is gone"
    );
    for (name, map) in &maps_before {
        if name == maps::CONNTRACK {
            assert_ne!(maps_after[name]["id"], map["id"], "{name}: made anew");
            assert_eq!(
                maps_after[name]["bytes_value"],
                size_of::<CtEntry>(),
                "{name}: this layout"
            );
        } else {
            assert_eq!(maps_after[name]["id"], map["id"], "{name}: the same map");
        }
    }
    let stamp = map_entries(&h, maps::LAYOUT);
    assert_eq!(
        stamp[0].1,
        LAYOUT_VERSION.to_ne_bytes(),
        "stamped on upgrade"
    );
    let flows_after = map_entries(&h, maps::CONNTRACK);
    for (key, value) in &flows_before {
        // Addresses, ports and NAT slot lead both layouts' entries.
        assert!(
            flows_after
                .iter()
                .any(|(k, v)| k == key && v[..16] == value[..16]),
            "every tracked flow is kept with its translation: {key:?}"
        );
    }

    // Maps stamped by a netplane that reads them otherwise are refused,
    // naming both versions, and the running data path is left alone.
    stop_daemon(&h);
    stamp_layout(&h, LAYOUT_VERSION + 1);
    let refused = h.up_cmd(&["--detach"]).output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "up refuses: {err}");
    let expected = format!(
        "have layout version {}, this netplane reads version {LAYOUT_VERSION}: they were pinned by a newer netplane",
        LAYOUT_VERSION + 1
    );
    assert!(err.contains(&expected), "{err}");
    assert_eq!(link_and_program_ids(&h), links_after, "nothing was swapped");
    stamp_layout(&h, LAYOUT_VERSION);
    h.up(&[]);

    let mut bytes = 0;
    for (what, child, report) in [
        ("published port", inbound, &sent_in),
        ("masquerade", outbound, &sent_out),
    ] {
        bytes += assert_streams_complete(what, child, report).0;
    }
    figure(
        "upgrade",
        format!(
            "from {}: {} links kept with new programs, {} maps kept, {} flow entries converted to the new layout, {} connections carried {bytes} bytes in order; up took {} ms",
            previous.file_name().unwrap().to_string_lossy(),
            links_before.len(),
            maps_before.len() - 1,
            flows_before.len(),
            2 * CONNECTIONS,
            upgraded_in.as_millis()
        ),
    );
    figure(
        "upgrade.refused",
        "maps stamped with another layout version: up refused, naming both versions; links untouched",
    );
}

/// `up` on `h` with the programs forced onto clsact filters, as on a
/// kernel without tcx.
fn up_with_clsact(h: &Host) {
    h.up_with_env(&[], &[("NETPLANE_TC_HOOK", "clsact")]);
}

/// Program ids of the netplane filters on `dev`, by direction.
fn filter_programs(h: &Host, dev: &str) -> Vec<(String, u64)> {
    let net: Value = serde_json::from_str(&h.in_host("bpftool -j net show")).unwrap();
    let mut found: Vec<(String, u64)> = net[0]["tc"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["devname"] == dev && f["name"].as_str().is_some_and(|n| n.starts_with("np_")))
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["id"].as_u64().unwrap(),
            )
        })
        .collect();
    found.sort();
    found
}

#[test]
fn the_clsact_fallback_hangs_filters_swaps_their_programs_on_restart_and_down_removes_them() {
    let h = Host::new();
    let before = h.residue();
    let qdiscs_before = h.in_host(&format!("tc qdisc show dev {}", h.uplink));
    up_with_clsact(&h);
    let info: Value = serde_json::from_str(&h.np_ok(&["info"])).unwrap();
    assert_eq!(info["TcHook"], "clsact");
    let web = h.name("web");
    h.np_ok(&["create", &web, "-p", "8080:80"]);
    let _server = h.tcp_server(&web, 80, "echo hi");
    let first = filter_programs(&h, &h.uplink);
    assert_eq!(
        first.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["clsact/egress", "clsact/ingress"],
        "one filter each way on the uplink"
    );
    let pins = sh_ok(&format!("ls {}", h.dir.join("bpf").join("links").display()));
    assert!(
        pins.lines().all(|p| p.starts_with("cgroup@")),
        "no tcx link, only the socket programs' cgroup links: {pins}"
    );
    let reaches = || {
        String::from_utf8_lossy(
            &h.in_world(&format!("socat -T 2 - TCP:{HOST_IP}:8080"))
                .stdout,
        )
        .trim()
            == "hi"
    };
    assert!(reaches());

    // The filters and their programs outlive the daemon; the next one
    // replaces the programs in the same filters.
    h.kill_daemon();
    assert!(reaches(), "the data path runs without the daemon");
    up_with_clsact(&h);
    let second = filter_programs(&h, &h.uplink);
    assert_eq!(second.len(), 2, "still one filter each way: {second:?}");
    for ((kind, old), (_, new)) in first.iter().zip(&second) {
        assert_ne!(old, new, "{kind}: a new program");
    }
    assert!(reaches());

    h.down();
    assert_eq!(h.residue(), before, "down leaves the host as it was");
    assert_eq!(
        h.in_host(&format!("tc qdisc show dev {}", h.uplink)),
        qdiscs_before,
        "the clsact qdisc netplane added is gone"
    );
}
