//! The userspace forwarder, the data plane's slow path: IPv6 clients of an
//! IPv4-only endpoint's published ports, `up --userland-proxy`, PROXY
//! protocol v2 headers, with real programs on both sides (curl, iperf3,
//! socat), half-closed connections, and a connection flood held to the
//! limit.

use netplane_test_support as support;

use serde_json::Value;
use support::{HOST_IP, HOST_IP6, Host, PEER_ANSWER, WORLD_IP, WORLD_IP6, rule, stdout_if_ok};

/// The address a [`PEER_ANSWER`] named.
fn peer(answer: Option<String>) -> Option<String> {
    Some(answer?.trim().to_string())
}

/// A TCP server on `port` of endpoint `ep` naming each client.
fn peer_server(h: &Host, ep: &str, port: u16) -> support::Background {
    h.tcp_server(ep, port, PEER_ANSWER)
}

/// A TCP server on `port` of endpoint `ep` that answers each connection
/// with its PROXY protocol v2 header, in hex, once the header is read.
fn header_server(h: &Host, ep: &str, port: u16) -> support::Background {
    let script = format!(
        "import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((\"0.0.0.0\", {port})); s.listen(16)
while True:
    c, _ = s.accept()
    def read(n):
        b = b\"\"
        while len(b) < n:
            more = c.recv(n - len(b))
            if not more: break
            b += more
        return b
    head = read(16)
    rest = read(int.from_bytes(head[14:16], \"big\")) if len(head) == 16 else b\"\"
    c.sendall((head + rest).hex().encode()); c.close()"
    );
    let path = h.dir.join(format!("header{port}.py"));
    std::fs::write(&path, script).unwrap();
    h.spawn_ready(
        ep,
        &format!("{} {}", support::SCAPY_PYTHON, path.display()),
        |_| {
            support::sh_ok(&format!("ip netns exec {ep} ss -Htln sport = :{port}"))
                .contains(&format!(":{port}"))
        },
    )
}

/// The PROXY protocol v2 header a [`header_server`] sent back, parsed.
fn header_of(hex: &str) -> ppp::v2::Addresses {
    let bytes: Vec<u8> = (0..hex.trim().len() / 2)
        .map(|i| u8::from_str_radix(&hex.trim()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let header = ppp::v2::Header::try_from(&bytes[..])
        .unwrap_or_else(|e| panic!("no PROXY v2 header in {hex:?}: {e:?}"));
    assert_eq!(header.command, ppp::v2::Command::Proxy);
    header.addresses
}

/// What the forwarder counted under the published rule whose detail has
/// `detail_part`.
fn proxied(h: &Host, detail_part: &str) -> Value {
    let nat = h.nat();
    rule(&nat, detail_part)["Proxied"].clone()
}

fn bridge_gateway(h: &Host) -> String {
    let info: Value = serde_json::from_str(&h.np_ok(&["info"])).unwrap();
    let subnet: ipnet::Ipv4Net = info["Subnet"].as_str().unwrap().parse().unwrap();
    (u32::from(subnet.network()) + 1).to_string()
}

fn ipv4(n: String) -> String {
    std::net::Ipv4Addr::from(n.parse::<u32>().unwrap()).to_string()
}

/// Endpoint `web` publishing HTTP on 8080, iperf3's 5201 and a UDP echo
/// on 7007, plus the `-p` flags in `more`, with a [`peer_server`] on its
/// port 80; and the bridge's gateway, where relayed connections come from.
fn web_endpoint(h: &Host, more: &[&str]) -> (String, support::Background, String) {
    let web = h.name("web");
    let ports = ["-p", "8080:80", "-p", "5201:5201", "-p", "7007:7/udp"];
    h.np_ok(&[&["create"], &ports[..], more, &[web.as_str()]].concat());
    let http = peer_server(h, &web, 80);
    (web, http, ipv4(bridge_gateway(h)))
}

#[test]
fn ipv6_clients_reach_an_ipv4_endpoint_through_the_forwarder() {
    let h = Host::new();
    h.add_ipv6();
    // The bridge network is IPv4 only: the data path cannot translate an
    // IPv6 client's packets for its endpoints.
    h.up(&[]);
    let (web, _http, gateway) = web_endpoint(&h, &["-p", "9000:9000"]);

    // IPv4 stays in the data path: the endpoint sees the client itself.
    let seen = stdout_if_ok(h.in_world(&format!(
        "curl -4 --http0.9 -s --max-time 5 http://{HOST_IP}:8080/"
    )));
    assert_eq!(peer(seen).as_deref(), Some(WORLD_IP), "{}", h.log());
    assert!(
        proxied(&h, "dpt:8080 ")["Connections"]
            .as_u64()
            .unwrap_or(0)
            == 0
    );

    // IPv6 goes through the forwarder, which connects from the bridge's
    // gateway.
    let seen = stdout_if_ok(h.in_world(&format!(
        "curl -6 --http0.9 -s --max-time 5 http://[{HOST_IP6}]:8080/"
    )));
    assert_eq!(peer(seen).as_deref(), Some(gateway.as_str()), "{}", h.log());
    let counted = proxied(&h, "dpt:8080 ");
    assert_eq!(counted["Connections"], 1, "{counted}");
    assert!(counted["BytesOut"].as_u64().unwrap() > 0, "{counted}");
    let nat = h.nat();
    assert_eq!(
        rule(&nat, "dpt:8080 ")["Destination"],
        "0.0.0.0/0,::/0",
        "{nat}"
    );

    // Half-close: the client's FIN reaches the endpoint, whose answer (the
    // count of bytes it read up to the FIN) still comes back.
    let _wc = h.tcp_server(&web, 9000, "wc -c");
    let counted = stdout_if_ok(h.in_world(&format!(
        "sh -c 'printf hello | socat -t5 - TCP6:[{HOST_IP6}]:9000'"
    )));
    assert_eq!(counted.as_deref().map(str::trim), Some("5"), "{}", h.log());

    // A UDP echo over IPv6.
    let _echo = h.spawn_ready(&web, "socat UDP4-LISTEN:7,fork,reuseaddr PIPE", |_| {
        support::sh_ok(&format!("ip netns exec {web} ss -Huln sport = :7")).contains(":7")
    });
    let echoed = stdout_if_ok(h.in_world(&format!(
        "sh -c 'echo ping6 | socat -t2 - UDP6:[{HOST_IP6}]:7007'"
    )));
    assert_eq!(echoed.as_deref().map(str::trim), Some("ping6"));
    let udp = proxied(&h, "dpt:7007 ");
    assert_eq!(udp["Connections"], 1, "one session: {udp}");
    assert_eq!(udp["BytesIn"], 6, "{udp}");
    assert_eq!(udp["BytesOut"], 6, "{udp}");

    // iperf3 over IPv6, both its connections relayed.
    let _iperf = h.spawn_ready(&web, "iperf3 -s -1 -p 5201", |_| {
        support::sh_ok(&format!("ip netns exec {web} ss -Htln sport = :5201")).contains(":5201")
    });
    let report = stdout_if_ok(h.in_world(&format!("iperf3 -6 -c {HOST_IP6} -p 5201 -t 2 -J")))
        .unwrap_or_else(|| panic!("iperf3 over the forwarder failed: {}", h.log()));
    let report: Value = serde_json::from_str(&report).unwrap();
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap();
    assert!(received > 1_000_000, "{report}");
    let relayed = proxied(&h, "dpt:5201 ");
    assert!(
        relayed["BytesIn"].as_u64().unwrap() >= received,
        "{relayed}"
    );
    support::figure(
        "forwarder.iperf3_ipv6_bits_per_second",
        report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap()
            .round(),
    );

    // Withdrawn, the port stops answering over IPv6 too.
    h.np_ok(&["port", "rm", &web, "8080:80"]);
    let gone = h.in_world(&format!(
        "curl -6 --http0.9 -s --max-time 3 http://[{HOST_IP6}]:8080/"
    ));
    assert!(!gone.status.success(), "port rm left the forwarder serving");

    // PROXY protocol v2: every connection is relayed, with a header naming
    // the client and the address it reached.
    let _headers = header_server(&h, &web, 9100);
    h.np_ok(&["port", "add", &web, "9100:9100", "--proxy-protocol"]);
    let v6 = stdout_if_ok(h.in_world(&format!(
        "sh -c 'socat -t3 - TCP6:[{HOST_IP6}]:9100 </dev/null'"
    )))
    .unwrap_or_else(|| panic!("{}", h.log()));
    match header_of(&v6) {
        ppp::v2::Addresses::IPv6(a) => {
            assert_eq!(a.source_address.to_string(), WORLD_IP6);
            assert_eq!(a.destination_address.to_string(), HOST_IP6);
            assert_eq!(a.destination_port, 9100);
        }
        other => panic!("{other:?}"),
    }
    let v4 = stdout_if_ok(h.in_world(&format!(
        "sh -c 'socat -t3 - TCP4:{HOST_IP}:9100 </dev/null'"
    )))
    .unwrap_or_else(|| panic!("{}", h.log()));
    match header_of(&v4) {
        ppp::v2::Addresses::IPv4(a) => {
            assert_eq!(a.source_address.to_string(), WORLD_IP);
            assert_eq!(a.destination_address.to_string(), HOST_IP);
        }
        other => panic!("{other:?}"),
    }
    // From the host itself too.
    let local = stdout_if_ok(sh_in_host(
        &h,
        "sh -c 'socat -t3 - TCP4:127.0.0.1:9100 </dev/null'",
    ))
    .unwrap_or_else(|| panic!("{}", h.log()));
    assert!(
        matches!(header_of(&local), ppp::v2::Addresses::IPv4(a) if a.source_address.is_loopback())
    );
    assert_eq!(proxied(&h, "dpt:9100 ")["Connections"], 3);
}

fn sh_in_host(h: &Host, cmd: &str) -> std::process::Output {
    support::sh(&format!("ip netns exec {} {cmd}", h.netns))
}

#[test]
fn userland_proxy_relays_every_published_port_within_its_limit() {
    let h = Host::new();
    h.up(&["--userland-proxy", "--proxy-max-connections", "64"]);
    let info: Value = serde_json::from_str(&h.np_ok(&["info"])).unwrap();
    assert_eq!(info["UserlandProxy"], true, "{info}");
    let web = h.name("web");
    h.np_ok(&["create", "-p", "8080:80", "-p", "9000:9000", &web]);
    let _http = peer_server(&h, &web, 80);
    let gateway = ipv4(bridge_gateway(&h));

    let seen = stdout_if_ok(h.in_world(&format!(
        "curl -4 --http0.9 -s --max-time 5 http://{HOST_IP}:8080/"
    )));
    assert_eq!(
        peer(seen).as_deref(),
        Some(gateway.as_str()),
        "{}\n{}",
        h.log(),
        h.nat()
    );
    let local = stdout_if_ok(sh_in_host(
        &h,
        "curl --http0.9 -s --max-time 5 http://127.0.0.1:8080/",
    ));
    assert!(peer(local).is_some(), "host-local access: {}", h.log());
    let nat = h.nat();
    let served = rule(&nat, "dpt:8080 ");
    assert_eq!(served["Proxied"]["Connections"], 2, "{nat}");
    assert_eq!(
        served["Packets"], 0,
        "the data path translated nothing: {nat}"
    );
    assert!(
        h.log().contains("--userland-proxy"),
        "the daemon warns what is lost"
    );

    // A flood: 400 connections held open at once against a limit of 64.
    // socat's default backlog of 5 would keep the relayed connections
    // waiting on the endpoint instead of the forwarder.
    let _echo = h.spawn_ready(
        &web,
        "socat TCP-LISTEN:9000,fork,reuseaddr,backlog=1024 SYSTEM:cat",
        |_| {
            support::sh_ok(&format!("ip netns exec {web} ss -Htln sport = :9000")).contains(":9000")
        },
    );
    let pid = h.daemon_pid().unwrap();
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse::<u64>()
            .unwrap()
    };
    let before = rss();
    let flood = format!(
        "import socket, time
held = []
for i in range(400):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((\"{HOST_IP}\", 9000)); held.append(s)
    except OSError:
        pass
time.sleep(2)
print(len(held))"
    );
    let flood_path = h.dir.join("flood.py");
    std::fs::write(&flood_path, flood).unwrap();
    let flood = h.spawn_in(
        &h.world,
        &format!("{} {}", support::SCAPY_PYTHON, flood_path.display()),
    );
    let during = support::retry(|| {
        let p = proxied(&h, "dpt:9000 ");
        (p["Active"] == 64 && p["Refused"]["over_limit"].as_u64().unwrap_or(0) >= 300).then_some(p)
    })
    .unwrap_or_else(|| panic!("flood not held at the limit: {}", proxied(&h, "dpt:9000 ")));
    let peak = rss();
    drop(flood);
    support::figure(
        "forwarder.flood_rss_growth_kib",
        peak.saturating_sub(before),
    );
    assert!(
        peak.saturating_sub(before) < 32 * 1024,
        "the daemon grew from {before} to {peak} kB under the flood: {during}"
    );
    // The relayed connections end with the clients, and the port serves
    // again.
    support::retry(|| (proxied(&h, "dpt:9000 ")["Active"] == 0).then_some(()))
        .unwrap_or_else(|| panic!("{}", proxied(&h, "dpt:9000 ")));
    let echoed = stdout_if_ok(h.in_world(&format!(
        "sh -c 'echo again | socat -t3 - TCP4:{HOST_IP}:9000'"
    )));
    assert_eq!(echoed.as_deref().map(str::trim), Some("again"));
}

/// `up` with the daemon's bpf(2) calls failing, as on a host without
/// CAP_BPF; `--detach` waits until it serves or failed.
fn up_without_bpf(h: &Host, extra: &[&str]) -> std::process::Output {
    h.up_cmd_without_bpf(&[extra, &["--detach"]].concat())
        .output()
        .unwrap()
}

#[test]
fn userland_proxy_without_ebpf_serves_ports_masquerades_and_keeps_networks_apart() {
    let h = Host::new();
    let before = h.residue();

    let refused = up_without_bpf(&h, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "up without eBPF started");
    assert!(stderr.contains("--userland-proxy"), "{stderr}");
    assert_eq!(h.residue(), before, "a refused up leaves nothing");

    let up = up_without_bpf(&h, &["--userland-proxy"]);
    assert!(
        up.status.success(),
        "{}{}",
        String::from_utf8_lossy(&up.stderr),
        h.log()
    );
    let info: Value = serde_json::from_str(&h.np_ok(&["info"])).unwrap();
    assert_eq!(info["Datapath"], "none", "{info}");
    assert!(
        h.log().contains("did not load"),
        "the daemon warns what is lost"
    );
    assert!(!h.dir.join("bpf/maps").exists(), "nothing pinned");

    let (web, _http, gateway) = web_endpoint(&h, &[]);
    let seen = stdout_if_ok(h.in_world(&format!(
        "curl --http0.9 -s --max-time 5 http://{HOST_IP}:8080/"
    )));
    assert_eq!(peer(seen).as_deref(), Some(gateway.as_str()), "{}", h.log());
    let local = stdout_if_ok(sh_in_host(
        &h,
        "curl --http0.9 -s --max-time 5 http://127.0.0.1:8080/",
    ));
    assert!(peer(local).is_some(), "host-local access: {}", h.log());
    assert_eq!(proxied(&h, "dpt:8080 ")["Connections"], 2);

    let _echo = h.spawn_ready(&web, "socat UDP4-LISTEN:7,fork,reuseaddr PIPE", |_| {
        support::sh_ok(&format!("ip netns exec {web} ss -Huln sport = :7")).contains(":7")
    });
    let echoed = stdout_if_ok(h.in_world(&format!(
        "sh -c 'echo hello | socat -t2 - UDP4:{HOST_IP}:7007'"
    )));
    assert_eq!(echoed.as_deref().map(str::trim), Some("hello"));

    let _iperf = h.spawn_ready(&web, "iperf3 -s -1 -p 5201", |_| {
        support::sh_ok(&format!("ip netns exec {web} ss -Htln sport = :5201")).contains(":5201")
    });
    let report = stdout_if_ok(h.in_world(&format!("iperf3 -c {HOST_IP} -p 5201 -t 2 -J")))
        .unwrap_or_else(|| panic!("iperf3 without eBPF failed: {}", h.log()));
    let report: Value = serde_json::from_str(&report).unwrap();
    assert!(
        report["end"]["sum_received"]["bytes"].as_u64().unwrap() > 1_000_000,
        "{report}"
    );

    // Outbound, nftables masquerades: the world sees the host's address.
    let _world = h.tcp_server(&h.world, 8000, PEER_ANSWER);
    let seen = stdout_if_ok(h.in_endpoint(
        &web,
        &format!("curl --http0.9 -s --max-time 5 http://{WORLD_IP}:8000/"),
    ));
    assert_eq!(
        peer(seen).as_deref(),
        Some(HOST_IP),
        "{}",
        h.in_host("nft list ruleset")
    );

    // Another network is out of reach, and what the data path alone does
    // is refused by name.
    let other = h.name("other");
    h.np_ok(&["network", "create", &other]);
    let db = h.name("db");
    h.np_ok(&["create", "--net", &other, &db]);
    let db_ip = h.ip_of(&db);
    assert!(h.pings(&db, WORLD_IP), "the other network goes out too");
    assert!(!h.pings(&web, &db_ip), "networks are kept apart");
    for refused in [
        h.np_err(&["network", "create", "--icc=false", &h.name("closed")]),
        h.np_err(&["network", "create", "--driver", "overlay", &h.name("ov")]),
        h.np_err(&["ct", "ls"]),
    ] {
        assert!(refused.contains("needs the eBPF data path"), "{refused}");
    }

    // Restarted without eBPF, the daemon serves again; restarted with it,
    // the data path takes over from the nftables rules.
    let curl = format!("curl --http0.9 -s --max-time 5 http://{HOST_IP}:8080/");
    h.kill_daemon();
    let up = up_without_bpf(&h, &["--userland-proxy"]);
    assert!(up.status.success(), "{}", h.log());
    assert_eq!(
        peer(stdout_if_ok(h.in_world(&curl))).as_deref(),
        Some(gateway.as_str()),
        "{}",
        h.log()
    );
    h.kill_daemon();
    h.up(&["--userland-proxy"]);
    let info: Value = serde_json::from_str(&h.np_ok(&["info"])).unwrap();
    assert_eq!(info["Datapath"], "ebpf", "{info}");
    let ruleset = h.in_host("nft list ruleset");
    assert!(!ruleset.contains("netplane"), "{ruleset}");
    assert_eq!(
        peer(stdout_if_ok(h.in_world(&curl))).as_deref(),
        Some(gateway.as_str())
    );
    assert!(
        !h.pings(&web, &db_ip),
        "the data path keeps the networks apart"
    );

    h.down();
    assert_eq!(h.residue(), before, "down leaves nothing");
}
