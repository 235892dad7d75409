//! Reliability: traffic through the data path while the daemon dies and
//! comes back, crash-safe state, hostile input.
//!
//! Tests here print their figures as `figure: NAME = VALUE` lines, which
//! `cargo xtask report` collects into the README.

mod support;

use std::{
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{HOST_IP, Host, WORLD_IP, figure, sh_ok};

const STREAM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/support/stream.py");

/// Connections per direction in the restart test.
const CONNECTIONS: usize = 4;
const RESTARTS: usize = 5;
/// How long each stream runs: long enough for every restart to happen
/// while bytes flow.
const STREAM_SECONDS: u64 = 20;

/// `stream.py recv` in `netns`, towards `addr`:`port`, running.
fn receive(netns: &str, addr: &str, port: u16) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", netns, "python3", STREAM, "recv", addr])
        .arg(port.to_string())
        .arg(CONNECTIONS.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Counter `name` of section `section` ("Tcp", "TcpExt") in
/// /proc/net/`file` of `netns`.
fn tcp_counter(netns: &str, file: &str, section: &str, name: &str) -> u64 {
    let table = sh_ok(&format!("ip netns exec {netns} cat /proc/net/{file}"));
    let mut rows = table
        .lines()
        .filter(|l| l.starts_with(&format!("{section}:")));
    let (names, values) = (rows.next().unwrap(), rows.next().unwrap());
    let at = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// Segments the senders in `netns` sent again, and how many of those the
/// receiver reported as duplicates (D-SACK): a retransmission the receiver
/// did not already have is a packet lost on the way.
fn retransmits(netns: &str) -> (u64, u64) {
    (
        tcp_counter(netns, "snmp", "Tcp", "RetransSegs"),
        tcp_counter(netns, "netstat", "TcpExt", "TCPDSACKRecv"),
    )
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn streams_through_published_ports_and_masquerade_survive_kill_9_and_up() {
    let h = Host::new();
    h.up(&[]);
    let (srv, cli) = (h.name("srv"), h.name("cli"));
    h.np_ok(&["create", &srv, "-p", "9000:9000"]);
    h.np_ok(&["create", &cli]);
    let (sent_in, sent_out) = (h.dir.join("sent-in"), h.dir.join("sent-out"));
    let serve = |netns: &str, port: u16, report: &std::path::Path| {
        h.spawn_in(
            netns,
            &format!(
                "python3 {STREAM} serve {port} {STREAM_SECONDS} {}",
                report.display()
            ),
        )
    };
    let _inbound_server = serve(&srv, 9000, &sent_in);
    let _outbound_server = serve(&h.world, 9001, &sent_out);
    support::retry(|| {
        let listening = |netns: &str, port| {
            sh_ok(&format!("ip netns exec {netns} ss -Htln sport = :{port}")).contains("LISTEN")
        };
        (listening(&srv, 9000) && listening(&h.world, 9001)).then_some(())
    })
    .expect("both servers listen");

    // Through the published port (DNAT) and through masquerade (SNAT).
    let inbound = receive(&h.world, HOST_IP, 9000);
    let outbound = receive(&cli, WORLD_IP, 9001);
    let started = Instant::now();
    sleep(Duration::from_secs(1));
    let mut down_for = Vec::new();
    for _ in 0..RESTARTS {
        let pid = h.daemon_pid().expect("the daemon runs");
        let killed = Instant::now();
        sh_ok(&format!("kill -9 {pid}"));
        sleep(Duration::from_millis(500));
        h.up(&[]);
        down_for.push(killed.elapsed());
        sleep(Duration::from_millis(1000));
    }
    assert!(
        started.elapsed() < Duration::from_secs(STREAM_SECONDS - 2),
        "the restarts took {:?}, longer than the streams last",
        started.elapsed()
    );

    // The senders: the endpoint behind the published port, the world
    // behind masquerade.
    // A busy CPU can delay acknowledgements past the 10 ms after which a
    // sender probes with a copy of its last segment; the copy then arrives
    // as a duplicate. Every other retransmission repairs a loss.
    let (resent, duplicates) = [&srv, &h.world]
        .map(|netns| retransmits(netns))
        .into_iter()
        .fold((0, 0), |(r, d), (r2, d2)| (r + r2, d + d2));
    assert!(
        resent <= duplicates,
        "{resent} segments sent again, only {duplicates} of them arrived twice: packets were lost"
    );
    let mut max_gap_ms: f64 = 0.0;
    let mut bytes = 0;
    for (what, child, report) in [
        ("published port", inbound, &sent_in),
        ("masquerade", outbound, &sent_out),
    ] {
        let out = child.wait_with_output().unwrap();
        let received = json_lines(&String::from_utf8_lossy(&out.stdout));
        let sent = json_lines(&std::fs::read_to_string(report).unwrap());
        assert_eq!(received.len(), CONNECTIONS, "{what}: {received:?}");
        assert_eq!(sent.len(), CONNECTIONS, "{what}: {sent:?}");
        for r in &received {
            assert!(r["error"].is_null(), "{what}: no reset, no timeout: {r}");
            assert_eq!(r["in_order"], true, "{what}: every byte in order: {r}");
            max_gap_ms = max_gap_ms.max(r["max_gap_ms"].as_f64().unwrap());
        }
        for s in &sent {
            assert!(s["error"].is_null(), "{what}: the sender saw no error: {s}");
        }
        let total =
            |v: &[Value], key: &str| v.iter().map(|r| r[key].as_u64().unwrap()).sum::<u64>();
        assert_eq!(
            total(&received, "received"),
            total(&sent, "sent"),
            "{what}: every byte sent arrived"
        );
        bytes += total(&received, "received");
    }
    let longest_down = down_for.iter().max().unwrap();
    figure(
        "restart.connections",
        format!(
            "{} TCP connections (published port and masquerade)",
            2 * CONNECTIONS
        ),
    );
    figure("restart.restarts", format!("{RESTARTS} × kill -9 + up"));
    figure(
        "restart.bytes",
        format!("{bytes} bytes, all in order, no reset"),
    );
    figure(
        "restart.retransmits",
        format!(
            "{resent} TCP segments sent again, {duplicates} of them reported as duplicates by the receiver"
        ),
    );
    figure(
        "restart.max_gap",
        format!("{max_gap_ms} ms longest wait between two reads (sender writes every 5 ms)"),
    );
    figure(
        "restart.daemon_down",
        format!(
            "{} ms longest from kill to API up again",
            longest_down.as_millis()
        ),
    );
}
