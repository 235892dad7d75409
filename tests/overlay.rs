//! Overlay networks across simulated hosts: three hosts on one underlay
//! switch, each with its own netplane, peers given statically; endpoints on
//! different hosts reach each other by their overlay addresses with ping,
//! TCP (iperf3) and UDP (socat).

mod support;

use support::{Host, Underlay, retry, sh, stdout_if_ok};

const VTEPS: [&str; 3] = ["192.0.2.11", "192.0.2.12", "192.0.2.13"];

/// Three hosts with the overlay `ov` (10.201.0.0/16) and one endpoint each.
fn cluster(underlay: &Underlay) -> (Vec<Host>, Vec<String>, Vec<String>) {
    let hosts: Vec<Host> = VTEPS
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
    let (hosts, eps, ips) = cluster(&underlay);
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

    // TCP: iperf3 between hosts 0 and 2. Retried until a run reports what
    // it received: a client that comes before the server listens gets an
    // error report instead.
    let _server = hosts[2].spawn_in(&eps[2], "iperf3 -s");
    let mut last = String::new();
    let received = retry(|| {
        last = String::from_utf8_lossy(
            &hosts[0]
                .in_endpoint(&eps[0], &format!("iperf3 -c {} -t 1 -J", ips[2]))
                .stdout,
        )
        .into_owned();
        let report: serde_json::Value = serde_json::from_str(&last).ok()?;
        report["end"]["sum_received"]["bytes"]
            .as_f64()
            .filter(|b| *b > 0.0)
    })
    .unwrap_or_else(|| panic!("iperf3 through the overlay: {last}"));
    assert!(received > 1e6, "iperf3 received {received} bytes");

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
