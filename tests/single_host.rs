//! The four single-host modes, the API and the daemon's lifecycle, on
//! simulated hosts in network namespaces.

use netplane_test_support as support;

use std::{thread::sleep, time::Duration};

use serde_json::Value;
use support::{HOST_IP, Host, WORLD_IP, sh, sh_ok};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn bridge_endpoints_reach_each_other_and_the_data_path_counts() {
    let h = Host::new();
    h.up(&[]);
    let (a, b) = (h.name("a"), h.name("b"));
    h.np_ok(&["create", &a]);
    h.np_ok(&["create", &b]);
    let ip_a = h.ip_of(&a);
    let ip_b = h.ip_of(&b);
    assert_ne!(ip_a, ip_b);
    assert!(h.pings(&a, &ip_b), "{a} -> {b}");
    let out = h.np(&["exec", &b, "--", "ping", "-c1", "-W1", &ip_a]);
    assert!(
        out.status.success(),
        "netplane exec ping: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Real programs: an HTTP server in one endpoint, curl in the other.
    let server = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &a,
            "socat",
            "TCP-LISTEN:8000,reuseaddr,fork",
        ])
        .arg("SYSTEM:echo HTTP/1.0 200 OK; echo; echo hello from a")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(h.dir.join("http.log")).unwrap())
        .spawn()
        .unwrap();
    let mut server = scopeguard(server);
    let mut body = String::new();
    for _ in 0..50 {
        let out = h.np(&[
            "exec",
            &b,
            "--",
            "curl",
            "-sS",
            "--max-time",
            "2",
            &format!("http://{ip_a}:8000/"),
        ]);
        if out.status.success() {
            body = String::from_utf8_lossy(&out.stdout).into_owned();
            break;
        }
        sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(h.dir.join("http.log")).unwrap_or_default();
    assert!(
        body == "hello from a\n",
        "curl through the bridge got: {body:?}; server: {log}"
    );
    server.kill_now();

    // --link puts the other endpoint in the hosts file under its alias.
    let c = h.name("c");
    h.np_ok(&["create", &c, "--link", &format!("{a}:web")]);
    let out = h.np(&["exec", &c, "--", "getent", "hosts", "web"]);
    let resolved = String::from_utf8_lossy(&out.stdout);
    assert!(
        resolved.split_whitespace().collect::<Vec<_>>() == [ip_a.as_str(), "web", a.as_str()],
        "getent hosts web in {c}: {resolved:?}"
    );
    let out = h.np(&["exec", &c, "--", "ping", "-c1", "-W1", "web"]);
    assert!(out.status.success(), "ping web from {c}");

    let stats = json(&h.np_ok(&["stats"]));
    let veth_of = |ip: &str| format!("npv{:x}", if ip == ip_a { 1 } else { 2 });
    for ip in [&ip_a, &ip_b] {
        let rx = stats["Interfaces"][veth_of(ip)]["RxPackets"]
            .as_u64()
            .unwrap();
        assert!(rx >= 3, "endpoint veth counted {rx} packets: {stats}");
    }
    assert!(
        stats["Interfaces"][&h.uplink]["RxPackets"].is_u64(),
        "uplink is attached: {stats}"
    );

    // The linked endpoint recreated at another address: the hosts file
    // follows.
    h.np_ok(&["rm", &a]);
    h.np_ok(&["create", &a, "--ip", &moved(&ip_a)]);
    let out = h.np(&["exec", &c, "--", "getent", "hosts", "web"]);
    let resolved = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        resolved.split_whitespace().next(),
        Some(moved(&ip_a).as_str()),
        "getent hosts web in {c} after {a} moved: {resolved:?}"
    );
}

/// Kills the child when dropped, so a failing assertion leaves no server.
struct Guard(std::process::Child);
fn scopeguard(c: std::process::Child) -> Guard {
    Guard(c)
}
impl Guard {
    fn kill_now(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
impl Drop for Guard {
    fn drop(&mut self) {
        self.kill_now();
    }
}

#[test]
fn none_container_and_host_modes() {
    let h = Host::new();
    h.up(&[]);
    let (a, n, c, ho) = (h.name("a"), h.name("n"), h.name("c"), h.name("h"));
    h.np_ok(&["create", &a]);
    h.np_ok(&["create", &n, "--net", "none"]);
    h.np_ok(&["create", &c, "--net", &format!("container:{a}")]);
    h.np_ok(&["create", &ho, "--net", "host"]);

    let links = String::from_utf8_lossy(&h.np(&["exec", &n, "--", "ip", "-br", "link"]).stdout)
        .into_owned();
    assert_eq!(links.lines().count(), 1, "none has only lo: {links}");
    assert!(links.starts_with("lo") && links.contains("UP"), "{links}");

    let ip_a = h.ip_of(&a);
    let addr_c = String::from_utf8_lossy(
        &h.np(&["exec", &c, "--", "ip", "-br", "addr", "show", "eth0"])
            .stdout,
    )
    .into_owned();
    assert!(
        addr_c.contains(&ip_a),
        "container: shares {a}'s address: {addr_c}"
    );
    let mac = json(&h.np_ok(&["inspect", &a]))[0]["NetworkSettings"]["MacAddress"]
        .as_str()
        .unwrap()
        .to_string();
    let link_c =
        String::from_utf8_lossy(&h.in_endpoint(&c, "ip -br link show eth0").stdout).into_owned();
    assert!(link_c.contains(&mac), "same MAC {mac}: {link_c}");
    assert_eq!(
        json(&h.np_ok(&["inspect", &c]))[0]["NetworkSettings"]["IPAddress"],
        ip_a
    );

    let host_links =
        String::from_utf8_lossy(&h.np(&["exec", &ho, "--", "ip", "-br", "link"]).stdout)
            .into_owned();
    assert!(
        host_links.contains(&h.uplink) && host_links.contains("np0"),
        "host mode sees the host: {host_links}"
    );

    // The namespace's owner goes only with the endpoint sharing it, and
    // only when forced, as `docker rm` refuses a container others join.
    let err = h.np_err(&["rm", &a]);
    assert!(
        err.contains(&c) && err.contains("rm -f"),
        "refusal names {c}: {err}"
    );
    assert!(h.pings(&c, &ip_a), "{a} and {c} are still there");
    let gone = h.np_ok(&["rm", "-f", &a]);
    assert_eq!(
        gone.lines().collect::<Vec<_>>(),
        [c.as_str(), a.as_str()],
        "rm -f names what went"
    );
    let ls = h.np_ok(&["ls", "--json"]);
    assert!(!ls.contains(&format!("\"{c}\"")), "{c} went with {a}: {ls}");
    assert!(!h.own_netns().contains(&c) && !h.own_netns().contains(&a));

    let nets = h.np_ok(&["network", "ls"]);
    for n in ["bridge", "host", "none"] {
        assert!(
            nets.lines().any(|l| l.starts_with(n)),
            "network ls shows {n}: {nets}"
        );
    }
}

#[test]
fn inspect_reports_docker_shaped_settings() {
    let h = Host::new();
    h.up(&["--subnet", "10.77.0.0/24"]);
    let w = h.name("web");
    h.np_ok(&[
        "create",
        &w,
        "--ip",
        "10.77.0.50",
        "-p",
        "8080:80",
        "-p",
        "53/udp",
        "--hostname",
        "box",
    ]);
    let v = json(&h.np_ok(&["inspect", &w]))[0].clone();
    let s = &v["NetworkSettings"];
    assert_eq!(s["IPAddress"], "10.77.0.50");
    assert_eq!(s["IPPrefixLen"], 24);
    assert_eq!(s["Gateway"], "10.77.0.1");
    assert_eq!(s["MacAddress"], "02:42:0a:4d:00:32");
    assert_eq!(s["SandboxKey"], format!("/run/netns/{w}"));
    assert_eq!(s["Ports"]["80/tcp"][0]["HostPort"], "8080");
    assert_eq!(s["Ports"]["80/tcp"][0]["HostIp"], "0.0.0.0");
    let auto: u16 = s["Ports"]["53/udp"][0]["HostPort"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(auto >= 1024, "auto host port {auto}");
    assert_eq!(v["Mode"], "bridge");

    // What inspect says is what the kernel has.
    let addr =
        String::from_utf8_lossy(&h.in_endpoint(&w, "ip -br addr show eth0").stdout).into_owned();
    assert!(addr.contains("10.77.0.50/24"), "{addr}");
    let route =
        String::from_utf8_lossy(&h.in_endpoint(&w, "ip route show default").stdout).into_owned();
    assert!(route.contains("via 10.77.0.1 dev eth0"), "{route}");
    let hosts = std::fs::read_to_string(format!("/etc/netns/{w}/hosts")).unwrap();
    assert!(hosts.contains("10.77.0.50\tbox"), "{hosts}");
    assert!(std::path::Path::new(&format!("/etc/netns/{w}/resolv.conf")).exists());
    let hostname = h.np_ok(&["exec", &w, "--", "hostname"]);
    assert_eq!(hostname.trim(), "box");
    let etc_hosts = h.np_ok(&["exec", &w, "--", "cat", "/etc/hosts"]);
    assert_eq!(
        etc_hosts, hosts,
        "exec sees /etc/netns/NAME/hosts as /etc/hosts"
    );
}

#[test]
fn bad_inputs_fail_with_one_line_and_create_nothing() {
    let h = Host::new();
    assert!(h.np_err(&["ls"]).contains("no netplane daemon is running"));
    h.up(&["--subnet", "10.78.0.0/24"]);
    let taken = h.name("taken");
    h.np_ok(&["create", &taken, "-p", "8080:80"]);
    let links_before = h.in_host("ip -o link show | cut -d: -f2");
    let netns_before = h.own_netns();
    let n = h.name("x");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["create".into(), "bad/name".into()], "invalid name"),
        (vec!["create".into(), taken.clone()], "already exists"),
        (
            vec!["create".into(), n.clone(), "--net".into(), "nonet".into()],
            "network nonet not found",
        ),
        (
            vec![
                "create".into(),
                n.clone(),
                "--net".into(),
                "container:ghost".into(),
            ],
            "endpoint ghost not found",
        ),
        (
            vec!["create".into(), n.clone(), "--ip".into(), "10.9.9.9".into()],
            "not in subnet",
        ),
        (
            vec![
                "create".into(),
                n.clone(),
                "--ip".into(),
                "10.78.0.1".into(),
            ],
            "reserved",
        ),
        (
            vec!["create".into(), n.clone(), "--ip".into(), h.ip_of(&taken)],
            "already leased",
        ),
        (
            vec!["create".into(), n.clone(), "-p".into(), "0".into()],
            "port 0",
        ),
        (
            vec![
                "create".into(),
                n.clone(),
                "-p".into(),
                "80-82:80-81".into(),
            ],
            "differ in length",
        ),
        (
            vec!["create".into(), n.clone(), "-p".into(), "90-80".into()],
            "starts after",
        ),
        (
            vec!["create".into(), n.clone(), "-p".into(), "80/sctp".into()],
            "unknown protocol",
        ),
        (
            vec![
                "create".into(),
                n.clone(),
                "-p".into(),
                "203.0.113.9:80:80".into(),
            ],
            "not an address of this host",
        ),
        (
            vec!["create".into(), n.clone(), "-p".into(), "8080:81".into()],
            "already published",
        ),
        (
            vec![
                "create".into(),
                n.clone(),
                "--net".into(),
                "none".into(),
                "-p".into(),
                "80".into(),
            ],
            "only applies",
        ),
        (vec!["rm".into(), "ghost".into()], "not found"),
        (vec!["inspect".into(), "ghost".into()], "not found"),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = h.np_err(&args);
        assert!(
            err.contains(expected),
            "{args:?}: {err:?} lacks {expected:?}"
        );
    }
    assert_eq!(h.in_host("ip -o link show | cut -d: -f2"), links_before);
    assert_eq!(h.own_netns(), netns_before);
    assert!(!std::path::Path::new(&format!("/etc/netns/{n}")).exists());

    // A second daemon in the same namespace, and an overlapping subnet.
    let second = h.up_cmd(&[]).output().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("already runs in this network namespace"),
        "{stderr}"
    );
    let other = Host::new();
    let out = other
        .up_cmd(&["--subnet", "198.18.0.128/25"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("overlaps 198.18.0.0/24"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !other.in_host("ip -br link").contains("np0"),
        "failed up leaves no bridge"
    );
}

#[test]
fn down_leaves_zero_residue() {
    let h = Host::new();
    let before = h.residue();
    h.up(&[]);
    for (n, mode) in [
        ("a", "bridge"),
        ("b", "bridge"),
        ("n", "none"),
        ("h", "host"),
    ] {
        h.np_ok(&["create", &h.name(n), "--net", mode]);
    }
    h.np_ok(&[
        "create",
        &h.name("c"),
        "--net",
        &format!("container:{}", h.name("a")),
    ]);
    assert_ne!(h.residue(), before, "up changed the host");
    h.down();
    assert_eq!(h.residue(), before);
    assert!(!sh_ok("ls /etc/netns 2>/dev/null || true").contains(&h.prefix));
}

#[test]
fn kill_9_then_up_keeps_endpoints_working() {
    let h = Host::new();
    h.up(&[]);
    let (a, b, c) = (h.name("a"), h.name("b"), h.name("c"));
    h.np_ok(&["create", &a]);
    h.np_ok(&["create", &b]);
    let (ip_a, ip_b) = (h.ip_of(&a), h.ip_of(&b));
    let pid = h.daemon_pid().expect("daemon runs");
    sh_ok(&format!("kill -9 {pid}"));
    sleep(Duration::from_millis(200));
    assert!(h.pings(&a, &ip_b), "traffic flows while the daemon is down");

    h.up(&[]);
    assert_eq!(h.ip_of(&a), ip_a);
    assert_eq!(h.ip_of(&b), ip_b);
    assert!(h.pings(&b, &ip_a));
    h.np_ok(&["create", &c]);
    let ip_c = h.ip_of(&c);
    assert!(ip_c != ip_a && ip_c != ip_b, "no duplicated lease: {ip_c}");
    assert!(h.pings(&c, &ip_a));
    // The restarted daemon answers names again, the old endpoints' too.
    let found = h.in_endpoint(&c, &format!("getent hosts {a}"));
    assert!(
        String::from_utf8_lossy(&found.stdout).starts_with(&ip_a),
        "{found:?}"
    );
    // The restarted daemon swapped its programs into the pinned links: the
    // counters keep counting.
    let stats = json(&h.np_ok(&["stats"]));
    assert!(
        stats["Interfaces"]["npv1"]["RxPackets"].as_u64().unwrap() > 0,
        "{stats}"
    );
}

#[test]
fn icc_false_isolates_endpoints_but_not_the_gateway() {
    let h = Host::new();
    h.up(&["--icc=false", "--subnet", "10.79.0.0/24"]);
    let (a, b) = (h.name("a"), h.name("b"));
    h.np_ok(&["create", &a]);
    h.np_ok(&["create", &b]);
    assert!(
        !h.pings(&a, &h.ip_of(&b)),
        "icc=false blocks endpoint to endpoint"
    );
    assert!(h.pings(&a, "10.79.0.1"), "the gateway stays reachable");
    let found = h.in_endpoint(&a, &format!("getent hosts {b}"));
    assert!(
        String::from_utf8_lossy(&found.stdout).starts_with(&h.ip_of(&b)),
        "and so does its DNS server: {found:?}"
    );
    assert!(h.pings(&a, HOST_IP), "the host stays reachable");
    let stats = json(&h.np_ok(&["stats"]));
    assert!(
        stats["Drops"]["icc_denied"].as_u64().unwrap() >= 1,
        "{stats}"
    );
}

#[test]
fn run_rm_runs_and_cleans_up() {
    let h = Host::new();
    h.up(&[]);
    let r = h.name("r");
    let out = h.np(&[
        "run",
        "--rm",
        "--hostname",
        "box",
        &r,
        "--",
        "sh",
        "-c",
        "hostname; ip -br addr show eth0; exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit code of the command: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("box\n") && stdout.contains("eth0"),
        "{stdout}"
    );
    assert!(!h.np_ok(&["ls"]).contains(&r), "--rm removed it");
    assert!(!h.own_netns().contains(&r));
}

/// An address 50 above `ip` in its last octet.
fn moved(ip: &str) -> String {
    let (net, last) = ip.rsplit_once('.').unwrap();
    format!("{net}.{}", last.parse::<u8>().unwrap() + 50)
}

#[test]
fn a_pinned_map_of_another_layout_is_refused_by_name() {
    let h = Host::new();
    // What an older netplane left: its endpoint map, values 4 bytes
    // smaller, pinned where this one's goes.
    let bpf = h.dir.join("bpf");
    sh_ok(&format!(
        "mount -t bpf bpffs {0} && mkdir -p {0}/maps && \
         bpftool map create {0}/maps/NP_ENDPOINTS type hash key 4 value 12 entries 4096 name NP_ENDPOINTS",
        bpf.display()
    ));
    let out = h.up_cmd(&["--detach"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up refused: {said}");
    assert!(
        said.contains("NP_ENDPOINTS")
            && said.contains("value size 12 where this netplane needs 16"),
        "{said}"
    );
    assert!(h.daemon_pid().is_none());
}

#[test]
fn the_api_is_root_only_and_survives_garbage() {
    let h = Host::new();
    h.up(&[]);
    let e = h.name("e");
    h.np_ok(&["create", &e]);
    let before = h.np_ok(&["ls", "--json"]);
    let socket = h.run_dir().join("netplane.sock");
    let mode = sh_ok(&format!("stat -c '%a %U' {}", socket.display()));
    assert_eq!(mode.trim(), "600 root");

    // Another user is told why, not that no daemon runs. The binary is
    // copied out of the build tree, which that user may not be able to
    // enter (a checkout in a private directory).
    let client = h.dir.join("netplane-client");
    std::fs::copy(env!("CARGO_BIN_EXE_netplane"), &client).unwrap();
    sh_ok(&format!(
        "chmod 755 {} {}",
        h.dir.display(),
        client.display()
    ));
    let out = sh(&format!(
        "runuser -u nobody -- env NETPLANE_RUN_DIR={} {} ls",
        h.run_dir().display(),
        client.display()
    ));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("permission denied") && said.contains("root's only"),
        "{said}"
    );

    // Garbage, wrong shapes and a body of 4 MiB: refused with a client
    // error each, nothing changed, the daemon still serving.
    let big = h.dir.join("big.json");
    std::fs::write(&big, vec![b'['; 4 << 20]).unwrap();
    for (data, path) in [
        ("-d 'not json'".to_string(), "/v1/endpoints"),
        ("-d '{\"Name\": 7}'".to_string(), "/v1/endpoints"),
        (
            "-d '{\"name\": \"x\", \"net\": \"bridge\", \"ip\": \"999.1.1.1\"}'".to_string(),
            "/v1/endpoints",
        ),
        (format!("--data-binary @{}", big.display()), "/v1/endpoints"),
        ("-d '{}'".to_string(), "/v1/networks"),
        (
            "-d '{\"spec\": \"99999:1\"}'".to_string(),
            &format!("/v1/endpoints/{e}/ports"),
        ),
    ] {
        let status = sh_ok(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --unix-socket {} -X POST \
             -H 'content-type: application/json' {data} http://netplane{path}",
            socket.display()
        ));
        let code: u16 = status.trim().parse().unwrap();
        assert!((400..500).contains(&code), "{data} to {path}: {code}");
    }
    assert_eq!(h.np_ok(&["ls", "--json"]), before);
    assert!(h.daemon_pid().is_some());
}

#[test]
fn a_refused_create_leaves_the_namespace_it_did_not_make() {
    let h = Host::new();
    h.up(&[]);
    // Someone else's namespace by the name asked for.
    let taken = h.name("pre");
    sh_ok(&format!("ip netns add {taken}"));
    let err = h.np_err(&["create", &taken]);
    assert!(err.contains("File exists"), "{err}");
    assert!(
        sh_ok("ip netns list")
            .lines()
            .any(|l| l.split_whitespace().next() == Some(taken.as_str())),
        "{taken} is still there"
    );
    // The namespace the daemon itself runs in.
    let err = h.np_err(&["create", &h.netns]);
    assert!(err.contains("File exists"), "{err}");
    assert!(
        std::path::Path::new(&format!("/run/netns/{}", h.netns)).exists(),
        "the host's namespace is still named"
    );
    let listed = h.np_ok(&["ls"]);
    assert!(!listed.contains(&taken), "nothing recorded: {listed}");
    // The daemon still works in its namespace.
    let web = h.name("web");
    h.np_ok(&["create", &web]);
    assert!(h.pings(&web, &h.ip_of(&web)));
}

#[test]
fn rm_removes_the_files_it_wrote_in_etc_netns_and_keeps_the_users() {
    let h = Host::new();
    h.up(&[]);
    let (web, bare) = (h.name("web"), h.name("bare"));
    h.np_ok(&["create", &web]);
    h.np_ok(&["create", &bare]);
    let dir = format!("/etc/netns/{web}");
    std::fs::write(format!("{dir}/nsswitch.conf"), "hosts: files dns\n").unwrap();
    h.np_ok(&["rm", &web]);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        ["nsswitch.conf"],
        "the user's file stays, netplane's go"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // With nothing of the user's in it, the directory goes too.
    h.np_ok(&["rm", &bare]);
    assert!(!std::path::Path::new(&format!("/etc/netns/{bare}")).exists());
}

#[test]
fn names_are_one_in_any_case_and_host_endpoints_take_no_hostname() {
    let h = Host::new();
    h.up(&[]);
    let lower = h.name("caps");
    h.np_ok(&["create", &lower]);
    let err = h.np_err(&["create", &lower.to_uppercase()]);
    assert!(
        err.contains(&lower) && err.contains("already exists"),
        "{err}"
    );
    let err = h.np_err(&["create", &h.name("hst"), "--net", "host", "--hostname", "x"]);
    assert!(err.contains("--hostname"), "{err}");
    let listed = h.np_ok(&["ls"]);
    assert!(!listed.contains(&h.name("hst")), "{listed}");
}

#[test]
fn docker_habits_work_as_a_docker_user_types_them() {
    let h = Host::new();
    // The daemon's own upstream is nowhere; the endpoint's --dns is the
    // world's dnsmasq.
    let _dnsmasq = h.spawn_in(
        &h.world,
        &format!(
            "dnsmasq --no-daemon --no-resolv --no-hosts --bind-interfaces \
             --listen-address={WORLD_IP} --address=/upstream.test/192.0.2.80 \
             --pid-file= --user=root"
        ),
    );
    h.up(&["--dns", "198.18.0.99"]);
    let (web, other) = (h.name("web"), h.name("other"));
    h.np_ok(&[
        "create",
        &web,
        "--network",
        "bridge",
        "-p",
        "0.0.0.0:8181:80",
        "--mac-address",
        "02:00:00:00:00:0a",
        "--dns",
        WORLD_IP,
        "--dns-search",
        "corp.example",
        "--add-host",
        "db.internal:192.0.2.7",
        "--add-host",
        "gw.internal:host-gateway",
    ]);
    h.np_ok(&["create", &other, "-p", "9000-9002:90-92"]);

    // exec without `--`, and with it.
    let resolv = h.np_ok(&["exec", &web, "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("search corp.example"), "{resolv}");
    let hosts = h.np_ok(&["exec", &web, "--", "cat", "/etc/hosts"]);
    let gateway = json(&h.np_ok(&["network", "inspect", "bridge"]))["Gateway"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        hosts.contains("192.0.2.7\tdb.internal\n")
            && hosts.contains(&format!("{gateway}\tgw.internal\n")),
        "{hosts}"
    );
    let link = h.np_ok(&["exec", &web, "ip", "-br", "link", "show", "eth0"]);
    assert!(link.contains("02:00:00:00:00:0a"), "{link}");
    assert!(
        h.pings(&web, &h.ip_of(&other)),
        "the MAC asked for carries traffic"
    );
    // --dns: names the network does not know go to the endpoint's own
    // resolver; the other endpoint's go to the daemon's, which is nowhere.
    let dig = |ep: &str| {
        let out = h.in_endpoint(ep, "dig +short +tries=1 +time=8 upstream.test");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(dig(&web), "192.0.2.80");
    assert_ne!(dig(&other), "192.0.2.80");

    // -p 0.0.0.0:... means every address: reached from the world.
    let _server = h.tcp_server(&web, 80, "echo hello");
    let answer = h.in_world(&format!("socat -T2 - TCP:{HOST_IP}:8181 </dev/null"));
    assert_eq!(String::from_utf8_lossy(&answer.stdout).trim(), "hello");

    // ls -q, and ranges compact in ls.
    let names = h.np_ok(&["ls", "-q"]);
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        [web.as_str(), other.as_str()]
    );
    let ls = h.np_ok(&["ls"]);
    assert!(ls.contains("0.0.0.0:8181->80/tcp"), "{ls}");
    assert!(ls.contains("0.0.0.0:9000-9002->90-92/tcp"), "{ls}");

    // inspect of several: an array in Docker's shape; -f templates.
    let both = json(&h.np_ok(&["inspect", &web, &other]));
    let both = both.as_array().unwrap();
    assert_eq!(both.len(), 2);
    let id = both[0]["Id"].as_str().unwrap();
    assert!(
        id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert_ne!(both[0]["Id"], both[1]["Id"]);
    assert!(both[0]["Created"].as_str().unwrap().starts_with("20"));
    assert_eq!(both[0]["State"]["Status"], "ready");
    let ip = h.ip_of(&web);
    assert_eq!(
        both[0]["NetworkSettings"]["Networks"]["bridge"]["IPAddress"],
        ip.as_str()
    );
    assert_eq!(
        h.np_ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}} {{.NetworkSettings.MacAddress}}",
            &web
        ])
        .trim(),
        format!("{ip} 02:00:00:00:00:0a")
    );
    let out = h.np(&["inspect", &web, "ghost"]);
    assert!(!out.status.success());
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout))
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // port NAME, as docker port.
    assert_eq!(h.np_ok(&["port", &web]).trim(), "80/tcp -> 0.0.0.0:8181");
    assert_eq!(h.np_ok(&["port", &other, "91"]).trim(), "0.0.0.0:9001");
    let version = h.np_ok(&["version"]);
    assert!(
        version.contains("Client: netplane") && version.contains("Daemon: netplane"),
        "{version}"
    );

    // One JSON casing.
    let ports = json(&h.np_ok(&["port", "ls", "--json"]));
    assert!(ports[0]["HostPort"].is_u64(), "{ports}");
    assert!(json(&h.np_ok(&["stats", &web, "--json"]))["RxPackets"].is_u64());
    assert!(json(&h.np_ok(&["nat", "ls", "--json"]))["Rules"].is_array());
    assert!(json(&h.np_ok(&["stats"]))["Interfaces"].is_object());

    // Mistakes a Docker user makes are refused with the reason.
    let err = h.np_err(&["create", &h.name("m"), "--mac-address", "02:00:00:00:00:0a"]);
    assert!(err.contains(&web), "{err}");
    let err = h.np_err(&["create", &h.name("m"), "--net", "host", "--dns", WORLD_IP]);
    assert!(err.contains("--dns"), "{err}");

    // rm of several names.
    let gone = h.np_ok(&["rm", &web, &other]);
    assert_eq!(
        gone.lines().collect::<Vec<_>>(),
        [web.as_str(), other.as_str()]
    );
}
