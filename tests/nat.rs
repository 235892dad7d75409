//! The eBPF NAT fast path with real programs: curl, socat, ping and packets
//! built with scapy, on simulated hosts in network namespaces.

use netplane_test_support as support;

use serde_json::Value;
use support::{Background, HOST_IP, Host, WORLD_IP, retry, rule, sh, sh_ok, stdout_if_ok};

/// Debian's python, which has scapy.
const PY: &str = "/usr/bin/python3";

/// An HTTP server on `port` in `netns` that answers with the client's
/// address and port as it sees them ("ADDR PORT": socat's SYSTEM address
/// would take a colon for an option separator).
fn http_peer_server(h: &Host, netns: &str, port: u16) -> Background {
    h.spawn_in(
        netns,
        &format!(
            "socat TCP-LISTEN:{port},reuseaddr,fork \
             'SYSTEM:echo HTTP/1.0 200 OK; echo; echo $SOCAT_PEERADDR $SOCAT_PEERPORT; sleep 0.3'"
        ),
    )
}

/// A UDP server on `port` in `netns` that answers each datagram with the
/// sender's address and port.
fn udp_peer_server(h: &Host, netns: &str, port: u16) -> Background {
    h.spawn_in(
        netns,
        &format!("socat UDP-RECVFROM:{port},fork 'SYSTEM:echo $SOCAT_PEERADDR $SOCAT_PEERPORT'"),
    )
}

/// `curl URL` run in `netns`: the client address the server saw.
fn curl_peer(netns: &str, url: &str, extra: &str) -> Option<String> {
    retry(|| {
        stdout_if_ok(sh(&format!(
            "ip netns exec {netns} curl -sS --max-time 2 {extra} {url}"
        )))
        .map(|s| s.trim().to_string())
    })
}

/// One UDP datagram from `netns` to `addr`: the sender the server saw.
fn udp_peer(netns: &str, addr: &str, extra: &str) -> Option<String> {
    retry(|| {
        stdout_if_ok(sh(&format!(
            "echo hi | ip netns exec {netns} socat -t1 - UDP:{addr}{extra}"
        )))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
    })
}

fn ip_only(peer: &str) -> &str {
    peer.split_whitespace().next().unwrap_or(peer)
}

#[test]
fn world_reaches_published_ports_and_the_endpoint_sees_the_real_client() {
    let h = Host::new();
    h.up(&[]);
    let web = h.name("web");
    h.np_ok(&["create", &web, "-p", "8080:80", "-p", "5353:53/udp"]);
    let _http = http_peer_server(&h, &web, 80);
    let _dns = udp_peer_server(&h, &web, 53);

    let peer = curl_peer(&h.world, &format!("http://{HOST_IP}:8080/"), "").expect("curl");
    assert_eq!(
        ip_only(&peer),
        WORLD_IP,
        "TCP: the endpoint sees the client"
    );
    let peer = udp_peer(&h.world, &format!("{HOST_IP}:5353"), "").expect("udp");
    assert_eq!(
        ip_only(&peer),
        WORLD_IP,
        "UDP: the endpoint sees the client"
    );

    let nat = h.nat();
    for detail in ["tcp dpt:8080", "udp dpt:5353"] {
        let r = rule(&nat, detail);
        assert!(r["Packets"].as_u64().unwrap() >= 2, "{r}");
        assert!(r["Bytes"].as_u64().unwrap() > 0, "{r}");
    }

    // Bulk TCP through the published port with iperf3.
    h.np_ok(&["port", "add", &web, "5201:5201"]);
    let _iperf = h.spawn_in(&web, "iperf3 -s -p 5201");
    // Retried until a run reports what it received: a client that comes
    // before the server listens gets an error report instead.
    let mut last = String::new();
    let received = retry(|| {
        last = String::from_utf8_lossy(
            &h.in_world(&format!("iperf3 -c {HOST_IP} -p 5201 -t 1 -J"))
                .stdout,
        )
        .into_owned();
        let report: Value = serde_json::from_str(&last).ok()?;
        report["end"]["sum_received"]["bytes"]
            .as_f64()
            .filter(|b| *b > 0.0)
    })
    .unwrap_or_else(|| panic!("iperf3 through the published port: {last}"));
    assert!(received > 1e6, "iperf3 moved {received} bytes");
    if let Some(redirected) = h.xdp_redirected() {
        assert!(redirected > 0, "no packet of iperf3 took the XDP path");
    }
    h.np_ok(&["port", "rm", &web, "5201"]);

    // Withdrawn at run time: nothing answers any more.
    h.np_ok(&["port", "rm", &web, "80"]);
    let out = h.in_world(&format!("curl -sS --max-time 1 http://{HOST_IP}:8080/"));
    assert!(!out.status.success(), "port rm withdraws the port");
    // Published at run time, with a host port picked for us.
    let ports: Value = serde_json::from_str(&h.np_ok(&["port", "ls", "--json"])).unwrap();
    assert_eq!(ports.as_array().unwrap().len(), 1, "{ports}");
    h.np_ok(&["port", "add", &web, "80"]);
    let ports: Value = serde_json::from_str(&h.np_ok(&["port", "ls", &web, "--json"])).unwrap();
    let picked = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["Proto"] == "tcp")
        .unwrap()["HostPort"]
        .as_u64()
        .unwrap();
    let peer = curl_peer(&h.world, &format!("http://{HOST_IP}:{picked}/"), "").expect("curl");
    assert_eq!(ip_only(&peer), WORLD_IP);
}

#[test]
fn endpoints_leave_with_the_uplink_address_even_with_the_same_source_port() {
    let h = Host::new();
    h.up(&[]);
    let (a, b) = (h.name("a"), h.name("b"));
    h.np_ok(&["create", &a]);
    h.np_ok(&["create", &b]);
    let _http = http_peer_server(&h, &h.world, 80);
    let _udp = udp_peer_server(&h, &h.world, 7);

    // Both hold a connection from source port 40000 to the same server at
    // the same time (the server keeps each open for a moment).
    let url = format!("http://{WORLD_IP}/");
    retry(|| curl_peer(&a, &url, "").filter(|p| ip_only(p) == HOST_IP))
        .expect("a reaches the world");
    let both = sh_ok(&format!(
        "ip netns exec {a} curl -sS --max-time 3 --local-port 40000 {url} > {d}/a.out &
         ip netns exec {b} curl -sS --max-time 3 --local-port 40000 {url} > {d}/b.out &
         wait; cat {d}/a.out {d}/b.out",
        d = h.dir.display()
    ));
    let peers: Vec<&str> = both.lines().collect();
    assert_eq!(peers.len(), 2, "both connections got an answer: {both:?}");
    assert!(peers.iter().all(|p| ip_only(p) == HOST_IP), "{peers:?}");
    assert_ne!(
        peers[0], peers[1],
        "distinct source ports on the wire: {peers:?}"
    );
    assert!(
        peers.iter().any(|p| p.ends_with(" 40000")),
        "a port that can be kept is kept: {peers:?}"
    );

    let peer = udp_peer(&a, &format!("{WORLD_IP}:7"), ",sourceport=40005").expect("udp");
    assert_eq!(peer, format!("{HOST_IP} 40005"));

    // A datagram larger than the MTU leaves in fragments; every one must be
    // translated for the world to reassemble it.
    let _sink = h.spawn_in(
        &h.world,
        &format!(
            "socat -u UDP-RECV:9999 OPEN:{}/big.out,creat",
            h.dir.display()
        ),
    );
    let big = "x".repeat(4000);
    std::thread::sleep(std::time::Duration::from_millis(300));
    sh_ok(&format!(
        "printf '%s' {big} | ip netns exec {a} socat -u - UDP:{WORLD_IP}:9999"
    ));
    let got = retry(|| {
        std::fs::read_to_string(h.dir.join("big.out"))
            .ok()
            .filter(|s| s.len() == big.len())
    });
    assert_eq!(
        got.as_deref(),
        Some(big.as_str()),
        "the reassembled datagram"
    );
    assert!(h.pings(&a, WORLD_IP), "ICMP echo is masqueraded too");

    let masq = rule(&h.nat(), "to:").clone();
    assert_eq!(masq["Target"], "MASQUERADE");
    assert!(masq["Packets"].as_u64().unwrap() >= 10, "{masq}");
}

#[test]
fn hairpin_and_the_host_itself_reach_published_ports() {
    let h = Host::new();
    h.up(&["--subnet", "10.80.0.0/24"]);
    let (web, other) = (h.name("web"), h.name("other"));
    h.np_ok(&["create", &web, "-p", "8080:80", "-p", "127.0.0.1:9000:80"]);
    h.np_ok(&["create", &other]);
    let _http = http_peer_server(&h, &web, 80);
    let other_ip = h.ip_of(&other);

    let url = format!("http://{HOST_IP}:8080/");
    let peer = curl_peer(&other, &url, "").expect("hairpin from another endpoint");
    assert_eq!(ip_only(&peer), other_ip, "the server sees the real client");
    let peer = curl_peer(&web, &url, "").expect("hairpin to itself");
    assert_eq!(
        ip_only(&peer),
        "10.80.0.1",
        "an endpoint reaching itself sees the gateway"
    );

    for url in [
        "http://127.0.0.1:8080/",
        &format!("http://{HOST_IP}:8080/"),
        "http://127.0.0.1:9000/",
    ] {
        let peer = curl_peer(&h.netns, url, "").unwrap_or_else(|| panic!("host -> {url}"));
        assert_eq!(ip_only(&peer), "10.80.0.1", "{url}");
    }
    // Other namespaces on the machine are untouched by the socket programs.
    let out = sh("curl -sS --max-time 1 http://127.0.0.1:9000/");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("10.80.0.1"),
        "the machine's own loopback is not translated"
    );

    // A port published on 127.0.0.1 is not reachable from another machine,
    // not even with a frame sent to the host's MAC for 127.0.0.1 (Docker's
    // hole before v28). The same frame for the host address, as a control,
    // is translated.
    let mac = h
        .in_host(&format!("cat /sys/class/net/{}/address", h.uplink))
        .trim()
        .to_string();
    let iface = format!("{}x", h.prefix);
    let loop_before = rule(&h.nat(), "dpt:9000")["Packets"].as_u64().unwrap();
    let any_before = rule(&h.nat(), "dpt:8080")["Packets"].as_u64().unwrap();
    for dst in ["127.0.0.1", HOST_IP] {
        let dport = if dst == HOST_IP { 8080 } else { 9000 };
        let out = h.in_world(&format!(
            "{PY} -c \"from scapy.all import *; \
             sendp(Ether(dst='{mac}')/IP(src='{WORLD_IP}',dst='{dst}')/TCP(sport=33333,dport={dport},flags='S'), \
             iface='{iface}', verbose=False)\""
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let nat = h.nat();
    assert_eq!(
        rule(&nat, "dpt:9000")["Packets"].as_u64().unwrap(),
        loop_before,
        "a frame for 127.0.0.1 from outside is never translated"
    );
    assert!(rule(&nat, "dpt:8080")["Packets"].as_u64().unwrap() > any_before);
}

#[test]
fn icc_false_still_allows_links_published_ports_and_masquerade() {
    let h = Host::new();
    h.up(&["--icc=false", "--subnet", "10.81.0.0/24"]);
    let (db, app, stranger) = (h.name("db"), h.name("app"), h.name("x"));
    h.np_ok(&["create", &db, "-p", "8080:80"]);
    h.np_ok(&["create", &app, "--link", &format!("{db}:db")]);
    h.np_ok(&["create", &stranger]);
    let db_ip = h.ip_of(&db);
    assert!(h.pings(&app, &db_ip), "linked endpoints talk");
    assert!(h.pings(&db, &h.ip_of(&app)), "both ways");
    assert!(!h.pings(&stranger, &db_ip), "others do not");
    assert!(h.drops("icc_denied") >= 1);

    let _http = http_peer_server(&h, &db, 80);
    let peer = curl_peer(&h.world, &format!("http://{HOST_IP}:8080/"), "").expect("published");
    assert_eq!(ip_only(&peer), WORLD_IP);
    assert!(h.pings(&stranger, WORLD_IP), "masquerade");
}

#[test]
fn spoofed_addresses_and_macs_are_dropped_and_counted() {
    let h = Host::new();
    h.up(&["--subnet", "10.82.0.0/24"]);
    let e = h.name("e");
    h.np_ok(&["create", &e]);
    assert!(h.pings(&e, "10.82.0.1"));
    let before = h.drops("spoofed");
    sh_ok(&format!("ip -n {e} addr add 10.82.0.99/24 dev eth0"));
    let out = h.in_endpoint(&e, "ping -c1 -W1 -I 10.82.0.99 10.82.0.1");
    assert!(!out.status.success(), "a borrowed address gets nowhere");
    let after_ip = h.drops("spoofed");
    assert!(after_ip > before, "counted: {before} -> {after_ip}");

    sh_ok(&format!("ip -n {e} addr del 10.82.0.99/24 dev eth0"));
    sh_ok(&format!(
        "ip -n {e} link set eth0 address 02:00:00:00:00:99"
    ));
    sh_ok(&format!("ip -n {e} neigh flush all"));
    assert!(!h.pings(&e, "10.82.0.1"), "a borrowed MAC gets nowhere");
    assert!(h.drops("spoofed") > after_ip);
}

#[test]
fn no_firewall_rules_and_nat_survives_firewall_flushes() {
    let h = Host::new();
    // iptables-save's comment lines carry a timestamp.
    let rules = |h: &Host| {
        let iptables: Vec<String> = h
            .in_host("iptables-save")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        (iptables, h.in_host("nft list ruleset"))
    };
    let before = rules(&h);
    h.up(&[]);
    let web = h.name("web");
    h.np_ok(&["create", &web, "-p", "8080:80"]);
    assert_eq!(rules(&h), before, "netplane writes no firewall rules");

    h.in_host("iptables -t nat -F");
    h.in_host("nft flush ruleset");
    let _http = http_peer_server(&h, &web, 80);
    let peer = curl_peer(&h.world, &format!("http://{HOST_IP}:8080/"), "").expect("published");
    assert_eq!(ip_only(&peer), WORLD_IP);
    assert!(h.pings(&web, WORLD_IP), "masquerade");
}

#[test]
fn icmp_errors_about_a_flow_reach_the_endpoint_translated() {
    let h = Host::new();
    h.up(&[]);
    let e = h.name("e");
    h.np_ok(&["create", &e]);
    // The world answers a datagram to a closed port with "port unreachable"
    // quoting the masqueraded datagram. The endpoint's connected socket only
    // gets the error if the quoted packet was translated back to its own
    // address and port.
    let out = h.in_endpoint(
        &e,
        &format!(
            "{PY} -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             s.settimeout(2); s.connect(('{WORLD_IP}', 9)); s.send(b'x'); \
             exec('try:\\n s.recv(10)\\nexcept ConnectionRefusedError:\\n print(\\'refused\\')')\""
        ),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "refused",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rewritten_packets_carry_valid_checksums() {
    let h = Host::new();
    h.up(&["--subnet", "10.83.0.0/24"]);
    let e = h.name("e");
    h.np_ok(&["create", &e, "-p", "7070:7070/udp"]);
    let world_if = format!("{}x", h.prefix);
    // Packets built by scapy carry complete checksums (no offload), so what
    // the capture validates is the data path's incremental update.
    let capture = |netns: &str, iface: &str, filter: &str| {
        h.spawn_in(
            netns,
            &format!("tcpdump -l -n -vv -i {iface} -c 1 '{filter}' 1>&2"),
        )
    };
    let send = |from: &str, pkt: &str| {
        let out = sh(&format!(
            "ip netns exec {from} {PY} -c \"from scapy.all import *; send({pkt}, verbose=False)\""
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let check = |bg: &mut Background, what: &str, want: &str| {
        let log = retry(|| {
            let log = std::fs::read_to_string(&bg.log).unwrap_or_default();
            log.contains("packet captured").then_some(log)
        });
        bg.stop();
        let log = log.unwrap_or_else(|| std::fs::read_to_string(&bg.log).unwrap_or_default());
        assert!(log.contains(want), "{what}: want {want:?} in {log}");
        assert!(
            !log.contains("incorrect") && !log.contains("bad cksum"),
            "{what}: {log}"
        );
    };
    let sent = |bg: &Background| {
        retry(|| {
            std::fs::read_to_string(&bg.log)
                .unwrap_or_default()
                .contains("listening on")
                .then_some(())
        })
    };

    // Masqueraded TCP and UDP, seen by the world.
    let mut tcp = capture(&h.world, &world_if, "tcp port 5555");
    sent(&tcp);
    send(
        &e,
        &format!("IP(dst='{WORLD_IP}')/TCP(sport=41000,dport=5555,flags='S')"),
    );
    check(&mut tcp, "masqueraded TCP", "(correct)");
    let mut udp = capture(&h.world, &world_if, "udp port 5556");
    sent(&udp);
    send(
        &e,
        &format!("IP(dst='{WORLD_IP}')/UDP(sport=41001,dport=5556)/Raw(b'abc')"),
    );
    check(&mut udp, "masqueraded UDP", "[udp sum ok]");
    // A UDP checksum of zero means "none" and must stay zero.
    let mut zero = capture(&h.world, &world_if, "udp port 5557");
    sent(&zero);
    send(
        &e,
        &format!("IP(dst='{WORLD_IP}')/UDP(sport=41002,dport=5557,chksum=0)/Raw(b'abc')"),
    );
    check(&mut zero, "zero UDP checksum", "[no cksum]");
    // A published UDP port, seen by the endpoint.
    let mut dnat = capture(&e, "eth0", "udp port 7070");
    sent(&dnat);
    send(
        &h.world,
        &format!("IP(dst='{HOST_IP}')/UDP(sport=41003,dport=7070)/Raw(b'abc')"),
    );
    check(&mut dnat, "published UDP", "[udp sum ok]");
}

#[test]
fn expired_flows_are_collected() {
    let h = Host::new();
    // Long enough to see the flow on a loaded machine, short enough to see
    // it go within `retry`'s five seconds.
    h.up(&["--ct-udp", "3"]);
    let e = h.name("e");
    h.np_ok(&["create", &e]);
    let _udp = udp_peer_server(&h, &h.world, 7);
    udp_peer(&e, &format!("{WORLD_IP}:7"), "").expect("udp");
    assert!(h.nat()["TrackedFlows"].as_u64().unwrap() >= 1);
    let gone = retry(|| (h.nat()["TrackedFlows"].as_u64() == Some(0)).then_some(()));
    assert!(
        gone.is_some(),
        "flows past their lifetime are removed: {}",
        h.nat()
    );
}

#[test]
fn checksums_left_to_offload_come_out_right() {
    // Real sockets on veth leave TCP checksums to offload (CHECKSUM_PARTIAL):
    // the packet carries only the pseudo-header sum, which the data path
    // must update for the new addresses. With checksum offload off on the
    // device a packet leaves by, the kernel completes the checksum in
    // software there, and the capture on the other side checks the result.
    let h = Host::new();
    h.up(&["--subnet", "10.84.0.0/24"]);
    let e = h.name("e");
    h.np_ok(&["create", &e, "-p", "8080:80"]);
    let host_veth = h
        .in_host("ip -br link")
        .lines()
        .find_map(|l| {
            l.split('@')
                .next()
                .filter(|n| n.starts_with("npv"))
                .map(str::to_string)
        })
        .expect("the endpoint's host-side veth");
    h.in_host(&format!("ethtool -K {} tx off", h.uplink));
    h.in_host(&format!("ethtool -K {host_veth} tx off"));
    let world_if = format!("{}x", h.prefix);
    let capture = |netns: &str, iface: &str, filter: &str| {
        let bg = h.spawn_in(
            netns,
            &format!("tcpdump -l -n -vv -i {iface} -c 1 '{filter}' 1>&2"),
        );
        retry(|| {
            std::fs::read_to_string(&bg.log)
                .unwrap_or_default()
                .contains("listening on")
                .then_some(())
        })
        .expect("tcpdump starts");
        bg
    };
    let verdict = |mut bg: Background| {
        let log = retry(|| {
            let log = std::fs::read_to_string(&bg.log).unwrap_or_default();
            log.contains("packet captured").then_some(log)
        })
        .unwrap_or_default();
        bg.stop();
        log
    };

    let out_cap = capture(&h.world, &world_if, "tcp dst port 7777");
    let _ = h.in_endpoint(&e, &format!("curl -s --max-time 1 http://{WORLD_IP}:7777/"));
    let log = verdict(out_cap);
    assert!(
        log.contains(", cksum") && log.contains("(correct)"),
        "masqueraded SYN: {log}"
    );

    let in_cap = capture(&e, "eth0", "tcp dst port 80");
    let _ = h.in_world(&format!("curl -s --max-time 1 http://{HOST_IP}:8080/"));
    let log = verdict(in_cap);
    assert!(
        log.contains(", cksum") && log.contains("(correct)"),
        "published SYN: {log}"
    );
}
