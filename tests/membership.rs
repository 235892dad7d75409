//! Overlay membership through a real etcd on the underlay: hosts that join
//! are reachable by the others within two seconds, a host killed with -9
//! drops out when its session expires and gets its old /24 back when it
//! returns, and overlay traffic outlives the store being down.

use netplane_test_support as support;

use std::time::{Duration, Instant};

use support::{
    Etcd, Host, Underlay,
    cluster::{self, TTL, inspect, peers, resolved, vteps, within},
    sample, sh,
};

const VTEPS: [&str; 3] = ["192.0.2.11", "192.0.2.12", "192.0.2.13"];

fn up_with_store(h: &Host, etcd: &Etcd) {
    cluster::up_with_store(h, etcd, &["--metrics", METRICS]);
}

/// Where the hosts serve metrics, each in its own namespace.
const METRICS: &str = "127.0.0.1:9464";

/// How many times `h` brought itself in line with the cluster store, by
/// its metrics, and their total duration in seconds.
fn cluster_resyncs(h: &Host) -> (f64, f64) {
    let samples = h.scrape(METRICS);
    let cluster = [("trigger", "cluster")];
    let count = sample(
        &samples,
        "netplane_reconcile_duration_seconds_count",
        &cluster,
    );
    let inf = [("trigger", "cluster"), ("le", "+Inf")];
    assert_eq!(
        sample(&samples, "netplane_reconcile_duration_seconds_bucket", &inf),
        count
    );
    let sum = sample(
        &samples,
        "netplane_reconcile_duration_seconds_sum",
        &cluster,
    );
    (count, sum)
}

/// Hosts at every one of [`VTEPS`], the first two up with `etcd`.
fn joined(underlay: &Underlay, etcd: &Etcd) -> Vec<Host> {
    let hosts: Vec<Host> = VTEPS
        .iter()
        .map(|v| Host::on_underlay(underlay, v))
        .collect();
    up_with_store(&hosts[0], etcd);
    up_with_store(&hosts[1], etcd);
    hosts
}

fn ping_until(h: &Host, from: &str, to: &str) -> bool {
    within(Duration::from_secs(5), || h.pings(from, to)).is_some()
}

#[test]
fn hosts_join_leave_and_return_through_etcd() {
    let underlay = Underlay::new();
    let mut etcd = Etcd::start(&underlay, &["192.0.2.254"]);
    let hosts = joined(&underlay, &etcd);

    // A network created on one host appears on the other.
    hosts[0].create_overlay("ov", "10.202.0.0/16");
    let seen = within(Duration::from_secs(2), || {
        inspect(&hosts[1], "ov").is_some()
    })
    .expect("host 1 takes up the network host 0 created within 2 s");
    eprintln!("network seen by the other host after {seen:?}");
    // Joining and taking up the network: resyncs of host 1, timed.
    let (resyncs, took) = cluster_resyncs(&hosts[1]);
    assert!(
        resyncs >= 2.0 && took > 0.0,
        "{resyncs} resyncs in {took} s"
    );
    let eps: Vec<String> = hosts.iter().map(|h| h.name("c")).collect();
    for i in 0..2 {
        hosts[i].np_ok(&["create", &eps[i], "--net", "ov"]);
    }
    let ip0 = hosts[0].ip_of(&eps[0]);
    let ip1 = hosts[1].ip_of(&eps[1]);
    assert!(ip0.starts_with("10.202.") && ip1.starts_with("10.202."));
    assert_ne!(
        ip0.rsplit_once('.').unwrap().0,
        ip1.rsplit_once('.').unwrap().0,
        "each host has a /24 of its own"
    );
    assert!(ping_until(&hosts[0], &eps[0], &ip1), "0 → 1");
    assert!(ping_until(&hosts[1], &eps[1], &ip0), "1 → 0");
    // The outside world (etcd's namespace, which has no route to the
    // overlay) answers an overlay endpoint through its host's masquerade.
    let health = hosts[0].in_endpoint(&eps[0], "curl -sf -m 2 http://192.0.2.254:2379/health");
    assert!(
        String::from_utf8_lossy(&health.stdout).contains("true"),
        "an overlay endpoint reaches the world: {health:?}"
    );
    assert_eq!(
        peers(&hosts[0], "ov"),
        [
            (VTEPS[0].to_string(), "registered".to_string()),
            (VTEPS[1].to_string(), "registered".to_string())
        ]
    );

    // Host 2 joins: the others have its lease within 2 seconds of its
    // daemon being up.
    up_with_store(&hosts[2], &etcd);
    let joined = Instant::now();
    for (i, h) in hosts[..2].iter().enumerate() {
        let took = within(
            Duration::from_secs(2).saturating_sub(joined.elapsed()),
            || vteps(h, "ov").len() == 3,
        );
        assert!(took.is_some(), "host {i} sees host 2 within 2 s");
    }
    eprintln!("join seen by both hosts after {:?}", joined.elapsed());
    assert!(
        cluster_resyncs(&hosts[1]).0 > resyncs,
        "host 2's arrival is another resync"
    );
    hosts[2].np_ok(&["create", &eps[2], "--net", "ov"]);
    let ip2 = hosts[2].ip_of(&eps[2]);
    assert!(ping_until(&hosts[0], &eps[0], &ip2), "0 → 2");
    assert!(ping_until(&hosts[2], &eps[2], &ip1), "2 → 1");
    let lease2 = inspect(&hosts[2], "ov").unwrap()["Lease"].clone();

    // Killed with -9: gone from the others when its session expires.
    let pid = hosts[2].daemon_pid().expect("host 2's daemon");
    sh(&format!("kill -9 {pid}"));
    let killed = Instant::now();
    for (i, h) in hosts[..2].iter().enumerate() {
        let limit = Duration::from_secs(TTL + 3).saturating_sub(killed.elapsed());
        assert!(
            within(limit, || !vteps(h, "ov").contains(&VTEPS[2].into())).is_some(),
            "host {i} drops host 2 once its session expires"
        );
    }
    eprintln!("host 2 dropped {:?} after kill -9", killed.elapsed());
    assert!(hosts[0].pings(&eps[0], &ip1), "0 → 1 meanwhile");
    // Host 2's pinned data path still runs; only the route to it is gone.
    assert!(
        !hosts[0].pings(&eps[0], &ip2),
        "0 → 2 has no route once host 2 dropped out"
    );

    // It comes back with its old /24, and so its endpoint's address.
    up_with_store(&hosts[2], &etcd);
    assert!(
        within(Duration::from_secs(5), || inspect(&hosts[2], "ov")
            .is_some_and(|v| v["Lease"] == lease2))
        .is_some(),
        "host 2 gets {lease2} back"
    );
    assert_eq!(hosts[2].ip_of(&eps[2]), ip2);
    assert!(
        ping_until(&hosts[0], &eps[0], &ip2),
        "0 → 2 after the return"
    );

    // The store goes away for longer than a session lasts: the overlay
    // keeps running on what the hosts knew.
    etcd.stop_member(0);
    std::thread::sleep(Duration::from_secs(TTL + 1));
    assert!(hosts[0].pings(&eps[0], &ip1), "0 → 1 without the store");
    assert!(hosts[1].pings(&eps[1], &ip2), "1 → 2 without the store");
    assert!(
        peers(&hosts[0], "ov")
            .iter()
            .all(|(_, s)| s == "last known"),
        "{:?}",
        peers(&hosts[0], "ov")
    );

    // Back again: every host reconnects and follows changes again.
    etcd.start_member(0);
    etcd.wait_healthy(0);
    for (i, h) in hosts.iter().enumerate() {
        assert!(
            within(Duration::from_secs(10), || {
                let p = peers(h, "ov");
                p.len() == 3 && p.iter().all(|(_, s)| s == "registered")
            })
            .is_some(),
            "host {i} registered again: {:?}",
            peers(h, "ov")
        );
    }
    hosts[1].create_overlay("ov2", "10.203.0.0/16");
    assert!(
        within(Duration::from_secs(2), || inspect(&hosts[0], "ov2")
            .is_some())
        .is_some(),
        "a network created after the outage reaches host 0"
    );
    hosts[1].np_ok(&["network", "rm", "ov2"]);
    assert!(
        within(Duration::from_secs(2), || inspect(&hosts[2], "ov2")
            .is_none())
        .is_some(),
        "and its removal reaches host 2"
    );
    assert!(hosts[2].pings(&eps[2], &ip0), "2 → 0 at the end");
    for h in &hosts {
        assert_eq!(h.drops("overlay_unknown_peer"), 0);
    }
}

#[test]
fn a_three_member_etcd_cluster_keeps_membership_with_a_member_down() {
    let underlay = Underlay::new();
    let mut etcd = Etcd::start(&underlay, &["192.0.2.251", "192.0.2.252", "192.0.2.253"]);
    let hosts = joined(&underlay, &etcd);
    hosts[0].create_overlay("ov", "10.204.0.0/16");
    assert!(
        within(Duration::from_secs(2), || inspect(&hosts[1], "ov")
            .is_some())
        .is_some(),
        "host 1 takes up the network"
    );

    // A quorum of two is left: membership goes on, once the hosts that
    // talked to the lost member have moved to another.
    etcd.stop_member(0);
    up_with_store(&hosts[2], &etcd);
    let joined = Instant::now();
    for (i, h) in hosts.iter().enumerate() {
        assert!(
            within(Duration::from_secs(15), || vteps(h, "ov").len() == 3).is_some(),
            "host {i} sees all three hosts: {:?}\n{}",
            peers(h, "ov"),
            h.log()
        );
    }
    eprintln!(
        "with a member down, a join seen by all after {:?}",
        joined.elapsed()
    );
    let eps: Vec<String> = hosts
        .iter()
        .map(|h| {
            let e = h.name("c");
            h.np_ok(&["create", &e, "--net", "ov"]);
            e
        })
        .collect();
    let ip2 = hosts[2].ip_of(&eps[2]);
    let ip0 = hosts[0].ip_of(&eps[0]);
    assert!(ping_until(&hosts[0], &eps[0], &ip2), "0 → 2");
    assert!(ping_until(&hosts[2], &eps[2], &ip0), "2 → 0");
}

/// Writes `value` at `key` of the store, as a host netplane does not know
/// would, through etcd's JSON gateway.
fn put_in_store(underlay: &Underlay, member: &str, key: &str, value: &str) {
    let body = serde_json::json!({"key": cluster::base64(key), "value": cluster::base64(value)});
    cluster::etcd_gateway(underlay, member, "kv/put", &body);
}

#[test]
fn names_resolve_across_hosts_through_etcd() {
    let underlay = Underlay::new();
    let etcd = Etcd::start(&underlay, &["192.0.2.254"]);
    let hosts = joined(&underlay, &etcd);
    hosts[0].create_overlay("ov", "10.205.0.0/16");
    assert!(
        within(Duration::from_secs(5), || inspect(&hosts[1], "ov")
            .is_some())
        .is_some(),
        "host 1 takes up the network"
    );
    let client = hosts[1].name("client");
    hosts[1].np_ok(&["create", &client, "--net", "ov"]);

    // An endpoint created on host 0 resolves on host 1, by name and alias.
    let web = hosts[0].name("web");
    hosts[0].np_ok(&["create", &web, "--net", "ov", "--network-alias", "api"]);
    let created = Instant::now();
    let web_ip = hosts[0].ip_of(&web);
    let took = within(Duration::from_secs(5), || {
        resolved(&hosts[1], &client, &web) == [web_ip.clone()]
    })
    .unwrap_or_else(|| panic!("{web} never resolved on host 1: {}", hosts[1].log()));
    support::figure(
        "discovery.name_seen_on_another_host_ms",
        created.elapsed().as_millis(),
    );
    eprintln!("{web} resolved on host 1 {took:?} after polling began");
    assert!(
        ping_until(&hosts[1], &client, &web),
        "host 1 reaches {web} by name"
    );

    // An alias two hosts' endpoints share answers both; only the network's
    // own endpoints see the names.
    let api2 = hosts[1].name("api2");
    hosts[1].np_ok(&["create", &api2, "--net", "ov", "--network-alias", "api"]);
    let mut both = vec![web_ip.clone(), hosts[1].ip_of(&api2)];
    both.sort();
    assert!(
        within(Duration::from_secs(5), || resolved(&hosts[0], &web, "api")
            == both)
        .is_some(),
        "the alias answers both hosts' endpoints: {:?}",
        resolved(&hosts[0], &web, "api")
    );
    let outside = hosts[1].name("outside");
    hosts[1].np_ok(&["create", &outside]);
    assert_eq!(resolved(&hosts[1], &outside, &web), Vec::<String>::new());

    // A name another host claims from a lower VTEP answers that host's
    // endpoint on every host, and inspect names the clash.
    put_in_store(
        &underlay,
        "192.0.2.254",
        "/netplane/v1/names/ov/192.0.2.5",
        &format!(r#"[{{"Name":"{web}","Address":"10.205.200.2"}}]"#),
    );
    assert!(
        within(Duration::from_secs(5), || {
            resolved(&hosts[1], &client, &web) == ["10.205.200.2"]
                && resolved(&hosts[0], &web, &web) == ["10.205.200.2"]
        })
        .is_some(),
        "the lower VTEP's endpoint answers everywhere"
    );
    let clashes = inspect(&hosts[0], "ov").unwrap()["NameClashes"].clone();
    assert_eq!(clashes[0]["Name"], web.as_str(), "{clashes}");
    assert_eq!(
        clashes[0]["Answers"], "10.205.200.2 on 192.0.2.5",
        "{clashes}"
    );
    assert_eq!(
        clashes[0]["Shadowed"][0],
        format!("{web_ip} on {}", VTEPS[0]).as_str(),
        "{clashes}"
    );
    put_in_store(
        &underlay,
        "192.0.2.254",
        "/netplane/v1/names/ov/192.0.2.5",
        "[]",
    );

    // Removed, the name goes; its host killed, its names go with its
    // session.
    hosts[1].np_ok(&["rm", &api2]);
    assert!(
        within(Duration::from_secs(5), || resolved(&hosts[0], &web, "api")
            == [web_ip.clone()])
        .is_some(),
        "a removed endpoint stops answering the alias"
    );
    hosts[0].kill_daemon();
    let killed = Instant::now();
    let gone = within(Duration::from_secs(TTL + 5), || {
        resolved(&hosts[1], &client, &web).is_empty()
    });
    assert!(
        gone.is_some(),
        "a killed host's names expire with its session"
    );
    support::figure(
        "discovery.names_gone_after_kill_ms",
        killed.elapsed().as_millis(),
    );
}
