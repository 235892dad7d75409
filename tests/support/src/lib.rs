//! A simulated host for privileged tests: its own network namespace with an
//! uplink veth to a "world" namespace, and a netplane daemon with state, run
//! and bpffs directories of its own. Everything is removed on drop, also when
//! the test panics.

#![allow(
    clippy::new_without_default,
    reason = "new() builds namespaces and veths: no Default should hide that"
)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

/// Address of the simulated host on its uplink.
pub const HOST_IP: &str = "198.18.0.2";
/// Address of the world namespace behind the uplink.
pub const WORLD_IP: &str = "198.18.0.1";
/// The host's global IPv6 address on its uplink, after [`Host::add_ipv6`].
pub const HOST_IP6: &str = "2001:db8:18::2";
/// The world's, after [`Host::add_ipv6`].
pub const WORLD_IP6: &str = "2001:db8:18::1";

pub mod cluster;
pub mod podman;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The netplane binary of the build the tests run from: cargo puts it in
/// the directory above the one test binaries run from (`target/<profile>/`
/// and `target/<profile>/deps/`), and builds it for netplane's tests.
pub fn netplane_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries run from target/<profile>/deps");
    profile_dir.join("netplane")
}

/// A TCP server's answer naming its client, given after it took in the
/// request: a server that closes with a request unread resets the
/// connection, and on a loaded machine the reset can overtake the answer
/// (curl then reports an empty reply).
pub const PEER_ANSWER: &str = "timeout 0.3 cat >/dev/null; echo $SOCAT_PEERADDR";

/// Debian's Python, the one python3-scapy is installed for (a Python
/// earlier in PATH may lack it).
pub const SCAPY_PYTHON: &str = "/usr/bin/python3";

/// The MAC address of `ifname` in `netns`.
pub fn mac_of(netns: &str, ifname: &str) -> String {
    let link: serde_json::Value =
        serde_json::from_str(&sh_ok(&format!("ip -n {netns} -j link show {ifname}"))).unwrap();
    link[0]["address"].as_str().unwrap().to_string()
}

/// Python's OpenMetrics parser (Debian's python3-prometheus-client), which
/// rejects anything the format does not allow: the samples, as JSON.
const PARSE_OPENMETRICS: &str = "import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
print(json.dumps([{\"name\": s.name, \"labels\": s.labels, \"value\": s.value}
    for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]))";

/// The rule of `nat ls --json` whose detail contains `detail_part`.
pub fn rule<'a>(nat: &'a serde_json::Value, detail_part: &str) -> &'a serde_json::Value {
    nat["Rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Detail"].as_str().unwrap().contains(detail_part))
        .unwrap_or_else(|| panic!("no rule with {detail_part}: {nat}"))
}

/// The value of the one sample `name` whose labels include `labels`.
pub fn sample(samples: &[serde_json::Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&serde_json::Value> = samples
        .iter()
        .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v))
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?} in {samples:?}");
    found[0]["value"].as_f64().unwrap()
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("running sh")
}

pub fn sh_ok(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Debug)]
pub struct Host {
    /// Prefix of every name this host creates.
    pub prefix: String,
    pub netns: String,
    pub world: String,
    pub uplink: String,
    pub dir: PathBuf,
}

/// A switch between simulated hosts: a bridge in a namespace of its own,
/// which their uplinks plug into. Removed on drop.
#[derive(Debug)]
pub struct Underlay {
    pub netns: String,
    bridge: String,
}

impl Underlay {
    pub fn new() -> Underlay {
        let netns = format!(
            "t{:x}{}n",
            std::process::id() & 0xffff,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let bridge = "sw0".to_string();
        sh_ok(&format!(
            "set -e; ip netns add {netns}; ip -n {netns} link set lo up
             ip -n {netns} link add {bridge} type bridge; ip -n {netns} link set {bridge} up"
        ));
        Underlay { netns, bridge }
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.netns));
    }
}

/// Members of an etcd cluster on the underlay switch, each listening on an
/// address of its own there, data in a temporary directory. Killed and
/// removed on drop.
#[derive(Debug)]
pub struct Etcd {
    netns: String,
    addrs: Vec<String>,
    members: Vec<Option<std::process::Child>>,
    dir: PathBuf,
}

impl Etcd {
    /// An etcd cluster with a member at each of `addrs`, ready to serve.
    pub fn start(underlay: &Underlay, addrs: &[&str]) -> Etcd {
        let dir = std::env::temp_dir().join(format!(
            "netplane-etcd-{:x}{}",
            std::process::id() & 0xffff,
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for a in addrs {
            sh_ok(&format!(
                "ip -n {} addr add {a}/24 dev {}",
                underlay.netns, underlay.bridge
            ));
        }
        let mut etcd = Etcd {
            netns: underlay.netns.clone(),
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            members: addrs.iter().map(|_| None).collect(),
            dir,
        };
        for i in 0..addrs.len() {
            etcd.start_member(i);
        }
        for i in 0..addrs.len() {
            etcd.wait_healthy(i);
        }
        etcd
    }

    /// `etcd://…` naming every member.
    pub fn url(&self) -> String {
        let members: Vec<String> = self.addrs.iter().map(|a| format!("{a}:2379")).collect();
        format!("etcd://{}", members.join(","))
    }

    /// Starts member `i` (again, on its old data after a stop).
    pub fn start_member(&mut self, i: usize) {
        let cluster: Vec<String> = self
            .addrs
            .iter()
            .enumerate()
            .map(|(j, a)| format!("m{j}=http://{a}:2380"))
            .collect();
        let a = &self.addrs[i];
        let log = std::fs::File::create(self.dir.join(format!("m{i}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "etcd"])
            .arg(format!("--name=m{i}"))
            .arg(format!(
                "--data-dir={}",
                self.dir.join(format!("m{i}")).display()
            ))
            .arg(format!("--listen-client-urls=http://{a}:2379"))
            .arg(format!("--advertise-client-urls=http://{a}:2379"))
            .arg(format!("--listen-peer-urls=http://{a}:2380"))
            .arg(format!("--initial-advertise-peer-urls=http://{a}:2380"))
            .arg(format!("--initial-cluster={}", cluster.join(",")))
            .arg("--initial-cluster-state=new")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (cargo xtask setup installs etcd-server)");
        self.members[i] = Some(child);
    }

    /// Waits until member `i` answers its health check.
    pub fn wait_healthy(&self, i: usize) {
        let check = format!(
            "ip netns exec {} curl -sf -m 0.2 http://{}:2379/health",
            self.netns, self.addrs[i]
        );
        let healthy = (0..100).any(|_| {
            let ok = stdout_if_ok(sh(&check)).is_some_and(|s| s.contains("true"));
            if !ok {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            ok
        });
        assert!(
            healthy,
            "etcd member {i} at {} is not healthy: {}",
            self.addrs[i],
            std::fs::read_to_string(self.dir.join(format!("m{i}.log"))).unwrap_or_default()
        );
    }

    /// Kills member `i`, its data kept.
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Host {
    /// Names and directories of a new host; nothing is created yet.
    fn named() -> Host {
        assert!(
            nix_uid_is_root(),
            "privileged tests must run as root (cargo xtask test)"
        );
        let prefix = format!(
            "t{:x}{}",
            std::process::id() & 0xffff,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("netplane-{prefix}"));
        std::fs::create_dir_all(dir.join("bpf")).unwrap();
        Host {
            netns: format!("{prefix}h"),
            world: format!("{prefix}w"),
            uplink: format!("{prefix}u"),
            prefix,
            dir,
        }
    }

    /// A host at [`HOST_IP`] with the world at [`WORLD_IP`] behind its
    /// uplink.
    pub fn new() -> Host {
        let h = Host::named();
        let (n, w, u, x) = (&h.netns, &h.world, &h.uplink, format!("{}x", h.prefix));
        sh_ok(&format!(
            "set -e; ip netns add {n}; ip netns add {w}
             ip link add {u} type veth peer name {x}
             ip link set {u} netns {n}; ip link set {x} netns {w}
             ip -n {n} addr add {HOST_IP}/24 dev {u}; ip -n {n} link set {u} up; ip -n {n} link set lo up
             ip -n {n} route add default via {WORLD_IP}
             ip -n {w} addr add {WORLD_IP}/24 dev {x}; ip -n {w} link set {x} up; ip -n {w} link set lo up"
        ));
        h.checksums_like_a_nic(w, &x);
        h
    }

    /// Frames the uplink's XDP program redirected, as the veth counts
    /// them; `None` unless the tests run with it on (`NETPLANE_XDP`).
    pub fn xdp_redirected(&self) -> Option<u64> {
        std::env::var("NETPLANE_XDP")
            .is_ok_and(|x| x != "off")
            .then(|| {
                ethtool_stat(
                    &self.in_host(&format!("ethtool -S {}", self.uplink)),
                    "rx_queue_0_xdp_redirect",
                )
            })
    }

    /// With the uplink's XDP program on (`NETPLANE_XDP`, which the
    /// daemons inherit), [`checksums_filled_in`] for `ifname` in `netns`,
    /// which sends into an uplink.
    fn checksums_like_a_nic(&self, netns: &str, ifname: &str) {
        if std::env::var("NETPLANE_XDP").is_ok_and(|x| x != "off") {
            checksums_filled_in(netns, ifname);
        }
    }

    /// Gives the uplink and the world an IPv6 address each ([`HOST_IP6`],
    /// [`WORLD_IP6`]), and the host a default route through the world.
    pub fn add_ipv6(&self) {
        let (n, w, u, x) = (
            &self.netns,
            &self.world,
            &self.uplink,
            format!("{}x", self.prefix),
        );
        sh_ok(&format!(
            "set -e; ip -n {n} -6 addr add {HOST_IP6}/64 dev {u} nodad
             ip -n {w} -6 addr add {WORLD_IP6}/64 dev {x} nodad
             ip -n {n} -6 route add default via {WORLD_IP6}"
        ));
    }

    /// A host whose uplink, with address `addr`/24, plugs into `underlay`
    /// (its world).
    pub fn on_underlay(underlay: &Underlay, addr: &str) -> Host {
        let mut h = Host::named();
        h.world = underlay.netns.clone();
        let (n, w, u, x) = (&h.netns, &h.world, &h.uplink, format!("{}x", h.prefix));
        let sw = &underlay.bridge;
        sh_ok(&format!(
            "set -e; ip netns add {n}
             ip link add {u} type veth peer name {x}
             ip link set {u} netns {n}; ip link set {x} netns {w}
             ip -n {n} addr add {addr}/24 dev {u}; ip -n {n} link set {u} up; ip -n {n} link set lo up
             ip -n {w} link set {x} master {sw}; ip -n {w} link set {x} up"
        ));
        h.checksums_like_a_nic(n, u);
        h
    }

    /// An endpoint name unique to this host.
    pub fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// `netplane ARGS` as a client of this host's daemon.
    pub fn np(&self, args: &[&str]) -> Output {
        Command::new(netplane_bin())
            .args(args)
            .env("NETPLANE_RUN_DIR", self.run_dir())
            .output()
            .expect("running netplane")
    }

    pub fn np_ok(&self, args: &[&str]) -> String {
        let out = self.np(args);
        assert!(
            out.status.success(),
            "netplane {args:?}: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `netplane network create --driver overlay --subnet SUBNET NAME`.
    pub fn create_overlay(&self, name: &str, subnet: &str) {
        self.np_ok(&[
            "network", "create", "--driver", "overlay", "--subnet", subnet, name,
        ]);
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run_dir().join("netplane.log")).unwrap_or_default()
    }

    /// The one-line error of a failing `netplane ARGS`.
    pub fn np_err(&self, args: &[&str]) -> String {
        let out = self.np(args);
        assert!(!out.status.success(), "netplane {args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        err
    }

    /// The daemon command line, run inside the host namespace.
    pub fn up_cmd(&self, extra: &[&str]) -> Command {
        self.up_cmd_of(&netplane_bin(), extra)
    }

    /// [`Host::up_cmd`] with the netplane binary `bin`.
    pub fn up_cmd_of(&self, bin: &std::path::Path, extra: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(bin)
            .arg("up")
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--bpffs")
            .arg(self.dir.join("bpf"))
            .args(extra);
        c
    }

    /// [`Host::up_cmd`] with every `bpf(2)` call of the daemon failing
    /// with EPERM, as on a host without CAP_BPF: a seccomp filter the
    /// command and everything it starts inherit.
    pub fn up_cmd_without_bpf(&self, extra: &[&str]) -> Command {
        use std::os::unix::process::CommandExt;
        let filter = seccompiler::SeccompFilter::new(
            [(libc::SYS_bpf, Vec::new())].into_iter().collect(),
            seccompiler::SeccompAction::Allow,
            seccompiler::SeccompAction::Errno(libc::EPERM as u32),
            std::env::consts::ARCH
                .try_into()
                .expect("seccompiler knows this architecture"),
        )
        .expect("a filter of one system call");
        let program: seccompiler::BpfProgram =
            filter.try_into().expect("the filter compiles to BPF");
        let mut c = self.up_cmd(extra);
        // SAFETY: the closure runs in the forked child before exec and only
        // makes the prctl/seccomp calls installing the program built above.
        unsafe {
            c.pre_exec(move || {
                seccompiler::apply_filter(&program)
                    .map_err(|e| std::io::Error::other(e.to_string()))
            });
        }
        c
    }

    pub fn up(&self, extra: &[&str]) {
        self.up_with_env(extra, &[]);
    }

    /// [`Host::up`] with the daemon's environment extended by `env`.
    pub fn up_with_env(&self, extra: &[&str], env: &[(&str, &str)]) {
        let out = self
            .up_cmd(&[extra, &["--detach"]].concat())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "up: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `netplane down` in the host's namespace with its directories: with
    /// no daemon running it removes what this host's state records.
    pub fn down_cmd(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(netplane_bin())
            .arg("down")
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--bpffs")
            .arg(self.dir.join("bpf"))
            .env("NETPLANE_RUN_DIR", self.run_dir());
        c
    }

    /// `netplane down`, and waits for the daemon to exit.
    pub fn down(&self) {
        let out = self.down_cmd().output().unwrap();
        assert!(
            out.status.success(),
            "down: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        assert!(
            retry(|| self.daemon_pid().is_none().then_some(())).is_some(),
            "the daemon exits after down"
        );
    }

    /// Kills the daemon with SIGKILL and waits until it is gone.
    pub fn kill_daemon(&self) {
        let pid = self.daemon_pid().expect("the daemon runs");
        sh_ok(&format!("kill -9 {pid}"));
        // A dying process loses its command line before its files: wait
        // until it is gone or a zombie, when its sockets are closed too.
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
                stat.rsplit(") ").next().unwrap_or("").starts_with('Z')
            })
        };
        assert!(
            retry(|| gone().then_some(())).is_some(),
            "the daemon dies of SIGKILL"
        );
    }

    /// Pid of this host's daemon, if one runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        let pattern = format!("up --state-dir {}", self.dir.join("state").display());
        let out = Command::new("pgrep")
            .args(["-f", "--", &pattern])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Runs `cmd` in the endpoint's namespace with `ip netns exec`.
    pub fn in_endpoint(&self, endpoint: &str, cmd: &str) -> Output {
        sh(&format!("ip netns exec {endpoint} {cmd}"))
    }

    /// Runs `cmd` in the world namespace behind the uplink.
    pub fn in_world(&self, cmd: &str) -> Output {
        sh(&format!("ip netns exec {} {cmd}", self.world))
    }

    /// A TCP server on `port` in namespace `netns` that answers every
    /// connection with the output of shell command `answer`, once it
    /// listens.
    pub fn tcp_server(&self, netns: &str, port: u16, answer: &str) -> Background {
        self.spawn_ready(
            netns,
            &format!("socat TCP-LISTEN:{port},fork,reuseaddr SYSTEM:'{answer}'"),
            |_| {
                sh_ok(&format!("ip netns exec {netns} ss -Htln sport = :{port}"))
                    .contains(&format!(":{port}"))
            },
        )
    }

    /// Starts `cmd` in namespace `netns` in the background, its stderr in
    /// this host's directory; it is killed when the guard drops.
    pub fn spawn_in(&self, netns: &str, cmd: &str) -> Background {
        let log = self
            .dir
            .join(format!("bg{}.log", NEXT.fetch_add(1, Ordering::SeqCst)));
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "sh", "-c", &format!("exec {cmd}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Background { child, log }
    }

    /// [`Host::spawn_in`], then waits until `ready` says the process is.
    pub fn spawn_ready(
        &self,
        netns: &str,
        cmd: &str,
        ready: impl Fn(&Background) -> bool,
    ) -> Background {
        let bg = self.spawn_in(netns, cmd);
        retry(|| ready(&bg).then_some(()))
            .unwrap_or_else(|| panic!("{cmd} in {netns} is not ready after 5 s"));
        bg
    }

    /// The data path's NAT table as `netplane nat ls --json` shows it.
    pub fn nat(&self) -> serde_json::Value {
        serde_json::from_str(&self.np_ok(&["nat", "ls", "--json"])).unwrap()
    }

    /// `/metrics` from a daemon serving it at `addr`, fetched with curl and
    /// parsed by Python's OpenMetrics parser: its samples.
    pub fn scrape(&self, addr: &str) -> Vec<serde_json::Value> {
        let scraped = sh_ok(&format!(
            "ip netns exec {} curl -sf http://{addr}/metrics | /usr/bin/python3 -c '{PARSE_OPENMETRICS}'",
            self.netns
        ));
        serde_json::from_str(&scraped).unwrap()
    }

    /// Packets counted by the drop reason `reason`.
    pub fn drops(&self, reason: &str) -> u64 {
        self.nat()["Drops"][reason].as_u64().unwrap()
    }

    /// Runs `cmd` in the simulated host's namespace.
    pub fn in_host(&self, cmd: &str) -> String {
        sh_ok(&format!("ip netns exec {} {cmd}", self.netns))
    }

    pub fn ip_of(&self, endpoint: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.np_ok(&["inspect", endpoint])).unwrap();
        v[0]["NetworkSettings"]["IPAddress"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn pings(&self, from: &str, to: &str) -> bool {
        self.in_endpoint(from, &format!("ping -c1 -W1 {to}"))
            .status
            .success()
    }

    /// What netplane may change on this host and must put back on `down`:
    /// links, addresses, namespaces, firewall, forwarding, bpffs, mounts.
    pub fn residue(&self) -> Vec<String> {
        let mounts = String::from_utf8_lossy(&sh("mount").stdout)
            .lines()
            .filter(|l| l.contains(&self.prefix))
            .collect::<Vec<_>>()
            .join("\n");
        vec![
            self.in_host("ip -j link"),
            // Duplicate address detection of the uplink's IPv6 link-local
            // address may still run when the first snapshot is taken.
            self.in_host("ip -j addr")
                .replace("\"tentative\":true,", ""),
            self.own_netns().join(" "),
            self.in_host("iptables-save"),
            self.in_host("nft list ruleset"),
            self.in_host("cat /proc/sys/net/ipv4/ip_forward"),
            sh_ok(&format!("ls -A {}", self.dir.join("bpf").display())),
            mounts,
        ]
    }

    /// Named namespaces whose names this host's tests created.
    pub fn own_netns(&self) -> Vec<String> {
        sh_ok("ip netns list")
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .map(str::to_string)
            .collect()
    }
}

/// Has `ifname` in `netns` fill in the checksums of what it sends, as a
/// network card's driver hands frames on: XDP updates checksums it can
/// see, and a veth otherwise leaves them to the receiver.
pub fn checksums_filled_in(netns: &str, ifname: &str) {
    sh_ok(&format!("ip netns exec {netns} ethtool -K {ifname} tx off"));
}

/// The hooks of the host's interfaces that run a netplane program, as
/// `DEVICE@ingress` or `DEVICE@egress`, one per program attached: tcx
/// links by their pins (this bpftool does not list tcx), clsact filters as
/// `bpftool net show` lists them.
pub fn attached_hooks(h: &Host) -> Vec<String> {
    let pins = sh_ok(&format!("ls {}", h.dir.join("bpf").join("links").display()));
    let mut hooks: Vec<String> = pins.lines().map(str::to_string).collect();
    let net: serde_json::Value = serde_json::from_str(&h.in_host("bpftool -j net show")).unwrap();
    for filter in net[0]["tc"].as_array().into_iter().flatten() {
        if filter["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("np_"))
        {
            let kind = filter["kind"].as_str().unwrap();
            let direction = kind.rsplit('/').next().unwrap();
            hooks.push(format!(
                "{}@{direction}",
                filter["devname"].as_str().unwrap()
            ));
        }
    }
    hooks.sort();
    hooks
}

/// A background process, killed on drop so a failing test leaves none.
#[derive(Debug)]
pub struct Background {
    child: std::process::Child,
    pub log: PathBuf,
}

impl Background {
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Retries `f` for up to five seconds (servers take a moment to listen),
/// returning its last result.
pub fn retry<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    for _ in 0..50 {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

/// Stdout of a successful command, or `None`.
pub fn stdout_if_ok(out: Output) -> Option<String> {
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nix_uid_is_root() -> bool {
    sh_ok("id -u").trim() == "0"
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(pid) = self.daemon_pid() {
            let _ = self.down_cmd().output();
            let _ = sh(&format!("kill -9 {pid} 2>/dev/null"));
        }
        for ns in self.own_netns() {
            let _ = sh(&format!("ip netns del {ns}"));
        }
        let _ = sh(&format!("rm -rf /etc/netns/{}-*", self.prefix));
        let _ = sh(&format!(
            "ip netns del {}; ip netns del {}",
            self.netns, self.world
        ));
        let bpf = self.dir.join("bpf");
        let _ = sh(&format!(
            "mountpoint -q {0} && umount -l {0}",
            bpf.display()
        ));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Prints a figure for `cargo xtask report`, which collects these lines
/// from the tests' output into the README.
pub fn figure(name: &str, value: impl std::fmt::Display) {
    println!("figure: {name} = {value}");
}

/// The counter `name` in `ethtool -S` output `out`, 0 if absent.
pub fn ethtool_stat(out: &str, name: &str) -> u64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
