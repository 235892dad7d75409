//! The uplink's XDP program: packets of established flows to endpoints
//! (published-port DNAT and masquerade replies) are translated and
//! redirected into the endpoint's veth before the kernel allocates an skb
//! for them. Everything else, first packets, TCP SYN, FIN and RST, ICMP,
//! fragments, IP options and anything not to an endpoint of this host,
//! passes unchanged to the tc program, which decides as it always did.
//! VXLAN frames from known peers to endpoints of this host are
//! decapsulated and redirected the same way. What is redirected is counted
//! as the tc path counts it.

use aya_ebpf::{
    helpers::bpf_xdp_adjust_head,
    macros::map,
    maps::{DevMapHash, PerCpuArray},
    programs::XdpContext,
};
use netplane_common::{
    abi::{CtEntry, Direction, DropReason, EndpointPort, MAX_ENDPOINTS, NetConfig, proto},
    nat::{add32, apply_diff, apply_diff_udp, diff16, diff32, replace16, tcp},
    packet::{Ipv4, parse_ipv4},
    vxlan::OVERHEAD,
};

use crate::{
    conntrack::{Family, touch},
    count_interface,
    fib::ENDPOINTS,
    overlay,
    packet::{ETH_HLEN, L3, Packet, l3, load, store},
};

/// The endpoints' host-side veths XDP may redirect to, by ifindex; the
/// daemon adds each when it attaches the endpoint. A veth not in it gets
/// its packets through tc.
#[map(name = "NP_XDP_PORTS")]
pub(crate) static XDP_PORTS: DevMapHash = DevMapHash::pinned(MAX_ENDPOINTS, 0);

/// Per-CPU room for the parsed packet, apart from the tc programs'.
#[map]
static XDP_PACKET: PerCpuArray<Ipv4> = PerCpuArray::with_max_entries(1, 0);

/// The redirect of a frame of an established flow to an endpoint, or of
/// a VXLAN frame from a known peer to one, or `None`: the frame is left,
/// unchanged, to tc.
#[inline(always)]
pub(crate) fn uplink(ctx: &XdpContext, cfg: &NetConfig) -> Option<u32> {
    let ip = plain(ctx).ok()??;
    if overlay::is_vxlan_for(cfg, ip) {
        decapsulate(ctx, cfg, ip)
    } else {
        established(ctx, cfg, ip)
    }
}

#[inline(always)]
fn established(ctx: &XdpContext, cfg: &NetConfig, ip: &Ipv4) -> Option<u32> {
    let key = ip.key();
    let entry = <u32 as Family>::table().get_ptr_mut(&key)?;
    // SAFETY: a map value, valid while the program runs; copied out.
    let daddr = unsafe { (*entry).daddr_be };
    // SAFETY: a map value, copied out.
    let ep: EndpointPort = unsafe { *ENDPOINTS.get(&daddr)? };
    let action = redirect_to(ep.ifindex)?;
    let len = frame_len(ctx);
    let to = touch(entry, &key, ip.l4_flags, len);
    translate(ctx, cfg, ip, to, &ep).ok()?;
    count_interface(ctx.ingress_ifindex() as u32, Direction::Ingress, len);
    count_interface(ep.ifindex, Direction::Egress, len);
    Some(action)
}

/// Takes the outer headers off a VXLAN frame `ip` for an endpoint of this
/// host, as tc would, and redirects the inner frame to it.
#[inline(always)]
fn decapsulate(ctx: &XdpContext, cfg: &NetConfig, ip: &Ipv4) -> Option<u32> {
    let to = overlay::vxlan_delivery(ctx, cfg, ip).ok()?;
    let action = redirect_to(to.ifindex)?;
    let outer_len = frame_len(ctx);
    // SAFETY: `ctx.ctx` is the kernel's xdp_md for this invocation.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, OVERHEAD as i32) } != 0 {
        return None;
    }
    store(ctx, 0, to.mac).ok()?;
    store(ctx, 6, cfg.bridge_mac).ok()?;
    count_interface(ctx.ingress_ifindex() as u32, Direction::Ingress, outer_len);
    count_interface(to.ifindex, Direction::Egress, frame_len(ctx));
    Some(action)
}

/// Sets the frame's redirect to the endpoint veth `ifindex`, which takes
/// effect only when the program returns the action; `None` for a veth XDP
/// may not redirect to, whose frames are tc's. Taken before the frame is
/// changed, so that a frame left to tc is left unchanged.
#[inline(always)]
fn redirect_to(ifindex: u32) -> Option<u32> {
    XDP_PORTS.redirect(ifindex, 0).ok()
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> u32 {
    (ctx.data_end() - ctx.data()) as u32
}

/// The parsed packet if it may take the fast path: IPv4 without options
/// or fragments, at a TTL that lets it be forwarded, UDP or TCP without a
/// flag that changes its flow's state.
#[inline(always)]
fn plain(ctx: &XdpContext) -> Result<Option<&'static Ipv4>, DropReason> {
    if !matches!(l3(ctx)?, L3::Ipv4) {
        return Ok(None);
    }
    let ip = XDP_PACKET.get_ptr_mut(0).ok_or(DropReason::Truncated)?;
    // SAFETY: a per-CPU map value, used by this invocation only.
    let ip = unsafe { &mut *ip };
    parse_ipv4(&Packet(ctx), ETH_HLEN, false, ip)?;
    let plain = ip.l4 == ETH_HLEN + 20
        && ip.ttl > 1
        && !ip.later_fragment
        && !ip.more_fragments
        && match ip.proto {
            proto::TCP => ip.l4_flags & (tcp::SYN | tcp::FIN | tcp::RST) == 0,
            proto::UDP => true,
            _ => false,
        };
    Ok(plain.then_some(&*ip))
}

/// Rewrites the frame to `to` and addresses it to the endpoint `ep` from
/// the bridge, with the TTL decremented. Checksums are updated here, as
/// there is no skb whose checksum state a helper could follow: the frame
/// must carry complete checksums, as frames from a network do.
#[inline(always)]
fn translate(
    ctx: &XdpContext,
    cfg: &NetConfig,
    ip: &Ipv4,
    to: &CtEntry,
    ep: &EndpointPort,
) -> Result<(), DropReason> {
    let l3 = ip.l3;
    let addrs = add32(diff32(ip.saddr, to.saddr_be), diff32(ip.daddr, to.daddr_be));
    let ports = add32(diff16(ip.sport, to.sport_be), diff16(ip.dport, to.dport_be));
    let ttl_proto = u16::from_ne_bytes([ip.ttl, ip.proto]);
    let ttl_proto_after = u16::from_ne_bytes([ip.ttl - 1, ip.proto]);
    let check: u16 = load(ctx, l3 + 10)?;
    let check = replace16(apply_diff(check, addrs), ttl_proto, ttl_proto_after);
    // The TTL with the protocol byte: single-byte stores get a bounds
    // check the verifier rejects.
    store(ctx, l3 + 8, ttl_proto_after)?;
    store(ctx, l3 + 10, check)?;
    store(ctx, l3 + 12, to.saddr_be)?;
    store(ctx, l3 + 16, to.daddr_be)?;
    let csum_at = ip.l4_csum().ok_or(DropReason::Truncated)?;
    let l4_check: u16 = load(ctx, csum_at)?;
    let l4_diff = add32(addrs, ports);
    let l4_check = match ip.proto {
        proto::UDP => apply_diff_udp(l4_check, l4_diff),
        _ => apply_diff(l4_check, l4_diff),
    };
    store(ctx, csum_at, l4_check)?;
    store(ctx, ip.l4, to.sport_be)?;
    store(ctx, ip.l4 + 2, to.dport_be)?;
    store(ctx, 0, ep.mac)?;
    store(ctx, 6, cfg.bridge_mac)
}
