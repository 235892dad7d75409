//! The embedded DNS server as endpoints see it, through Debian's own
//! clients (getent, dig, nslookup): names and reverse lookups of the
//! endpoint's own network, nothing of other networks, names it does not
//! know forwarded to an upstream resolver (dnsmasq, in the world namespace),
//! and malformed queries that leave it answering.

use netplane_test_support as support;

use support::{Background, Host, WORLD_IP, retry, stdout_if_ok};

/// dnsmasq in the world namespace, answering `upstream.test` itself and
/// refusing everything else.
fn upstream(h: &Host) -> Background {
    h.spawn_in(
        &h.world,
        &format!(
            "dnsmasq --no-daemon --no-resolv --no-hosts --bind-interfaces \
             --listen-address={WORLD_IP} --address=/upstream.test/192.0.2.80 \
             --pid-file= --user=root"
        ),
    )
}

/// A host whose daemon forwards to [`upstream`], and endpoints `names` on
/// its bridge network.
fn host_with(names: &[&str]) -> (Host, Background, Vec<String>) {
    let h = Host::new();
    let dnsmasq = upstream(&h);
    h.up(&["--dns", WORLD_IP]);
    let eps = names
        .iter()
        .map(|n| {
            let e = h.name(n);
            h.np_ok(&["create", &e]);
            e
        })
        .collect();
    (h, dnsmasq, eps)
}

/// `network inspect bridge`.
fn bridge_network(h: &Host) -> serde_json::Value {
    serde_json::from_str(&h.np_ok(&["network", "inspect", "bridge"])).unwrap()
}

/// `cmd`'s stdout inside endpoint `ep`, trimmed, when it succeeds.
fn run_in(h: &Host, ep: &str, cmd: &str) -> Option<String> {
    stdout_if_ok(h.in_endpoint(ep, cmd)).map(|s| s.trim().to_string())
}

#[test]
fn endpoints_resolve_each_other_both_ways_and_other_names_upstream() {
    let (h, _dnsmasq, eps) = host_with(&["a", "b"]);
    let (a, b) = (&eps[0], &eps[1]);
    let ip_b = h.ip_of(b);
    let gateway = bridge_network(&h)["Gateway"].as_str().unwrap().to_string();
    let resolv = run_in(&h, a, "cat /etc/resolv.conf").unwrap();
    assert!(
        resolv.starts_with(&format!("nameserver {gateway}")),
        "{resolv}"
    );

    let hosts = run_in(&h, a, &format!("getent hosts {b}")).expect("getent hosts");
    assert!(hosts.starts_with(&ip_b), "getent: {hosts}");
    assert_eq!(run_in(&h, a, &format!("dig +short {b}")).unwrap(), ip_b);
    assert_eq!(
        run_in(&h, a, &format!("dig +short +tcp {b}")).unwrap(),
        ip_b,
        "over TCP"
    );
    assert_eq!(
        run_in(&h, a, &format!("dig +short -x {ip_b}")).unwrap(),
        format!("{b}.")
    );
    let ns = run_in(&h, a, &format!("nslookup {b}")).expect("nslookup");
    assert!(ns.contains(&format!("Address: {ip_b}")), "{ns}");
    // Names the server does not know go upstream, by UDP and by TCP.
    assert_eq!(
        run_in(&h, a, "dig +short upstream.test").unwrap(),
        "192.0.2.80"
    );
    assert_eq!(
        run_in(&h, a, "dig +short +tcp upstream.test").unwrap(),
        "192.0.2.80"
    );

    // Network aliases are names too, in any case.
    let c = h.name("c");
    h.np_ok(&[
        "create",
        &c,
        "--network-alias",
        "api",
        "--network-alias",
        "api2",
    ]);
    let ip_c = h.ip_of(&c);
    for alias in ["api", "API2"] {
        assert_eq!(
            run_in(&h, a, &format!("dig +short {alias}")).unwrap(),
            ip_c,
            "{alias}"
        );
    }
    let hosts = run_in(&h, a, "getent hosts api").expect("getent hosts api");
    assert!(hosts.starts_with(&ip_c), "{hosts}");
    let inspect: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(&h.np_ok(&["inspect", &c])).unwrap()[0].clone();
    assert_eq!(
        inspect["NetworkAliases"],
        serde_json::json!(["api", "api2"])
    );

    // Recreated with another address: the next answer has it. Meanwhile
    // the bridge keeps its MAC, derived from the gateway's address: one
    // taken from a port would change when that port goes, and endpoints
    // would lose the gateway (and their DNS server) until their neighbour
    // entry for it expired.
    let bridge = bridge_network(&h)["Bridge"].as_str().unwrap().to_string();
    let mac = || h.in_host(&format!("cat /sys/class/net/{bridge}/address"));
    let derived: Vec<String> = gateway
        .split('.')
        .map(|o| format!("{:02x}", o.parse::<u8>().unwrap()))
        .collect();
    assert_eq!(mac().trim(), format!("02:42:{}", derived.join(":")));
    h.np_ok(&["rm", b]);
    assert_eq!(mac().trim(), format!("02:42:{}", derived.join(":")));
    assert!(
        run_in(&h, a, &format!("getent hosts {b}")).is_none(),
        "removed"
    );
    let new_ip = {
        let mut octets: Vec<u8> = ip_b.split('.').map(|o| o.parse().unwrap()).collect();
        octets[3] += 50;
        format!("{}.{}.{}.{}", octets[0], octets[1], octets[2], octets[3])
    };
    h.np_ok(&["create", b, "--ip", &new_ip]);
    assert_eq!(run_in(&h, a, &format!("dig +short {b}")).unwrap(), new_ip);
}

#[test]
fn names_of_another_network_do_not_resolve() {
    let (h, _dnsmasq, eps) = host_with(&["a"]);
    h.create_overlay("ov", "10.206.0.0/16");
    let (c, d) = (h.name("c"), h.name("d"));
    for e in [&c, &d] {
        h.np_ok(&["create", e, "--net", "ov"]);
    }
    let ip_d = h.ip_of(&d);
    assert_eq!(
        run_in(&h, &c, &format!("dig +short {d}")).unwrap(),
        ip_d,
        "the overlay's own names"
    );
    assert!(
        run_in(&h, &c, &format!("getent hosts {}", eps[0])).is_none(),
        "a bridge endpoint's name from the overlay"
    );
    assert!(
        run_in(&h, &eps[0], &format!("getent hosts {d}")).is_none(),
        "an overlay endpoint's name from the bridge"
    );
    assert_eq!(
        run_in(&h, &eps[0], &format!("dig +short -x {ip_d}")).unwrap(),
        "",
        "nor its address"
    );
}

/// Sends hostile messages to the server at `server`: garbage datagrams, a
/// header with a missing question, a name compressed into a loop, a TCP
/// length promising more than comes, and TCP garbage. Prints the response
/// code of the truncated query's answer.
const HOSTILE: &str = r#"
import socket, sys, struct
server = sys.argv[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(2)
for junk in [b"", b"\x00", b"\xff" * 7, bytes(range(256)) * 4]:
    u.sendto(junk, (server, 53))
header = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
u.sendto(header + b"\x03web", (server, 53))
reply, _ = u.recvfrom(4096)
loop = struct.pack(">HHHHHH", 0x4343, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
u.sendto(loop, (server, 53))
looped, _ = u.recvfrom(4096)
t = socket.create_connection((server, 53), timeout=2)
t.sendall(struct.pack(">H", 65535) + b"only this")
t.close()
t = socket.create_connection((server, 53), timeout=2)
t.sendall(struct.pack(">H", 12) + b"\xff" * 12)
t.recv(4096)
t.close()
print(reply[3] & 0xF, looped[3] & 0xF)
"#;

#[test]
fn malformed_queries_are_refused_and_the_server_keeps_answering() {
    let (h, _dnsmasq, eps) = host_with(&["a", "b"]);
    let gateway = bridge_network(&h)["Gateway"].as_str().unwrap().to_string();
    let script = h.dir.join("hostile.py");
    std::fs::write(&script, HOSTILE).unwrap();
    let codes = run_in(
        &h,
        &eps[0],
        &format!("python3 {} {gateway}", script.display()),
    )
    .expect("the hostile client got its answers");
    assert_eq!(codes, "1 1", "FORMERR for both");
    let ip_b = h.ip_of(&eps[1]);
    let answer = retry(|| run_in(&h, &eps[0], &format!("dig +short {}", eps[1])));
    assert_eq!(answer.as_deref(), Some(ip_b.as_str()), "still answering");
    assert!(h.daemon_pid().is_some(), "the daemon lives");
}

#[test]
fn an_alias_never_takes_a_name_and_a_shared_alias_answers_every_endpoint() {
    let (h, _dnsmasq, eps) = host_with(&["client", "target"]);
    let (client, target) = (&eps[0], &eps[1]);
    let ip_target = h.ip_of(target);
    let err = h.np_err(&["create", &h.name("dup"), "--network-alias", target]);
    assert!(
        err.contains(&format!("alias {target} is the name of endpoint {target}")),
        "{err}"
    );
    // Two endpoints share an alias: both are answered, the order varies.
    let (w1, w2) = (h.name("w1"), h.name("w2"));
    for w in [&w1, &w2] {
        h.np_ok(&["create", w, "--network-alias", "pool"]);
    }
    let mut want = vec![h.ip_of(&w1), h.ip_of(&w2)];
    want.sort();
    let mut firsts = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let answer = run_in(&h, client, "dig +short pool").unwrap();
        let mut got: Vec<String> = answer.lines().map(str::to_string).collect();
        firsts.insert(got[0].clone());
        got.sort();
        assert_eq!(got, want, "pool answers both");
    }
    assert_eq!(firsts.len(), 2, "each comes first sometimes: {firsts:?}");
    // An endpoint named as another's alias: from then on the name wins.
    let late = h.name("late");
    h.np_ok(&[
        "create",
        &h.name("early"),
        "--network-alias",
        &late.to_uppercase(),
    ]);
    assert_eq!(
        run_in(&h, client, &format!("dig +short {late}")).unwrap(),
        h.ip_of(&h.name("early"))
    );
    h.np_ok(&["create", &late]);
    assert_eq!(
        run_in(&h, client, &format!("dig +short {late}")).unwrap(),
        h.ip_of(&late)
    );
    assert_eq!(
        run_in(&h, client, &format!("dig +short {target}")).unwrap(),
        ip_target
    );
}
