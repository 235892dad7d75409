//! A simulated host for running the data path's programs one packet at a
//! time (BPF_PROG_TEST_RUN): a network namespace with a bridge, endpoint
//! veths and an uplink with a resolved neighbour, a bpffs, and the data path
//! loaded with its maps seeded. The calling thread enters the namespace
//! (test runs look devices and routes up there) and leaves it on drop;
//! everything is removed on drop, also when a test panics.

use netplane_common::abi::addr_be;
use std::{
    fs::File,
    net::Ipv4Addr,
    sync::atomic::{AtomicU32, Ordering},
};

use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep};
use netplane::{
    kernel::datapath::Datapath,
    logic::portspec::{PortRange, PortSpec, PublishedPort, assign_host_ports},
};
use netplane_common::abi::{DropReason, NetConfig, programs};
use nix::sched::{CloneFlags, setns};

use crate::{Cleanup, sh};

pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;
/// XDP's verdicts, as `enum xdp_action` numbers them.
pub const XDP_PASS: i32 = 2;
pub const XDP_REDIRECT: i32 = 4;

pub const ENDPOINT: [u8; 4] = [10, 90, 0, 2];
pub const ENDPOINT_MAC: [u8; 6] = [0x02, 0x42, 10, 90, 0, 2];
pub const GATEWAY: [u8; 4] = [10, 90, 0, 1];
pub const UPLINK: [u8; 4] = [198, 18, 0, 2];
pub const WORLD: [u8; 4] = [198, 18, 0, 1];
pub const WORLD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
/// The host port published to port 80 of [`ENDPOINT`].
pub const PUBLISHED_PORT: u16 = 8080;
/// IPv6 addresses, after [`Lab::with_ipv6`]: the endpoint's, the
/// bridge's (its gateway), the uplink's and the world's.
pub const ENDPOINT6: [u8; 16] = [0xfd, 0, 0, 0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const GATEWAY6: [u8; 16] = [0xfd, 0, 0, 0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const UPLINK6: [u8; 16] = [0x20, 1, 0x0d, 0xb8, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const WORLD6: [u8; 16] = [0x20, 1, 0x0d, 0xb8, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

static NEXT: AtomicU32 = AtomicU32::new(0);

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex MAC"))
        .collect();
    v.try_into().expect("six bytes")
}

#[derive(Debug)]
pub struct Lab {
    pub dp: Datapath,
    pub endpoint_if: u32,
    pub bridge_if: u32,
    /// Another interface, for a second endpoint.
    pub spare_if: u32,
    pub uplink_if: u32,
    pub uplink_mac: [u8; 6],
    pub bridge_mac: [u8; 6],
    /// The network configuration the data path was loaded with.
    pub cfg: NetConfig,
    _rt: tokio::runtime::Runtime,
    /// Last: the data path is dropped before its bpffs goes.
    _cleanup: Cleanup,
}

impl Lab {
    /// A lab whose connection tracking table holds `ct_max` entries.
    pub fn new(ct_max: u32) -> Lab {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the data path tests and benchmarks need root"
        );
        let netns = format!(
            "npl{:x}{}",
            std::process::id() & 0xffff,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("netplane-{netns}"));
        let mut cleanup = Cleanup {
            netns: vec![netns.clone()],
            mounts: vec![dir.clone()],
            dirs: vec![dir.clone()],
            home: None,
        };
        std::fs::create_dir_all(&dir).expect("lab directory");
        // IPv6 off: the counters the tests read see only the packets the
        // tests run, none of the link-local chatter of new interfaces.
        let n = &netns;
        sh(&format!(
            "set -e
             ip netns add {n}
             ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1
             ip netns exec {n} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
             ip -n {n} link add tb0 type bridge; ip -n {n} addr add 10.90.0.1/24 dev tb0
             ip -n {n} link add tv0 type veth peer name tv1
             ip -n {n} link set tv0 master tb0
             ip -n {n} link add tu0 type veth peer name tu1
             ip -n {n} addr add 198.18.0.2/24 dev tu0
             for l in lo tb0 tv0 tv1 tu0 tu1; do ip -n {n} link set $l up; done
             ip -n {n} route add default via 198.18.0.1
             ip -n {n} neigh add 198.18.0.1 lladdr 02:00:00:00:00:01 dev tu0 nud permanent
             mount -t bpf bpf {bpf}",
            bpf = dir.display()
        ));
        let sys = |what: &str| sh(&format!("ip netns exec {n} cat /sys/class/net/{what}"));
        let index = |dev: &str| {
            sys(&format!("{dev}/ifindex"))
                .trim()
                .parse::<u32>()
                .expect("ifindex")
        };
        let (endpoint_if, uplink_if, bridge_if) = (index("tv0"), index("tu0"), index("tb0"));
        let uplink_mac = mac(&sys("tu0/address"));
        let bridge_mac = mac(&sys("tb0/address"));
        cleanup.home = Some(File::open("/proc/thread-self/ns/net").expect("own netns"));
        setns(
            File::open(format!("/run/netns/{n}")).expect("lab netns"),
            CloneFlags::CLONE_NEWNET,
        )
        .expect("entering the lab netns");

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _in_rt = rt.enter();
        let cfg = NetConfig {
            subnet_be: addr_be(Ipv4Addr::new(10, 90, 0, 0)),
            mask_be: addr_be(Ipv4Addr::new(255, 255, 255, 0)),
            gateway_be: addr_be(GATEWAY.into()),
            uplink_addr_be: addr_be(UPLINK.into()),
            uplink_ifindex: uplink_if,
            bridge_ifindex: bridge_if,
            nat_port_min: 32768,
            nat_port_max: 60999,
            bridge_mac,
            ..NetConfig::default()
        };
        let mut dp = Datapath::load(&dir, cfg, ct_max).expect("loading the data path");
        dp.add_endpoint(endpoint_if, ENDPOINT.into(), ENDPOINT_MAC, 0, true)
            .expect("endpoint");
        dp.set_host_addrs(&[UPLINK.into(), GATEWAY.into()], &[GATEWAY.into()])
            .expect("host addresses");
        dp.publish(&published_rule().map_entries(ENDPOINT.into()))
            .expect("publishing");
        Lab {
            dp,
            endpoint_if,
            bridge_if,
            spare_if: index("tv1"),
            uplink_if,
            uplink_mac,
            bridge_mac,
            cfg,
            _rt: rt,
            _cleanup: cleanup,
        }
    }

    /// Makes the lab dual-stack: IPv6 on the bridge and the uplink, the
    /// endpoint at [`ENDPOINT6`] with its neighbour entry, the world's
    /// too, the host's addresses, and the published port on `::` as well.
    pub fn with_ipv6(&mut self) {
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let v6 = |a: [u8; 16]| std::net::Ipv6Addr::from(a);
        sh(&format!(
            "set -e
             sysctl -qw net.ipv6.conf.tb0.disable_ipv6=0 net.ipv6.conf.tu0.disable_ipv6=0
             sysctl -qw net.ipv6.conf.tb0.forwarding=1
             ip addr add {gw}/64 dev tb0 nodad
             ip addr add {up}/64 dev tu0 nodad
             ip -6 route add default via {world} dev tu0
             ip neigh add {world} lladdr {world_mac} dev tu0 nud permanent
             ip neigh add {ep} lladdr {ep_mac} dev tb0 nud permanent",
            gw = v6(GATEWAY6),
            up = v6(UPLINK6),
            world = v6(WORLD6),
            world_mac = mac(WORLD_MAC),
            ep = v6(ENDPOINT6),
            ep_mac = mac(ENDPOINT_MAC),
        ));
        self.dp
            .add_endpoint6(self.endpoint_if, ENDPOINT6.into(), ENDPOINT_MAC, 0)
            .expect("IPv6 endpoint");
        self.dp
            .set_host_addrs6(&[UPLINK6.into()], &[GATEWAY6.into()], Some(UPLINK6.into()))
            .expect("host IPv6 addresses");
        self.dp
            .publish6(&published_rule().map_entries6(ENDPOINT6.into()))
            .expect("publishing over IPv6");
    }

    /// Runs `program` once on `packet` arriving on `ifindex`.
    pub fn run(&mut self, program: &str, ifindex: u32, packet: &[u8]) -> (i32, Vec<u8>) {
        let out = self
            .dp
            .test_run(program, ifindex, packet, 1)
            .expect("test run");
        (out.action, out.packet)
    }

    /// The endpoint's veth program on a packet the endpoint sent.
    pub fn sent_by_endpoint(&mut self, packet: &[u8]) -> (i32, Vec<u8>) {
        self.run(programs::ENDPOINT_INGRESS, self.endpoint_if, packet)
    }

    /// The uplink's program on a packet from the world.
    pub fn arriving_from_world(&mut self, packet: &[u8]) -> (i32, Vec<u8>) {
        self.run(programs::UPLINK_INGRESS, self.uplink_if, packet)
    }

    /// Packets dropped for `reason` so far.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.dp.counters().drops().expect("drop counters")[reason.name()]
    }

    /// A frame the endpoint sends to its gateway, for the world.
    pub fn endpoint_frame(&self) -> PacketBuilderStep<IpHeaders> {
        endpoint_frame(self.bridge_mac)
    }

    /// A frame from the world to `dst`.
    pub fn world_frame(&self, dst: [u8; 4]) -> PacketBuilderStep<IpHeaders> {
        PacketBuilder::ethernet2(WORLD_MAC, self.uplink_mac).ipv4(WORLD, dst, 64)
    }
}

/// The lab's published rule: host port [`PUBLISHED_PORT`] to the
/// endpoint's port 80, TCP, as `-p` resolves it.
fn published_rule() -> PublishedPort {
    let spec: PortSpec = format!("{PUBLISHED_PORT}:80").parse().expect("spec");
    let published = assign_host_ports(
        &[spec],
        &[],
        PortRange {
            start: 32768,
            end: 60999,
        },
        |_| Ok::<(), netplane::logic::Error>(()),
    )
    .expect("host port");
    published.into_iter().next().expect("one rule")
}

/// A frame the endpoint sends to the bridge `bridge_mac`, for the world.
pub fn endpoint_frame(bridge_mac: [u8; 6]) -> PacketBuilderStep<IpHeaders> {
    PacketBuilder::ethernet2(ENDPOINT_MAC, bridge_mac).ipv4(ENDPOINT, WORLD, 64)
}

/// A TCP SYN.
pub fn tcp_syn(step: PacketBuilderStep<IpHeaders>, sport: u16, dport: u16) -> Vec<u8> {
    let b = step.tcp(sport, dport, 1000, 65535).syn();
    let mut v = Vec::with_capacity(b.size(0));
    b.write(&mut v, &[]).expect("building a TCP packet");
    v
}

/// A TCP segment with `flags` (etherparse's builder setters by name).
pub fn tcp(step: PacketBuilderStep<IpHeaders>, sport: u16, dport: u16, flags: &str) -> Vec<u8> {
    let mut b = step.tcp(sport, dport, 1000, 65535);
    for f in flags.split('|') {
        b = match f {
            "SYN" => b.syn(),
            "ACK" => b.ack(1),
            "FIN" => b.fin(),
            "RST" => b.rst(),
            other => panic!("flag {other}"),
        };
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("building a TCP packet");
    v
}

/// A UDP datagram.
pub fn udp(step: PacketBuilderStep<IpHeaders>, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = step.udp(sport, dport);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("building a UDP packet");
    v
}
