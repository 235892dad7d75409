//! Two hosts on one underlay switch with an endpoint each, joined three
//! ways for the overlay benchmarks: netplane's overlay (VXLAN pushed and
//! taken off by its eBPF programs), Linux's vxlan device set up as
//! flannel's vxlan backend sets it up (a VXLAN device with a /32, and a
//! route, a neighbour and an FDB entry per peer), and plain routes between
//! the hosts (no encapsulation: the ceiling). Endpoint 0 is the client,
//! endpoint 1 runs the servers. Everything is removed on drop.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use netplane::types::{CreateEndpoint, CreateNetwork, Encap};

use crate::{
    Cleanup,
    load::{Cost, answer, ask, counted_datagrams, udp_counter},
    sh,
    topo::{InProcess, SERVICE_PORT, in_netns, netplane_config},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// What carries the endpoints' traffic between the hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    /// netplane's overlay with static peers, in VXLAN.
    Netplane,
    /// The same in GRE (`--encap gre`).
    NetplaneGre,
    /// The same routed without encapsulation (`--encap none`).
    NetplaneDirect,
    /// Linux's vxlan device, as flannel's vxlan backend configures it.
    KernelVxlan,
    /// Routes to the other host's endpoint subnet, no encapsulation.
    Routed,
}

impl Tunnel {
    pub fn name(self) -> &'static str {
        match self {
            Tunnel::Netplane => "netplane",
            Tunnel::NetplaneGre => "netplane_gre",
            Tunnel::NetplaneDirect => "netplane_none",
            Tunnel::KernelVxlan => "kernel_vxlan",
            Tunnel::Routed => "no_overlay",
        }
    }
}

/// The hosts' underlay addresses (their VTEPs).
const VTEPS: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)];
const VNI: u32 = 42;
/// The port the bulk sink listens on.
const SINK_PORT: u16 = 5001;
/// What the bulk client writes at a time.
pub const CHUNK: usize = 64 << 10;

/// Endpoint `i`'s address: the second of host `i`'s /24, as netplane gives
/// it out (host `i` holds 10.201.`i`.0/24 by its VTEP's rank).
fn endpoint_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 201, i as u8, 2)
}

#[derive(Debug)]
pub struct OverlayPair {
    pub tunnel: Tunnel,
    /// The endpoints' namespaces.
    pub endpoints: [String; 2],
    _daemons: Vec<InProcess>,
    /// Dropped after the daemons are down.
    _cleanup: Cleanup,
}

impl OverlayPair {
    pub fn new(tunnel: Tunnel) -> OverlayPair {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the benchmarks need root"
        );
        let p = format!(
            "npo{:x}{}",
            std::process::id() & 0xffff,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("netplane-{p}"));
        let hosts = [format!("{p}h0"), format!("{p}h1")];
        let endpoints = [format!("{p}-e0"), format!("{p}-e1")];
        let underlay = format!("{p}n");
        let host_dir = |i: usize| -> PathBuf { dir.join(format!("h{i}")) };
        let cleanup = Cleanup {
            netns: [&endpoints[..], &hosts[..], std::slice::from_ref(&underlay)].concat(),
            mounts: vec![host_dir(0).join("bpf"), host_dir(1).join("bpf")],
            dirs: vec![dir.clone()],
            home: None,
        };
        sh(&format!(
            "set -e; ip netns add {underlay}; ip -n {underlay} link set lo up
             ip -n {underlay} link add sw0 type bridge; ip -n {underlay} link set sw0 up"
        ));
        for (i, host) in hosts.iter().enumerate() {
            let vtep = VTEPS[i];
            sh(&format!(
                "set -e; ip netns add {host}; ip -n {host} link set lo up
                 ip link add {p}u{i} type veth peer name {p}x{i}
                 ip link set {p}u{i} netns {host}; ip link set {p}x{i} netns {underlay}
                 ip -n {host} addr add {vtep}/24 dev {p}u{i}; ip -n {host} link set {p}u{i} up
                 ip -n {underlay} link set {p}x{i} master sw0; ip -n {underlay} link set {p}x{i} up"
            ));
        }
        let encap = match tunnel {
            Tunnel::NetplaneGre => Some(Encap::Gre),
            Tunnel::NetplaneDirect => Some(Encap::None),
            _ => None,
        };
        let daemons = match tunnel {
            Tunnel::Netplane | Tunnel::NetplaneGre | Tunnel::NetplaneDirect => (0..2)
                .map(|i| {
                    std::fs::create_dir_all(host_dir(i)).expect("host directory");
                    let cfg =
                        netplane_config(&host_dir(i), &format!("{p}u{i}"), vec![VTEPS[1 - i]]);
                    let endpoint = endpoints[i].clone();
                    InProcess::start(&hosts[i], cfg, move |rt, daemon| {
                        rt.block_on(async {
                            daemon
                                .create_network(CreateNetwork {
                                    subnet: Some("10.201.0.0/16".parse().expect("subnet")),
                                    vni: Some(VNI),
                                    encap,
                                    ..CreateNetwork::new("ov", "overlay")
                                })
                                .await
                                .expect("netplane network create");
                            daemon
                                .create(CreateEndpoint {
                                    name: endpoint,
                                    net: "ov".into(),
                                    ip: Some(endpoint_addr(i)),
                                    ..CreateEndpoint::default()
                                })
                                .await
                                .expect("netplane create");
                        })
                    })
                })
                .collect(),
            Tunnel::KernelVxlan | Tunnel::Routed => {
                for i in 0..2 {
                    kernel_host(&p, &hosts[i], &endpoints[i], i, tunnel);
                }
                Vec::new()
            }
        };
        OverlayPair {
            tunnel,
            endpoints,
            _daemons: daemons,
            _cleanup: cleanup,
        }
    }

    /// Where endpoint 1's servers listen.
    pub fn server(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(endpoint_addr(1), port)
    }
}

/// Host `i` without netplane: a bridge with the endpoint, and the other
/// host's /24 reached through a flannel-style vxlan device or routed.
fn kernel_host(p: &str, host: &str, endpoint: &str, i: usize, tunnel: Tunnel) {
    let j = 1 - i;
    let mtu = if tunnel == Tunnel::KernelVxlan {
        1450
    } else {
        1500
    };
    let (gw, ep) = (Ipv4Addr::new(10, 201, i as u8, 1), endpoint_addr(i));
    sh(&format!(
        "set -e; ip netns exec {host} sysctl -qw net.ipv4.ip_forward=1
         ip -n {host} link add cni0 type bridge; ip -n {host} link set cni0 mtu {mtu}
         ip -n {host} addr add {gw}/24 dev cni0; ip -n {host} link set cni0 up
         ip netns add {endpoint}; ip -n {endpoint} link set lo up
         ip link add {p}v{i} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {endpoint}
         ip link set {p}v{i} netns {host}
         ip -n {host} link set {p}v{i} master cni0; ip -n {host} link set {p}v{i} up
         ip -n {endpoint} addr add {ep}/24 dev eth0; ip -n {endpoint} link set eth0 up
         ip -n {endpoint} route add default via {gw}"
    ));
    let mac = |k: usize| format!("0e:00:00:00:00:0{}", k + 1);
    match tunnel {
        Tunnel::KernelVxlan => sh(&format!(
            "set -e
             ip -n {host} link add flannel.1 type vxlan id {VNI} local {} dev {p}u{i} dstport 4789 nolearning
             ip -n {host} link set flannel.1 address {} mtu 1450 up
             ip -n {host} addr add 10.201.{i}.0/32 dev flannel.1
             ip -n {host} route add 10.201.{j}.0/24 via 10.201.{j}.0 dev flannel.1 onlink
             ip -n {host} neigh add 10.201.{j}.0 lladdr {} dev flannel.1 nud permanent
             ip netns exec {host} bridge fdb append {} dev flannel.1 dst {}",
            VTEPS[i],
            mac(i),
            mac(j),
            mac(j),
            VTEPS[j]
        )),
        _ => sh(&format!(
            "ip -n {host} route add 10.201.{j}.0/24 via {}",
            VTEPS[j]
        )),
    };
}

/// The servers in endpoint 1: TCP answering each byte with the next, UDP
/// counting datagrams from endpoint 0, and a sink reading a bulk transfer
/// and answering with the number of bytes it read. Stopped on drop.
#[derive(Debug)]
pub struct OverlayServers {
    stop: Arc<AtomicBool>,
    /// Datagrams received from endpoint 0.
    datagrams: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl OverlayServers {
    pub fn start(pair: &OverlayPair) -> OverlayServers {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, listening) = std::sync::mpsc::channel();
        let (udp, datagrams) = udp_counter(
            &pair.endpoints[1],
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVICE_PORT).into(),
            endpoint_addr(0).into(),
            stop.clone(),
            ready,
        );
        listening.recv().expect("the UDP server failed to start");
        let listeners: Vec<TcpListener> = [SERVICE_PORT, SINK_PORT]
            .into_iter()
            .map(|port| {
                in_netns(&pair.endpoints[1], move || {
                    let l = TcpListener::bind(("0.0.0.0", port)).expect("TCP server");
                    l.set_nonblocking(true).expect("non-blocking listener");
                    l
                })
                .join()
                .expect("TCP server")
            })
            .collect();
        let [echo, sink]: [TcpListener; 2] = listeners.try_into().expect("two listeners");
        let (echo_stop, sink_stop) = (stop.clone(), stop.clone());
        let threads = vec![
            udp,
            std::thread::spawn(move || answer(&echo, &echo_stop)),
            std::thread::spawn(move || drain(&sink, &sink_stop)),
        ];
        OverlayServers {
            stop,
            datagrams,
            threads,
        }
    }
}

impl Drop for OverlayServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Accepts bulk transfers on `listener`: reads each to its end, then
/// answers with the number of bytes read.
fn drain(listener: &TcpListener, stop: &AtomicBool) {
    let mut buf = vec![0u8; CHUNK];
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut conn, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let _ = conn.set_nonblocking(false);
        let mut total = 0u64;
        while let Ok(n @ 1..) = conn.read(&mut buf) {
            total += n as u64;
        }
        let _ = conn.write_all(&total.to_be_bytes());
    }
}

/// A connection from endpoint 0 to `target`, on a thread in its namespace.
fn connected(pair: &OverlayPair, target: SocketAddrV4) -> TcpStream {
    in_netns(&pair.endpoints[0], move || {
        let stream = TcpStream::connect_timeout(&target.into(), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connecting to {target}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream
    })
    .join()
    .expect("client thread")
}

/// The time `n` one-byte round trips take from endpoint 0 to endpoint 1 on
/// a connection set up before the clock starts.
pub fn round_trips(pair: &OverlayPair, n: u64) -> Duration {
    let mut stream = connected(pair, pair.server(SERVICE_PORT));
    let start = Instant::now();
    for i in 0..n {
        ask(&mut stream, i as u8);
    }
    start.elapsed()
}

/// The cost of `n` 64-byte datagrams from endpoint 0 to endpoint 1, per
/// datagram received.
pub fn datagrams(pair: &OverlayPair, servers: &OverlayServers, n: u64, cost: Cost) -> Duration {
    counted_datagrams(
        &pair.endpoints[0],
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into(),
        pair.server(SERVICE_PORT).into(),
        &servers.datagrams,
        n,
        cost,
    )
}

/// The time a transfer of `n` [`CHUNK`]s from endpoint 0 to endpoint 1
/// takes, until the sink confirms it read every byte.
pub fn bulk(pair: &OverlayPair, n: u64) -> Duration {
    let mut stream = connected(pair, pair.server(SINK_PORT));
    let chunk = vec![0x5au8; CHUNK];
    let start = Instant::now();
    for _ in 0..n {
        stream.write_all(&chunk).expect("bulk write");
    }
    stream.shutdown(Shutdown::Write).expect("end of transfer");
    let mut read = [0u8; 8];
    stream.read_exact(&mut read).expect("the sink's count");
    let took = start.elapsed();
    assert_eq!(
        u64::from_be_bytes(read),
        n * CHUNK as u64,
        "bytes the sink read"
    );
    took
}
