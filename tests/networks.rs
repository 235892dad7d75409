//! Networks as first-class objects: user-defined bridges, each with its
//! own subnet, gateway and DNS, isolated from each other in the data path;
//! internal networks; `--icc=false` per network; `network ls`, `inspect`,
//! `rm` and `prune`; and what a restart and `down` do with several of them.

use netplane_test_support as support;

use serde_json::Value;
use support::{HOST_IP, Host, WORLD_IP, attached_hooks, retry, sh_ok, stdout_if_ok};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

/// `up`, forwarding names no network knows to the world namespace (where
/// nothing answers), never to the machine's own resolvers.
fn up(h: &Host) {
    h.up(&["--dns", WORLD_IP]);
}

/// `dig +short NAME` inside endpoint `ep`, trimmed.
fn dig(h: &Host, ep: &str, name: &str) -> String {
    stdout_if_ok(h.in_endpoint(ep, &format!("dig +short +tries=1 +time=2 {name}")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn two_bridge_networks_are_isolated_and_each_resolves_its_own() {
    let h = Host::new();
    up(&h);
    let (n1, n2) = (h.name("n1"), h.name("n2"));
    // The first free pool after the bridge network's 172.17.0.0/16.
    h.np_ok(&["network", "create", &n1]);
    h.np_ok(&[
        "network",
        "create",
        "--subnet",
        "10.77.0.0/24",
        "--gateway",
        "10.77.0.254",
        "--ip-range",
        "10.77.0.128/25",
        "--label",
        "team=blue",
        &n2,
    ]);
    let (a1, a2, b1, c) = (h.name("a1"), h.name("a2"), h.name("b1"), h.name("c"));
    h.np_ok(&["create", "--net", &n1, &a1]);
    h.np_ok(&["create", "--net", &n1, &a2]);
    h.np_ok(&["create", "--net", &n2, &b1]);
    h.np_ok(&["create", &c]);
    let (ip_a2, ip_b1, ip_c) = (h.ip_of(&a2), h.ip_of(&b1), h.ip_of(&c));
    assert!(ip_a2.starts_with("172.18.0."), "{ip_a2}");
    assert_eq!(ip_b1, "10.77.0.128", "the first of the range");
    let resolv = stdout_if_ok(h.in_endpoint(&b1, "cat /etc/resolv.conf")).unwrap();
    assert!(resolv.starts_with("nameserver 10.77.0.254"), "{resolv}");

    assert!(h.pings(&a1, &ip_a2), "same network");
    let before = h.drops("other_network");
    assert!(!h.pings(&a1, &ip_b1), "another user network");
    assert!(!h.pings(&a1, &ip_c), "the bridge network");
    assert!(!h.pings(&c, &ip_a2), "from the bridge network");
    assert!(
        h.drops("other_network") >= before + 3,
        "counted other_network"
    );
    // Names resolve within their own network only.
    assert_eq!(dig(&h, &a1, &a2), ip_a2);
    assert_eq!(dig(&h, &a1, &b1), "", "{b1} is on another network");
    assert_eq!(dig(&h, &b1, &a1), "");
    // Out through the uplink, masqueraded as the host.
    let _server = h.tcp_server(&h.world, 7000, support::PEER_ANSWER);
    let seen = stdout_if_ok(h.in_endpoint(&a1, &format!("nc -w2 {WORLD_IP} 7000")));
    assert_eq!(seen.as_deref().map(str::trim), Some(HOST_IP));

    let masquerade = &h.nat()["Rules"][0];
    assert_eq!(
        masquerade["Source"], "172.17.0.0/16,172.18.0.0/16,10.77.0.0/24",
        "nat ls names every masqueraded subnet"
    );
    let inspect = json(&h.np_ok(&["network", "inspect", &n2]));
    assert_eq!(inspect["Driver"], "bridge");
    assert_eq!(inspect["Scope"], "local");
    assert_eq!(inspect["Internal"], false);
    assert_eq!(inspect["Id"].as_str().unwrap().len(), 64);
    assert_eq!(inspect["Labels"]["team"], "blue");
    let config = &inspect["IPAM"]["Config"][0];
    assert_eq!(config["Subnet"], "10.77.0.0/24");
    assert_eq!(config["Gateway"], "10.77.0.254");
    assert_eq!(config["IPRange"], "10.77.0.128/25");
    assert_eq!(
        inspect["Containers"][&b1]["IPv4Address"],
        format!("{ip_b1}/24")
    );
    let ls = h.np_ok(&["network", "ls"]);
    for n in ["bridge", &n1, &n2] {
        assert!(
            ls.lines().any(|l| l.starts_with(&format!("{n} "))),
            "{n} in {ls}"
        );
    }
    let bridge = inspect["Bridge"].as_str().unwrap().to_string();
    assert!(h.in_host("ip -br link").contains(&bridge));

    let refused = h.np_err(&["network", "rm", &n2]);
    assert!(refused.contains(&b1), "names the endpoint: {refused}");
    h.np_ok(&["rm", &b1]);
    h.np_ok(&["network", "rm", &n2]);
    assert!(!h.in_host("ip -br link").contains(&bridge), "bridge gone");
    assert!(!h.np_ok(&["network", "ls"]).contains(&n2));

    let unused = h.name("unused");
    h.np_ok(&["network", "create", &unused]);
    let pruned = h.np_ok(&["network", "prune"]);
    assert!(pruned.contains(&unused), "{pruned}");
    assert!(!pruned.contains(&n1), "in use: {pruned}");
    h.down();
}

#[test]
fn internal_networks_have_no_egress_and_icc_false_holds_per_network() {
    let h = Host::new();
    up(&h);
    let (internal, quiet) = (h.name("int"), h.name("quiet"));
    h.np_ok(&["network", "create", "--internal", &internal]);
    h.np_ok(&["network", "create", "--icc=false", &quiet]);
    let (i1, i2, q1, q2) = (h.name("i1"), h.name("i2"), h.name("q1"), h.name("q2"));
    for (ep, net) in [
        (&i1, &internal),
        (&i2, &internal),
        (&q1, &quiet),
        (&q2, &quiet),
    ] {
        h.np_ok(&["create", "--net", net, ep]);
    }
    assert!(h.pings(&i1, &h.ip_of(&i2)), "within an internal network");
    assert_eq!(dig(&h, &i1, &i2), h.ip_of(&i2), "its DNS answers");
    let before = h.drops("internal");
    assert!(!h.pings(&i1, WORLD_IP), "no egress");
    assert!(
        !h.pings(&i1, HOST_IP),
        "not even the host's other addresses"
    );
    assert!(h.drops("internal") >= before + 2, "counted internal");

    let refused = h.np_err(&["create", "--net", &internal, "-p", "8080:80", &h.name("x")]);
    assert!(refused.contains("internal"), "{refused}");
    let refused = h.np_err(&["port", "add", &i1, "8080:80"]);
    assert!(refused.contains("internal"), "{refused}");

    let before = h.drops("icc_denied");
    assert!(!h.pings(&q1, &h.ip_of(&q2)), "--icc=false");
    assert!(h.drops("icc_denied") > before);
    let gateway = json(&h.np_ok(&["network", "inspect", &quiet]))["Gateway"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(h.pings(&q1, &gateway), "the gateway stays reachable");
    assert!(h.pings(&q1, WORLD_IP), "and the world");
    // --link within the network still talks.
    let q3 = h.name("q3");
    h.np_ok(&[
        "create",
        "--net",
        &quiet,
        "--link",
        &format!("{q1}:peer"),
        &q3,
    ]);
    assert!(h.pings(&q3, "peer"), "linked, by its alias");
    assert!(!h.pings(&q3, &h.ip_of(&q2)), "not linked");
    h.down();
}

#[test]
fn a_published_port_on_a_user_network_shows_the_client_and_bad_requests_make_nothing() {
    let h = Host::new();
    up(&h);
    let net = h.name("web");
    h.np_ok(&["network", "create", "--subnet", "10.78.0.0/24", &net]);
    let w = h.name("w");
    h.np_ok(&["create", "--net", &net, "-p", "8080:80", &w]);
    let _server = h.tcp_server(&w, 80, support::PEER_ANSWER);
    let seen = retry(|| stdout_if_ok(h.in_world(&format!("nc -w2 {HOST_IP} 8080"))));
    assert_eq!(
        seen.as_deref().map(str::trim),
        Some(WORLD_IP),
        "nat ls: {}",
        h.nat()
    );

    let ip_w = h.ip_of(&w);
    let none = h.name("none");
    h.np_ok(&["create", "--net", "none", &none]);
    // Names only: an empty bridge's carrier state settles meanwhile.
    let links = || h.in_host("ip -o link | cut -d: -f2");
    let before = links();
    let routes = || h.in_host("ip route").replace(" linkdown", "");
    let routes_before = routes();
    for bad in [
        vec!["network", "create", &net],
        vec!["network", "create", "BRIDGE"],
        vec!["network", "create", "host"],
        vec!["network", "create", "--subnet", "10.78.0.128/25", "other"],
        vec!["network", "create", "--subnet", "198.18.0.0/16", "other"],
        vec![
            "network",
            "create",
            "--subnet",
            "10.79.0.0/24",
            "--gateway",
            "10.80.0.1",
            "other",
        ],
        vec![
            "network",
            "create",
            "--subnet",
            "10.79.0.0/24",
            "--ip-range",
            "10.79.1.0/25",
            "other",
        ],
        vec!["network", "create", "--driver", "macvlan2", "other"],
        vec!["network", "create", "--driver", "overlay", "other"],
        vec!["network", "create", "-o", "nonsense=1", "other"],
        vec!["create", "--net", &net, "--ip", "10.99.0.5", "stray"],
        vec!["create", "--net", &net, "--ip", &ip_w, "stray"],
        vec!["network", "rm", "nothing"],
        vec!["network", "connect", &net, &none],
        vec![
            "network",
            "create",
            "--driver",
            "macvlan",
            "--subnet",
            "10.61.0.0/24",
            "-o",
            "parent=nosuchif",
            "other",
        ],
    ] {
        let err = h.np_err(&bad);
        assert_eq!(err.trim().lines().count(), 1, "{bad:?}: {err}");
    }
    assert_eq!(links(), before, "nothing half-made");
    assert_eq!(routes(), routes_before);
    assert!(!h.np_ok(&["network", "ls"]).contains("other"));
    h.down();
}

#[test]
fn several_networks_survive_kill_9_and_down_leaves_nothing() {
    let h = Host::new();
    let before = h.residue();
    up(&h);
    let (n1, n2) = (h.name("n1"), h.name("n2"));
    h.np_ok(&["network", "create", &n1]);
    h.np_ok(&["network", "create", "--internal", &n2]);
    let (a, b, c) = (h.name("a"), h.name("b"), h.name("c"));
    h.np_ok(&["create", "--net", &n1, &a]);
    h.np_ok(&["create", "--net", &n1, &b]);
    h.np_ok(&["create", "--net", &n2, &c]);
    let ls = h.np_ok(&["network", "ls"]);
    h.kill_daemon();
    up(&h);
    assert_eq!(
        h.np_ok(&["network", "ls"]),
        ls,
        "the same networks, ids and all"
    );
    assert!(h.pings(&a, &h.ip_of(&b)));
    assert!(!h.pings(&a, &h.ip_of(&c)), "still isolated");
    assert!(!h.pings(&c, WORLD_IP), "still internal");
    assert_eq!(dig(&h, &a, &b), h.ip_of(&b), "DNS is back");
    h.down();
    assert_eq!(h.residue(), before);
}

#[test]
fn an_endpoint_connected_to_two_networks_reaches_and_resolves_both_until_disconnected() {
    let h = Host::new();
    up(&h);
    let (front, back) = (h.name("front"), h.name("back"));
    h.np_ok(&["network", "create", "--subnet", "10.81.0.0/24", &front]);
    h.np_ok(&["network", "create", "--subnet", "10.82.0.0/24", &back]);
    let (web, db, proxy) = (h.name("web"), h.name("db"), h.name("proxy"));
    h.np_ok(&["create", "--net", &front, "-p", "8081:80", &web]);
    h.np_ok(&["create", "--net", &back, &db]);
    h.np_ok(&["create", "--net", &front, &proxy]);
    let ip_db = h.ip_of(&db);
    assert!(!h.pings(&web, &ip_db), "not connected yet");

    h.np_ok(&[
        "network",
        "connect",
        "--ip",
        "10.82.0.50",
        "--alias",
        "api",
        &back,
        &web,
    ]);
    let inspect = json(&h.np_ok(&["inspect", &web]));
    let networks = &inspect[0]["NetworkSettings"]["Networks"];
    assert_eq!(networks[&back]["IPAddress"], "10.82.0.50");
    assert!(networks[&front]["IPAddress"].is_string());
    let eth1 = stdout_if_ok(h.in_endpoint(&web, "ip -br -4 addr show eth1")).unwrap();
    assert!(eth1.contains("10.82.0.50/24"), "{eth1}");
    let routes = stdout_if_ok(h.in_endpoint(&web, "ip route show default")).unwrap();
    assert!(routes.contains("eth0"), "the default route stays: {routes}");

    assert!(h.pings(&web, &ip_db), "reaches the second network");
    assert!(h.pings(&web, &h.ip_of(&proxy)), "and the first");
    assert_eq!(dig(&h, &web, &db), ip_db, "resolves the second network");
    assert_eq!(dig(&h, &web, &proxy), h.ip_of(&proxy), "and the first");
    assert_eq!(dig(&h, &db, &web), "10.82.0.50", "is resolved there");
    assert_eq!(dig(&h, &db, "api"), "10.82.0.50", "by its alias too");
    assert!(!h.pings(&proxy, &ip_db), "not a bridge for the others");
    // Published on a multi-homed endpoint: still its first address.
    let _server = h.tcp_server(&web, 80, support::PEER_ANSWER);
    let seen = retry(|| stdout_if_ok(h.in_world(&format!("nc -w2 {HOST_IP} 8081"))));
    assert_eq!(seen.as_deref().map(str::trim), Some(WORLD_IP));
    let members = json(&h.np_ok(&["network", "inspect", &back]));
    assert_eq!(members["Containers"][&web]["IPv4Address"], "10.82.0.50/24");

    for bad in [
        vec!["network", "connect", &back, &web],
        vec!["network", "connect", &front, &web],
        vec!["network", "connect", "nothing", &web],
        vec!["network", "connect", &back, "nobody"],
        vec!["network", "disconnect", &front, &db],
        vec!["network", "disconnect", &back, &db],
    ] {
        let err = h.np_err(&bad);
        assert_eq!(err.trim().lines().count(), 1, "{bad:?}: {err}");
    }
    let refused = h.np_err(&["network", "rm", &back]);
    assert!(refused.contains(&web) && refused.contains(&db), "{refused}");

    h.np_ok(&["network", "disconnect", &back, &web]);
    assert!(!h.pings(&web, &ip_db), "gone with the interface");
    assert!(
        !h.in_endpoint(&web, "ip link show eth1").status.success(),
        "eth1 removed"
    );
    assert_eq!(dig(&h, &web, &db), "");
    assert_eq!(dig(&h, &db, &web), "");
    // The address is free again.
    h.np_ok(&["network", "connect", "--ip", "10.82.0.50", &back, &proxy]);
    assert!(h.pings(&proxy, &ip_db));
    h.kill_daemon();
    up(&h);
    assert!(h.pings(&proxy, &ip_db), "a connection survives a restart");
    assert_eq!(dig(&h, &proxy, &db), ip_db);
    h.np_ok(&["rm", &proxy]);
    h.down();
}

#[test]
fn a_macvlan_endpoint_is_on_the_lan_at_its_own_address_and_sends_only_as_itself() {
    let h = Host::new();
    let before = h.residue();
    up(&h);
    let lan = h.name("lan");
    h.np_ok(&[
        "network",
        "create",
        "--driver",
        "macvlan",
        "--subnet",
        "198.18.0.0/24",
        "--gateway",
        WORLD_IP,
        "--ip-range",
        "198.18.0.128/25",
        &lan,
    ]);
    let inspect = json(&h.np_ok(&["network", "inspect", &lan]));
    assert_eq!(inspect["Driver"], "macvlan");
    assert_eq!(
        inspect["Options"]["parent"],
        h.uplink.as_str(),
        "the uplink"
    );
    let m = h.name("m");
    h.np_ok(&["create", "--net", &lan, &m]);
    let ip = h.ip_of(&m);
    assert_eq!(ip, "198.18.0.128", "the first of the range");

    // From the LAN straight to it, and out as itself: no NAT either way.
    let _server = h.tcp_server(&m, 80, support::PEER_ANSWER);
    let seen = retry(|| stdout_if_ok(h.in_world(&format!("nc -w2 {ip} 80"))));
    assert_eq!(seen.as_deref().map(str::trim), Some(WORLD_IP));
    let _peer = h.tcp_server(&h.world, 7001, support::PEER_ANSWER);
    let seen = stdout_if_ok(h.in_endpoint(&m, &format!("nc -w2 {WORLD_IP} 7001")));
    assert_eq!(seen.as_deref().map(str::trim), Some(ip.as_str()));
    let refused = h.np_err(&["create", "--net", &lan, "-p", "8080:80", &h.name("x")]);
    assert!(refused.contains("macvlan"), "{refused}");

    // Another address of the LAN, taken inside: its frames never leave.
    h.in_endpoint(&m, "ip addr add 198.18.0.77/24 dev eth0");
    let spoofed = h.drops("spoofed");
    let out = h.in_endpoint(&m, &format!("ping -c1 -W1 -I 198.18.0.77 {WORLD_IP}"));
    assert!(!out.status.success(), "spoofed source");
    assert!(h.drops("spoofed") > spoofed, "counted spoofed");
    h.in_endpoint(&m, "ip addr del 198.18.0.77/24 dev eth0");
    assert!(h.pings(&m, WORLD_IP), "as itself it still goes");

    h.kill_daemon();
    up(&h);
    let seen = retry(|| stdout_if_ok(h.in_world(&format!("nc -w2 {ip} 80"))));
    assert_eq!(
        seen.as_deref().map(str::trim),
        Some(WORLD_IP),
        "after a restart"
    );
    h.np_ok(&["rm", &m]);
    h.np_ok(&["network", "rm", &lan]);
    h.down();
    assert_eq!(h.residue(), before);
}

#[test]
fn disconnecting_the_first_network_moves_the_default_route_dns_and_ports_to_the_next() {
    let h = Host::new();
    up(&h);
    let (front, back) = (h.name("front"), h.name("back"));
    h.np_ok(&["network", "create", "--subnet", "10.83.0.0/24", &front]);
    h.np_ok(&["network", "create", "--subnet", "10.84.0.0/24", &back]);
    let (web, db, peer) = (h.name("web"), h.name("db"), h.name("peer"));
    h.np_ok(&["create", "--net", &front, "-p", "8082:80", &web]);
    h.np_ok(&["create", "--net", &back, &db]);
    h.np_ok(&["create", "--net", &front, &peer]);
    h.np_ok(&["network", "connect", &back, &web]);
    let only = h.np_err(&["network", "disconnect", &back, &db]);
    assert!(only.contains("only network"), "{only}");

    h.np_ok(&["network", "disconnect", &front, &web]);
    let inspect = json(&h.np_ok(&["inspect", &web]));
    let settings = &inspect[0]["NetworkSettings"];
    assert_eq!(settings["Networks"].as_object().unwrap().len(), 1);
    assert_eq!(settings["IPAddress"], "10.84.0.3");
    let routes = stdout_if_ok(h.in_endpoint(&web, "ip route show default")).unwrap();
    assert!(
        routes.contains("via 10.84.0.1 dev eth1"),
        "the default route moved: {routes}"
    );
    assert!(!h.in_endpoint(&web, "ip link show eth0").status.success());
    let resolv = stdout_if_ok(h.in_endpoint(&web, "cat /etc/resolv.conf")).unwrap();
    assert!(resolv.starts_with("nameserver 10.84.0.1"), "{resolv}");
    assert_eq!(dig(&h, &web, &db), h.ip_of(&db));
    assert!(!h.pings(&web, &h.ip_of(&peer)), "off the first network");
    assert!(h.pings(&web, WORLD_IP), "out through the next network");
    let _server = h.tcp_server(&web, 80, support::PEER_ANSWER);
    let seen = retry(|| stdout_if_ok(h.in_world(&format!("nc -w2 {HOST_IP} 8082"))));
    assert_eq!(
        seen.as_deref().map(str::trim),
        Some(WORLD_IP),
        "ports follow"
    );
    h.kill_daemon();
    up(&h);
    assert!(h.pings(&web, &h.ip_of(&db)), "after a restart");
    h.down();
}

#[test]
fn a_macvlan_parent_other_than_the_uplink_is_checked_while_a_network_uses_it() {
    let h = Host::new();
    // A second LAN behind the host: lan0 here, its peer in the world
    // namespace (both go with the host's namespaces).
    let (lan, peer) = (format!("{}l", h.prefix), format!("{}m", h.prefix));
    h.in_host(&format!(
        "sh -c 'ip link add {lan} type veth peer name {peer} && ip link set {peer} netns {w} && ip link set {lan} up'",
        w = h.world
    ));
    sh_ok(&format!(
        "ip -n {w} addr add 192.0.2.1/24 dev {peer} && ip -n {w} link set {peer} up",
        w = h.world
    ));
    up(&h);
    let net = h.name("lan2");
    h.np_ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "-o",
        &format!("parent={lan}"),
        "--subnet",
        "192.0.2.0/24",
        "--gateway",
        "192.0.2.1",
        "--ip-range",
        "192.0.2.64/26",
        &net,
    ]);
    assert!(
        attached_hooks(&h).contains(&format!("{lan}@egress")),
        "the parent's way out is checked: {:?}",
        attached_hooks(&h)
    );
    let m = h.name("m");
    h.np_ok(&["create", "--net", &net, &m]);
    assert_eq!(h.ip_of(&m), "192.0.2.64");
    assert!(h.pings(&m, "192.0.2.1"), "on the second LAN");
    h.in_endpoint(&m, "ip addr add 192.0.2.9/24 dev eth0");
    let spoofed = h.drops("spoofed");
    let out = h.in_endpoint(&m, "ping -c1 -W1 -I 192.0.2.9 192.0.2.1");
    assert!(!out.status.success() && h.drops("spoofed") > spoofed);
    h.np_ok(&["rm", &m]);
    h.np_ok(&["network", "rm", &net]);
    assert!(
        !attached_hooks(&h).iter().any(|hook| hook.starts_with(&lan)),
        "unhooked with its last network"
    );
    h.down();
}
