//! What an outsider, an endpoint or a host process could do to a host
//! running netplane, each tried end to end on a simulated host: IPv6
//! between endpoints under `--icc=false`, the embedded DNS asked from the
//! uplink's side, publishing over a host service, masquerade from a
//! privileged port, and a spoofed SYN to a published port.

use netplane_test_support as support;

use std::{thread::sleep, time::Duration};

use serde_json::Value;
use support::{HOST_IP, Host, SCAPY_PYTHON, WORLD_IP, mac_of, retry, sh, sh_ok};

/// The link-local IPv6 address of `ifname` in `netns`, once duplicate
/// address detection is done with it.
fn link_local(netns: &str, ifname: &str) -> Option<String> {
    retry(|| {
        let addrs: Value = serde_json::from_str(&sh_ok(&format!(
            "ip -n {netns} -6 -j addr show dev {ifname} scope link"
        )))
        .ok()?;
        let info = addrs[0]["addr_info"].as_array()?.first()?.clone();
        (info["tentative"] != true).then(|| info["local"].as_str().unwrap().to_string())
    })
}

#[test]
fn endpoints_have_no_ipv6_and_what_a_root_inside_turns_on_is_dropped() {
    let h = Host::new();
    h.up(&["--icc=false"]);
    let (a, b) = (h.name("a"), h.name("b"));
    h.np_ok(&["create", &a]);
    h.np_ok(&["create", &b]);
    for e in [&a, &b] {
        let v6 = sh_ok(&format!("ip -n {e} -6 addr show dev eth0"));
        assert!(v6.trim().is_empty(), "{e} has no IPv6 on eth0: {v6}");
        let lo = sh_ok(&format!("ip -n {e} -6 addr show dev lo"));
        assert!(lo.contains("::1"), "loopback keeps ::1: {lo}");
    }
    assert!(!h.pings(&a, &h.ip_of(&b)), "--icc=false holds for IPv4");

    // A root inside each turns IPv6 back on: link-local addresses, which
    // reached each other past --icc=false before.
    for e in [&a, &b] {
        sh_ok(&format!(
            "ip netns exec {e} sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0"
        ));
    }
    let target = link_local(&b, "eth0").expect("b gets a link-local address");
    let before = h.drops("unknown_l3");
    let ping = h.in_endpoint(&a, &format!("ping -6 -c 2 -W 1 {target}%eth0"));
    assert!(
        !ping.status.success(),
        "IPv6 between endpoints must not pass: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert!(
        h.drops("unknown_l3") >= before + 2,
        "the echo requests are counted as unknown_l3"
    );
}

#[test]
fn the_embedded_dns_answers_its_own_network_and_nobody_on_the_uplink() {
    let h = Host::new();
    h.up(&[]);
    let (web, cli) = (h.name("web"), h.name("cli"));
    h.np_ok(&["create", &web]);
    h.np_ok(&["create", &cli]);
    let bridge: Value = serde_json::from_str(&h.np_ok(&["network", "inspect", "bridge"])).unwrap();
    let gateway = bridge["Gateway"].as_str().unwrap();
    let subnet = bridge["Subnet"].as_str().unwrap();
    let dig = |netns: &str| {
        sh(&format!(
            "ip netns exec {netns} dig +short +time=1 +tries=1 @{gateway} {web}"
        ))
    };
    let answer = dig(&cli);
    assert_eq!(
        String::from_utf8_lossy(&answer.stdout).trim(),
        h.ip_of(&web),
        "an endpoint is answered"
    );

    // A machine on the uplink's LAN that routes the bridge's subnet via
    // the host gets no answer, by UDP or TCP, and no recursion either.
    sh_ok(&format!(
        "ip -n {} route add {subnet} via {HOST_IP}",
        h.world
    ));
    let before = h.drops("not_published");
    let outside = dig(&h.world);
    assert!(
        !outside.status.success()
            && !String::from_utf8_lossy(&outside.stdout).contains(&h.ip_of(&web)),
        "no answer from outside: {}",
        String::from_utf8_lossy(&outside.stdout)
    );
    let tcp = h.in_world(&format!(
        "dig +short +tcp +time=1 +tries=1 @{gateway} {web}"
    ));
    assert!(!tcp.status.success(), "nor over TCP");
    assert!(
        h.drops("not_published") >= before + 2,
        "the queries are dropped and counted"
    );
}

/// A Python socket of the host bound to `port` (TCP listening, or UDP),
/// killed on drop.
fn host_socket(h: &Host, proto: &str, port: u16) -> support::Background {
    let (kind, listen) = match proto {
        "tcp" => ("SOCK_STREAM", "s.listen(1)"),
        _ => ("SOCK_DGRAM", "pass"),
    };
    let script = format!(
        "import socket, time
s = socket.socket(socket.AF_INET, socket.{kind}); s.bind((\"0.0.0.0\", {port})); {listen}
print(\"bound\", flush=True); time.sleep(600)"
    );
    let file = h.dir.join(format!("bind-{proto}-{port}.py"));
    std::fs::write(&file, script).unwrap();
    let cmd = format!("python3 {}", file.display());
    let ss = if proto == "tcp" { "-Htln" } else { "-Huln" };
    h.spawn_ready(&h.netns, &cmd, |_| {
        sh_ok(&format!(
            "ip netns exec {} ss {ss} sport = :{port}",
            h.netns
        ))
        .contains(&port.to_string())
    })
}

/// Whether a fresh host socket can bind `port` in the host's namespace.
fn host_can_bind(h: &Host, proto: &str, port: u16) -> bool {
    let kind = if proto == "tcp" {
        "SOCK_STREAM"
    } else {
        "SOCK_DGRAM"
    };
    sh(&format!(
        "ip netns exec {} python3 -c 'import socket; socket.socket(socket.AF_INET, socket.{kind}).bind((\"0.0.0.0\", {port}))'",
        h.netns
    ))
    .status
    .success()
}

#[test]
fn publishing_refuses_a_port_a_host_service_uses_and_holds_what_it_publishes() {
    let h = Host::new();
    h.up(&[]);
    let web = h.name("web");
    h.np_ok(&["create", &web]);
    let _service = host_socket(&h, "tcp", 7000);
    let _dns = host_socket(&h, "udp", 7053);

    let err = h.np_err(&["port", "add", &web, "7000:80"]);
    assert!(
        err.contains("7000/tcp") && err.contains("python3"),
        "names the port and the process: {err}"
    );
    let err = h.np_err(&["port", "add", &web, "7053:53/udp"]);
    assert!(err.contains("python3"), "{err}");
    assert!(err.contains("7053/udp"), "{err}");
    let other = h.name("other");
    let err = h.np_err(&["create", &other, "-p", "7001:80", "-p", "7000:81"]);
    assert!(err.contains("7000/tcp"), "{err}");
    assert!(
        !h.np(&["inspect", &other]).status.success(),
        "nothing was created"
    );
    assert!(host_can_bind(&h, "tcp", 7001), "7001 was not left held");
    let ports: Value = serde_json::from_str(&h.np_ok(&["port", "ls", "--json"])).unwrap();
    assert_eq!(ports, serde_json::json!([]), "nothing is half-published");
    // The host's service still answers on its port.
    assert!(
        h.in_world(&format!("ncat -z -w 2 {HOST_IP} 7000"))
            .status
            .success(),
        "the host service keeps its port"
    );

    // Published ports are held: no host process binds them afterwards.
    h.np_ok(&["port", "add", &web, "7100:80"]);
    h.np_ok(&["port", "add", &web, "7101:53/udp"]);
    assert!(!host_can_bind(&h, "tcp", 7100));
    assert!(!host_can_bind(&h, "udp", 7101));
    // The kernel never picks one as a host connection's source port: with
    // 7100 the only port of the host's ephemeral range, a connection finds
    // none while it is published, and takes it once withdrawn.
    h.in_host("sysctl -qw net.ipv4.ip_local_port_range='7100 7100'");
    let _listener = h.tcp_server(&h.world, 7200, "true");
    let source_port = || {
        h.in_host(&format!(
            "python3 -c 'import socket, struct
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack(\"ii\", 1, 0))
try:
    s.connect((\"{WORLD_IP}\", 7200)); print(s.getsockname()[1])
except OSError as e:
    print(e.strerror)'"
        ))
        .trim()
        .to_string()
    };
    assert_eq!(source_port(), "Cannot assign requested address");
    h.np_ok(&["port", "rm", &web, "7100:80"]);
    assert!(
        host_can_bind(&h, "tcp", 7100),
        "withdrawn, the port is free again"
    );
    assert_eq!(source_port(), "7100");
}

#[test]
fn masquerade_from_a_privileged_port_leaves_from_the_ephemeral_range() {
    let h = Host::new();
    h.up(&[]);
    let cli = h.name("cli");
    h.np_ok(&["create", &cli]);
    let _listener = h.tcp_server(&h.world, 7200, "echo $SOCAT_PEERPORT");
    let range = h.in_host("cat /proc/sys/net/ipv4/ip_local_port_range");
    let (min, max): (u16, u16) = {
        let mut it = range.split_whitespace().map(|p| p.parse().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    for own in [22, 80, 1023] {
        let seen = sh_ok(&format!(
            "ip netns exec {cli} socat -T 2 - TCP:{WORLD_IP}:7200,sourceport={own}"
        ));
        let seen: u16 = seen.trim().parse().unwrap();
        assert!(
            (min..=max).contains(&seen),
            "source port {own} left as {seen}, outside {min}-{max}"
        );
    }
}

#[test]
fn a_spoofed_syn_to_a_published_port_holds_no_flow_for_long_and_stray_segments_none() {
    let h = Host::new();
    h.up(&[]);
    let web = h.name("web");
    h.np_ok(&["create", &web, "-p", "8080:80"]);
    let _server = h.tcp_server(&web, 80, "echo hi");
    // From an address of the world's LAN that never answers: the SYN-ACK
    // goes to nobody.
    let world_if = format!("{}x", h.prefix);
    let send = |flags: &str, sport: u16| {
        sh_ok(&format!(
            "ip netns exec {} {SCAPY_PYTHON} -c 'from scapy.all import *
sendp(Ether(src=\"{}\", dst=\"{}\")/IP(src=\"198.18.0.77\", dst=\"{HOST_IP}\")/TCP(sport={sport}, dport=8080, flags=\"{flags}\"), iface=\"{world_if}\", verbose=0)'",
            h.world,
            mac_of(&h.world, &world_if),
            mac_of(&h.netns, &h.uplink),
        ))
    };
    send("S", 45000);
    let flows =
        || -> Vec<Value> { serde_json::from_str(&h.np_ok(&["ct", "ls", "--json"])).unwrap() };
    let spoofed = retry(|| {
        let f = flows();
        let found = f.iter().find(|f| f["Original"]["Sport"] == 45000)?.clone();
        (found["Reply"]["Packets"].as_u64()? > 0).then_some(found)
    })
    .expect("the SYN was answered");
    assert_eq!(spoofed["State"], "SYN_RECV", "{spoofed}");
    assert!(
        spoofed["ExpiresSecs"].as_u64().unwrap() <= 60,
        "a half-open flow lives the SYN lifetime: {spoofed}"
    );

    let before = h.drops("tcp_no_flow");
    send("A", 45001);
    send("R", 45002);
    send("FA", 45003);
    sleep(Duration::from_millis(300));
    assert_eq!(h.drops("tcp_no_flow"), before + 3);
    assert!(
        flows()
            .iter()
            .all(|f| !(45001..=45003).contains(&f["Original"]["Sport"].as_u64().unwrap())),
        "stray segments open no flow"
    );
    // A real client still gets through.
    let got = h.in_world(&format!("socat -T 2 - TCP:{HOST_IP}:8080"));
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hi");
}

#[test]
fn on_a_1400_byte_uplink_endpoints_get_its_mtu_and_bulk_transfers_arrive_whole() {
    let h = Host::new();
    // The world's side advertises a 1460-byte MSS on its 1400-byte link,
    // as a server behind a smaller hop would: only the endpoint's own MTU
    // keeps its segments small enough.
    let world_if = format!("{}x", h.prefix);
    h.in_host(&format!("ip link set {} mtu 1400", h.uplink));
    sh_ok(&format!(
        "ip -n {w} link set {world_if} mtu 1400
         ip -n {w} route replace 198.18.0.0/24 dev {world_if} advmss 1460",
        w = h.world
    ));
    h.up(&[]);
    let web = h.name("web");
    h.np_ok(&["create", &web, "-p", "8080:80"]);
    let mtu = sh_ok(&format!("ip netns exec {web} cat /sys/class/net/eth0/mtu"));
    assert_eq!(mtu.trim(), "1400");

    const BYTES: usize = 3_000_000;
    // Out through masquerade.
    let got = h.dir.join("up.count");
    let _sink = h.tcp_server(&h.world, 7300, &format!("wc -c > {}", got.display()));
    sh_ok(&format!(
        "ip netns exec {web} sh -c 'head -c {BYTES} /dev/zero | timeout 20 socat -u - TCP:{WORLD_IP}:7300'"
    ));
    let sent = retry(|| {
        let n = std::fs::read_to_string(&got).ok()?;
        (!n.trim().is_empty()).then(|| n.trim().to_string())
    });
    assert_eq!(
        sent.as_deref(),
        Some(BYTES.to_string().as_str()),
        "every byte left"
    );
    // Nothing left too big: with endpoints at 1500, the stack answered
    // the first oversized segments with "fragmentation needed" and they
    // were sent again.
    let unreachable = sh_ok(&format!("ip netns exec {web} nstat -az IcmpInDestUnreachs"));
    assert!(
        unreachable
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["IcmpInDestUnreachs", "0"])),
        "{unreachable}"
    );
    let route = sh_ok(&format!("ip netns exec {web} ip route get {WORLD_IP}"));
    assert!(!route.contains("mtu"), "no path MTU was learnt: {route}");

    // In through the published port, the endpoint sending the bulk.
    let _server = h.tcp_server(&web, 80, &format!("head -c {BYTES} /dev/zero"));
    let down = h.in_world(&format!(
        "sh -c 'timeout 20 socat -u TCP:{HOST_IP}:8080 - | wc -c'"
    ));
    assert_eq!(
        String::from_utf8_lossy(&down.stdout).trim(),
        BYTES.to_string(),
        "every byte arrived"
    );
}

#[test]
fn a_published_port_with_an_allow_list_takes_new_flows_from_it_only() {
    let h = Host::new();
    const OTHER: &str = "198.18.0.50";
    let world_if = format!("{}x", h.prefix);
    sh_ok(&format!(
        "ip -n {} addr add {OTHER}/24 dev {world_if}",
        h.world
    ));
    h.up(&[]);
    let web = h.name("web");
    let only_world = format!("{WORLD_IP}/32");
    h.np_ok(&[
        "create",
        &web,
        "-p",
        "8080:80",
        "--publish-from",
        &only_world,
    ]);
    let _server = h.tcp_server(&web, 80, "echo hi");
    let reaches = |from: &str, port: u16| {
        let out = h.in_world(&format!(
            "socat -T 2 - TCP:{HOST_IP}:{port},bind={from},connect-timeout=2"
        ));
        String::from_utf8_lossy(&out.stdout).trim() == "hi"
    };
    assert!(reaches(WORLD_IP, 8080), "the listed source gets through");
    let before = h.drops("not_allowed");
    assert!(!reaches(OTHER, 8080), "another source does not");
    assert!(h.drops("not_allowed") > before, "and is counted");

    // Shown like an iptables -s match, with the drops under the rule.
    let nat = h.nat();
    let rule = support::rule(&nat, "dpt:8080");
    assert_eq!(rule["Source"], only_world.as_str());
    assert!(rule["Drops"]["not_allowed"].as_u64().unwrap() > 0, "{rule}");
    let ports: Value = serde_json::from_str(&h.np_ok(&["port", "ls", "--json"])).unwrap();
    assert_eq!(ports[0]["From"], serde_json::json!([only_world]));
    let inspect: Value =
        serde_json::from_str::<Value>(&h.np_ok(&["inspect", &web])).unwrap()[0].clone();
    assert_eq!(
        inspect["NetworkSettings"]["Ports"]["80/tcp"][0]["AllowedFrom"],
        serde_json::json!([only_world])
    );

    // port add --from takes several networks.
    let listed = h.np_ok(&[
        "port",
        "add",
        &web,
        "8443:80",
        "--from",
        "198.18.0.48/30",
        "10.0.0.0/8",
    ]);
    assert!(
        listed.contains("from 198.18.0.48/30,10.0.0.0/8"),
        "{listed}"
    );
    assert!(reaches(OTHER, 8443));
    assert!(!reaches(WORLD_IP, 8443));
    // Without a list, everyone, as in Docker.
    h.np_ok(&["port", "add", &web, "8444:80"]);
    assert!(reaches(OTHER, 8444) && reaches(WORLD_IP, 8444));

    let err = h.np_err(&["port", "add", &web, "9000:80", "--from", "nonsense"]);
    assert!(err.contains("nonsense"), "{err}");
    let err = h.np_err(&["create", &h.name("bare"), "--publish-from", &only_world]);
    assert!(err.contains("--publish-from"), "{err}");
    let ports: Value = serde_json::from_str(&h.np_ok(&["port", "ls", "--json"])).unwrap();
    assert_eq!(
        ports.as_array().unwrap().len(),
        3,
        "nothing else was published"
    );
}

#[test]
fn the_daemons_own_dns_port_is_not_published_over() {
    let h = Host::new();
    h.up(&[]);
    let web = h.name("web");
    h.np_ok(&["create", &web]);
    // Published on every address, 53/udp would take the gateway's DNS
    // from every endpoint.
    let err = h.np_err(&["port", "add", &web, "53:53/udp"]);
    assert!(
        err.contains("53/udp") && err.contains("netplane"),
        "names the port and the daemon: {err}"
    );
    let dug = h.in_endpoint(&web, &format!("dig +short +tries=1 +timeout=2 {web}"));
    assert_eq!(
        String::from_utf8_lossy(&dug.stdout).trim(),
        h.ip_of(&web),
        "the embedded DNS still answers"
    );
}
