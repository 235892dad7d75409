//! The overlay: frames between endpoints on different hosts travel in
//! VXLAN or GRE, pushed in front of them here as they leave the sending
//! endpoint and taken off as they reach the receiving host's uplink (the
//! kernel's own vxlan and gretap devices speak the same wire formats), or,
//! on a network without encapsulation, are routed to the peer's uplink
//! address as they are and delivered from there.

use crate::{
    config::network,
    fib::{Addrs, ENDPOINTS, FibFlow, Verdict, out_along, out_via, route, to_endpoint},
    packet::{ETH_HLEN, Frame, Ipv4, load, store},
    reg::InReg,
};
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_GRE, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, TC_ACT_OK,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_get_hash_recalc, bpf_redirect},
    programs::TcContext,
};
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use netplane_common::abi::MAX_OVERLAY_LEASES;
use netplane_common::{
    abi::{
        DropReason, EndpointPort, NET_FLAG_ENCAP_GRE, NET_FLAG_ENCAP_NONE, NET_FLAG_NETWORKS,
        NET_FLAG_OVERLAY, NetConfig, OverlayPeer, endpoint_mac, proto,
    },
    gre::{self, IPPROTO_GRE},
    vxlan::{self, Outer, VXLAN_PORT, lease_of, source_port},
};

#[map(name = "NP_OVERLAY_ROUTES")]
pub(crate) static OVERLAY_ROUTES: HashMap<u32, OverlayPeer> =
    HashMap::pinned(MAX_OVERLAY_LEASES, 0);

/// Scratch for the headers VXLAN encapsulation writes, off the stack.
#[map]
pub(crate) static VXLAN_HEADERS: PerCpuArray<EncapHeaders<{ vxlan::OVERHEAD }>> =
    PerCpuArray::with_max_entries(1, 0);

/// The same for GRE.
#[map]
pub(crate) static GRE_HEADERS: PerCpuArray<EncapHeaders<{ gre::OVERHEAD }>> =
    PerCpuArray::with_max_entries(1, 0);

/// What encapsulation writes in front of the inner IPv4 packet: `N` bytes
/// of outer headers, then the inner Ethernet header.
#[repr(C)]
pub struct EncapHeaders<const N: usize> {
    outer: [u8; N],
    inner_eth: [u8; ETH_HLEN],
}

/// The host holding the /24 lease `addr` belongs to, if another does.
/// Hosts without overlays skip the lookup.
#[inline(always)]
pub fn peer_of(cfg: &NetConfig, addr_be: u32) -> Option<OverlayPeer> {
    if cfg.flags & NET_FLAG_OVERLAY == 0 {
        return None;
    }
    // SAFETY: a map value, copied out.
    unsafe { OVERLAY_ROUTES.get(&lease_of(addr_be)).copied() }
}

/// Whether `addr` is an endpoint on this host in a network other than
/// `vni`. Hosts with one network skip the lookup.
#[inline(always)]
pub fn in_other_network(cfg: &NetConfig, addr_be: u32, vni: u32) -> bool {
    cfg.flags & NET_FLAG_NETWORKS != 0
        // SAFETY: a map value, read in place.
        && unsafe { ENDPOINTS.get(&addr_be) }.is_some_and(|to| to.vni != vni)
}

/// Sends the endpoint's packet `ip` of a network with policy flags
/// `flags` to `peer`: in VXLAN, in GRE, or routed to it as it is. Not
/// inlined, for the stack limit.
#[inline(never)]
pub fn encapsulate(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv4,
    peer: &OverlayPeer,
    flags: u32,
) -> InReg<Verdict> {
    InReg::new(if flags & NET_FLAG_ENCAP_NONE != 0 {
        route_to_peer(ctx, cfg, ip, peer)
    } else if flags & NET_FLAG_ENCAP_GRE != 0 {
        encapsulate_gre(ctx, cfg, ip, peer)
    } else {
        encapsulate_vxlan(ctx, cfg, ip, peer)
    })
}

#[inline(always)]
fn encapsulate_vxlan(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4, peer: &OverlayPeer) -> Verdict {
    // The inner flow's hash, taken before the headers change, spreads
    // flows over an ECMP underlay and keeps each on one path.
    // SAFETY: `skb` points at the kernel's __sk_buff for this invocation.
    let sport = source_port(unsafe { bpf_get_hash_recalc(ctx.skb.skb) });
    let flow = FibFlow {
        proto: proto::UDP,
        sport: sport.to_be(),
        dport: VXLAN_PORT.to_be(),
        tot_len: ip.tot_len.wrapping_add((vxlan::OVERHEAD - ETH_HLEN) as u16),
    };
    let headers = VXLAN_HEADERS.get_ptr_mut(0).ok_or(DropReason::NoRoute)?;
    // SAFETY: a per-CPU map value, used by this invocation only.
    let headers = unsafe { &mut *headers };
    let outer = Outer {
        src_be: cfg.uplink_addr_be,
        dst_be: peer.vtep_be,
        sport,
        vni: peer.vni,
        ..Outer::default()
    };
    vxlan::write_outer_headers(&outer, inner_len(ip), &mut headers.outer);
    push_headers(ctx, cfg, ip, peer, &flow, headers)
}

#[inline(always)]
fn encapsulate_gre(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4, peer: &OverlayPeer) -> Verdict {
    let flow = FibFlow {
        proto: IPPROTO_GRE,
        sport: 0,
        dport: 0,
        tot_len: ip.tot_len.wrapping_add((gre::OVERHEAD - ETH_HLEN) as u16),
    };
    let headers = GRE_HEADERS.get_ptr_mut(0).ok_or(DropReason::NoRoute)?;
    // SAFETY: a per-CPU map value, used by this invocation only.
    let headers = unsafe { &mut *headers };
    let outer = Outer {
        src_be: cfg.uplink_addr_be,
        dst_be: peer.vtep_be,
        vni: peer.vni,
        ..Outer::default()
    };
    gre::write_outer_headers(&outer, inner_len(ip), &mut headers.outer);
    push_headers(ctx, cfg, ip, peer, &flow, headers)
}

/// The inner Ethernet frame's length.
#[inline(always)]
fn inner_len(ip: &Ipv4) -> u16 {
    ip.tot_len.wrapping_add(ETH_HLEN as u16)
}

/// Pushes `headers` (outer headers written, the inner Ethernet header
/// still to write) in front of the endpoint's packet `ip` and sends it
/// along the way to `peer` the FIB gives for `flow`, the tunnel's outer
/// packet (UDP for VXLAN, else GRE).
#[inline(always)]
fn push_headers<const N: usize>(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv4,
    peer: &OverlayPeer,
    flow: &FibFlow,
    headers: &mut EncapHeaders<N>,
) -> Verdict {
    let l4 = if flow.proto == proto::UDP {
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    } else {
        BPF_F_ADJ_ROOM_ENCAP_L4_GRE
    };
    let way = match route(
        ctx,
        cfg,
        flow,
        &Addrs {
            saddr: cfg.uplink_addr_be,
            daddr: peer.vtep_be,
        },
    )
    .get()
    {
        Ok(way) => way,
        // The stack answers "fragmentation needed" along the overlay
        // subnet's route, whose MTU leaves room for the encapsulation.
        Err(DropReason::TooBig) if ip.dont_fragment => return Ok(TC_ACT_OK),
        Err(e) => return Err(e),
    };
    // The outer MACs are the route's, written when the frame goes out.
    headers.inner_eth[..6].copy_from_slice(&endpoint_mac(ip.daddr));
    headers.inner_eth[6..12].copy_from_slice(&load::<[u8; 6]>(ctx, 6)?);
    headers.inner_eth[12..].copy_from_slice(&0x0800u16.to_be_bytes());
    // Marked as tunnelled Ethernet, with the inner MAC header's length
    // (BPF_F_ADJ_ROOM_ENCAP_L2), so that GSO segments the inner packet and
    // fixes up the outer lengths of every segment.
    let flags = u64::from(BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | l4 | BPF_F_ADJ_ROOM_ENCAP_L2_ETH)
        | ((ETH_HLEN as u64) << 56);
    ctx.adjust_room(N as i32, BPF_ADJ_ROOM_MAC, flags)
        .map_err(|_| DropReason::Truncated)?;
    ctx.store(0, headers, 0)
        .map_err(|_| DropReason::Truncated)?;
    out_along(ctx, &way)
}

/// A network without encapsulation: routes the endpoint's packet `ip`
/// to `peer`'s uplink address as the next hop, as flannel's host-gw does.
#[inline(always)]
fn route_to_peer(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4, peer: &OverlayPeer) -> Verdict {
    let way = route(
        ctx,
        cfg,
        &FibFlow::of(ip),
        &Addrs {
            saddr: cfg.uplink_addr_be,
            daddr: peer.vtep_be,
        },
    )
    .get()?;
    crate::nat::decrement_ttl(ctx, ip)?;
    out_via(ctx, &way, peer.vtep_be)
}

/// Takes a VXLAN or GRE frame `ip` (the outer packet, for this host)
/// apart and delivers the inner packet to its endpoint, if it comes from
/// the peer holding the inner source's lease with that peer's network
/// identifier. Not inlined, for the stack limit.
#[inline(never)]
pub fn decapsulate(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4) -> InReg<Verdict> {
    InReg::new(decapsulate_now(ctx, cfg, ip))
}

#[inline(always)]
fn decapsulate_now(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4) -> Verdict {
    let (to, overhead) = if ip.proto == IPPROTO_GRE {
        (gre_delivery(ctx, cfg, ip)?, gre::OVERHEAD)
    } else {
        (vxlan_delivery(ctx, cfg, ip)?, vxlan::OVERHEAD)
    };
    ctx.adjust_room(
        -(overhead as i32),
        BPF_ADJ_ROOM_MAC,
        u64::from(BPF_F_ADJ_ROOM_DECAP_L3_IPV4),
    )
    .map_err(|_| DropReason::Truncated)?;
    store(ctx, 0, to.mac)?;
    store(ctx, 6, cfg.bridge_mac)?;
    // SAFETY: a plain helper call.
    Ok(unsafe { bpf_redirect(to.ifindex, 0) } as i32)
}

/// The endpoint a VXLAN frame `ip` (the outer packet, for this host)
/// delivers its inner packet to: only one from the peer holding the inner
/// source's lease, with that peer's VNI, to an endpoint of that network.
#[inline(always)]
pub fn vxlan_delivery(
    ctx: &impl Frame,
    cfg: &NetConfig,
    ip: &Ipv4,
) -> Result<EndpointPort, DropReason> {
    plain_outer(ip)?;
    let header: [u8; 8] = load(ctx, ip.l4 + 8)?;
    tunnel_delivery(ctx, cfg, ip, vxlan::OVERHEAD, vxlan::vni(header))
}

/// The same for a GRE frame, its key the VNI.
#[inline(always)]
fn gre_delivery(ctx: &impl Frame, cfg: &NetConfig, ip: &Ipv4) -> Result<EndpointPort, DropReason> {
    plain_outer(ip)?;
    let header: [u8; 8] = load(ctx, ip.l4)?;
    tunnel_delivery(ctx, cfg, ip, gre::OVERHEAD, gre::key(header))
}

/// Outer headers as encapsulation writes them; IPv4 options would move
/// everything and no VTEP sends them.
#[inline(always)]
fn plain_outer(ip: &Ipv4) -> Result<(), DropReason> {
    if ip.l4 == ETH_HLEN + 20 {
        Ok(())
    } else {
        Err(DropReason::OverlayUnknownPeer)
    }
}

/// The endpoint the tunnelled frame `ip` delivers to: outer headers of
/// `overhead` bytes carrying network identifier `id` (none: not a header
/// netplane sends), checked as [`vxlan_delivery`] says.
#[inline(always)]
fn tunnel_delivery(
    ctx: &impl Frame,
    cfg: &NetConfig,
    ip: &Ipv4,
    overhead: usize,
    id: Option<u32>,
) -> Result<EndpointPort, DropReason> {
    let id = id.ok_or(DropReason::OverlayUnknownPeer)?;
    let inner_ip = overhead + ETH_HLEN;
    let inner_type: u16 = load(ctx, overhead + 12)?;
    let inner_src: u32 = load(ctx, inner_ip + 12)?;
    let inner_dst: u32 = load(ctx, inner_ip + 16)?;
    let peer = peer_of(cfg, inner_src)
        .filter(|p| p.vtep_be == ip.saddr && p.vni == id && inner_type == 0x0800u16.to_be());
    // SAFETY: a map value, copied out.
    let to = unsafe { ENDPOINTS.get(&inner_dst).copied() };
    let (Some(peer), Some(to)) = (peer, to) else {
        return Err(DropReason::OverlayUnknownPeer);
    };
    if to.vni != peer.vni {
        return Err(DropReason::OtherNetwork);
    }
    Ok(to)
}

/// A packet arriving on the uplink for endpoint `to` of a network without
/// encapsulation, from an endpoint on another host: delivered when its
/// source is in a lease of a peer of that same network, as routing it
/// would. `None` when it is no such packet.
#[inline(always)]
pub fn routed_from_peer(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv4,
    to: &EndpointPort,
) -> Option<Verdict> {
    if network(cfg, to.vni).flags & NET_FLAG_ENCAP_NONE == 0 {
        return None;
    }
    Some(match peer_of(cfg, ip.saddr) {
        Some(peer) if peer.vni == to.vni => to_endpoint(ctx, cfg, ip, to),
        Some(_) => Err(DropReason::OtherNetwork),
        None => Err(DropReason::OverlayUnknownPeer),
    })
}

/// Whether `ip` is a VXLAN frame for this host's VTEP, while it has
/// overlays.
#[inline(always)]
pub fn is_vxlan_for(cfg: &NetConfig, ip: &Ipv4) -> bool {
    cfg.flags & NET_FLAG_OVERLAY != 0
        && ip.proto == proto::UDP
        && ip.dport == VXLAN_PORT.to_be()
        && ip.daddr == cfg.uplink_addr_be
        && !ip.later_fragment
}

/// Whether `ip` is a GRE frame for this host's VTEP, while it has
/// overlays in GRE.
#[inline(always)]
pub fn is_gre_for(cfg: &NetConfig, ip: &Ipv4) -> bool {
    cfg.flags & NET_FLAG_ENCAP_GRE != 0
        && ip.proto == IPPROTO_GRE
        && ip.daddr == cfg.uplink_addr_be
        && !ip.later_fragment
}
