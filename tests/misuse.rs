//! Careless and hostile requests to the control plane: each is refused
//! with a client error naming the object, and none destroys what netplane
//! does not own.

use netplane_test_support as support;

use support::{HOST_IP, Host, sh_ok};

/// The HTTP status of `METHOD path` with a JSON `body` on `h`'s API.
fn status(h: &Host, method: &str, path: &str, body: &str) -> u16 {
    let code = sh_ok(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --unix-socket {} -X {method} \
         -H 'content-type: application/json' -d '{body}' http://netplane{path}",
        h.run_dir().join("netplane.sock").display()
    ));
    code.trim().parse().unwrap()
}

/// Whether process `pid` runs: exists and is no zombie waiting for
/// whoever adopted it to reap it.
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// The host's IPv4 routes, every table: those an overlay could take.
/// (IPv6 link-local routes of a new bridge port come when its duplicate
/// address detection ends, whenever that is.)
fn routes(h: &Host) -> String {
    h.in_host("ip -4 route show table all")
}

#[test]
fn overlay_subnets_never_take_the_hosts_routes_and_bad_ones_are_4xx() {
    let h = Host::new();
    h.up(&[]);
    let info: serde_json::Value = serde_json::from_str(&h.np_ok(&["info"])).unwrap();
    let bridge: ipnet::Ipv4Net = info["Subnet"].as_str().unwrap().parse().unwrap();
    let web = h.name("web");
    h.np_ok(&["create", &web]);
    let before = routes(&h);
    let uplink = format!("{}/24", HOST_IP);
    for (subnet, says) in [
        (bridge.trunc().to_string(), bridge.trunc().to_string()),
        ("0.0.0.0/0".to_string(), "0.0.0.0/8".to_string()),
        (uplink.clone(), "198.18.0.0/24".to_string()),
        ("198.18.0.0/16".to_string(), "198.18.0.0/24".to_string()),
        ("127.0.0.0/24".to_string(), "loopback".to_string()),
    ] {
        let body = format!(r#"{{"name":"ovx","driver":"overlay","subnet":"{subnet}"}}"#);
        assert_eq!(status(&h, "POST", "/v1/networks", &body), 400, "{subnet}");
        let err = h.np_err(&[
            "network", "create", "--driver", "overlay", "--subnet", &subnet, "ovx",
        ]);
        assert!(
            err.contains("overlaps") && err.contains(&says),
            "{subnet}: {err}"
        );
    }
    assert_eq!(routes(&h), before, "the host's routes are as they were");

    // Too narrow, or a VNI past 24 bits: the request's fault.
    for body in [
        r#"{"name":"ovx","driver":"overlay","subnet":"10.207.0.0/25"}"#,
        r#"{"name":"ovx","driver":"overlay","subnet":"10.207.0.0/16","vni":16777216}"#,
    ] {
        assert_eq!(status(&h, "POST", "/v1/networks", body), 400, "{body}");
    }

    // One overlay is fine; a second over it, or by its name in another
    // case, is not.
    h.create_overlay("ov", "10.207.0.0/16");
    let err = h.np_err(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--subnet",
        "10.207.128.0/17",
        "ov2",
    ]);
    assert!(err.contains("overlaps 10.207.0.0/16"), "{err}");
    let err = h.np_err(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--subnet",
        "10.208.0.0/16",
        "OV",
    ]);
    assert!(err.contains("already has that name"), "{err}");
    h.np_ok(&["network", "rm", "ov"]);
    assert_eq!(routes(&h), before, "removing the overlay took only its own");
    assert!(h.pings(&web, &bridge.hosts().next().unwrap().to_string()));

    // An address already leased is a conflict, not the store's error.
    let ip = h.ip_of(&web);
    let body = format!(r#"{{"name":"second","net":"bridge","ip":"{ip}","publish":[],"links":[]}}"#);
    assert_eq!(status(&h, "POST", "/v1/endpoints", &body), 400);
    let err = h.np_err(&["create", &h.name("second"), "--ip", &ip]);
    assert!(err.contains(&ip) && err.contains("already leased"), "{err}");
}

#[test]
fn removing_an_endpoint_kills_what_runs_in_it_and_down_does_too() {
    let h = Host::new();
    h.up(&[]);
    let (web, other) = (h.name("web"), h.name("other"));
    h.np_ok(&["create", &web]);
    h.np_ok(&["create", &other]);
    // Started outside netplane, as a user's `ip netns exec` would; setsid
    // makes its parent not matter.
    let pid_in = |name: &str| {
        sh_ok(&format!(
            "ip netns exec {name} setsid sleep 1000 >/dev/null 2>&1 & echo $!; sleep 0.3"
        ))
        .trim()
        .to_string()
    };
    let sleeper = sh_ok(&format!(
        "ip netns exec {web} setsid sh -c 'sleep 1000 & sleep 1000' >/dev/null 2>&1 & sleep 0.3; \
         ip netns pids {web}"
    ));
    let sleepers: Vec<&str> = sleeper.split_whitespace().collect();
    assert!(sleepers.len() >= 2, "two sleepers in {web}: {sleeper}");
    let out = h.np(&["rm", &web]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    for pid in &sleepers {
        assert!(said.contains(&format!("(pid {pid})")), "{said}");
        assert!(!alive(pid), "{pid} is gone");
    }
    let pid = pid_in(&other);
    assert!(alive(&pid));
    h.down();
    assert!(!alive(&pid), "down killed {pid}");
}

#[test]
fn down_after_kill_9_removes_what_the_state_records() {
    let h = Host::new();
    let before = h.residue();
    h.up(&[]);
    let (web, bare) = (h.name("web"), h.name("bare"));
    h.np_ok(&["create", &web, "-p", "8080:80"]);
    h.np_ok(&["create", &bare, "--net", "none"]);
    let pid = sh_ok(&format!(
        "ip netns exec {web} setsid sleep 1000 >/dev/null 2>&1 & echo $!"
    ));
    let pid = pid.trim();
    h.kill_daemon();
    assert_ne!(h.residue(), before);
    let out = h.down_cmd().output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("no netplane daemon was running"), "{said}");
    assert_eq!(h.residue(), before, "nothing is left");
    assert!(!alive(pid), "the process in {web} was killed");
    // Again: nothing left to remove, and it says so.
    let out = h.down_cmd().output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.contains("nothing to remove"),
        "{said}"
    );
}

#[test]
fn a_second_up_leaves_the_running_daemon_and_its_log_alone() {
    let h = Host::new();
    h.up(&[]);
    let pid = h.daemon_pid().unwrap();
    let log = h.log();
    let out = h.up_cmd(&["--detach"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("already runs") && said.contains(&format!("pid {pid}")),
        "{said}"
    );
    let after = h.log();
    assert!(
        after.starts_with(&log) && !after.contains('\0'),
        "the log is as it was: {after:?}"
    );
    assert_eq!(h.daemon_pid(), Some(pid));
    h.np_ok(&["ls"]);
}

#[test]
fn up_as_another_user_says_it_needs_root_and_makes_nothing() {
    let h = Host::new();
    let bin = h.run_dir().with_file_name("netplane-user");
    std::fs::copy(env!("CARGO_BIN_EXE_netplane"), &bin).unwrap();
    let base = bin.parent().unwrap();
    sh_ok(&format!("chmod 755 {} {}", base.display(), bin.display()));
    let state = base.join("user-state");
    for detach in ["", "--detach"] {
        let out = support::sh(&format!(
            "runuser -u nobody -- {} up --state-dir {} --run-dir {} --bpffs {} {detach}",
            bin.display(),
            state.join("lib").display(),
            state.join("run").display(),
            state.join("bpf").display(),
        ));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(said.contains("needs root"), "{said}");
        assert!(!state.exists(), "nothing made under {}", state.display());
    }
}

#[test]
fn thousands_of_p_in_one_request_are_published_and_past_the_data_paths_room_refused() {
    let h = Host::new();
    h.up(&[]);
    let specs = |n: u16, first: u16| -> Vec<String> {
        (first..first + n).map(|p| format!("-p={p}:80")).collect()
    };
    let many = specs(4000, 20000);
    let web = h.name("web");
    let mut args = vec!["create", web.as_str()];
    args.extend(many.iter().map(String::as_str));
    h.np_ok(&args);
    let ports: serde_json::Value =
        serde_json::from_str(&h.np_ok(&["port", "ls", &web, "--json"])).unwrap();
    assert_eq!(ports.as_array().unwrap().len(), 4000);
    // Answered and published: the last of them carries traffic.
    let _server = h.tcp_server(&web, 80, "echo hello");
    let answer = h.in_world(&format!("socat -T2 - TCP:{HOST_IP}:23999 </dev/null"));
    assert_eq!(String::from_utf8_lossy(&answer.stdout).trim(), "hello");

    let too_many: Vec<String> = (0..16384).map(|i| format!("-p={}:80/udp", 1 + i)).collect();
    let other = h.name("other");
    let mut args = vec!["create", other.as_str()];
    args.extend(too_many.iter().map(String::as_str));
    let err = h.np_err(&args);
    assert!(
        err.contains("16384 -p rules") && err.contains("at most"),
        "{err}"
    );
    assert!(!h.np_ok(&["ls"]).contains(&other));
}

#[test]
fn idle_and_slow_api_clients_are_cut_off_and_never_starve_the_cli() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let h = Host::new();
    h.up(&[]);
    let socket = h.run_dir().join("netplane.sock");
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", h.daemon_pid().unwrap()))
            .unwrap()
            .count()
    };
    let before = fds();
    // More idle connections than the daemon serves at once.
    let idle: Vec<UnixStream> = (0..400)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    // Past the cap the CLI is told why, at once, instead of hanging.
    let err = h.np_err(&["ls"]);
    assert!(err.contains("API connections already"), "{err}");
    // Refusals hold a file for at most a tenth of a second.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(fds() < before + 300, "the daemon holds at most its cap");
    // Idle clients are cut off, after which the CLI is served again.
    let mut closed = 0;
    for mut c in idle {
        c.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 512];
        if c.read(&mut buf).is_ok() {
            closed += 1;
        }
    }
    assert_eq!(closed, 400, "every idle connection was closed or refused");
    h.np_ok(&["ls"]);
    // A request whose body never comes whole.
    let mut slow = UnixStream::connect(&socket).unwrap();
    slow.write_all(
        b"POST /v1/endpoints HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"name\":",
    )
    .unwrap();
    slow.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    h.np_ok(&["ls"]);
}
