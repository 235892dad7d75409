//! Overlay networks across simulated hosts: hosts on one underlay switch,
//! each with its own netplane, peers given statically; endpoints on
//! different hosts reach each other by their overlay addresses with ping,
//! TCP (iperf3) and UDP (socat), also with a daemon killed, and with a host
//! that runs Linux's own vxlan device instead of netplane.

use netplane_test_support as support;

use support::{Host, Underlay, retry, sh, stdout_if_ok};

const VTEPS: [&str; 3] = ["192.0.2.11", "192.0.2.12", "192.0.2.13"];

/// netplane hosts at the first `n` of [`VTEPS`], all of them peers, with
/// the overlay `ov` (10.201.0.0/16, VXLAN) and one endpoint each.
fn cluster(underlay: &Underlay, n: usize) -> (Vec<Host>, Vec<String>, Vec<String>) {
    cluster_with(underlay, n, "vxlan")
}

/// [`cluster`] with the overlay's frames in `encap`.
fn cluster_with(
    underlay: &Underlay,
    n: usize,
    encap: &str,
) -> (Vec<Host>, Vec<String>, Vec<String>) {
    let hosts: Vec<Host> = VTEPS[..n]
        .iter()
        .map(|v| Host::on_underlay(underlay, v))
        .collect();
    for (i, h) in hosts.iter().enumerate() {
        let mut args = vec!["--uplink", &h.uplink, "--subnet", "10.88.0.0/24"];
        for (j, v) in VTEPS.iter().enumerate() {
            if j != i {
                args.extend(["--peer", v]);
            }
        }
        h.up(&args);
        h.np_ok(&[
            "network",
            "create",
            "--driver",
            "overlay",
            "--encap",
            encap,
            "--subnet",
            "10.201.0.0/16",
            "ov",
        ]);
    }
    let endpoints: Vec<String> = hosts
        .iter()
        .map(|h| {
            let e = h.name("c");
            h.np_ok(&["create", &e, "--net", "ov"]);
            e
        })
        .collect();
    let ips = hosts
        .iter()
        .zip(&endpoints)
        .map(|(h, e)| h.ip_of(e))
        .collect();
    (hosts, endpoints, ips)
}

#[test]
fn endpoints_on_three_hosts_reach_each_other_over_the_overlay() {
    let underlay = Underlay::new();
    let (hosts, eps, ips) = cluster(&underlay, 3);
    // Every host agrees on the leases: the VTEPs' order, a /24 each.
    for (i, ip) in ips.iter().enumerate() {
        assert!(ip.starts_with(&format!("10.201.{i}.")), "{ip} on host {i}");
    }
    let inspect: serde_json::Value =
        serde_json::from_str(&hosts[1].np_ok(&["network", "inspect", "ov"])).unwrap();
    assert_eq!(inspect["Lease"], "10.201.1.0/24");
    assert_eq!(inspect["Peers"].as_array().unwrap().len(), 3);

    for i in 0..3 {
        for j in (0..3).filter(|j| *j != i) {
            assert!(
                retry(|| hosts[i].pings(&eps[i], &ips[j]).then_some(())).is_some(),
                "{} on host {i} pings {} on host {j}",
                eps[i],
                ips[j]
            );
        }
    }
    let mtu = hosts[0].in_endpoint(&eps[0], "cat /sys/class/net/eth0/mtu");
    assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "1450");

    // TCP: iperf3 between hosts 0 and 2.
    let _server = hosts[2].spawn_in(&eps[2], "iperf3 -s");
    let received = iperf3_received(&hosts[0], &eps[0], &ips[2]);
    assert!(received > 1e6, "iperf3 received {received} bytes");
    if let Some(redirected) = hosts[2].xdp_redirected() {
        assert!(redirected > 0, "no VXLAN frame took the XDP path");
    }

    // UDP: a datagram from host 1 to host 0 and the answer back.
    let _echo = hosts[0].spawn_in(
        &eps[0],
        "socat UDP-RECVFROM:5353,fork 'SYSTEM:echo pong $SOCAT_PEERADDR'",
    );
    let answer = retry(|| {
        stdout_if_ok(sh(&format!(
            "echo ping | ip netns exec {} socat -t 1 - UDP:{}:5353",
            eps[1], ips[0]
        )))
        .filter(|s| !s.is_empty())
    })
    .expect("a UDP answer through the overlay");
    assert_eq!(
        answer.trim(),
        format!("pong {}", ips[1]),
        "no NAT on the overlay"
    );

    for h in &hosts {
        assert_eq!(h.drops("overlay_unknown_peer"), 0);
    }
}

#[test]
fn networks_are_isolated_from_each_other() {
    let underlay = Underlay::new();
    let (hosts, eps, ips) = cluster(&underlay, 2);
    // Host 0 also has a bridge endpoint; both hosts a second overlay with
    // an endpoint on host 1.
    let bridged = hosts[0].name("b");
    hosts[0].np_ok(&["create", &bridged]);
    let bridged_ip = hosts[0].ip_of(&bridged);
    for h in &hosts {
        h.create_overlay("ov2", "10.205.0.0/16");
    }
    let other = hosts[1].name("o");
    hosts[1].np_ok(&["create", &other, "--net", "ov2"]);
    let other_ip = hosts[1].ip_of(&other);
    assert!(
        retry(|| hosts[0].pings(&eps[0], &ips[1]).then_some(())).is_some(),
        "the overlay itself works"
    );
    assert!(!hosts[0].pings(&eps[0], &bridged_ip), "overlay → bridge");
    assert!(!hosts[0].pings(&bridged, &ips[0]), "bridge → overlay, here");
    assert!(
        !hosts[0].pings(&bridged, &ips[1]),
        "bridge → overlay, there"
    );
    assert!(
        !hosts[0].pings(&eps[0], &other_ip),
        "overlay → other overlay"
    );
    assert_eq!(hosts[0].drops("other_network"), 4);
}

#[test]
fn endpoints_find_a_smaller_path_mtu_after_the_uplink_shrinks() {
    let underlay = Underlay::new();
    let (hosts, eps, ips) = cluster(&underlay, 2);
    // Endpoints keep MTU 1450 while host 0's uplink drops to 1400: their
    // full-size packets no longer fit once encapsulated. Offloads off, so
    // that TCP sends segments of the MTU's size (a veth carries GSO
    // packets whole); without "fragmentation needed" coming back, the
    // transfer would hang.
    hosts[0].in_host(&format!("ip link set {} mtu 1400", hosts[0].uplink));
    let out = hosts[0].in_endpoint(&eps[0], "ethtool -K eth0 tso off gso off");
    assert!(out.status.success(), "{out:?}");
    let mut said = String::new();
    let answered = within_seconds(15, || {
        let out = hosts[0].in_endpoint(&eps[0], &format!("ping -c1 -W1 -M do -s 1422 {}", ips[1]));
        said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The answer, or the path MTU the endpoint learnt from it.
        said.contains("mtu = 1350") || said.contains("mtu=1350")
    });
    assert!(
        answered,
        "a full-size DF ping is answered with the smaller overlay MTU: {said}"
    );
    let _server = hosts[1].spawn_in(&eps[1], "iperf3 -s");
    let received = iperf3_received(&hosts[0], &eps[0], &ips[1]);
    assert!(received > 1e6, "iperf3 received {received} bytes");
    assert!(
        hosts[0].drops("too_big") == 0,
        "DF packets are answered, not dropped"
    );
}

/// Bytes a one-second iperf3 run from endpoint `from` on `host` to
/// `to_ip` delivered. Retried until a run reports what it received: a
/// client that comes before the server listens gets an error report.
fn iperf3_received(host: &Host, from: &str, to_ip: &str) -> f64 {
    let mut last = String::new();
    retry(|| {
        last = String::from_utf8_lossy(
            &host
                .in_endpoint(from, &format!("iperf3 -c {to_ip} -t 1 -J"))
                .stdout,
        )
        .into_owned();
        let report: serde_json::Value = serde_json::from_str(&last).ok()?;
        report["end"]["sum_received"]["bytes"]
            .as_f64()
            .filter(|b| *b > 0.0)
    })
    .unwrap_or_else(|| panic!("iperf3 from {from} to {to_ip}: {last}"))
}

/// Polls `f` every 100 ms for up to `seconds`.
fn within_seconds(seconds: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

#[test]
fn overlay_traffic_outlives_a_killed_daemon() {
    let underlay = Underlay::new();
    let (hosts, eps, ips) = cluster(&underlay, 3);
    let pid = hosts[2].daemon_pid().expect("host 2's daemon");
    sh(&format!("kill -9 {pid}"));
    assert!(
        retry(|| hosts[2].daemon_pid().is_none().then_some(())).is_some(),
        "the daemon is gone"
    );
    // The programs and maps stay pinned: the other two hosts keep talking,
    // and so does the killed one's endpoint.
    for (i, j) in [(0, 1), (1, 0), (0, 2), (2, 1)] {
        assert!(
            hosts[i].pings(&eps[i], &ips[j]),
            "{} on host {i} pings {} on host {j} after the kill",
            eps[i],
            ips[j]
        );
    }
}

#[test]
fn a_host_with_linux_vxlan_talks_with_a_netplane_host() {
    let underlay = Underlay::new();
    // Host 1 of the cluster runs no netplane: its lease, 10.201.1.0/24, is
    // behind a plain vxlan device, addressed and MAC'd as netplane would an
    // endpoint there, with netplane's endpoints behind host 0 as neighbours.
    let kernel = Host::on_underlay(&underlay, VTEPS[1]);
    let (hosts, eps, ips) = cluster(&underlay, 1);
    let vx_ip = "10.201.1.2";
    let k = &kernel.netns;
    support::sh_ok(&format!(
        "set -e
         ip -n {k} link add vx0 type vxlan id {vni} dstport 4789 local {local} remote {remote} dev {uplink}
         ip -n {k} link set vx0 address 02:42:0a:c9:01:02 mtu 1450
         ip netns exec {k} sysctl -qw net.ipv6.conf.vx0.disable_ipv6=1
         ip -n {k} addr add {vx_ip}/24 dev vx0; ip -n {k} link set vx0 up
         ip -n {k} route add 10.201.0.0/24 dev vx0
         ip -n {k} neigh add {ep} lladdr 02:42:{mac} dev vx0 nud permanent",
        vni = vni_of(&hosts[0]),
        local = VTEPS[1],
        remote = VTEPS[0],
        uplink = kernel.uplink,
        ep = ips[0],
        mac = ips[0]
            .split('.')
            .map(|o| format!("{:02x}", o.parse::<u8>().unwrap()))
            .collect::<Vec<_>>()
            .join(":"),
    ));
    assert!(
        retry(|| hosts[0].pings(&eps[0], vx_ip).then_some(())).is_some(),
        "netplane's endpoint pings the Linux vxlan device"
    );
    let _server = kernel.spawn_in(
        k,
        &format!("socat TCP-LISTEN:7000,bind={vx_ip},reuseaddr 'SYSTEM:echo $SOCAT_PEERADDR'"),
    );
    let peer = retry(|| {
        stdout_if_ok(sh(&format!(
            "ip netns exec {} socat -t 2 - TCP:{vx_ip}:7000 </dev/null",
            eps[0]
        )))
        .filter(|s| !s.trim().is_empty())
    })
    .expect("a TCP answer from the Linux vxlan host");
    assert_eq!(
        peer.trim(),
        ips[0],
        "the overlay keeps the endpoint's address"
    );
    assert_eq!(hosts[0].drops("overlay_unknown_peer"), 0);
}

/// The VNI of `ov` on `host`.
fn vni_of(host: &Host) -> u64 {
    let net: serde_json::Value =
        serde_json::from_str(&host.np_ok(&["network", "inspect", "ov"])).unwrap();
    net["VNI"].as_u64().unwrap()
}

/// What crosses the underlay switch while `during` runs: tcpdump's
/// one-line summaries of up to `count` frames matching `filter`.
fn on_the_wire(underlay: &Underlay, filter: &str, count: u32, during: impl FnOnce()) -> String {
    let capture = std::process::Command::new("ip")
        .args(["netns", "exec", &underlay.netns, "timeout", "5", "tcpdump"])
        .args(["-i", "sw0", "-n", "-l", "-c", &count.to_string()])
        .arg(filter)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // tcpdump needs a moment to open the interface.
    std::thread::sleep(std::time::Duration::from_millis(300));
    during();
    String::from_utf8_lossy(&capture.wait_with_output().unwrap().stdout).into_owned()
}

#[test]
fn gre_and_direct_routing_carry_the_overlay_between_hosts() {
    for (encap, mtu, wire) in [
        ("gre", "1458", "ip proto 47"),
        ("none", "1500", "icmp and net 10.201.0.0/16"),
    ] {
        let underlay = Underlay::new();
        let (hosts, eps, ips) = cluster_with(&underlay, 2, encap);
        let inspect: serde_json::Value =
            serde_json::from_str(&hosts[0].np_ok(&["network", "inspect", "ov"])).unwrap();
        assert_eq!(inspect["Encap"], encap);
        let seen = on_the_wire(&underlay, wire, 2, || {
            assert!(
                retry(|| hosts[0].pings(&eps[0], &ips[1]).then_some(())).is_some(),
                "{encap}: host 0 pings host 1"
            );
        });
        assert!(
            seen.lines().count() >= 2,
            "{encap}: nothing like {wire:?} on the underlay: {seen}"
        );
        if encap == "gre" {
            assert!(seen.contains("GREv0") && seen.contains("key=0x"), "{seen}");
        } else {
            // The endpoints' own addresses, nothing around them.
            assert!(seen.contains(&ips[0]) && seen.contains(&ips[1]), "{seen}");
        }
        assert!(
            hosts[1].pings(&eps[1], &ips[0]),
            "{encap}: host 1 pings host 0"
        );
        let got = hosts[0].in_endpoint(&eps[0], "cat /sys/class/net/eth0/mtu");
        assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), mtu, "{encap}");
        let _server = hosts[1].spawn_in(&eps[1], "iperf3 -s");
        let received = iperf3_received(&hosts[0], &eps[0], &ips[1]);
        assert!(received > 1e6, "{encap}: iperf3 received {received} bytes");
        for h in &hosts {
            assert_eq!(h.drops("overlay_unknown_peer"), 0, "{encap}");
        }
    }
}

#[test]
fn direct_routing_takes_only_peers_and_needs_them_on_the_link() {
    let underlay = Underlay::new();
    let (hosts, eps, ips) = cluster_with(&underlay, 2, "none");
    assert!(retry(|| hosts[0].pings(&eps[0], &ips[1]).then_some(())).is_some());
    // A machine on the link that is no peer routes to an endpoint through
    // host 0: the data path drops it, as it drops VXLAN from a stranger.
    let lease0 = format!("{}.0/24", ips[0].rsplit_once('.').unwrap().0);
    support::sh_ok(&format!(
        "ip -n {0} addr add 192.0.2.1/24 dev sw0; ip -n {0} route add {lease0} via {1}",
        underlay.netns, VTEPS[0]
    ));
    let stranger = sh(&format!(
        "ip netns exec {} ping -c1 -W1 -I 192.0.2.1 {}",
        underlay.netns, ips[0]
    ));
    assert!(!stranger.status.success(), "a non-peer reached the overlay");
    assert_eq!(hosts[0].drops("overlay_unknown_peer"), 1);

    // A host whose peer is on another subnet cannot have such a network.
    let far = Host::on_underlay(&underlay, "192.0.2.14");
    far.up(&[
        "--uplink",
        &far.uplink,
        "--subnet",
        "10.88.0.0/24",
        "--peer",
        "198.51.100.7",
    ]);
    let err = far.np_err(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--encap",
        "none",
        "--subnet",
        "10.202.0.0/16",
        "direct",
    ]);
    assert!(
        err.contains("198.51.100.7 is not on this uplink's subnet"),
        "{err}"
    );
}
