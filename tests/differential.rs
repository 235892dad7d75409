//! netplane against Docker's own iptables rules: the same topology and the
//! same traffic, once through netplane's eBPF NAT and once through the rule
//! shapes Docker installs (MASQUERADE for the bridge subnet, a DOCKER chain
//! with one DNAT per published port behind `addrtype LOCAL`), must give the
//! same observable results: who sees which address, payloads intact.

use netplane_test_support as support;

use support::{Background, HOST_IP, Host, WORLD_IP, retry, sh, sh_ok, stdout_if_ok};

/// What the programs on each side saw.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    /// The client address an endpoint's TCP server saw for a world client.
    tcp_client: String,
    /// The same for UDP.
    udp_client: String,
    /// The client address a world server saw for an endpoint's connection.
    masqueraded_as: String,
    /// What the world client received through the published TCP port.
    tcp_payload: String,
    /// What the endpoint received back from the world server.
    reply_payload: String,
}

/// A TCP server answering with the peer address and an echo of one line.
fn echo_server(h: &Host, netns: &str, port: u16) -> Background {
    h.spawn_in(
        netns,
        &format!(
            "socat TCP-LISTEN:{port},reuseaddr,fork \
             'SYSTEM:read line; echo $SOCAT_PEERADDR $line'"
        ),
    )
}

fn udp_server(h: &Host, netns: &str, port: u16) -> Background {
    h.spawn_in(
        netns,
        &format!("socat UDP-RECVFROM:{port},fork 'SYSTEM:echo $SOCAT_PEERADDR'"),
    )
}

fn exchange(netns: &str, target: &str, line: &str) -> String {
    retry(|| {
        stdout_if_ok(sh(&format!(
            "echo {line} | ip netns exec {netns} socat -t2 - {target}"
        )))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
    })
    .unwrap_or_else(|| panic!("no answer from {target} in {netns}"))
}

/// Runs the traffic of the comparison against `endpoint` (published on the
/// host as tcp 8080 -> 80 and udp 5353 -> 53).
fn observe(h: &Host, endpoint: &str) -> Observed {
    let _tcp = echo_server(h, endpoint, 80);
    let _udp = udp_server(h, endpoint, 53);
    let _world = echo_server(h, &h.world, 7000);
    let payload = "payload-0123456789-with-some-length";
    let answer = exchange(&h.world, &format!("TCP:{HOST_IP}:8080"), payload);
    let (tcp_client, tcp_payload) = answer.split_once(' ').unwrap();
    let udp_client = exchange(&h.world, &format!("UDP:{HOST_IP}:5353"), "x");
    let answer = exchange(endpoint, &format!("TCP:{WORLD_IP}:7000"), payload);
    let (masqueraded_as, reply_payload) = answer.split_once(' ').unwrap();
    Observed {
        tcp_client: tcp_client.into(),
        udp_client,
        masqueraded_as: masqueraded_as.into(),
        tcp_payload: tcp_payload.into(),
        reply_payload: reply_payload.into(),
    }
}

#[test]
fn netplane_and_dockers_iptables_rules_look_the_same_from_outside() {
    let np = Host::new();
    np.up(&["--subnet", "172.31.0.0/24"]);
    let web = np.name("web");
    np.np_ok(&["create", &web, "-p", "8080:80", "-p", "5353:53/udp"]);
    let with_netplane = observe(&np, &web);

    // The same host built by hand, NATed the way Docker does it.
    let ipt = Host::new();
    let (n, p) = (&ipt.netns, &ipt.prefix);
    let (bridge, endpoint) = (format!("{p}d0"), ipt.name("web"));
    sh_ok(&format!(
        "set -e
         ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1
         ip -n {n} link add {bridge} type bridge
         ip -n {n} addr add 172.31.0.1/24 dev {bridge}; ip -n {n} link set {bridge} up
         ip netns add {endpoint}
         ip -n {n} link add {p}v0 type veth peer name eth0 netns {endpoint}
         ip -n {n} link set {p}v0 master {bridge}; ip -n {n} link set {p}v0 up
         ip -n {endpoint} addr add 172.31.0.2/24 dev eth0
         ip -n {endpoint} link set eth0 up; ip -n {endpoint} link set lo up
         ip -n {endpoint} route add default via 172.31.0.1
         ip netns exec {n} sh -c '
           iptables -t nat -A POSTROUTING -s 172.31.0.0/24 ! -o {bridge} -j MASQUERADE
           iptables -t nat -N DOCKER
           iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
           iptables -t nat -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
           iptables -t nat -A DOCKER -i {bridge} -j RETURN
           iptables -t nat -A DOCKER ! -i {bridge} -p tcp --dport 8080 -j DNAT --to-destination 172.31.0.2:80
           iptables -t nat -A DOCKER ! -i {bridge} -p udp --dport 5353 -j DNAT --to-destination 172.31.0.2:53'"
    ));
    let with_iptables = observe(&ipt, &endpoint);

    assert_eq!(with_netplane, with_iptables);
    assert_eq!(with_netplane.tcp_client, WORLD_IP);
    assert_eq!(with_netplane.masqueraded_as, HOST_IP);
}
