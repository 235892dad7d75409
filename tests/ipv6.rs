//! IPv6 on dual-stack networks: addresses of each family for endpoints,
//! the data path's checks on what they send over IPv6 (their own
//! addresses only, neighbour discovery included; `--icc`; isolation
//! between networks), and real traffic through it: published ports for
//! IPv6 clients, NAT66 and routed prefixes, hairpin and host-local access.

use netplane_test_support as support;

use serde_json::Value;
use support::{HOST_IP6, Host, PEER_ANSWER, SCAPY_PYTHON, WORLD_IP, WORLD_IP6, stdout_if_ok};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

/// `ping -6` from endpoint `from` to `to`, once.
fn pings6(h: &Host, from: &str, to: &str) -> bool {
    h.in_endpoint(from, &format!("ping -6 -c1 -W2 {to}"))
        .status
        .success()
}

#[test]
fn a_dual_stack_network_gives_endpoints_an_address_of_each_family() {
    let h = Host::new();
    h.up(&["--dns", WORLD_IP]);
    let (net, a, b) = (h.name("v6"), h.name("a"), h.name("b"));
    h.np_ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.78.0.0/24",
        "--subnet",
        "fd00:78::/64",
        &net,
    ]);
    let inspect = json(&h.np_ok(&["network", "inspect", &net]));
    assert_eq!(inspect["EnableIPv6"], true, "{inspect}");
    let configs = inspect["IPAM"]["Config"].as_array().unwrap();
    assert!(
        configs
            .iter()
            .any(|c| c["Subnet"] == "fd00:78::/64" && c["Gateway"] == "fd00:78::1"),
        "{inspect}"
    );
    h.np_ok(&["create", "--net", &net, &a]);
    h.np_ok(&["create", "--net", &net, "--ip6", "fd00:78::77", &b]);
    let ep = json(&h.np_ok(&["inspect", &a]));
    let on = &ep[0]["NetworkSettings"]["Networks"][&net];
    assert_eq!(on["GlobalIPv6Address"], "fd00:78::2", "{ep}");
    assert_eq!(on["GlobalIPv6PrefixLen"], 64);
    assert_eq!(on["IPv6Gateway"], "fd00:78::1");
    let addrs = stdout_if_ok(h.in_endpoint(&a, "ip -6 addr show dev eth0")).unwrap();
    assert!(addrs.contains("fd00:78::2/64"), "{addrs}");
    assert!(
        addrs.contains("fe80::"),
        "a link-local address too: {addrs}"
    );
    let routes = stdout_if_ok(h.in_endpoint(&a, "ip -6 route")).unwrap();
    assert!(
        routes.contains("default via fd00:78::1 dev eth0"),
        "{routes}"
    );

    let aaaa = stdout_if_ok(h.in_endpoint(&a, &format!("dig +short +tries=1 +time=2 AAAA {b}")))
        .unwrap_or_default();
    assert_eq!(aaaa.trim(), "fd00:78::77", "the embedded DNS answers AAAA");
    let over6 = stdout_if_ok(h.in_endpoint(
        &a,
        &format!("dig +short +tries=1 +time=2 @fd00:78::1 AAAA {b}"),
    ))
    .unwrap_or_default();
    assert_eq!(
        over6.trim(),
        "fd00:78::77",
        "and listens on the IPv6 gateway"
    );
    let ptr = stdout_if_ok(h.in_endpoint(&a, "dig +short +tries=1 +time=2 -x fd00:78::77"))
        .unwrap_or_default();
    assert_eq!(ptr.trim(), format!("{b}."));
    // What a C program's getaddrinfo sees: both families.
    let ahosts = stdout_if_ok(h.in_endpoint(&a, &format!("getent ahosts {b}"))).unwrap_or_default();
    let b4 = h.ip_of(&b);
    assert!(
        ahosts.contains("fd00:78::77") && ahosts.contains(&b4),
        "getent ahosts: {ahosts}"
    );
    assert!(pings6(&h, &a, &b), "by name, over IPv6 (ping -6 asks AAAA)");
    assert!(pings6(&h, &a, "fd00:78::77"), "endpoint to endpoint");
    assert!(pings6(&h, &a, "fd00:78::1"), "to the gateway");
    assert_eq!(h.drops("spoofed"), 0);
    assert_eq!(h.drops("unknown_l3"), 0, "neighbour discovery passes");

    // An endpoint of an IPv4-only network has IPv6 off, and an --ip6 for
    // one is refused.
    let c = h.name("c");
    h.np_ok(&["create", &c]);
    assert_eq!(
        stdout_if_ok(h.in_endpoint(&c, "ip -6 addr show dev eth0")).unwrap(),
        ""
    );
    let refused = h.np_err(&["create", "--ip6", "fd00:78::9", &h.name("d")]);
    assert!(refused.contains("--ip6"), "{refused}");
}

#[test]
fn ipv6_senders_are_checked_and_icc_holds() {
    let h = Host::new();
    h.up(&["--dns", WORLD_IP]);
    let (open, closed) = (h.name("open"), h.name("closed"));
    h.np_ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:79::/64",
        &open,
    ]);
    h.np_ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:7a::/64",
        "--icc=false",
        &closed,
    ]);
    let (a, b, x, y) = (h.name("a"), h.name("b"), h.name("x"), h.name("y"));
    for (ep, net) in [(&a, &open), (&b, &open), (&x, &closed), (&y, &closed)] {
        h.np_ok(&["create", "--net", net, ep]);
    }
    assert!(pings6(&h, &a, "fd00:79::3"));
    assert!(!pings6(&h, &a, "fd00:7a::2"), "another network");
    assert!(h.drops("other_network") > 0);
    assert!(!pings6(&h, &x, "fd00:7a::3"), "--icc=false");
    let y_ll = stdout_if_ok(h.in_endpoint(&y, "ip -6 -o addr show dev eth0 scope link"))
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        !pings6(&h, &x, &format!("{y_ll}%eth0")),
        "--icc=false holds for link-local addresses"
    );
    assert!(h.drops("icc_denied") >= 2);
    assert!(pings6(&h, &x, "fd00:7a::1"), "the gateway stays reachable");

    // Forged sources and neighbour advertisements from endpoint a.
    let spoofed = h.drops("spoofed");
    let forge = "from scapy.all import *
e = Ether(src=get_if_hwaddr('eth0'), dst='33:33:00:00:00:01')
sendp(e/IPv6(src='fd00:79::99', dst='fd00:79::3')/UDP(dport=9), iface='eth0', verbose=0)
sendp(e/IPv6(src='fd00:79::2', dst='ff02::1')/ICMPv6ND_NA(tgt='fd00:79::1', R=0, S=0, O=1), iface='eth0', verbose=0)
sendp(e/IPv6(src='fd00:79::2', dst='ff02::1')/ICMPv6ND_RA(), iface='eth0', verbose=0)";
    let out = h.in_endpoint(&a, &format!("{SCAPY_PYTHON} -c \"{forge}\""));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(h.drops("spoofed"), spoofed + 3, "each forgery counted");
    assert!(
        pings6(&h, &a, "fd00:79::3"),
        "and a's own traffic still flows"
    );
}

#[test]
fn up_ipv6_gives_the_bridge_network_ipv6_and_a_restart_keeps_it() {
    let h = Host::new();
    h.up(&["--dns", WORLD_IP, "--ipv6", "--subnet6", "fd00:17::/64"]);
    let (a, b) = (h.name("a"), h.name("b"));
    h.np_ok(&["create", &a]);
    let ep = json(&h.np_ok(&["inspect", &a]));
    let on = &ep[0]["NetworkSettings"]["Networks"]["bridge"];
    assert_eq!(on["GlobalIPv6Address"], "fd00:17::2", "{ep}");
    assert_eq!(on["IPv6Gateway"], "fd00:17::1");
    let bridge = json(&h.np_ok(&["network", "inspect", "bridge"]));
    assert_eq!(bridge["EnableIPv6"], true, "{bridge}");
    assert_eq!(bridge["IPAM"]["Config"][1]["Subnet"], "fd00:17::/64");
    h.kill_daemon();
    h.up(&["--dns", WORLD_IP]);
    h.np_ok(&["create", &b]);
    let ep = json(&h.np_ok(&["inspect", &b]));
    let on = &ep[0]["NetworkSettings"]["Networks"]["bridge"];
    assert_eq!(on["GlobalIPv6Address"], "fd00:17::3", "kept: {ep}");
    assert!(pings6(&h, &b, "fd00:17::2"));
    assert!(pings6(&h, &a, "fd00:17::1"));
    // A user network's unique local subnet stays clear of the bridge's.
    let net = h.name("n");
    h.np_ok(&["network", "create", "--ipv6", &net]);
    let inspect = json(&h.np_ok(&["network", "inspect", &net]));
    let v6 = inspect["IPAM"]["Config"][1]["Subnet"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(v6.starts_with("fd") && v6.ends_with("::/64"), "{inspect}");
    // Another IPv6 subnet for the same state is refused, as another
    // subnet is.
    h.kill_daemon();
    let out = h
        .up_cmd(&["--ipv6", "--subnet6", "fd00:18::/64", "--detach"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("IPv6 subnet is fd00:17::/64"), "{err}");
}

#[test]
fn network_connect_to_a_dual_stack_network_adds_an_ipv6_address() {
    let h = Host::new();
    h.up(&["--dns", WORLD_IP]);
    let net = h.name("v6");
    h.np_ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:7b::/64",
        &net,
    ]);
    let (a, b) = (h.name("a"), h.name("b"));
    h.np_ok(&["create", "--net", &net, &a]);
    h.np_ok(&["create", &b]);
    h.np_ok(&["network", "connect", "--ip6", "fd00:7b::b", &net, &b]);
    let ep = json(&h.np_ok(&["inspect", &b]));
    let on = &ep[0]["NetworkSettings"]["Networks"][&net];
    assert_eq!(on["GlobalIPv6Address"], "fd00:7b::b", "{ep}");
    assert_eq!(on["IPv6Gateway"], "fd00:7b::1");
    let addrs = stdout_if_ok(h.in_endpoint(&b, "ip -6 addr show dev eth1")).unwrap();
    assert!(addrs.contains("fd00:7b::b/64"), "{addrs}");
    assert!(pings6(&h, &b, "fd00:7b::2"), "to a over eth1");
    // Disconnected from its first network, b takes IPv6's default route
    // on the dual-stack one.
    h.np_ok(&["network", "disconnect", "bridge", &b]);
    let routes = stdout_if_ok(h.in_endpoint(&b, "ip -6 route")).unwrap();
    assert!(
        routes.contains("default via fd00:7b::1 dev eth1"),
        "{routes}"
    );
}

/// The address a [`PEER_ANSWER`] named (socat writes IPv6 addresses in
/// full, in brackets).
fn peer(answer: Option<String>) -> Option<std::net::IpAddr> {
    let answer = answer?;
    answer
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

fn ip(s: &str) -> Option<std::net::IpAddr> {
    Some(s.parse().unwrap())
}

/// A TCP server on IPv6 `port` of namespace `netns`, answering with the
/// peer's address.
fn peer_server6(h: &Host, netns: &str, port: u16) -> support::Background {
    h.spawn_ready(
        netns,
        &format!("socat TCP6-LISTEN:{port},fork,reuseaddr SYSTEM:'{PEER_ANSWER}'"),
        |_| {
            support::sh_ok(&format!("ip netns exec {netns} ss -Htln sport = :{port}"))
                .contains(&format!(":{port}"))
        },
    )
}

#[test]
fn published_ports_and_masquerade_carry_ipv6_through_the_data_path() {
    let h = Host::new();
    h.add_ipv6();
    h.up(&["--ipv6", "--subnet6", "fd00:61::/64"]);
    let web = h.name("web");
    h.np_ok(&["create", "-p", "8080:80", "-p", "[::]:8082:80", &web]);
    let ep = json(&h.np_ok(&["inspect", &web]));
    let networks = ep[0]["NetworkSettings"]["Networks"].as_object().unwrap();
    let web6 = networks.values().next().unwrap()["GlobalIPv6Address"]
        .as_str()
        .unwrap_or_else(|| panic!("{ep}"))
        .to_string();
    assert!(web6.starts_with("fd00:61::"), "{ep}");
    let _server = peer_server6(&h, &web, 80);

    // A client outside reaches the published port over IPv6, and the
    // endpoint sees the client's own address.
    let url = format!("http://[{HOST_IP6}]:8080/");
    let seen = stdout_if_ok(h.in_world(&format!("curl -6 --http0.9 -s --max-time 5 {url}")));
    assert_eq!(peer(seen), ip(WORLD_IP6), "{}", h.log());
    let seen = stdout_if_ok(h.in_world(&format!(
        "curl -6 --http0.9 -s --max-time 5 http://[{HOST_IP6}]:8082/"
    )));
    assert_eq!(peer(seen), ip(WORLD_IP6));
    // `[::]:8082` is IPv6 only.
    let v4 = h.in_world(&format!(
        "curl -4 --http0.9 -s --max-time 3 http://{}:8082/",
        support::HOST_IP
    ));
    assert!(!v4.status.success(), "8082 answers over IPv4");

    let nat = h.nat();
    let rules = nat["Rules"].as_array().unwrap();
    assert!(
        rules.iter().any(|r| r["Destination"] == "0.0.0.0/0,::/0"
            && r["Detail"]
                .as_str()
                .unwrap()
                .contains(&format!("to:[{web6}]:80"))),
        "{nat}"
    );
    assert!(rules.iter().any(|r| r["Destination"] == "::/0"), "{nat}");
    let flows = json(&h.np_ok(&["ct", "ls", "--json"]));
    assert!(
        flows
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["Original"]["Src"] == WORLD_IP6 && f["Reply"]["Src"] == web6.as_str()),
        "{flows}"
    );

    // Endpoints reach it at the host's address too (hairpin): another one
    // as itself, the endpoint itself from the host's address.
    let cli = h.name("cli");
    h.np_ok(&["create", &cli]);
    let cli6 = json(&h.np_ok(&["inspect", &cli]))[0]["NetworkSettings"]["Networks"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()["GlobalIPv6Address"]
        .as_str()
        .unwrap()
        .to_string();
    for (from, expected) in [(&cli, cli6.as_str()), (&web, HOST_IP6)] {
        let seen =
            stdout_if_ok(h.in_endpoint(from, &format!("curl -6 --http0.9 -s --max-time 5 {url}")));
        assert_eq!(peer(seen), ip(expected), "hairpin from {from}");
    }

    // The host's own processes reach published ports on [::1] and its
    // addresses, and through IPv4-mapped addresses of dual-stack sockets;
    // the socket's peer is the address it asked for.
    for target in [
        "[::1]:8080".to_string(),
        format!("[{HOST_IP6}]:8080"),
        "[::ffff:127.0.0.1]:8080".to_string(),
    ] {
        let seen = h.in_host(&format!("socat -t2 - TCP6:{target} </dev/null"));
        assert!(peer(Some(seen.clone())).is_some(), "{target}: {seen:?}");
    }
    let peer_name = h.in_host(
        "python3 -c 'import socket; s=socket.create_connection((\"::1\", 8080)); print(s.getpeername()[:2])'",
    );
    assert_eq!(peer_name.trim(), "('::1', 8080)");
    let peer_name = h.in_host(
        "python3 -c 'import socket; s=socket.create_connection((\"127.0.0.1\", 8080)); print(s.getpeername())'",
    );
    assert_eq!(peer_name.trim(), "('127.0.0.1', 8080)", "getpeername4 too");
    h.np_ok(&["port", "add", &web, "[::1]:8083:80"]);
    let seen = h.in_host("socat -t2 - TCP6:[::1]:8083 </dev/null");
    assert!(peer(Some(seen.clone())).is_some(), "[::1]:8083: {seen:?}");
    let outside = h.in_world(&format!(
        "curl -6 --http0.9 -s --max-time 2 http://[{HOST_IP6}]:8083/"
    ));
    assert!(!outside.status.success(), "[::1]:8083 is the host's only");

    // What the endpoint opens leaves from the host's address (NAT66):
    // TCP, UDP and ICMPv6 echo.
    let _outside = peer_server6(&h, &h.world, 9000);
    let seen = stdout_if_ok(h.in_endpoint(
        &web,
        &format!("curl -6 --http0.9 -s --max-time 5 http://[{WORLD_IP6}]:9000/"),
    ));
    assert_eq!(peer(seen), ip(HOST_IP6), "{}", h.log());
    let _udp = h.spawn_in(
        &h.world,
        "socat UDP6-RECVFROM:9001,fork SYSTEM:'echo $SOCAT_PEERADDR'",
    );
    let seen = support::retry(|| {
        stdout_if_ok(h.in_endpoint(
            &web,
            &format!("sh -c 'echo hi | socat -t2 - UDP6:[{WORLD_IP6}]:9001'"),
        ))
        .filter(|s| !s.trim().is_empty())
    });
    assert_eq!(peer(seen), ip(HOST_IP6));
    assert!(pings6(&h, &web, WORLD_IP6), "ping -6 out through NAT66");

    // A routed prefix (`--ipv6-masquerade=false`): flows leave with the
    // endpoint's own address, and their replies come back in.
    let (routed, r) = (h.name("routed"), h.name("r"));
    h.np_ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.62.0.0/24",
        "--subnet",
        "fd00:62::/64",
        "--ipv6-masquerade=false",
        &routed,
    ]);
    h.np_ok(&["create", "--net", &routed, "--ip6", "fd00:62::7", &r]);
    h.in_world(&format!("ip -6 route add fd00:62::/64 via {HOST_IP6}"));
    let seen = stdout_if_ok(h.in_endpoint(
        &r,
        &format!("curl -6 --http0.9 -s --max-time 5 http://[{WORLD_IP6}]:9000/"),
    ));
    assert_eq!(peer(seen), ip("fd00:62::7"), "{}", h.log());

    // The endpoint's own address is not reachable from outside: only
    // through published ports.
    let before = h.drops("not_published");
    h.in_world(&format!("ip -6 route add fd00:61::/64 via {HOST_IP6}"));
    let direct = h.in_world(&format!(
        "curl -6 --http0.9 -s --max-time 2 http://[{web6}]:80/"
    ));
    assert!(!direct.status.success(), "reached the endpoint directly");
    assert!(h.drops("not_published") > before);
}
