//! The same simulated host NATed three ways, for benchmarks with real
//! traffic: netplane (the daemon itself, in-process), Docker's iptables rule
//! shapes, and the ceiling (plain forwarding, no NAT). A host namespace with
//! a bridge and one endpoint behind it, and a "world" namespace behind the
//! host's uplink where the clients run. Everything is removed on drop.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use netplane::{
    api::CreateEndpoint,
    conntrack::Timeouts,
    daemon::{Config, Daemon},
};
use netplane_common::abi::DEFAULT_CT_MAX;
use nix::sched::{CloneFlags, setns};

use crate::{Cleanup, sh};

/// The host's uplink address, where published ports are reached.
pub const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Where the world's server listens, for traffic the endpoint sends out.
pub const WORLD_SERVER: SocketAddrV4 =
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), SERVICE_PORT);
/// The endpoint's address.
pub const ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
/// The port the endpoint's servers listen on.
pub const SERVICE_PORT: u16 = 80;
/// The host port published to [`SERVICE_PORT`].
pub const PUBLISHED_PORT: u16 = 8080;
/// First of the other published ports (rules that match nothing measured).
const OTHER_PORTS: u16 = 20000;
/// Client source addresses in the world, so that connections differ in more
/// than the source port.
pub const CLIENTS: u8 = 16;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How the host translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// netplane's eBPF data path.
    Netplane,
    /// Docker's iptables rules with kernel conntrack.
    Iptables,
    /// The CNI reference plugins (`bridge` with `ipMasq`, `portmap`,
    /// `host-local`), invoked as a container runtime does.
    Cni,
    /// No translation: the world routes to the endpoint directly.
    Ceiling,
}

impl Nat {
    pub fn name(self) -> &'static str {
        match self {
            Nat::Netplane => "netplane",
            Nat::Iptables => "iptables",
            Nat::Cni => "cni",
            Nat::Ceiling => "ceiling",
        }
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
/// (its runtime's workers live there too).
#[derive(Debug)]
struct InProcess {
    rt: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
}

#[derive(Debug)]
pub struct Topo {
    pub nat: Nat,
    /// Where clients send to.
    pub target: SocketAddrV4,
    pub host: String,
    pub world: String,
    pub endpoint: String,
    dir: PathBuf,
    daemon: Option<InProcess>,
    /// Dropped after the daemon is down.
    _cleanup: Cleanup,
}

impl Topo {
    /// The host with `published` ports published, the measured one last.
    pub fn new(nat: Nat, published: u16) -> Topo {
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
            netns: vec![format!("{p}-e"), host.clone(), world.clone()],
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
        let mut topo = Topo {
            nat,
            target: SocketAddrV4::new(HOST, PUBLISHED_PORT),
            endpoint: format!("{p}-e"),
            host,
            world,
            dir,
            daemon: None,
            _cleanup: cleanup,
        };
        match nat {
            Nat::Netplane => topo.daemon = Some(topo.start_netplane(&p, published)),
            Nat::Iptables => {
                topo.manual_endpoint(&p);
                topo.docker_rules(&p, published);
            }
            Nat::Cni => topo.cni_add(&p, published),
            Nat::Ceiling => {
                topo.manual_endpoint(&p);
                sh(&format!(
                    "ip -n {} route add 10.88.0.0/24 via {HOST}",
                    topo.world
                ));
                topo.target = SocketAddrV4::new(ENDPOINT, SERVICE_PORT);
            }
        }
        topo
    }

    fn start_netplane(&self, p: &str, published: u16) -> InProcess {
        let (host, dir, endpoint) = (self.host.clone(), self.dir.clone(), self.endpoint.clone());
        let uplink = format!("{p}u");
        in_netns(&host, move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let daemon = rt.block_on(async {
                let cfg = Config {
                    bridge: "np0".into(),
                    subnet: Some("10.88.0.0/24".parse().expect("subnet")),
                    uplink: Some(uplink),
                    icc: true,
                    state_dir: dir.join("state"),
                    run_dir: dir.join("run"),
                    bpffs: dir.join("bpf"),
                    ct_max: DEFAULT_CT_MAX,
                    timeouts: Timeouts::default(),
                };
                let mut daemon = Daemon::start(cfg).await.expect("netplane up");
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
                        net: "bridge".into(),
                        ip: Some(ENDPOINT),
                        publish,
                        ..CreateEndpoint::default()
                    })
                    .await
                    .expect("netplane create");
                daemon
            });
            InProcess {
                rt,
                daemon: Some(daemon),
            }
        })
        .join()
        .expect("starting netplane")
    }

    /// The endpoint made by the CNI plugins, chained the way libcni chains
    /// them: `bridge` (with `host-local` IPAM) then `portmap`, each given the
    /// previous result, the network config on stdin and the runtime's
    /// environment. IPAM state stays in the topology's directory.
    fn cni_add(&self, p: &str, published: u16) {
        // What the runtime's `loopback` plugin would do.
        sh(&format!(
            "ip netns add {0}; ip -n {0} link set lo up",
            self.endpoint
        ));
        let mut mappings: Vec<serde_json::Value> = (0..published.saturating_sub(1))
            .map(|i| {
                serde_json::json!({
                    "hostPort": OTHER_PORTS + i,
                    "containerPort": OTHER_PORTS + i,
                    "protocol": "tcp",
                })
            })
            .collect();
        for proto in ["tcp", "udp"] {
            mappings.push(serde_json::json!({
                "hostPort": PUBLISHED_PORT,
                "containerPort": SERVICE_PORT,
                "protocol": proto,
            }));
        }
        let bridge = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "bench",
            "type": "bridge",
            "bridge": format!("{p}c0"),
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "host-local",
                "dataDir": self.dir.join("cni-ipam"),
                "ranges": [[{"subnet": "10.88.0.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        });
        let result = self.cni("bridge", &bridge);
        let portmap = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "bench",
            "type": "portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": mappings},
            "prevResult": result,
        });
        self.cni("portmap", &portmap);
        let ip = result["ips"][0]["address"].as_str().unwrap_or_default();
        assert!(
            ip.starts_with(&format!("{ENDPOINT}/")),
            "the CNI bridge gave the endpoint {ip}"
        );
    }

    /// One CNI ADD of `plugin` for the endpoint, from the host namespace.
    fn cni(&self, plugin: &str, config: &serde_json::Value) -> serde_json::Value {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.host,
                &format!("/usr/lib/cni/{plugin}"),
            ])
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &self.endpoint)
            .env("CNI_NETNS", format!("/run/netns/{}", self.endpoint))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running a CNI plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(config.to_string().as_bytes())
            .expect("network config");
        let out = child.wait_with_output().expect("CNI plugin");
        assert!(
            out.status.success(),
            "CNI {plugin} ADD: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("CNI result")
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
    }

    /// Docker's rules: MASQUERADE for the subnet, a DOCKER chain behind
    /// `addrtype LOCAL` with one DNAT per published port, the measured one
    /// last. Loaded with iptables-restore.
    fn docker_rules(&self, p: &str, published: u16) {
        let bridge = format!("{p}d0");
        let mut rules = format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
             -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
             -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER\n\
             -A POSTROUTING -s 10.88.0.0/24 ! -o {bridge} -j MASQUERADE\n\
             -A DOCKER -i {bridge} -j RETURN\n"
        );
        for port in (0..published.saturating_sub(1)).map(|i| OTHER_PORTS + i) {
            rules.push_str(&format!(
                "-A DOCKER ! -i {bridge} -p tcp -m tcp --dport {port} -j DNAT --to-destination {ENDPOINT}:{port}\n"
            ));
        }
        for proto in ["tcp", "udp"] {
            rules.push_str(&format!(
                "-A DOCKER ! -i {bridge} -p {proto} -m {proto} --dport {PUBLISHED_PORT} \
                 -j DNAT --to-destination {ENDPOINT}:{SERVICE_PORT}\n"
            ));
        }
        rules.push_str("COMMIT\n");
        let path = self.dir.join("rules");
        std::fs::write(&path, rules).expect("writing rules");
        sh(&format!(
            "ip netns exec {} iptables-restore < {}",
            self.host,
            path.display()
        ));
    }
}

impl Topo {
    /// The source address the world sees on the endpoint's traffic: the
    /// host's, masqueraded, or the endpoint's own with no NAT.
    pub fn endpoint_seen_as(&self) -> Ipv4Addr {
        match self.nat {
            Nat::Ceiling => ENDPOINT,
            _ => HOST,
        }
    }

    /// Expires finished flows, as the daemon's housekeeping does every few
    /// seconds; the benchmarks call it between samples.
    pub fn collect_garbage(&mut self) {
        if let Some(daemon) = self.daemon.as_mut().and_then(|d| d.daemon.as_mut()) {
            daemon
                .collect_garbage()
                .expect("conntrack garbage collection");
        }
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take()
            && let Some(daemon) = d.daemon.take()
        {
            // In the host namespace: `down` restores sysctls through
            // /proc/sys/net, which is the calling thread's namespace's.
            let _ = in_netns(&self.host, move || {
                let _ = d.rt.block_on(daemon.down());
            })
            .join();
        }
    }
}
