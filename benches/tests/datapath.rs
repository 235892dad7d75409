//! The eBPF programs one packet at a time under BPF_PROG_TEST_RUN: packets
//! built with etherparse, maps seeded through the daemon's own map code,
//! output checked field by field and map state checked after.

use netplane_common::abi::addr_be;
use std::net::Ipv4Addr;

use etherparse::{
    Icmpv4Type, Icmpv6Type, IpHeaders, IpNumber, PacketBuilder, PacketBuilderStep,
    icmpv4::DestUnreachableHeader, icmpv6::DestUnreachableCode,
};
use netplane::{kernel::datapath::Role, logic::conntrack};
use netplane_benches::lab::{
    ENDPOINT, ENDPOINT_MAC, ENDPOINT6, GATEWAY, GATEWAY6, Lab, PUBLISHED_PORT, TC_ACT_OK,
    TC_ACT_REDIRECT, TC_ACT_SHOT, UPLINK, UPLINK6, WORLD, WORLD_MAC, WORLD6, XDP_PASS,
    XDP_REDIRECT, tcp, tcp_syn, udp,
};
use netplane_common::{
    abi::{
        BRIDGE_NETWORK_IDS, DropReason, NET_FLAG_ENCAP_GRE, NET_FLAG_ICC_DISABLED,
        NET_FLAG_INTERNAL, NET_FLAG_NETWORKS, NET_FLAG_OVERLAY, NetConfig, NetworkPolicy,
        OverlayPeer, programs,
    },
    gre,
    vxlan::{OVERHEAD, Outer, write_outer_headers},
};

/// Ones' complement sum of 16-bit big-endian words.
fn sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

fn folds_to_ffff(mut s: u32) -> bool {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s == 0xffff
}

/// The fields of an IPv4 packet after an Ethernet header, checksums
/// verified from scratch.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    sport: u16,
    dport: u16,
}

fn seen(frame: &[u8]) -> Seen {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    assert!(folds_to_ffff(sum(&ip[..ihl])), "IPv4 header checksum");
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &ip[ihl..total];
    let proto = ip[9];
    let pseudo = sum(&ip[12..20]) + u32::from(proto) + l4.len() as u32;
    match proto {
        6 => assert!(folds_to_ffff(pseudo + sum(l4)), "TCP checksum"),
        17 if l4[6..8] != [0, 0] => assert!(folds_to_ffff(pseudo + sum(l4)), "UDP checksum"),
        1 => assert!(folds_to_ffff(sum(l4)), "ICMP checksum"),
        _ => {}
    }
    Seen {
        dst_mac: frame[0..6].try_into().unwrap(),
        src_mac: frame[6..12].try_into().unwrap(),
        src: ip[12..16].try_into().unwrap(),
        dst: ip[16..20].try_into().unwrap(),
        ttl: ip[8],
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
    }
}

/// A packet of the world's, routed (TTL down by one) from the bridge into
/// the endpoint's veth, between ports `sport` and `dport`.
fn from_world_to_endpoint(lab: &Lab, sport: u16, dport: u16) -> Seen {
    Seen {
        dst_mac: ENDPOINT_MAC,
        src_mac: lab.bridge_mac,
        src: WORLD,
        dst: ENDPOINT,
        ttl: 63,
        sport,
        dport,
    }
}

#[test]
fn masquerade_rewrites_the_source_and_its_reply_comes_back() {
    let mut lab = Lab::new(1024);
    let (action, out) = lab.sent_by_endpoint(&tcp_syn(lab.endpoint_frame(), 40000, 80));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(
        seen(&out),
        Seen {
            dst_mac: WORLD_MAC,
            src_mac: lab.uplink_mac,
            src: UPLINK,
            dst: WORLD,
            ttl: 63,
            sport: 40000,
            dport: 80,
        }
    );
    let flows = lab.dp.flows().unwrap();
    assert_eq!(flows.len(), 2, "one entry per direction: {flows:?}");
    assert!(
        conntrack::expired(&flows, 0, &conntrack::Timeouts::default()).is_empty(),
        "both entries belong to one live flow"
    );

    let reply = {
        let b = lab
            .world_frame(UPLINK)
            .tcp(80, 40000, 5000, 65535)
            .syn()
            .ack(1001);
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    };
    let (action, out) = lab.arriving_from_world(&reply);
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(seen(&out), from_world_to_endpoint(&lab, 80, 40000));
    let nat = lab.dp.counters().nat_counters(0).unwrap();
    assert_eq!(nat.0, 2, "masquerade counted both packets");
}

#[test]
fn a_taken_source_port_is_replaced_and_a_free_one_kept() {
    let mut lab = Lab::new(1024);
    let (action, out) = lab.sent_by_endpoint(&udp(lab.endpoint_frame(), 40000, 53, b"query"));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(seen(&out).sport, 40000, "the own port is kept when free");

    // A second endpoint, same source port, same server: on the wire the
    // two flows would be one, so the second gets another port.
    let second_mac = [0x02, 0x42, 10, 90, 0, 3];
    let second_if = lab.spare_if;
    lab.dp
        .add_endpoint(second_if, Ipv4Addr::new(10, 90, 0, 3), second_mac, 0, false)
        .unwrap();
    let packet = udp(
        PacketBuilder::ethernet2(second_mac, lab.bridge_mac).ipv4([10, 90, 0, 3], WORLD, 64),
        40000,
        53,
        b"query",
    );
    let (action, out) = lab.run(programs::ENDPOINT_INGRESS, second_if, &packet);
    assert_eq!(action, TC_ACT_REDIRECT);
    let s = seen(&out);
    assert_eq!(s.src, UPLINK);
    assert!(
        (32768..=60999).contains(&s.sport),
        "a new port from the range: {s:?}"
    );
    assert_eq!(lab.dp.flows().unwrap().len(), 4);
}

#[test]
fn udp_without_checksum_stays_without() {
    let mut lab = Lab::new(1024);
    let mut packet = udp(lab.endpoint_frame(), 5001, 53, b"query");
    packet[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let (action, out) = lab.sent_by_endpoint(&packet);
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(seen(&out).src, UPLINK);
    assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0], "zero means none");
}

#[test]
fn published_ports_translate_the_destination_and_keep_the_client() {
    let mut lab = Lab::new(1024);
    let (action, out) = lab.arriving_from_world(&tcp_syn(lab.world_frame(UPLINK), 5555, 8080));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(seen(&out), from_world_to_endpoint(&lab, 5555, 80));
    // The endpoint's answer leaves as the published address and port.
    let answer = {
        let b = lab.endpoint_frame().tcp(80, 5555, 1, 65535).syn().ack(1001);
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    };
    let (action, out) = lab.sent_by_endpoint(&answer);
    assert_eq!(action, TC_ACT_REDIRECT);
    let s = seen(&out);
    assert_eq!(
        (s.src, s.sport, s.dst, s.dport),
        (UPLINK, 8080, WORLD, 5555)
    );

    // An unpublished port of the host is the host's business.
    let (action, out) = lab.arriving_from_world(&tcp_syn(lab.world_frame(UPLINK), 5555, 22));
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(seen(&out).dport, 22);
}

#[test]
fn icmp_errors_are_translated_with_the_quoted_packet() {
    let mut lab = Lab::new(1024);
    let (_, sent) = lab.sent_by_endpoint(&udp(lab.endpoint_frame(), 41000, 9, b"x"));
    let quoted = &sent[14..];
    // The world's "port unreachable" quotes the masqueraded datagram.
    let b = lab
        .world_frame(UPLINK)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Port,
        ));
    let mut error = Vec::new();
    b.write(&mut error, quoted).unwrap();
    let (action, out) = lab.arriving_from_world(&error);
    assert_eq!(action, TC_ACT_REDIRECT);
    let s = seen(&out);
    assert_eq!((s.src, s.dst, s.dst_mac), (WORLD, ENDPOINT, ENDPOINT_MAC));
    let inner = &out[14 + 20 + 8..];
    assert!(folds_to_ffff(sum(&inner[..20])), "quoted IPv4 checksum");
    assert_eq!(
        &inner[12..16],
        &ENDPOINT,
        "quoted source is the endpoint again"
    );
    assert_eq!(&inner[16..20], &WORLD);
    assert_eq!(u16::from_be_bytes([inner[20], inner[21]]), 41000);
    let udp_len = u32::from(u16::from_be_bytes([inner[24], inner[25]]));
    let pseudo = sum(&inner[12..20]) + u32::from(u8::from(IpNumber::UDP)) + udp_len;
    assert!(
        folds_to_ffff(pseudo + sum(&inner[20..])),
        "quoted UDP checksum"
    );
}

#[test]
fn spoofed_truncated_and_fragmented_packets_are_dropped_with_a_reason() {
    let mut lab = Lab::new(1024);
    let spoofed = tcp_syn(
        PacketBuilder::ethernet2(ENDPOINT_MAC, lab.bridge_mac).ipv4([10, 90, 0, 77], WORLD, 64),
        1,
        80,
    );
    assert_eq!(lab.sent_by_endpoint(&spoofed).0, TC_ACT_SHOT);
    assert_eq!(lab.drops(DropReason::Spoofed), 1);
    let other_mac = tcp_syn(
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], lab.bridge_mac).ipv4(ENDPOINT, WORLD, 64),
        1,
        80,
    );
    assert_eq!(lab.sent_by_endpoint(&other_mac).0, TC_ACT_SHOT);
    assert_eq!(lab.drops(DropReason::Spoofed), 2);

    // The TCP header stops short: the program must not read past the end.
    let whole = tcp_syn(lab.endpoint_frame(), 1, 80);
    assert_eq!(lab.sent_by_endpoint(&whole[..14 + 20 + 10]).0, TC_ACT_SHOT);
    assert_eq!(lab.drops(DropReason::Truncated), 1);
    // (A cut IPv4 header takes the same path; BPF_PROG_TEST_RUN itself
    // refuses such a packet with EINVAL, so it cannot be shown here.)

    // A later fragment of a datagram whose first fragment was never seen
    // has no ports to go by: it must not leave untranslated.
    let later = fragment(
        &udp(lab.endpoint_frame(), 1, 53, b"rest of a datagram"),
        0x0010,
    );
    assert_eq!(lab.sent_by_endpoint(&later).0, TC_ACT_SHOT);
    assert_eq!(lab.drops(DropReason::Fragment), 1);
}

/// `packet` with the IPv4 fragment field set to `frag` (flags and offset)
/// and its header checksum made right again (also after other edits).
fn fragment(packet: &[u8], frag: u16) -> Vec<u8> {
    let mut p = packet.to_vec();
    p[14 + 6..14 + 8].copy_from_slice(&frag.to_be_bytes());
    p[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let ihl = usize::from(p[14] & 0x0f) * 4;
    let mut check = sum(&p[14..14 + ihl]);
    while check > 0xffff {
        check = (check & 0xffff) + (check >> 16);
    }
    p[14 + 10..14 + 12].copy_from_slice(&(!(check as u16)).to_be_bytes());
    p
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let mut lab = Lab::new(1024);
    const MF: u16 = 0x2000;
    // Same identification (etherparse writes 0) for both fragments.
    let first = fragment(&udp(lab.endpoint_frame(), 40006, 53, &[7; 64]), MF);
    let (action, out) = lab.sent_by_endpoint(&first);
    assert_eq!(action, TC_ACT_REDIRECT);
    assert!(folds_to_ffff(sum(&out[14..34])));
    assert_eq!(&out[14 + 12..14 + 16], &UPLINK);
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), 40006);

    let later = fragment(&udp(lab.endpoint_frame(), 0, 0, &[7; 64]), 0x0003);
    let (action, out) = lab.sent_by_endpoint(&later);
    assert_eq!(
        action, TC_ACT_REDIRECT,
        "translated like its first fragment"
    );
    assert!(folds_to_ffff(sum(&out[14..34])), "IPv4 header checksum");
    assert_eq!(&out[14 + 12..14 + 16], &UPLINK);
    assert_eq!(&out[34..], &later[34..], "the payload is not touched");
    assert_eq!(lab.drops(DropReason::Fragment), 0);
}

#[test]
fn a_full_table_refuses_new_flows_and_keeps_existing_ones() {
    // Room for two flows.
    let mut lab = Lab::new(4);
    for sport in [1001, 1002] {
        assert_eq!(
            lab.sent_by_endpoint(&tcp_syn(lab.endpoint_frame(), sport, 80))
                .0,
            TC_ACT_REDIRECT
        );
    }
    assert_eq!(
        lab.sent_by_endpoint(&tcp_syn(lab.endpoint_frame(), 1003, 80))
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(lab.drops(DropReason::CtFull), 1);
    assert_eq!(
        lab.dp.flows().unwrap().len(),
        4,
        "no half-written flow is left"
    );
    let (action, out) = lab.sent_by_endpoint(&tcp_syn(lab.endpoint_frame(), 1001, 80));
    assert_eq!(action, TC_ACT_REDIRECT, "existing flows are untouched");
    assert_eq!(seen(&out).src, UPLINK);
}

#[test]
fn tagged_frames_belong_to_the_vlan_device_and_are_left_alone() {
    // The kernel strips the tag of a VLAN device's own frames before tc
    // runs on it; a tag still in the data means the frame is for a VLAN
    // device above the uplink, which netplane does not manage.
    let mut lab = Lab::new(1024);
    let untagged = tcp_syn(lab.world_frame(UPLINK), 5555, 8080);
    let mut tagged = untagged[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
    tagged.extend_from_slice(&untagged[12..]);
    let (action, out) = lab.arriving_from_world(&tagged);
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(out, tagged, "not a byte changed");
    assert!(lab.dp.flows().unwrap().is_empty());
}

#[test]
fn ip_options_are_skipped_over() {
    let mut lab = Lab::new(1024);
    let plain = tcp_syn(lab.endpoint_frame(), 42000, 80);
    // Four bytes of options (NOP NOP NOP EOL): a 24-byte header.
    let mut with_options = plain[..34].to_vec();
    with_options.extend_from_slice(&[1, 1, 1, 0]);
    with_options.extend_from_slice(&plain[34..]);
    with_options[14] = 0x46;
    let total = u16::from_be_bytes([with_options[16], with_options[17]]) + 4;
    with_options[16..18].copy_from_slice(&total.to_be_bytes());
    let with_options = fragment(&with_options[..], 0x4000);
    let (action, out) = lab.sent_by_endpoint(&with_options);
    assert_eq!(action, TC_ACT_REDIRECT);
    let s = seen(&out);
    assert_eq!((s.src, s.sport, s.dport), (UPLINK, 42000, 80));
    assert_eq!(&out[34..38], &[1, 1, 1, 0], "options untouched");
}

#[test]
fn counting_programs_count_and_pass() {
    let mut lab = Lab::new(1024);
    lab.dp.attach("tb0", Role::Counted).unwrap();
    let bridge_if = lab.bridge_if;
    let packet = tcp_syn(lab.endpoint_frame(), 1, 80);
    for program in [programs::COUNT_INGRESS, programs::COUNT_EGRESS] {
        let (action, out) = lab.run(program, bridge_if, &packet);
        assert_eq!(action, TC_ACT_OK);
        assert_eq!(out, packet);
    }
    let t = lab.dp.counters().traffic("tb0").unwrap();
    assert_eq!((t.rx_packets, t.tx_packets), (1, 1));
    assert_eq!(t.rx_bytes, packet.len() as u64);
}

/// In the overlay tests: another host's lease, held by the world's address
/// (whose MAC the lab's uplink knows), and an endpoint in it.
const PEER_LEASE: [u8; 4] = [10, 201, 2, 0];
const REMOTE_ENDPOINT: [u8; 4] = [10, 201, 2, 3];
const REMOTE_ENDPOINT_MAC: [u8; 6] = [0x02, 0x42, 10, 201, 2, 3];
const VNI: u32 = 42;

fn overlay_lab() -> Lab {
    let mut lab = Lab::new(1024);
    let cfg = NetConfig {
        flags: lab.cfg.flags | NET_FLAG_OVERLAY | NET_FLAG_NETWORKS,
        ..lab.cfg
    };
    lab.dp.set_config(cfg).unwrap();
    // The lab's endpoint is on the overlay.
    lab.dp
        .add_endpoint(lab.endpoint_if, ENDPOINT.into(), ENDPOINT_MAC, VNI, true)
        .unwrap();
    lab.dp
        .set_overlay_routes(&[(
            PEER_LEASE.into(),
            OverlayPeer {
                vtep_be: addr_be(WORLD.into()),
                vni: VNI,
            },
        )])
        .unwrap();
    lab
}

/// A UDP packet the lab's endpoint sends to an endpoint on another host.
fn to_remote_endpoint(lab: &Lab) -> Vec<u8> {
    udp(
        PacketBuilder::ethernet2(ENDPOINT_MAC, lab.bridge_mac).ipv4(ENDPOINT, REMOTE_ENDPOINT, 64),
        5000,
        6000,
        b"overlay",
    )
}

#[test]
fn overlay_frames_leave_in_vxlan_with_the_outer_headers_a_vtep_expects() {
    let mut lab = overlay_lab();
    let inner = to_remote_endpoint(&lab);
    let (action, out) = lab.sent_by_endpoint(&inner);
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(out.len(), inner.len() + OVERHEAD);
    let sport = u16::from_be_bytes([out[34], out[35]]);
    assert!(sport >= 49152, "source port {sport} from the flow hash");
    let mut outer = [0; OVERHEAD];
    write_outer_headers(
        &Outer {
            src_mac: lab.uplink_mac,
            dst_mac: WORLD_MAC,
            src_be: addr_be(UPLINK.into()),
            dst_be: addr_be(WORLD.into()),
            sport,
            vni: VNI,
        },
        inner.len() as u16,
        &mut outer,
    );
    assert_eq!(out[..OVERHEAD], outer);
    assert!(folds_to_ffff(sum(&out[14..34])), "outer IPv4 checksum");
    // Inside: Ethernet to the remote endpoint, from the sender, and the
    // packet itself untouched.
    assert_eq!(out[OVERHEAD..OVERHEAD + 6], REMOTE_ENDPOINT_MAC);
    assert_eq!(out[OVERHEAD + 6..OVERHEAD + 12], ENDPOINT_MAC);
    assert_eq!(out[OVERHEAD + 12..], inner[12..]);
    assert!(
        lab.dp.flows().unwrap().is_empty(),
        "overlay traffic is not tracked"
    );
}

#[test]
fn vxlan_from_the_lease_holder_reaches_the_endpoint_and_nothing_else_does() {
    let mut lab = overlay_lab();
    let inner = |src: [u8; 4]| remote_udp(src, ENDPOINT);
    let uplink_mac = lab.uplink_mac;
    let vxlan = |vtep: [u8; 4], vni: u32, inner: &[u8]| vxlan_from(uplink_mac, vtep, vni, inner);
    let good = inner(REMOTE_ENDPOINT);
    let (action, out) = lab.arriving_from_world(&vxlan(WORLD, VNI, &good));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(out[..6], ENDPOINT_MAC);
    assert_eq!(out[6..12], lab.bridge_mac);
    assert_eq!(out[12..], good[12..]);
    let uplink = lab.uplink_if;
    let (action, fast) = lab.run(programs::UPLINK_XDP, uplink, &vxlan(WORLD, VNI, &good));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(fast, out, "XDP and tc decapsulate alike");

    let wrong = [
        vxlan(WORLD, VNI + 1, &good),
        vxlan([198, 18, 0, 9], VNI, &good),
        vxlan(WORLD, VNI, &inner([10, 201, 3, 3])),
    ];
    for frame in &wrong {
        assert_eq!(
            lab.run(programs::UPLINK_XDP, uplink, frame),
            (XDP_PASS, frame.clone()),
            "XDP leaves what it does not take to tc"
        );
        assert_eq!(lab.arriving_from_world(frame).0, TC_ACT_SHOT);
    }
    assert_eq!(
        lab.drops(DropReason::OverlayUnknownPeer),
        wrong.len() as u64
    );
}

/// [`overlay_lab`] with the overlay's frames in GRE: the network's
/// policy says so, and the host's configuration that it has such a
/// network.
fn gre_lab() -> Lab {
    let mut lab = overlay_lab();
    let policy = NetworkPolicy {
        flags: NET_FLAG_ENCAP_GRE,
        ..NetworkPolicy::UNKNOWN
    };
    lab.dp.set_networks(&[(VNI, policy)]).unwrap();
    let cfg = NetConfig {
        flags: lab.cfg.flags | NET_FLAG_OVERLAY | NET_FLAG_NETWORKS | NET_FLAG_ENCAP_GRE,
        ..lab.cfg
    };
    lab.dp.set_config(cfg).unwrap();
    lab
}

/// `inner` in GRE from `vtep` keyed `key`, to the lab's uplink (whose MAC
/// is `uplink_mac`).
fn gre_from(uplink_mac: [u8; 6], vtep: [u8; 4], key: u32, inner: &[u8]) -> Vec<u8> {
    let mut outer = [0; gre::OVERHEAD];
    gre::write_outer_headers(
        &Outer {
            src_mac: WORLD_MAC,
            dst_mac: uplink_mac,
            src_be: addr_be(vtep.into()),
            dst_be: addr_be(UPLINK.into()),
            vni: key,
            ..Outer::default()
        },
        inner.len() as u16,
        &mut outer,
    );
    [outer.as_slice(), inner].concat()
}

#[test]
fn gre_carries_the_overlay_and_is_taken_apart_only_from_the_lease_holder() {
    let mut lab = gre_lab();
    let inner = to_remote_endpoint(&lab);
    let (action, out) = lab.sent_by_endpoint(&inner);
    assert_eq!(action, TC_ACT_REDIRECT);
    let outer = &gre_from(WORLD_MAC, UPLINK, VNI, &inner)[..gre::OVERHEAD];
    // As a peer would send it back: the same headers, addresses swapped.
    assert_eq!(out[14 + 20..gre::OVERHEAD], outer[14 + 20..], "GRE header");
    assert_eq!(out[14 + 9], gre::IPPROTO_GRE);
    assert_eq!(out[14 + 12..14 + 20], [UPLINK, WORLD].concat());
    assert!(folds_to_ffff(sum(&out[14..34])), "outer IPv4 checksum");
    assert_eq!(out[gre::OVERHEAD..gre::OVERHEAD + 6], REMOTE_ENDPOINT_MAC);
    assert_eq!(out[gre::OVERHEAD + 12..], inner[12..]);

    let uplink_mac = lab.uplink_mac;
    let gre = |vtep: [u8; 4], key: u32, inner: &[u8]| gre_from(uplink_mac, vtep, key, inner);
    let good = remote_udp(REMOTE_ENDPOINT, ENDPOINT);
    let (action, out) = lab.arriving_from_world(&gre(WORLD, VNI, &good));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(out[..6], ENDPOINT_MAC);
    assert_eq!(out[6..12], lab.bridge_mac);
    assert_eq!(out[12..], good[12..]);
    let uplink = lab.uplink_if;
    let frame = gre(WORLD, VNI, &good);
    assert_eq!(
        lab.run(programs::UPLINK_XDP, uplink, &frame),
        (XDP_PASS, frame.clone()),
        "XDP leaves GRE to tc"
    );
    let wrong = [
        gre(WORLD, VNI + 1, &good),
        gre([198, 18, 0, 9], VNI, &good),
        gre(WORLD, VNI, &remote_udp([10, 201, 3, 3], ENDPOINT)),
    ];
    for frame in &wrong {
        assert_eq!(lab.arriving_from_world(frame).0, TC_ACT_SHOT);
    }
    assert_eq!(
        lab.drops(DropReason::OverlayUnknownPeer),
        wrong.len() as u64
    );
}

/// A UDP packet from `src` in another host's lease to `dst`.
fn remote_udp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    udp(
        PacketBuilder::ethernet2(REMOTE_ENDPOINT_MAC, ENDPOINT_MAC).ipv4(src, dst, 64),
        6000,
        5000,
        b"reply",
    )
}

/// `inner` in VXLAN from `vtep` with `vni`, to the lab's uplink (whose
/// MAC is `uplink_mac`).
fn vxlan_from(uplink_mac: [u8; 6], vtep: [u8; 4], vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut outer = [0; OVERHEAD];
    write_outer_headers(
        &Outer {
            src_mac: WORLD_MAC,
            dst_mac: uplink_mac,
            src_be: addr_be(vtep.into()),
            dst_be: addr_be(UPLINK.into()),
            sport: 50000,
            vni,
        },
        inner.len() as u16,
        &mut outer,
    );
    [outer.as_slice(), inner].concat()
}

#[test]
fn endpoints_of_different_networks_do_not_meet() {
    let mut lab = overlay_lab();
    // A second endpoint here, on the bridge network.
    let (bridged, bridged_mac) = ([10, 90, 0, 3], [0x02, 0x42, 10, 90, 0, 3]);
    lab.dp
        .add_endpoint(lab.spare_if, bridged.into(), bridged_mac, 0, false)
        .unwrap();
    let overlay_to_bridge = udp(
        PacketBuilder::ethernet2(ENDPOINT_MAC, lab.bridge_mac).ipv4(ENDPOINT, bridged, 64),
        1,
        2,
        b"x",
    );
    let spare_if = lab.spare_if;
    let bridge_to_overlay = udp(
        PacketBuilder::ethernet2(bridged_mac, lab.bridge_mac).ipv4(bridged, REMOTE_ENDPOINT, 64),
        1,
        2,
        b"x",
    );
    let remote_to_bridge = vxlan_from(
        lab.uplink_mac,
        WORLD,
        VNI,
        &remote_udp(REMOTE_ENDPOINT, bridged),
    );
    assert_eq!(lab.sent_by_endpoint(&overlay_to_bridge).0, TC_ACT_SHOT);
    assert_eq!(
        lab.run(programs::ENDPOINT_INGRESS, spare_if, &bridge_to_overlay)
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(lab.arriving_from_world(&remote_to_bridge).0, TC_ACT_SHOT);
    assert_eq!(lab.drops(DropReason::OtherNetwork), 3);
    assert_eq!(lab.drops(DropReason::OverlayUnknownPeer), 0);
}

/// The one flow in the lab's table, and what `ct ls` says of it.
fn only_flow(lab: &Lab) -> (conntrack::Flow, String, std::time::Duration) {
    let entries = lab.dp.flows().unwrap();
    let flows = conntrack::flows(&entries);
    assert_eq!(flows.len(), 1, "{flows:?}");
    let f = flows[0];
    let state = conntrack::state(f.key.proto, &f.entry, f.reply.as_ref()).to_string();
    let life = conntrack::lifetime(
        f.key.proto,
        &f.entry,
        f.reply.as_ref(),
        &conntrack::Timeouts::default(),
    );
    (f, state, life)
}

#[test]
fn a_syn_the_server_answered_stays_half_open_until_the_client_acknowledges() {
    let mut lab = Lab::new(1024);
    let t = conntrack::Timeouts::default();
    let syn = tcp(lab.world_frame(UPLINK), 5555, PUBLISHED_PORT, "SYN");
    assert_eq!(lab.arriving_from_world(&syn).0, TC_ACT_REDIRECT);
    let syn_ack = tcp(lab.endpoint_frame(), 80, 5555, "SYN|ACK");
    assert_eq!(lab.sent_by_endpoint(&syn_ack).0, TC_ACT_REDIRECT);
    // A spoofed client stops here: the SYN lifetime, not six hours.
    let (_, state, life) = only_flow(&lab);
    assert_eq!((state.as_str(), life), ("SYN_RECV", t.tcp_syn));

    let ack = tcp(lab.world_frame(UPLINK), 5555, PUBLISHED_PORT, "ACK");
    assert_eq!(lab.arriving_from_world(&ack).0, TC_ACT_REDIRECT);
    let (_, state, life) = only_flow(&lab);
    assert_eq!((state.as_str(), life), ("ESTABLISHED", t.tcp_established));
}

#[test]
fn only_a_syn_opens_a_flow_and_every_other_stray_segment_is_counted() {
    let mut lab = Lab::new(1024);
    for (i, flags) in ["ACK", "RST", "RST|ACK", "FIN|ACK", "SYN|ACK"]
        .iter()
        .enumerate()
    {
        let from_world = tcp(
            lab.world_frame(UPLINK),
            6000 + i as u16,
            PUBLISHED_PORT,
            flags,
        );
        assert_eq!(
            lab.arriving_from_world(&from_world).0,
            TC_ACT_SHOT,
            "{flags}"
        );
        let from_endpoint = tcp(lab.endpoint_frame(), 41000 + i as u16, 80, flags);
        assert_eq!(
            lab.sent_by_endpoint(&from_endpoint).0,
            TC_ACT_SHOT,
            "{flags}"
        );
    }
    assert_eq!(lab.drops(DropReason::TcpNoFlow), 10);
    assert!(lab.dp.flows().unwrap().is_empty(), "no flow was opened");
    // The host's own connections on unpublished ports are not the data
    // path's to judge.
    let host_ack = tcp(lab.world_frame(UPLINK), 6100, 22, "ACK");
    assert_eq!(lab.arriving_from_world(&host_ack).0, TC_ACT_OK);
}

#[test]
fn fin_from_one_side_waits_both_close_and_a_new_syn_reopens_the_flow() {
    let mut lab = Lab::new(1024);
    let t = conntrack::Timeouts::default();
    let from_endpoint = |lab: &mut Lab, flags| {
        let p = tcp(lab.endpoint_frame(), 42000, 80, flags);
        assert_eq!(lab.sent_by_endpoint(&p).0, TC_ACT_REDIRECT, "{flags}");
    };
    let from_world = |lab: &mut Lab, flags| {
        let p = tcp(lab.world_frame(UPLINK), 80, 42000, flags);
        assert_eq!(lab.arriving_from_world(&p).0, TC_ACT_REDIRECT, "{flags}");
    };
    from_endpoint(&mut lab, "SYN");
    from_world(&mut lab, "SYN|ACK");
    from_endpoint(&mut lab, "ACK");
    assert_eq!(only_flow(&lab).1, "ESTABLISHED");
    from_endpoint(&mut lab, "FIN|ACK");
    let (_, state, life) = only_flow(&lab);
    assert_eq!((state.as_str(), life), ("FIN_WAIT", t.tcp_fin_wait));
    from_world(&mut lab, "FIN|ACK");
    let (_, state, life) = only_flow(&lab);
    assert_eq!((state.as_str(), life), ("TIME_WAIT", t.tcp_closing));

    // The same tuple again: a new connection, from its SYN.
    from_endpoint(&mut lab, "SYN");
    let (f, state, life) = only_flow(&lab);
    assert_eq!((state.as_str(), life), ("SYN_SENT", t.tcp_syn));
    assert_eq!(f.entry.flags, netplane_common::abi::CT_SEEN_SYN);
    assert_eq!(f.reply.unwrap().flags, netplane_common::abi::CT_REPLY);
    from_world(&mut lab, "SYN|ACK");
    from_endpoint(&mut lab, "ACK");
    assert_eq!(only_flow(&lab).1, "ESTABLISHED");

    // RST closes at once, from either side.
    from_world(&mut lab, "RST");
    let (_, state, life) = only_flow(&lab);
    assert_eq!((state.as_str(), life), ("CLOSE", t.tcp_closing));
}

#[test]
fn masquerade_keeps_no_port_below_its_range_nor_one_the_host_holds() {
    let mut lab = Lab::new(1024);
    let range = lab.cfg.nat_port_min..=lab.cfg.nat_port_max;
    for sport in [22, 80, 1023, 32767] {
        let (action, out) = lab.sent_by_endpoint(&tcp_syn(lab.endpoint_frame(), sport, 80));
        assert_eq!(action, TC_ACT_REDIRECT);
        let s = seen(&out);
        assert_ne!(s.sport, sport);
        assert!(range.contains(&s.sport), "{sport} left as {}", s.sport);
    }
    // Sockets of the host (this thread is in the lab's namespace): a
    // listener, and a UDP socket bound to the port.
    let listener = std::net::TcpListener::bind("0.0.0.0:40000").unwrap();
    let bound = std::net::UdpSocket::bind("0.0.0.0:40001").unwrap();
    let (action, out) = lab.sent_by_endpoint(&tcp_syn(lab.endpoint_frame(), 40000, 80));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_ne!(seen(&out).sport, 40000, "a host listener's port");
    let (action, out) = lab.sent_by_endpoint(&udp(lab.endpoint_frame(), 40001, 53, b"q"));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_ne!(seen(&out).sport, 40001, "a host UDP socket's port");
    // A free port in the range is still kept.
    let (_, out) = lab.sent_by_endpoint(&udp(lab.endpoint_frame(), 40002, 53, b"q"));
    assert_eq!(seen(&out).sport, 40002);
    drop((listener, bound));
}

#[test]
fn endpoints_send_ipv4_and_arp_only_and_the_uplink_reaches_no_gateway() {
    let mut lab = Lab::new(1024);
    let ipv6 = {
        let b = PacketBuilder::ethernet2(ENDPOINT_MAC, [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(
                [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                1,
            )
            .udp(5353, 5353);
        let mut v = Vec::new();
        b.write(&mut v, b"mdns").unwrap();
        v
    };
    assert_eq!(lab.sent_by_endpoint(&ipv6).0, TC_ACT_SHOT);
    // A tag left in the data (the kernel takes off the outer one).
    let plain = udp(lab.endpoint_frame(), 40000, 53, b"q");
    let mut tagged = plain[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
    tagged.extend_from_slice(&plain[12..]);
    assert_eq!(lab.sent_by_endpoint(&tagged).0, TC_ACT_SHOT);
    assert_eq!(lab.drops(DropReason::UnknownL3), 2);

    let dns = udp(lab.world_frame(GATEWAY), 5353, 53, b"query");
    assert_eq!(lab.arriving_from_world(&dns).0, TC_ACT_SHOT);
    let syn = tcp_syn(lab.world_frame(GATEWAY), 5353, 53);
    assert_eq!(lab.arriving_from_world(&syn).0, TC_ACT_SHOT);
    assert_eq!(lab.drops(DropReason::NotPublished), 2);
    // Ports published on every host address include the gateway's.
    let published = tcp_syn(lab.world_frame(GATEWAY), 5353, PUBLISHED_PORT);
    assert_eq!(lab.arriving_from_world(&published).0, TC_ACT_REDIRECT);
}

/// Makes the entries `which` picks look idle since boot; how many.
fn age(
    lab: &mut Lab,
    which: impl Fn(&netplane_common::abi::FlowKey, &netplane_common::abi::CtEntry) -> bool,
) -> usize {
    let aged: Vec<_> = lab
        .dp
        .flows()
        .unwrap()
        .into_iter()
        .filter(|(k, e)| which(k, e))
        .map(|(k, mut e)| {
            e.last_seen_ns = 0;
            (k, e)
        })
        .collect();
    lab.dp.insert_flows(&aged).unwrap();
    aged.len()
}

#[test]
fn a_flow_a_packet_refreshed_after_the_collector_read_the_table_is_kept() {
    let mut lab = Lab::new(1024);
    let t = conntrack::Timeouts::default();
    let syn = tcp_syn(lab.endpoint_frame(), 42001, 80);
    assert_eq!(lab.sent_by_endpoint(&syn).0, TC_ACT_REDIRECT);
    // Make the flow look idle since boot, as the collector's dump sees it.
    age(&mut lab, |_, _| true);
    // Any time past the SYN lifetime after boot.
    let later = 10 * t.tcp_syn.as_nanos() as u64;
    let doomed = conntrack::expired(&lab.dp.flows().unwrap(), later, &t);
    assert_eq!(doomed.len(), 2, "both directions look expired");

    // A packet of the flow arrives before the delete.
    let again = tcp(lab.endpoint_frame(), 42001, 80, "SYN");
    assert_eq!(lab.sent_by_endpoint(&again).0, TC_ACT_REDIRECT);
    let fresh = lab.dp.flows_of(&doomed).unwrap();
    assert_eq!(fresh.len(), 2);
    let refreshed = fresh.iter().map(|(_, e)| e.last_seen_ns).max().unwrap();
    assert!(refreshed > 0, "the packet stamped the flow");
    assert!(
        conntrack::expired(&fresh, refreshed, &t).is_empty(),
        "read again, the flow is live and stays"
    );
}

#[test]
fn a_full_table_reclaims_expired_flows_by_itself_and_never_live_ones() {
    // Room for two flows, and the lifetimes a daemon would have written.
    let mut lab = Lab::new(4);
    lab.dp
        .set_ct_timeouts(conntrack::Timeouts::default().to_abi())
        .unwrap();
    for sport in [41001, 41002] {
        let syn = tcp_syn(lab.endpoint_frame(), sport, 80);
        assert_eq!(lab.sent_by_endpoint(&syn).0, TC_ACT_REDIRECT);
    }
    // The flow from 41001 idle since boot, as after a daemon that stopped
    // collecting; the one from 41002 live.
    let aged = age(&mut lab, |k, e| {
        k.sport_be == 41001u16.to_be() || e.dport_be == 41001u16.to_be()
    });
    assert_eq!(aged, 2);

    let third = tcp_syn(lab.endpoint_frame(), 41003, 80);
    let (action, out) = lab.sent_by_endpoint(&third);
    assert_eq!(action, TC_ACT_REDIRECT, "the expired flow made room");
    assert_eq!(seen(&out).sport, 41003);
    let mut left: Vec<u16> = conntrack::flows(&lab.dp.flows().unwrap())
        .iter()
        .map(|f| u16::from_be(f.key.sport_be))
        .collect();
    left.sort();
    assert_eq!(
        left,
        [41002, 41003],
        "the expired flow went, whole; the live one stayed"
    );
    assert_eq!(lab.dp.flows().unwrap().len(), 4);

    // Full of live flows: refused, nothing taken from them.
    let fourth = tcp_syn(lab.endpoint_frame(), 41004, 80);
    assert_eq!(lab.sent_by_endpoint(&fourth).0, TC_ACT_SHOT);
    assert_eq!(lab.drops(DropReason::CtFull), 1);
    assert_eq!(lab.dp.flows().unwrap().len(), 4);
}

#[test]
fn masquerade_finds_the_last_free_ports_of_a_crowded_range() {
    let mut lab = Lab::new(4096);
    // A range of 64 ports, 48 of them taken towards the server.
    let (min, max) = (41000u16, 41063u16);
    let mut cfg = lab.cfg;
    cfg.nat_port_min = min;
    cfg.nat_port_max = max;
    lab.dp.set_config(cfg).unwrap();
    let mut taken = Vec::new();
    for (i, port) in (min..)
        .step_by(4)
        .take(16)
        .flat_map(|p| [p, p + 1, p + 2])
        .enumerate()
    {
        let original = netplane_common::abi::FlowKey {
            saddr_be: addr_be(Ipv4Addr::new(10, 91, 0, i as u8 + 1)),
            daddr_be: addr_be(WORLD.into()),
            sport_be: 40000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let translated = netplane_common::abi::FlowKey {
            saddr_be: addr_be(UPLINK.into()),
            sport_be: port.to_be(),
            ..original
        };
        let mut pair = netplane_common::nat::FlowPair::default();
        netplane_common::nat::flow_entries(
            &original,
            &translated,
            0,
            0,
            netplane_common::nat::FirstPacket::default(),
            &mut pair,
        );
        taken.extend([(pair.fwd_key, pair.fwd), (pair.reply_key, pair.reply)]);
    }
    assert_eq!(taken.len(), 96);
    lab.dp.insert_flows(&taken).unwrap();

    // Twelve new flows (own ports outside the range, so each needs a
    // pick): every one finds one of the 16 free ports, none twice.
    let mut got = std::collections::BTreeSet::new();
    for sport in 0..12u16 {
        let (action, out) = lab.sent_by_endpoint(&tcp_syn(lab.endpoint_frame(), 2000 + sport, 80));
        assert_eq!(action, TC_ACT_REDIRECT, "new flow {sport}");
        let port = seen(&out).sport;
        assert!(
            (min..=max).contains(&port) && (port - min) % 4 == 3,
            "{port}"
        );
        assert!(got.insert(port), "{port} twice");
    }
    assert_eq!(lab.drops(DropReason::NatPortsExhausted), 0);
}

/// The lab's endpoint moved to a user-defined network 10.90.0.0/24 with
/// `flags`; a second endpoint at 10.90.0.3 on the same one.
fn local_network_lab(flags: u32) -> (Lab, [u8; 4]) {
    let mut lab = Lab::new(1024);
    let id = BRIDGE_NETWORK_IDS;
    let cfg = NetConfig {
        flags: lab.cfg.flags | NET_FLAG_NETWORKS,
        // The bridge network elsewhere: nothing of the lab's is on it.
        subnet_be: u32::from_ne_bytes([172, 17, 0, 0]),
        mask_be: u32::from_ne_bytes([255, 255, 0, 0]),
        ..lab.cfg
    };
    lab.dp.set_config(cfg).unwrap();
    lab.dp
        .set_networks(&[(
            id,
            NetworkPolicy {
                subnet_be: u32::from_ne_bytes([10, 90, 0, 0]),
                mask_be: u32::from_ne_bytes([255, 255, 255, 0]),
                gateway_be: u32::from_ne_bytes(GATEWAY),
                flags,
            },
        )])
        .unwrap();
    lab.dp
        .add_endpoint(lab.endpoint_if, ENDPOINT.into(), ENDPOINT_MAC, id, false)
        .unwrap();
    let neighbour = [10, 90, 0, 3];
    lab.dp
        .add_endpoint(
            lab.spare_if,
            neighbour.into(),
            [0x02, 0x42, 10, 90, 0, 3],
            id,
            false,
        )
        .unwrap();
    (lab, neighbour)
}

#[test]
fn an_internal_network_keeps_its_endpoints_to_its_subnet() {
    let (mut lab, neighbour) = local_network_lab(NET_FLAG_INTERNAL);
    let to = |daddr: [u8; 4]| {
        udp(
            PacketBuilder::ethernet2(ENDPOINT_MAC, lab.bridge_mac).ipv4(ENDPOINT, daddr, 64),
            1,
            53,
            b"x",
        )
    };
    let (to_world, to_gateway, to_neighbour) = (to(WORLD), to(GATEWAY), to(neighbour));
    assert_eq!(lab.sent_by_endpoint(&to_world).0, TC_ACT_SHOT);
    assert_eq!(lab.drops(DropReason::Internal), 1);
    // The gateway (the embedded DNS) and the network's endpoints stay.
    assert_eq!(lab.sent_by_endpoint(&to_gateway).0, TC_ACT_OK);
    assert_eq!(lab.sent_by_endpoint(&to_neighbour).0, TC_ACT_OK);
    assert_eq!(lab.drops(DropReason::Internal), 1);
    assert!(lab.dp.flows().unwrap().is_empty(), "nothing masqueraded");
}

#[test]
fn icc_false_on_a_user_network_holds_there_only() {
    let (mut lab, neighbour) = local_network_lab(NET_FLAG_ICC_DISABLED);
    let to_neighbour = udp(
        PacketBuilder::ethernet2(ENDPOINT_MAC, lab.bridge_mac).ipv4(ENDPOINT, neighbour, 64),
        1,
        2,
        b"x",
    );
    assert_eq!(lab.sent_by_endpoint(&to_neighbour).0, TC_ACT_SHOT);
    assert_eq!(lab.drops(DropReason::IccDenied), 1);
    // The same network without the flag: allowed.
    let (mut open, neighbour) = local_network_lab(0);
    let to_neighbour = udp(
        PacketBuilder::ethernet2(ENDPOINT_MAC, open.bridge_mac).ipv4(ENDPOINT, neighbour, 64),
        1,
        2,
        b"x",
    );
    assert_eq!(open.sent_by_endpoint(&to_neighbour).0, TC_ACT_OK);
    assert_eq!(open.drops(DropReason::IccDenied), 0);
}

/// An IPv6 frame from the endpoint's MAC to the bridge: `src` to `dst`,
/// first Next Header `next`, then `rest` (extension headers and upper
/// layer, checksums left zero: the programs do not verify them).
fn frame6(lab: &Lab, src: [u8; 16], dst: [u8; 16], next: u8, rest: &[u8]) -> Vec<u8> {
    let mut f = lab.bridge_mac.to_vec();
    f.extend_from_slice(&ENDPOINT_MAC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(rest);
    f
}

const UDP_TO_9: [u8; 8] = [0x13, 0x88, 0, 9, 0, 8, 0, 0];

#[test]
fn ipv6_from_an_endpoint_is_checked_sender_by_sender() {
    let mut lab = Lab::new(1024);
    let ll = netplane_common::packet::link_local_of(ENDPOINT_MAC);
    let peer: [u8; 16] = [0xfd, 0, 0, 0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
    let udp6 = |lab: &Lab, src| frame6(lab, src, peer, 17, &UDP_TO_9);

    // An endpoint of an IPv4-only network sends no IPv6 at all.
    assert_eq!(lab.sent_by_endpoint(&udp6(&lab, ENDPOINT6)).0, TC_ACT_SHOT);
    assert_eq!(lab.drops(DropReason::UnknownL3), 1);

    lab.dp
        .add_endpoint6(lab.endpoint_if, ENDPOINT6.into(), ENDPOINT_MAC, 0)
        .unwrap();
    for src in [ENDPOINT6, ll] {
        let (verdict, out) = lab.sent_by_endpoint(&udp6(&lab, src));
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, udp6(&lab, src), "passed untouched");
    }
    let mut forged = ENDPOINT6;
    forged[15] = 0x99;
    assert_eq!(lab.sent_by_endpoint(&udp6(&lab, forged)).0, TC_ACT_SHOT);
    assert_eq!(lab.drops(DropReason::Spoofed), 1);

    // Neighbour discovery: advertisements only for its own addresses, no
    // router advertisements, and DAD from the unspecified address.
    let all_nodes: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let na = |target: [u8; 16]| {
        let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
        icmp.extend_from_slice(&target);
        icmp
    };
    let (verdict, _) = lab.sent_by_endpoint(&frame6(&lab, ll, all_nodes, 58, &na(ENDPOINT6)));
    assert_eq!(verdict, TC_ACT_OK);
    let mut gateway6 = ENDPOINT6;
    gateway6[15] = 1;
    let (verdict, _) = lab.sent_by_endpoint(&frame6(&lab, ll, all_nodes, 58, &na(gateway6)));
    assert_eq!(verdict, TC_ACT_SHOT, "claiming the gateway's address");
    let ra = [134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(
        lab.sent_by_endpoint(&frame6(&lab, ll, all_nodes, 58, &ra))
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(lab.drops(DropReason::Spoofed), 3);
    let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&ENDPOINT6);
    let (verdict, _) = lab.sent_by_endpoint(&frame6(&lab, [0; 16], all_nodes, 58, &ns));
    assert_eq!(verdict, TC_ACT_OK, "duplicate address detection");

    // Extension headers: walked up to six, refused beyond; cut short, the
    // packet is truncated, never read past.
    let hop = |next: u8| [next, 0, 1, 4, 0, 0, 0, 0];
    let mut six = Vec::new();
    for _ in 0..5 {
        six.extend_from_slice(&hop(60));
    }
    six.extend_from_slice(&hop(17));
    six.extend_from_slice(&UDP_TO_9);
    let (verdict, _) = lab.sent_by_endpoint(&frame6(&lab, ENDPOINT6, peer, 60, &six));
    assert_eq!(verdict, TC_ACT_OK);
    let mut seven = hop(60).to_vec();
    seven.extend_from_slice(&six);
    assert_eq!(
        lab.sent_by_endpoint(&frame6(&lab, ENDPOINT6, peer, 60, &seven))
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(lab.drops(DropReason::UnknownExt), 1);
    let whole = frame6(&lab, ENDPOINT6, peer, 60, &six);
    assert_eq!(
        lab.sent_by_endpoint(&whole[..whole.len() - 5]).0,
        TC_ACT_SHOT
    );
    assert_eq!(lab.drops(DropReason::Truncated), 1);

    // An endpoint of another network, and --icc=false in its own.
    let mut elsewhere = ENDPOINT6;
    elsewhere[15] = 0x42;
    lab.dp
        .add_endpoint6(lab.spare_if, elsewhere.into(), [2, 0, 0, 0, 0, 0x42], 7)
        .unwrap();
    assert_eq!(
        lab.sent_by_endpoint(&frame6(&lab, ENDPOINT6, elsewhere, 17, &UDP_TO_9))
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(lab.drops(DropReason::OtherNetwork), 1);
    lab.dp
        .add_endpoint6(lab.spare_if, peer.into(), [2, 0, 0, 0, 0, 3], 0)
        .unwrap();
    assert_eq!(lab.sent_by_endpoint(&udp6(&lab, ENDPOINT6)).0, TC_ACT_OK);
    lab.dp
        .set_config(NetConfig {
            flags: NET_FLAG_ICC_DISABLED,
            ..lab.cfg
        })
        .unwrap();
    assert_eq!(lab.sent_by_endpoint(&udp6(&lab, ENDPOINT6)).0, TC_ACT_SHOT);
    assert_eq!(lab.drops(DropReason::IccDenied), 1);
    // The gateway and multicast stay reachable.
    let to_gateway = frame6(&lab, ENDPOINT6, gateway6, 17, &UDP_TO_9);
    assert_eq!(lab.sent_by_endpoint(&to_gateway).0, TC_ACT_OK);
}

/// The fields of an IPv6 packet after an Ethernet header (no extension
/// headers), its transport checksum verified from scratch over the
/// pseudo-header.
#[derive(Debug, PartialEq, Eq)]
struct Seen6 {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    hop_limit: u8,
    sport: u16,
    dport: u16,
}

fn seen6(frame: &[u8]) -> Seen6 {
    let ip = &frame[14..];
    let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let l4 = &ip[40..40 + len];
    let next = ip[6];
    let pseudo = sum(&ip[8..40]) + u32::from(next) + len as u32;
    match next {
        6 => assert!(folds_to_ffff(pseudo + sum(l4)), "TCP checksum"),
        17 => assert!(folds_to_ffff(pseudo + sum(l4)), "UDP checksum"),
        58 => assert!(folds_to_ffff(pseudo + sum(l4)), "ICMPv6 checksum"),
        _ => {}
    }
    let (sport, dport) = match next {
        // The echo identifier.
        58 => (u16::from_be_bytes([l4[4], l4[5]]), 0),
        _ => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
    };
    Seen6 {
        dst_mac: frame[0..6].try_into().unwrap(),
        src_mac: frame[6..12].try_into().unwrap(),
        src: ip[8..24].try_into().unwrap(),
        dst: ip[24..40].try_into().unwrap(),
        hop_limit: ip[7],
        sport,
        dport,
    }
}

/// An IPv6 packet built with etherparse: `build` gets the IP step.
fn packet6(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    build: impl FnOnce(PacketBuilderStep<IpHeaders>) -> Vec<u8>,
) -> Vec<u8> {
    build(PacketBuilder::ethernet2(src_mac, dst_mac).ipv6(src, dst, 64))
}

fn echo6(step: PacketBuilderStep<IpHeaders>, request: bool, id: u16) -> Vec<u8> {
    let b = if request {
        step.icmpv6_echo_request(id, 1)
    } else {
        step.icmpv6_echo_reply(id, 1)
    };
    let mut v = Vec::new();
    b.write(&mut v, b"ping").unwrap();
    v
}

#[test]
fn ipv6_masquerade_and_published_ports_translate_with_checksums() {
    let mut lab = Lab::new(1024);
    lab.with_ipv6();

    // NAT66: out from the uplink's address, checksums right, hop counted.
    let syn = packet6(ENDPOINT_MAC, lab.bridge_mac, ENDPOINT6, WORLD6, |s| {
        tcp_syn(s, 40000, 80)
    });
    let (action, out) = lab.sent_by_endpoint(&syn);
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(
        seen6(&out),
        Seen6 {
            dst_mac: WORLD_MAC,
            src_mac: lab.uplink_mac,
            src: UPLINK6,
            dst: WORLD6,
            hop_limit: 63,
            sport: 40000,
            dport: 80,
        }
    );
    assert_eq!(lab.dp.flows6().unwrap().len(), 2, "one entry per direction");
    // ICMPv6 errors about it, from a router and from the peer itself, are
    // translated for the endpoint, the packet they quote included.
    let router: [u8; 16] = [
        0x20, 1, 0x0d, 0xb8, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe,
    ];
    let quoted_syn = out[14..].to_vec();
    for (from, kind) in [
        (router, Icmpv6Type::PacketTooBig { mtu: 1280 }),
        (
            WORLD6,
            Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
        ),
    ] {
        let error = packet6(WORLD_MAC, lab.uplink_mac, from, UPLINK6, |s| {
            let b = s.icmpv6(kind);
            let mut v = Vec::new();
            b.write(&mut v, &quoted_syn).unwrap();
            v
        });
        let (action, out) = lab.arriving_from_world(&error);
        assert_eq!(action, TC_ACT_REDIRECT);
        let outer = seen6(&out);
        assert_eq!(
            (outer.src, outer.dst),
            (from, ENDPOINT6),
            "ICMPv6 checksum verified"
        );
        let quoted = &out[14 + 48..];
        assert_eq!(
            quoted[8..24],
            ENDPOINT6,
            "the quoted source is the endpoint"
        );
        assert_eq!(quoted[24..40], WORLD6);
        assert_eq!(quoted[40..44], [0x9c, 0x40, 0, 80], "ports 40000 and 80");
    }
    let syn_ack = {
        let b = PacketBuilder::ethernet2(WORLD_MAC, lab.uplink_mac)
            .ipv6(WORLD6, UPLINK6, 64)
            .tcp(80, 40000, 5000, 65535)
            .syn()
            .ack(1001);
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    };
    let (action, out) = lab.arriving_from_world(&syn_ack);
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(
        seen6(&out),
        Seen6 {
            dst_mac: ENDPOINT_MAC,
            src_mac: lab.bridge_mac,
            src: WORLD6,
            dst: ENDPOINT6,
            hop_limit: 63,
            sport: 80,
            dport: 40000,
        }
    );

    // ICMPv6 echo: its checksum covers the addresses too.
    let ping = packet6(ENDPOINT_MAC, lab.bridge_mac, ENDPOINT6, WORLD6, |s| {
        echo6(s, true, 7)
    });
    let (action, out) = lab.sent_by_endpoint(&ping);
    assert_eq!(action, TC_ACT_REDIRECT);
    let out = seen6(&out);
    assert_eq!(out.src, UPLINK6);
    // An identifier below the masquerade range is never kept.
    let id = out.sport;
    assert!((32768..=60999).contains(&id), "{id}");
    let pong = packet6(WORLD_MAC, lab.uplink_mac, WORLD6, UPLINK6, |s| {
        echo6(s, false, id)
    });
    let (action, out) = lab.arriving_from_world(&pong);
    assert_eq!(action, TC_ACT_REDIRECT);

    let back = seen6(&out);
    assert_eq!((back.dst, back.sport), (ENDPOINT6, 7));

    // A published port: to the endpoint's IPv6 address, the client's kept;
    // its reply leaves from the host's address and port.
    let query = packet6(WORLD_MAC, lab.uplink_mac, WORLD6, UPLINK6, |s| {
        tcp_syn(s, 5353, PUBLISHED_PORT)
    });
    let (action, out) = lab.arriving_from_world(&query);
    assert_eq!(action, TC_ACT_REDIRECT);
    let inside = seen6(&out);
    let inside_packet = out.clone();
    assert_eq!(
        (inside.src, inside.dst, inside.sport, inside.dport),
        (WORLD6, ENDPOINT6, 5353, 80)
    );
    let answer = packet6(ENDPOINT_MAC, lab.bridge_mac, ENDPOINT6, WORLD6, |s| {
        let b = s.tcp(80, 5353, 7000, 65535).syn().ack(1001);
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    });
    let (action, out) = lab.sent_by_endpoint(&answer);
    assert_eq!(action, TC_ACT_REDIRECT);
    let outside = seen6(&out);
    assert_eq!(
        (outside.src, outside.dst, outside.sport, outside.dport),
        (UPLINK6, WORLD6, PUBLISHED_PORT, 5353)
    );
    let rule = lab.dp.counters().nat_counters(1).unwrap();
    assert_eq!(rule.0, 2, "the published rule counted both packets");

    // The endpoint's "port unreachable" about the published flow leaves
    // from the host, quoting the packet as the client sent it.
    let error = packet6(ENDPOINT_MAC, lab.bridge_mac, ENDPOINT6, WORLD6, |s| {
        let b = s.icmpv6(Icmpv6Type::DestinationUnreachable(
            DestUnreachableCode::Port,
        ));
        let mut v = Vec::new();
        b.write(&mut v, &inside_packet[14..]).unwrap();
        v
    });
    let (action, out) = lab.sent_by_endpoint(&error);
    assert_eq!(action, TC_ACT_REDIRECT);
    let outer = seen6(&out);
    assert_eq!((outer.src, outer.dst), (UPLINK6, WORLD6));
    let quoted = &out[14 + 48..];
    assert_eq!(quoted[8..24], WORLD6);
    assert_eq!(
        quoted[24..40],
        UPLINK6,
        "the quoted destination is the host's"
    );
    assert_eq!(
        quoted[40..44],
        [
            0x14,
            0xe9,
            (PUBLISHED_PORT >> 8) as u8,
            PUBLISHED_PORT as u8
        ]
    );
    // One about no flow would carry the endpoint's address out.
    let unknown = packet6(WORLD_MAC, lab.uplink_mac, WORLD6, ENDPOINT6, |s| {
        udp(s, 999, 998, b"?")
    });
    let stray = packet6(ENDPOINT_MAC, lab.bridge_mac, ENDPOINT6, WORLD6, |s| {
        let b = s.icmpv6(Icmpv6Type::DestinationUnreachable(
            DestUnreachableCode::Port,
        ));
        let mut v = Vec::new();
        b.write(&mut v, &unknown[14..]).unwrap();
        v
    });
    assert_eq!(lab.sent_by_endpoint(&stray).0, TC_ACT_SHOT);
    assert_eq!(lab.drops(DropReason::UntrackedIcmpError), 1);

    // The endpoint's and the gateway's own addresses are not reachable
    // from outside; other traffic to the host is the host's.
    for dst in [ENDPOINT6, GATEWAY6] {
        let direct = packet6(WORLD_MAC, lab.uplink_mac, WORLD6, dst, |s| {
            udp(s, 5353, 80, b"direct")
        });
        assert_eq!(lab.arriving_from_world(&direct).0, TC_ACT_SHOT);
    }
    assert_eq!(lab.drops(DropReason::NotPublished), 2);
    let to_host = packet6(WORLD_MAC, lab.uplink_mac, WORLD6, UPLINK6, |s| {
        udp(s, 5353, 53, b"host")
    });
    assert_eq!(
        lab.arriving_from_world(&to_host),
        (TC_ACT_OK, to_host.clone())
    );

    // Fragments: the first opens its flow and lends its ports to the
    // fragments that follow; a later fragment of no datagram seen cannot
    // be translated.
    let header = frame6(&lab, ENDPOINT6, WORLD6, 44, &[]);
    let fragment = |id: u8, offset_flags: u16, rest: &[u8]| {
        let mut f = header.clone();
        let [hi, lo] = offset_flags.to_be_bytes();
        f.extend_from_slice(&[17, 0, hi, lo, 0, 0, 0, id]);
        f.extend_from_slice(rest);
        let len = (f.len() - 54) as u16;
        f[18..20].copy_from_slice(&len.to_be_bytes());
        f
    };
    let datagram = packet6(ENDPOINT_MAC, lab.bridge_mac, ENDPOINT6, WORLD6, |s| {
        udp(s, 40001, 53, &[7; 24])
    });
    let (action, out) = lab.sent_by_endpoint(&fragment(9, 0x0001, &datagram[54..70]));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(out[22..38], UPLINK6);
    let (action, out) = lab.sent_by_endpoint(&fragment(9, 2 << 3, &datagram[70..]));
    assert_eq!(action, TC_ACT_REDIRECT, "the later fragment follows");
    assert_eq!(out[22..38], UPLINK6);
    assert_eq!(
        lab.sent_by_endpoint(&fragment(10, 2 << 3, &datagram[70..]))
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(lab.drops(DropReason::Fragment), 1);
}

#[test]
fn xdp_redirects_established_flows_to_endpoints_and_passes_the_rest() {
    let mut lab = Lab::new(1024);
    let uplink = lab.uplink_if;
    let xdp = |lab: &mut Lab, packet: &[u8]| lab.run(programs::UPLINK_XDP, uplink, packet);
    // A first packet is tc's: XDP passes it untouched.
    let syn = tcp_syn(lab.world_frame(UPLINK), 5555, PUBLISHED_PORT);
    assert_eq!(xdp(&mut lab, &syn), (XDP_PASS, syn.clone()));
    assert_eq!(lab.arriving_from_world(&syn).0, TC_ACT_REDIRECT);
    let answer = tcp(lab.endpoint_frame(), 80, 5555, "SYN|ACK");
    assert_eq!(lab.sent_by_endpoint(&answer).0, TC_ACT_REDIRECT);

    // The client's next segments take the fast path: translated as tc
    // would, addressed to the endpoint, checksums right, and counted.
    let ack = tcp(lab.world_frame(UPLINK), 5555, PUBLISHED_PORT, "ACK");
    let (action, out) = xdp(&mut lab, &ack);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(seen(&out), from_world_to_endpoint(&lab, 5555, 80));
    let (tc_action, tc_out) = lab.arriving_from_world(&ack);
    assert_eq!(tc_action, TC_ACT_REDIRECT);
    assert_eq!(out, tc_out, "XDP and tc make the same frame");
    let (flow, _, _) = only_flow(&lab);
    assert_eq!(flow.entry.packets, 3, "the SYN, then the ACK through each");

    // A masquerade reply, UDP: its checksum is kept right too.
    let query = udp(lab.endpoint_frame(), 7000, 53, b"query");
    let (action, sent) = lab.sent_by_endpoint(&query);
    assert_eq!(action, TC_ACT_REDIRECT);
    let masqueraded = seen(&sent);
    let reply = udp(lab.world_frame(UPLINK), 53, masqueraded.sport, b"answer");
    let (action, fast) = xdp(&mut lab, &reply);
    assert_eq!(action, XDP_REDIRECT);
    let fast_seen = seen(&fast);
    assert_eq!(
        (
            fast_seen.src,
            fast_seen.sport,
            fast_seen.dst,
            fast_seen.dport
        ),
        (WORLD, 53, ENDPOINT, 7000)
    );
    assert_eq!(lab.arriving_from_world(&reply).1, fast);

    // FIN and RST change the flow's state: tc's.
    for flags in ["FIN|ACK", "RST"] {
        let segment = tcp(lab.world_frame(UPLINK), 5555, PUBLISHED_PORT, flags);
        assert_eq!(
            xdp(&mut lab, &segment),
            (XDP_PASS, segment.clone()),
            "{flags}"
        );
    }
    // A flow of nobody's, and a TTL that would expire.
    let stray = tcp(lab.world_frame(UPLINK), 5556, PUBLISHED_PORT, "ACK");
    assert_eq!(xdp(&mut lab, &stray).0, XDP_PASS);
    let mut expiring = ack.clone();
    expiring[14 + 8] = 1;
    assert_eq!(xdp(&mut lab, &expiring).0, XDP_PASS);
    assert_eq!(lab.drops(DropReason::Truncated), 0);
}
