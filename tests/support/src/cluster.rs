//! A cluster of simulated hosts, each its own netplane daemon, on one
//! underlay switch with a three-member etcd, sharing one overlay network;
//! and the run the cluster test (5 hosts) and the cluster benchmark (5, 10
//! and 20) make of it: join, converge, ping every pair, resolve names, lose
//! an etcd member, lose a host and take it back.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{Etcd, Host, Underlay, sh_ok};

/// Seconds the store keeps a stopped host's keys.
pub const TTL: u64 = 3;

/// The etcd members' addresses on the underlay.
const ETCD: [&str; 3] = ["192.0.2.251", "192.0.2.252", "192.0.2.253"];

/// The underlay's own address, where no DNS server listens: names no host
/// knows go there, never to the machine's resolvers.
pub const UNANSWERED_DNS: &str = "192.0.2.1";

/// The overlay every host of a [`Cluster`] joins.
pub const NETWORK: &str = "ov";

/// The VTEP of host `i`.
pub fn vtep(i: usize) -> String {
    format!("192.0.2.{}", 11 + i)
}

/// Polls `f` every 20 ms until it holds or `limit` passes; the time it took.
pub fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// `network inspect NETWORK` on `h`, if the network exists there.
pub fn inspect(h: &Host, network: &str) -> Option<serde_json::Value> {
    let out = h.np(&["network", "inspect", network]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// VTEPs of the hosts `h` knows in `network`, and their state, sorted.
pub fn peers(h: &Host, network: &str) -> Vec<(String, String)> {
    inspect(h, network).map_or_else(Vec::new, |v| {
        let mut peers: Vec<(String, String)> = v["Peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["Vtep"].as_str().unwrap().to_string(),
                    p["State"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        peers.sort();
        peers
    })
}

/// The VTEPs of [`peers`].
pub fn vteps(h: &Host, network: &str) -> Vec<String> {
    peers(h, network).into_iter().map(|(v, _)| v).collect()
}

/// What `dig +short NAME` prints in endpoint `ep`: the addresses its
/// network's DNS server answers, sorted.
pub fn resolved(h: &Host, ep: &str, name: &str) -> Vec<String> {
    let out = h.in_endpoint(ep, &format!("dig +short +tries=1 +time=1 {name}"));
    let mut addrs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
        .collect();
    addrs.sort();
    addrs
}

/// `up` of `h` as a member of the cluster in `etcd`.
pub fn up_with_store(h: &Host, etcd: &Etcd, extra: &[&str]) {
    let ttl = TTL.to_string();
    let url = etcd.url();
    h.up(&[
        &[
            "--dns",
            UNANSWERED_DNS,
            "--uplink",
            &h.uplink,
            "--subnet",
            "10.88.0.0/24",
            "--store",
            &url,
            "--store-ttl",
            &ttl,
        ],
        extra,
    ]
    .concat());
}

/// `s` in base64, as etcd's JSON gateway takes keys and values.
pub fn base64(s: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("base64 (coreutils)");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(s.as_bytes())
        .unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

/// POSTs `body` to `/v3/CALL` of etcd's JSON gateway on the member at
/// `member` on `underlay`; its answer.
pub fn etcd_gateway(
    underlay: &Underlay,
    member: &str,
    call: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    let out = sh_ok(&format!(
        "ip netns exec {} curl -sf http://{member}:2379/v3/{call} -d '{body}'",
        underlay.netns
    ));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("etcd {call}: {e}: {out}"))
}

/// Resident memory of `h`'s daemon, in KiB.
fn daemon_rss_kib(h: &Host) -> u64 {
    let pid = h.daemon_pid().expect("the daemon runs");
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Hosts on one switch with etcd; dropped hosts first, then etcd, then
/// the switch.
#[derive(Debug)]
pub struct Cluster {
    pub hosts: Vec<Host>,
    pub etcd: Etcd,
    pub underlay: Underlay,
}

/// What a run of [`Cluster::run`] measured.
#[derive(Debug, Serialize)]
pub struct Figures {
    pub hosts: usize,
    /// From each host's `up` until it knew every host up before it, ms.
    pub join_ms: Vec<u128>,
    /// From the last host's `up` until every host knew every other, ms.
    pub converge_ms: u128,
    /// One ping from each host's endpoint to every other host's, ms.
    pub ping_all_pairs_ms: u128,
    /// Each daemon's resident memory with the cluster up, KiB.
    pub rss_kib: Vec<u64>,
    /// Keys under /netplane/v1/ in the store, all hosts up.
    pub store_keys: u64,
    /// From killing a host's daemon until no other knew its VTEP, ms.
    pub host_gone_ms: u128,
}

impl Cluster {
    /// `size` hosts (not up yet) and a three-member etcd on one switch.
    pub fn new(size: usize) -> Cluster {
        let underlay = Underlay::new();
        let etcd = Etcd::start(&underlay, &ETCD);
        let hosts = (0..size)
            .map(|i| Host::on_underlay(&underlay, &vtep(i)))
            .collect();
        Cluster {
            hosts,
            etcd,
            underlay,
        }
    }

    /// Keys netplane holds in the store, counted by etcd's JSON gateway
    /// on a live member.
    fn store_keys(&self, member: usize) -> u64 {
        let body = serde_json::json!({
            "key": base64("/netplane/v1/"),
            "range_end": base64("/netplane/v10"),
            "count_only": true,
        });
        let v = etcd_gateway(&self.underlay, ETCD[member], "kv/range", &body);
        v["count"].as_str().map_or(0, |c| c.parse().unwrap())
    }

    /// Every host's endpoint `c` on [`NETWORK`], by host.
    fn endpoints(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.name("c")).collect()
    }

    /// Whether every host knows exactly the VTEPs of `up`.
    fn all_know(&self, up: &[usize]) -> bool {
        let want: Vec<String> = {
            let mut v: Vec<String> = up.iter().map(|i| vtep(*i)).collect();
            v.sort();
            v
        };
        up.iter().all(|i| vteps(&self.hosts[*i], NETWORK) == want)
    }

    /// The whole run, asserting each step within its stated time: hosts
    /// join one by one, the mesh converges, every pair pings and every
    /// host resolves another's endpoint; an etcd member killed changes
    /// nothing; a host killed drops out of every other host's routes and
    /// names within its session's TTL, and returns to its old lease.
    pub fn run(size: usize) -> Figures {
        assert!(size >= 3, "a cluster of at least three hosts");
        let mut c = Cluster::new(size);
        let started = Instant::now();
        let mut join_ms = Vec::new();
        for i in 0..size {
            let t = Instant::now();
            up_with_store(&c.hosts[i], &c.etcd, &[]);
            if i == 0 {
                c.hosts[0].create_overlay(NETWORK, "10.210.0.0/16");
            }
            let up: Vec<usize> = (0..=i).collect();
            let host = &c.hosts[i];
            within(Duration::from_secs(20), || {
                vteps(host, NETWORK).len() == up.len()
            })
            .unwrap_or_else(|| panic!("host {i} never joined: {}", host.log()));
            join_ms.push(t.elapsed().as_millis());
        }
        let last_up = Instant::now();
        let everyone: Vec<usize> = (0..size).collect();
        assert!(
            within(Duration::from_secs(30), || c.all_know(&everyone)).is_some(),
            "the mesh never converged"
        );
        let converge_ms = last_up.elapsed().as_millis();
        eprintln!(
            "{size} hosts up and converged after {:?}",
            started.elapsed()
        );

        let eps = c.endpoints();
        let ips: Vec<String> = c
            .hosts
            .iter()
            .zip(&eps)
            .map(|(h, ep)| {
                h.np_ok(&["create", ep, "--net", NETWORK]);
                h.ip_of(ep)
            })
            .collect();
        let t = Instant::now();
        for (i, h) in c.hosts.iter().enumerate() {
            for (j, ip) in ips.iter().enumerate().filter(|(j, _)| *j != i) {
                assert!(
                    within(Duration::from_secs(5), || h.pings(&eps[i], ip)).is_some(),
                    "host {i} → host {j} ({ip})"
                );
            }
        }
        let ping_all_pairs_ms = t.elapsed().as_millis();
        for (i, h) in c.hosts.iter().enumerate() {
            let j = (i + 1) % size;
            assert!(
                within(Duration::from_secs(5), || resolved(h, &eps[i], &eps[j])
                    == [ips[j].clone()])
                .is_some(),
                "host {i} resolves host {j}'s {}",
                eps[j]
            );
        }
        let rss_kib: Vec<u64> = c.hosts.iter().map(daemon_rss_kib).collect();
        let store_keys = c.store_keys(0);

        // An etcd member killed: two keep the quorum, and for longer than
        // a session lives every host keeps knowing every other, and
        // traffic flows.
        c.etcd.stop_member(0);
        let watched = Instant::now();
        while watched.elapsed() < Duration::from_secs(2 * TTL) {
            for (i, h) in c.hosts.iter().enumerate() {
                assert_eq!(
                    vteps(h, NETWORK).len(),
                    size,
                    "host {i} lost a peer with an etcd member down"
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(c.hosts[0].pings(&eps[0], &ips[size - 1]));
        assert!(c.hosts[size - 1].pings(&eps[size - 1], &ips[0]));

        // A host killed: every other drops its routes and names.
        let gone = size - 1;
        let lease = inspect(&c.hosts[gone], NETWORK).unwrap()["Lease"].clone();
        c.hosts[gone].kill_daemon();
        let killed = Instant::now();
        let rest: Vec<usize> = (0..gone).collect();
        assert!(
            within(Duration::from_secs(TTL + 10), || c.all_know(&rest)).is_some(),
            "host {gone} is still known after its session expired"
        );
        let host_gone_ms = killed.elapsed().as_millis();
        // Its name went with its routes, in the same resync. (Timing the
        // lookups would add the wait for the upstream that does not answer
        // a name no host has.)
        for (i, h) in c.hosts[..gone].iter().enumerate() {
            assert_eq!(
                resolved(h, &eps[i], &eps[gone]),
                Vec::<String>::new(),
                "host {i} still resolves the killed host's endpoint"
            );
        }

        // It returns, to its old lease, and is reached again.
        up_with_store(&c.hosts[gone], &c.etcd, &[]);
        assert!(
            within(Duration::from_secs(20), || c.all_know(&everyone)).is_some(),
            "host {gone} never returned"
        );
        assert_eq!(inspect(&c.hosts[gone], NETWORK).unwrap()["Lease"], lease);
        assert!(
            within(Duration::from_secs(5), || c.hosts[0]
                .pings(&eps[0], &ips[gone]))
            .is_some()
        );

        Figures {
            hosts: size,
            join_ms,
            converge_ms,
            ping_all_pairs_ms,
            rss_kib,
            store_keys,
            host_gone_ms,
        }
    }
}
