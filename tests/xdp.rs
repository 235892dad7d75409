//! The uplink's XDP fast path on real traffic: attached natively with
//! `up --xdp native`, carrying the later packets of a published port's
//! connection into the endpoint (the veth counts the redirects), kept
//! across a `kill -9` and the next `up`, gone with `down`.

use netplane_test_support as support;

use serde_json::Value;
use support::{HOST_IP, Host, ethtool_stat, stdout_if_ok};

#[test]
fn xdp_carries_established_flows_into_endpoints() {
    let h = Host::new();
    support::checksums_filled_in(&h.world, &format!("{}x", h.prefix));
    h.up(&["--xdp", "native"]);
    let info: Value = serde_json::from_str(&h.np_ok(&["info"])).unwrap();
    assert_eq!(info["Xdp"], "native", "{info}");
    let link = h.in_host(&format!("ip -d link show {}", h.uplink));
    assert!(link.contains("np_uplink_xdp"), "{link}");

    let web = h.name("web");
    h.np_ok(&["create", "-p", "8080:80", &web]);
    let _server = h.tcp_server(
        &web,
        80,
        "timeout 0.3 cat >/dev/null; yes netplane | head -c 200000",
    );
    let curl = h.in_world(&format!(
        "curl --http0.9 -sS --max-time 5 http://{HOST_IP}:8080/"
    ));
    let got = stdout_if_ok(curl.clone()).unwrap_or_else(|| {
        panic!(
            "curl through XDP failed: {} {}\n{}\n{}",
            curl.status,
            String::from_utf8_lossy(&curl.stderr),
            h.in_host(&format!("ethtool -S {}", h.uplink)),
            support::sh_ok(&format!("ip netns exec {web} ethtool -k eth0")),
        )
    });
    assert_eq!(got.len(), 200_000);
    assert!(got.starts_with("netplane\nnetplane\n"));
    let stats = h.in_host(&format!("ethtool -S {}", h.uplink));
    let redirected = ethtool_stat(&stats, "rx_queue_0_xdp_redirect");
    assert!(redirected > 0, "nothing took the XDP path: {stats}");
    let flows: Value = serde_json::from_str(&h.np_ok(&["ct", "ls", "--json"])).unwrap();
    let inbound = flows[0]["Original"]["Packets"].as_u64().unwrap();
    assert!(
        inbound > redirected,
        "the flow counts what XDP carried ({redirected}) and what tc did: {flows}"
    );
    support::figure("xdp.redirected_packets", redirected);

    // After kill -9 the pinned link keeps XDP running; the next `up`
    // swaps its new program into that link, and the fast path goes on.
    h.kill_daemon();
    h.up(&["--xdp", "native"]);
    let again = stdout_if_ok(h.in_world(&format!(
        "curl --http0.9 -s --max-time 5 http://{HOST_IP}:8080/"
    )))
    .unwrap_or_else(|| panic!("curl after a restart: {}", h.log()));
    assert_eq!(again.len(), 200_000);
    let stats = h.in_host(&format!("ethtool -S {}", h.uplink));
    assert!(
        ethtool_stat(&stats, "rx_queue_0_xdp_redirect") > redirected,
        "XDP carried nothing after the restart: {stats}"
    );
    let link = h.in_host(&format!("ip -d link show {}", h.uplink));
    assert_eq!(link.matches("prog/xdp").count(), 1, "one program: {link}");

    h.down();
    let link = h.in_host(&format!("ip -d link show {}", h.uplink));
    assert!(!link.contains("xdp"), "down left XDP attached: {link}");

    // `auto` on a veth uplink: tc alone, as its senders' checksums may be
    // partial.
    h.up(&["--xdp", "auto"]);
    let info: Value = serde_json::from_str(&h.np_ok(&["info"])).unwrap();
    assert_eq!(info["Xdp"], "off", "{info}");
    let link = h.in_host(&format!("ip -d link show {}", h.uplink));
    assert!(!link.contains("xdp"), "auto attached XDP to a veth: {link}");
    h.down();
}
