//! The same simulated host NATed three ways, for benchmarks with real
//! traffic: netplane (the daemon itself, in-process), Docker's iptables rule
//! shapes, and the ceiling (plain forwarding, no NAT). A host namespace with
//! a bridge and one endpoint behind it, and a "world" namespace behind the
//! host's uplink where the clients run. Everything is removed on drop.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use netplane::{
    daemon::{Config, Daemon},
    kernel::datapath::XdpSetting,
    types::{CreateEndpoint, CreateNetwork},
};
use nix::sched::{CloneFlags, setns};

use crate::{Cleanup, sh};

/// The host's uplink address, where published ports are reached.
pub const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Where the world's server listens, for traffic the endpoint sends out.
pub const WORLD_SERVER: SocketAddrV4 =
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), SERVICE_PORT);
/// The endpoint's address.
pub const ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
/// The host's address on the endpoint's bridge, the source of what a
/// proxy relays.
const BRIDGE_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// The port the endpoint's servers listen on.
pub const SERVICE_PORT: u16 = 80;
/// The host port published to [`SERVICE_PORT`].
pub const PUBLISHED_PORT: u16 = 8080;
/// First of the other published ports (rules that match nothing measured).
const OTHER_PORTS: u16 = 20000;
/// First of the ports the control-plane benchmarks publish.
const BENCH_PORTS: u16 = 30000;
/// First host port [`Topo::populate`] publishes.
const POPULATED_PORTS: u16 = 40000;
/// Client source addresses in the world, so that connections differ in more
/// than the source port.
pub const CLIENTS: u8 = 16;
/// The IPv6 addresses of an IPv6 topology ([`Topo::new6`]): the host's
/// uplink, the world, the endpoint (on a unique local prefix).
pub const HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 2);
pub const WORLD6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 1);
pub const ENDPOINT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, 2);

/// The address family a topology's traffic uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The world's `i`th client address, port left to the kernel.
    pub fn client(self, i: u64) -> SocketAddr {
        let n = (i % u64::from(CLIENTS)) as u8;
        match self {
            Family::V4 => SocketAddr::new(Ipv4Addr::new(198, 18, 0, 100 + n).into(), 0),
            Family::V6 => SocketAddr::new(
                Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0x100 + u16::from(n)).into(),
                0,
            ),
        }
    }

    /// Any address of the family, on `port`.
    pub fn any(self, port: u16) -> SocketAddr {
        match self {
            Family::V4 => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
            Family::V6 => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
        }
    }

    /// Where the world's server listens, for traffic the endpoint sends.
    pub fn world_server(self) -> SocketAddr {
        match self {
            Family::V4 => WORLD_SERVER.into(),
            Family::V6 => SocketAddr::new(WORLD6.into(), SERVICE_PORT),
        }
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How the host translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// netplane's eBPF data path.
    Netplane,
    /// The same, the endpoint on a user-defined network instead of the
    /// bridge network.
    NetplaneNetwork,
    /// Docker's iptables rules with kernel conntrack.
    Iptables,
    /// The CNI reference plugins (`bridge` with `ipMasq`, `portmap`,
    /// `host-local`), invoked as a container runtime does.
    Cni,
    /// No translation: the world routes to the endpoint directly.
    Ceiling,
    /// netplane with `--userland-proxy`: its forwarder relays the port.
    NetplaneProxy,
    /// Docker's userland proxy, [`DOCKER_PROXY`], one process per port
    /// and protocol, beside no NAT rules at all.
    DockerProxy,
    /// netplane with `--xdp native`: established flows go through the
    /// uplink's XDP program.
    NetplaneXdp,
}

impl Nat {
    pub fn name(self) -> &'static str {
        match self {
            Nat::Netplane => "netplane",
            Nat::NetplaneNetwork => "netplane-net",
            Nat::Iptables => "iptables",
            Nat::Cni => "cni",
            Nat::Ceiling => "ceiling",
            Nat::NetplaneProxy => "netplane-proxy",
            Nat::DockerProxy => "docker-proxy",
            Nat::NetplaneXdp => "netplane-xdp",
        }
    }
}

/// The settings of a benchmark host's daemon with its directories under
/// `dir`: the bridge network at 10.88.0.0/20 (room for the restart
/// benchmark's endpoints), `uplink`, static overlay `peers`.
pub(crate) fn netplane_config(dir: &std::path::Path, uplink: &str, peers: Vec<Ipv4Addr>) -> Config {
    Config {
        bridge: "np0".into(),
        subnet: Some("10.88.0.0/20".parse().expect("subnet")),
        uplink: Some(uplink.into()),
        peers,
        ..Config::defaults(dir.join("state"), dir.join("run"), dir.join("bpf"))
    }
}

/// Runs `f` on a thread inside network namespace `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = File::open(format!("/run/netns/{netns}")).expect("netns");
    std::thread::spawn(move || {
        setns(ns, CloneFlags::CLONE_NEWNET).expect("entering netns");
        f()
    })
}

/// A running netplane daemon, started on a thread in the host namespace
/// (its runtime's workers live there too); down when dropped.
#[derive(Debug)]
pub(crate) struct InProcess {
    host: String,
    cfg: Config,
    rt: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
}

impl InProcess {
    /// `netplane up` with `cfg` in namespace `host`, then `setup` on it.
    pub(crate) fn start(
        host: &str,
        cfg: Config,
        setup: impl FnOnce(&tokio::runtime::Runtime, &mut Daemon) + Send + 'static,
    ) -> InProcess {
        let name = host.to_string();
        in_netns(host, move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let mut daemon = rt
                .block_on(Daemon::start(cfg.clone()))
                .expect("netplane up");
            setup(&rt, &mut daemon);
            InProcess {
                host: name,
                cfg,
                rt,
                daemon: Some(daemon),
            }
        })
        .join()
        .expect("starting netplane")
    }

    /// Runs `f` on the daemon.
    pub(crate) fn with<T: Send>(
        &mut self,
        f: impl FnOnce(&tokio::runtime::Runtime, &mut Daemon) -> T + Send,
    ) -> T {
        let (rt, daemon) = (&self.rt, self.daemon.as_mut().expect("netplane is running"));
        in_host(&self.host, move || f(rt, daemon))
    }
}

impl InProcess {
    /// Stops the daemon, leaving the data path in place as SIGTERM does,
    /// and starts it again: how long `up` took until it could serve.
    pub(crate) fn restart(&mut self) -> Duration {
        let (rt, cfg, daemon) = (&self.rt, &self.cfg, &mut self.daemon);
        in_host(&self.host, move || {
            drop(daemon.take());
            let start = Instant::now();
            let started = rt.block_on(Daemon::start(cfg.clone()));
            let took = start.elapsed();
            *daemon = Some(started.expect("netplane up again"));
            took
        })
    }
}

/// Runs `f` on a thread in namespace `host`, borrowing from the caller:
/// netlink and /proc/sys/net are the calling thread's.
fn in_host<T: Send>(host: &str, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(format!("/run/netns/{host}")).expect("netns");
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(ns, CloneFlags::CLONE_NEWNET).expect("entering netns");
            f()
        })
        .join()
        .expect("daemon thread")
    })
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            // In the host namespace: `down` restores sysctls through
            // /proc/sys/net.
            let rt = &self.rt;
            in_host(&self.host, move || {
                let _ = rt.block_on(daemon.down());
            });
        }
    }
}

#[derive(Debug)]
pub struct Topo {
    pub nat: Nat,
    pub family: Family,
    /// Where clients send to.
    pub target: SocketAddr,
    pub host: String,
    pub world: String,
    pub endpoint: String,
    /// Prefix of every name this topology gives.
    prefix: String,
    dir: PathBuf,
    daemon: Option<InProcess>,
    /// Docker's proxies, when they publish the ports.
    docker_proxies: DockerProxies,
    /// What the CNI bridge plugin returned for the endpoint.
    cni_result: Option<serde_json::Value>,
    /// Dropped after the daemon is down.
    _cleanup: Cleanup,
}

impl Topo {
    /// The host with `published` ports published, the measured one last.
    pub fn new(nat: Nat, published: u16) -> Topo {
        Topo::of_family(nat, published, Family::V4)
    }

    /// The same host dual-stack, its traffic over IPv6: netplane with
    /// `--ipv6`, Docker's rule shapes with ip6tables (NAT66), plain
    /// forwarding. The CNI plugins and user networks are not measured
    /// over IPv6.
    pub fn new6(nat: Nat, published: u16) -> Topo {
        assert!(
            matches!(nat, Nat::Netplane | Nat::Iptables | Nat::Ceiling),
            "{nat:?} over IPv6"
        );
        Topo::of_family(nat, published, Family::V6)
    }

    /// [`Topo::new`] with the world's clients filling in checksums as a
    /// network card does, which the uplink's XDP program needs (a veth
    /// otherwise leaves them partial): the topology XDP and tc are
    /// measured on side by side.
    pub fn with_nic_checksums(nat: Nat, published: u16) -> Topo {
        let topo = Topo::new(nat, published);
        sh(&format!(
            "ip netns exec {} ethtool -K {}x tx off",
            topo.world, topo.prefix
        ));
        topo
    }

    fn of_family(nat: Nat, published: u16, family: Family) -> Topo {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the benchmarks need root"
        );
        let p = format!(
            "npt{:x}{}",
            std::process::id() & 0xffff,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("netplane-{p}"));
        let (host, world) = (format!("{p}h"), format!("{p}w"));
        let cleanup = Cleanup {
            // `{p}-x` is the endpoint the control-plane benchmarks create.
            netns: vec![
                format!("{p}-e"),
                format!("{p}-x"),
                host.clone(),
                world.clone(),
            ],
            // The daemon's bpffs, should its `down` not get that far.
            mounts: vec![dir.join("bpf")],
            dirs: vec![dir.clone()],
            home: None,
        };
        std::fs::create_dir_all(&dir).expect("topology directory");
        let clients: String = (0..CLIENTS)
            .map(|i| format!("ip -n {world} addr add 198.18.0.{}/24 dev {p}x\n", 100 + i))
            .collect();
        sh(&format!(
            "set -e
             ip netns add {host}; ip netns add {world}
             ip link add {p}u type veth peer name {p}x
             ip link set {p}u netns {host}; ip link set {p}x netns {world}
             ip -n {host} addr add {HOST}/24 dev {p}u
             ip -n {world} addr add 198.18.0.1/24 dev {p}x
             {clients}
             for n in {host} {world}; do ip -n $n link set lo up; done
             ip -n {host} link set {p}u up; ip -n {world} link set {p}x up
             ip -n {host} route add default via 198.18.0.1"
        ));
        if family == Family::V6 {
            let clients: String = (0..u64::from(CLIENTS))
                .map(|i| {
                    format!(
                        "ip -n {world} addr add {}/64 dev {p}x nodad\n",
                        family.client(i).ip()
                    )
                })
                .collect();
            sh(&format!(
                "set -e
                 ip -n {host} addr add {HOST6}/64 dev {p}u nodad
                 ip -n {world} addr add {WORLD6}/64 dev {p}x nodad
                 {clients}
                 ip -n {host} -6 route add default via {WORLD6}"
            ));
        }
        let mut topo = Topo {
            nat,
            family,
            target: match family {
                Family::V4 => SocketAddr::new(HOST.into(), PUBLISHED_PORT),
                Family::V6 => SocketAddr::new(HOST6.into(), PUBLISHED_PORT),
            },
            endpoint: format!("{p}-e"),
            host,
            world,
            prefix: p.clone(),
            dir,
            daemon: None,
            docker_proxies: DockerProxies::default(),
            cni_result: None,
            _cleanup: cleanup,
        };
        match nat {
            Nat::Netplane | Nat::NetplaneNetwork | Nat::NetplaneProxy | Nat::NetplaneXdp => {
                topo.daemon = Some(topo.start_netplane(&p, published, nat));
            }
            Nat::DockerProxy => {
                topo.manual_endpoint(&p);
                topo.docker_proxies = DockerProxies::start(&topo, published);
            }
            Nat::Iptables => {
                topo.manual_endpoint(&p);
                topo.docker_rules(published);
            }
            Nat::Cni => topo.cni_result = Some(topo.cni_add(published)),
            Nat::Ceiling => {
                topo.manual_endpoint(&p);
                let (net, via, to) = match family {
                    Family::V4 => ("10.88.0.0/24", IpAddr::from(HOST), IpAddr::from(ENDPOINT)),
                    Family::V6 => ("fd00:88::/64", HOST6.into(), ENDPOINT6.into()),
                };
                sh(&format!("ip -n {} route add {net} via {via}", topo.world));
                topo.target = SocketAddr::new(to, SERVICE_PORT);
            }
        }
        if family == Family::V6 {
            // The host resolves its neighbours, the endpoint and the world,
            // once: resolving one on the way took longer than a sample
            // waits for its first datagram. A measurement starts on a
            // resolved path, whichever the NAT.
            sh(&format!(
                "ip netns exec {h} ping -6 -c1 -W2 {ENDPOINT6}; ip netns exec {h} ping -6 -c1 -W2 {WORLD6}",
                h = topo.host
            ));
        }
        topo
    }

    /// netplane with the endpoint at [`ENDPOINT`], on the bridge network
    /// or, for [`Nat::NetplaneNetwork`], on a user-defined network of that
    /// subnet (the bridge network moved aside).
    fn start_netplane(&self, p: &str, published: u16, nat: Nat) -> InProcess {
        let endpoint = self.endpoint.clone();
        let on_network = nat == Nat::NetplaneNetwork;
        let mut cfg = netplane_config(&self.dir, &format!("{p}u"), Vec::new());
        cfg.userland_proxy = nat == Nat::NetplaneProxy;
        if nat == Nat::NetplaneXdp {
            cfg.xdp = XdpSetting::Native;
        }
        let v6 = self.family == Family::V6;
        if v6 {
            cfg.ipv6 = true;
            cfg.subnet6 = Some("fd00:88::/64".parse().expect("subnet"));
        }
        let net = match on_network {
            true => {
                let subnet = cfg.subnet.replace("10.87.0.0/20".parse().expect("subnet"));
                Some(CreateNetwork {
                    subnet,
                    ..CreateNetwork::new("bench", "bridge")
                })
            }
            false => None,
        };
        InProcess::start(&self.host, cfg, move |rt, daemon| {
            rt.block_on(async {
                let attach = match net {
                    Some(net) => {
                        let name = net.name.clone();
                        daemon
                            .create_network(net)
                            .await
                            .expect("netplane network create");
                        name
                    }
                    None => "bridge".into(),
                };
                let mut publish = Vec::new();
                if published > 1 {
                    let last = OTHER_PORTS + published - 2;
                    publish.push(format!("{OTHER_PORTS}-{last}:{OTHER_PORTS}-{last}"));
                }
                publish.push(format!("{PUBLISHED_PORT}:{SERVICE_PORT}"));
                publish.push(format!("{PUBLISHED_PORT}:{SERVICE_PORT}/udp"));
                daemon
                    .create(CreateEndpoint {
                        name: endpoint,
                        net: attach,
                        ip: Some(ENDPOINT),
                        ip6: v6.then_some(ENDPOINT6),
                        publish,
                        ..CreateEndpoint::default()
                    })
                    .await
                    .expect("netplane create");
            });
        })
    }

    /// The endpoint made by the CNI plugins, chained the way libcni chains
    /// them: `bridge` (with `host-local` IPAM) then `portmap`, each given the
    /// previous result. Returns the bridge plugin's result.
    fn cni_add(&self, published: u16) -> serde_json::Value {
        // What the runtime's `loopback` plugin would do.
        sh(&format!(
            "ip netns add {0}; ip -n {0} link set lo up",
            self.endpoint
        ));
        let (result, _) = self.cni("ADD", &self.endpoint, "bridge", &self.cni_bridge());
        let mut mappings: Vec<_> = (0..published.saturating_sub(1))
            .map(|i| (OTHER_PORTS + i, OTHER_PORTS + i, "tcp"))
            .collect();
        mappings.push((PUBLISHED_PORT, SERVICE_PORT, "tcp"));
        mappings.push((PUBLISHED_PORT, SERVICE_PORT, "udp"));
        self.cni(
            "ADD",
            &self.endpoint,
            "portmap",
            &Self::cni_portmap(&result, &mappings),
        );
        let ip = result["ips"][0]["address"].as_str().unwrap_or_default();
        assert!(
            ip.starts_with(&format!("{ENDPOINT}/")),
            "the CNI bridge gave the endpoint {ip}"
        );
        result
    }

    /// The `bridge` plugin's network config, IPAM state kept in the
    /// topology's directory.
    fn cni_bridge(&self) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "bench",
            "type": "bridge",
            "bridge": format!("{}c0", self.prefix),
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "host-local",
                "dataDir": self.dir.join("cni-ipam"),
                "ranges": [[{"subnet": "10.88.0.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        })
    }

    /// The `portmap` plugin's network config: the runtime's port mappings
    /// (host port, container port, protocol), chained after `bridge`.
    fn cni_portmap(bridge: &serde_json::Value, mappings: &[(u16, u16, &str)]) -> serde_json::Value {
        let mappings: Vec<_> = mappings
            .iter()
            .map(|(host, container, proto)| {
                serde_json::json!({"hostPort": host, "containerPort": container, "protocol": proto})
            })
            .collect();
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "bench",
            "type": "portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": mappings},
            "prevResult": bridge,
        })
    }

    /// Runs `plugin` for container `id` in namespace `netns` as a runtime
    /// does: from the host namespace, the command and the container in the
    /// environment, the network config on stdin. Its result, and how long
    /// it ran.
    fn cni(
        &self,
        command: &str,
        id: &str,
        plugin: &str,
        config: &serde_json::Value,
    ) -> (serde_json::Value, Duration) {
        let mut cmd = Command::new(format!("/usr/lib/cni/{plugin}"));
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", format!("/run/netns/{id}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni");
        let config = config.to_string();
        let (out, took) = in_netns(&self.host, move || {
            use std::io::Write;
            let start = Instant::now();
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("running a CNI plugin");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(config.as_bytes())
                .expect("network config");
            let out = child.wait_with_output().expect("CNI plugin");
            (out, start.elapsed())
        })
        .join()
        .expect("CNI plugin thread");
        assert!(
            out.status.success(),
            "CNI {plugin} {command}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let result = match command {
            "ADD" => serde_json::from_slice(&out.stdout).expect("CNI result"),
            _ => serde_json::Value::Null,
        };
        (result, took)
    }

    /// The endpoint the way Docker builds it: a bridge, a veth, a netns.
    fn manual_endpoint(&self, p: &str) {
        let (h, e) = (&self.host, &self.endpoint);
        sh(&format!(
            "set -e
             ip netns exec {h} sysctl -qw net.ipv4.ip_forward=1
             ip -n {h} link add {p}d0 type bridge
             ip -n {h} addr add 10.88.0.1/24 dev {p}d0; ip -n {h} link set {p}d0 up
             ip netns add {e}
             ip -n {h} link add {p}v0 type veth peer name eth0 netns {e}
             ip -n {h} link set {p}v0 master {p}d0; ip -n {h} link set {p}v0 up
             ip -n {e} addr add {ENDPOINT}/24 dev eth0
             ip -n {e} link set eth0 up; ip -n {e} link set lo up
             ip -n {e} route add default via 10.88.0.1"
        ));
        if self.family == Family::V6 {
            sh(&format!(
                "set -e
                 ip netns exec {h} sysctl -qw net.ipv6.conf.all.forwarding=1
                 ip -n {h} addr add fd00:88::1/64 dev {p}d0 nodad
                 ip -n {e} addr add {ENDPOINT6}/64 dev eth0 nodad
                 ip -n {e} -6 route add default via fd00:88::1"
            ));
        }
    }

    /// Docker's rules: MASQUERADE for the subnet, a DOCKER chain behind
    /// `addrtype LOCAL` with one DNAT per published port, the measured one
    /// last. Loaded with iptables-restore (ip6tables-restore over IPv6,
    /// Docker 27's NAT66), replacing the nat table.
    fn docker_rules(&self, published: u16) {
        let bridge = format!("{}d0", self.prefix);
        let (subnet, loopback) = match self.family {
            Family::V4 => ("10.88.0.0/24", "127.0.0.0/8"),
            Family::V6 => ("fd00:88::/64", "::1/128"),
        };
        let mut rules = format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
             -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
             -A OUTPUT ! -d {loopback} -m addrtype --dst-type LOCAL -j DOCKER\n\
             -A POSTROUTING -s {subnet} ! -o {bridge} -j MASQUERADE\n\
             -A DOCKER -i {bridge} -j RETURN\n"
        );
        rules += &self.docker_dnat(
            (0..published.saturating_sub(1)).map(|i| OTHER_PORTS + i),
            "tcp",
        );
        rules += &self.docker_dnat([PUBLISHED_PORT], "tcp");
        rules += &self.docker_dnat([PUBLISHED_PORT], "udp");
        rules.push_str("COMMIT\n");
        self.iptables_restore(&rules, false);
    }

    /// Docker's DNAT rule for each of `ports`, to the same port of the
    /// endpoint except for [`PUBLISHED_PORT`], which goes to
    /// [`SERVICE_PORT`].
    fn docker_dnat(&self, ports: impl IntoIterator<Item = u16>, proto: &str) -> String {
        let bridge = format!("{}d0", self.prefix);
        ports
            .into_iter()
            .map(|port| {
                let to = if port == PUBLISHED_PORT {
                    SERVICE_PORT
                } else {
                    port
                };
                let to = match self.family {
                    Family::V4 => SocketAddr::new(ENDPOINT.into(), to),
                    Family::V6 => SocketAddr::new(ENDPOINT6.into(), to),
                };
                format!(
                    "-A DOCKER ! -i {bridge} -p {proto} -m {proto} --dport {port} \
                     -j DNAT --to-destination {to}\n"
                )
            })
            .collect()
    }

    /// Runs iptables-restore on `rules` in the host namespace, appending
    /// with `--noflush`; how long it ran.
    fn iptables_restore(&self, rules: &str, noflush: bool) -> Duration {
        let path = self.dir.join("rules");
        std::fs::write(&path, rules).expect("writing rules");
        let mut cmd = Command::new(match self.family {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        });
        if noflush {
            cmd.arg("--noflush");
        }
        cmd.stdin(File::open(&path).expect("rules"));
        let (out, took) = in_netns(&self.host, move || {
            let start = Instant::now();
            (
                cmd.output().expect("running iptables-restore"),
                start.elapsed(),
            )
        })
        .join()
        .expect("iptables-restore thread");
        assert!(
            out.status.success(),
            "iptables-restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        took
    }
}

/// Control-plane operations, timed: each does its work once, undoes it
/// without the clock running, and returns how long the work took.
impl Topo {
    /// Publishes `ports` more TCP ports to the endpoint: netplane's
    /// `port add` of a range, one iptables-restore of Docker's DNAT rule
    /// per port, or a CNI portmap ADD with a mapping per port.
    pub fn publish_ports(&mut self, ports: u16) -> Duration {
        let range = BENCH_PORTS..BENCH_PORTS + ports;
        match self.nat {
            Nat::Netplane | Nat::NetplaneNetwork | Nat::NetplaneProxy | Nat::NetplaneXdp => {
                let (endpoint, last) = (self.endpoint.clone(), range.end - 1);
                let spec = format!("{BENCH_PORTS}-{last}:{BENCH_PORTS}-{last}");
                self.with_daemon(move |rt, daemon| {
                    let start = Instant::now();
                    let published = rt.block_on(daemon.add_port(&endpoint, &spec, &[], false));
                    let took = start.elapsed();
                    let published = published.expect("netplane port add");
                    assert_eq!(published.len(), 3, "{published:?}");
                    daemon
                        .remove_port(&endpoint, &spec)
                        .expect("netplane port rm");
                    took
                })
            }
            Nat::Iptables => {
                let took = self.iptables_restore(
                    &format!("*nat\n{}COMMIT\n", self.docker_dnat(range, "tcp")),
                    true,
                );
                let listed = sh(&format!(
                    "ip netns exec {} iptables -t nat -S DOCKER",
                    self.host
                ));
                assert_eq!(
                    listed.lines().filter(|l| l.contains("DNAT")).count(),
                    usize::from(ports) + 2
                );
                self.docker_rules(1);
                took
            }
            Nat::Cni => {
                let bridge = self.cni_result.clone().expect("the CNI endpoint");
                let mappings: Vec<_> = range.map(|p| (p, p, "tcp")).collect();
                let config = Self::cni_portmap(&bridge, &mappings);
                // Another container's mappings, so that its chain is its own.
                let id = format!("{}-ports", self.endpoint);
                let (_, took) = self.cni("ADD", &id, "portmap", &config);
                self.cni("DEL", &id, "portmap", &config);
                took
            }
            nat @ (Nat::Ceiling | Nat::DockerProxy) => panic!("{nat:?} is not measured publishing"),
        }
    }

    /// Creates one more endpoint on the bridge and removes it: netplane's
    /// `create` (which also makes the namespace), or the CNI bridge
    /// plugin's ADD into a namespace made beforehand, as runtimes do.
    pub fn create_endpoint(&mut self) -> Duration {
        let name = format!("{}-x", self.prefix);
        match self.nat {
            Nat::Netplane | Nat::NetplaneNetwork => self.with_daemon(move |rt, daemon| {
                let start = Instant::now();
                let created = rt.block_on(daemon.create(CreateEndpoint {
                    name: name.clone(),
                    net: "bridge".into(),
                    ..CreateEndpoint::default()
                }));
                let took = start.elapsed();
                let created = created.expect("netplane create");
                assert!(!created.network_settings.ip_address.is_empty());
                rt.block_on(daemon.remove(&name, false))
                    .expect("netplane rm");
                took
            }),
            Nat::Cni => {
                sh(&format!("ip netns add {name}; ip -n {name} link set lo up"));
                let config = self.cni_bridge();
                let (result, took) = self.cni("ADD", &name, "bridge", &config);
                assert!(result["ips"][0]["address"].is_string(), "{result}");
                self.cni("DEL", &name, "bridge", &config);
                sh(&format!("ip netns del {name}"));
                took
            }
            nat => panic!("{nat:?} has no endpoint API"),
        }
    }

    /// Adds `endpoints` endpoints with `ports_each` TCP ports published on
    /// each (host ports from 40000 up, to the endpoint's 80 and on).
    pub fn populate(&mut self, endpoints: u16, ports_each: u16) {
        let names: Vec<String> = (0..endpoints)
            .map(|i| format!("{}-p{i}", self.prefix))
            .collect();
        // Before they exist, so that a failure leaves none behind.
        self._cleanup.netns.extend(names.iter().cloned());
        self.with_daemon(move |rt, daemon| {
            for (i, name) in (0u16..).zip(names) {
                let first = POPULATED_PORTS + i * ports_each;
                let last = first + ports_each - 1;
                let inner = SERVICE_PORT + ports_each - 1;
                rt.block_on(daemon.create(CreateEndpoint {
                    name,
                    net: "bridge".into(),
                    publish: vec![format!("{first}-{last}:{SERVICE_PORT}-{inner}")],
                    ..CreateEndpoint::default()
                }))
                .expect("netplane create");
            }
        });
    }

    /// The process ids of its Docker proxies.
    pub fn docker_proxy_pids(&self) -> Vec<u32> {
        self.docker_proxies.pids()
    }

    /// [`InProcess::restart`] of the host's daemon.
    pub fn restart_daemon(&mut self) -> Duration {
        self.daemon.as_mut().expect("netplane is running").restart()
    }

    /// Runs `f` on the in-process daemon.
    fn with_daemon<T: Send>(
        &mut self,
        f: impl FnOnce(&tokio::runtime::Runtime, &mut Daemon) -> T + Send,
    ) -> T {
        self.daemon.as_mut().expect("netplane is running").with(f)
    }
}

impl Topo {
    /// The source address the endpoint sees on a client's traffic to the
    /// published port: the client's own, or the host's bridge address
    /// where a proxy relays it.
    pub fn client_seen_as(&self) -> IpAddr {
        match self.nat {
            Nat::NetplaneProxy | Nat::DockerProxy => BRIDGE_GATEWAY.into(),
            _ => self.family.client(0).ip(),
        }
    }

    /// The source address the world sees on the endpoint's traffic: the
    /// host's, masqueraded, or the endpoint's own with no NAT.
    pub fn endpoint_seen_as(&self) -> IpAddr {
        match (self.nat, self.family) {
            (Nat::Ceiling, Family::V4) => ENDPOINT.into(),
            (Nat::Ceiling, Family::V6) => ENDPOINT6.into(),
            (_, Family::V4) => HOST.into(),
            (_, Family::V6) => HOST6.into(),
        }
    }

    /// Expires finished flows, as the daemon's housekeeping does every few
    /// seconds; the benchmarks call it between samples.
    pub fn collect_garbage(&mut self) {
        if let Some(daemon) = self.daemon.as_mut().and_then(|d| d.daemon.as_mut()) {
            let readers = daemon.readers().expect("the daemon's tables");
            readers
                .collect_garbage()
                .expect("conntrack garbage collection");
        }
    }
}

/// Debian's `docker-proxy` (package `docker.io`, 20.10), where `cargo
/// xtask setup` unpacks it.
pub const DOCKER_PROXY: &str = "/var/cache/netplane/docker.io/usr/sbin/docker-proxy";

/// Docker's `docker-proxy` processes of a topology, killed on drop.
#[derive(Debug, Default)]
pub struct DockerProxies {
    children: Vec<std::process::Child>,
}

impl DockerProxies {
    /// One process per published port and protocol, as dockerd starts
    /// them: TCP ports from the other ports up and the measured one, and
    /// its UDP twin. Each reports on fd 3 once it listens.
    fn start(topo: &Topo, published: u16) -> DockerProxies {
        let mut ports: Vec<(u16, u16, &str)> = (0..published.saturating_sub(1))
            .map(|i| (OTHER_PORTS + i, OTHER_PORTS + i, "tcp"))
            .collect();
        ports.push((PUBLISHED_PORT, SERVICE_PORT, "tcp"));
        ports.push((PUBLISHED_PORT, SERVICE_PORT, "udp"));
        let host = topo.host.clone();
        let children = in_netns(&host, move || {
            ports
                .into_iter()
                .map(|(host_port, container_port, proto)| {
                    docker_proxy(host_port, container_port, proto)
                })
                .collect()
        })
        .join()
        .expect("starting docker-proxy");
        DockerProxies { children }
    }

    /// Their process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }
}

impl Drop for DockerProxies {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `docker-proxy` for one port, started the way dockerd does (a pipe on
/// fd 3, where it writes `0` once listening, or the error), returned once
/// it listens.
pub fn docker_proxy(host_port: u16, container_port: u16, proto: &str) -> std::process::Child {
    use std::{io::Read, os::fd::AsRawFd, os::unix::process::CommandExt};
    // Close-on-exec: the child keeps only fd 3, which docker-proxy closes
    // after reporting, so that the report ends there.
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let write_fd = write.as_raw_fd();
    let mut cmd = Command::new(DOCKER_PROXY);
    cmd.args([
        "-proto",
        proto,
        "-host-ip",
        "0.0.0.0",
        "-host-port",
        &host_port.to_string(),
        "-container-ip",
        &ENDPOINT.to_string(),
        "-container-port",
        &container_port.to_string(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // SAFETY: dup2 and fcntl are async-signal-safe, all the child does
    // before exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would leave close-on-exec set.
            let done = if write_fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(write_fd, 3)
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{DOCKER_PROXY} (cargo xtask setup unpacks it): {e}"));
    drop(write);
    let mut said = String::new();
    std::fs::File::from(read)
        .read_to_string(&mut said)
        .expect("docker-proxy's report");
    assert_eq!(
        said.trim(),
        "0",
        "docker-proxy on {proto} {host_port}: {said}"
    );
    child
}
