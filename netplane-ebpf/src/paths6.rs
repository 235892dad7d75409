//! The paths of IPv6 packets, past the checks of who sent them: tracked
//! flows, published ports, and masquerade (NAT66) out of the uplink.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use netplane_common::abi::{
    DropReason, HOST_ADDR_GATEWAY, MASQUERADE_SLOT, NET_FLAG_ICC_DISABLED, NET_FLAG_IPV6_ROUTED,
    NetConfig, PORT_FLAG_ALLOW_LIST, proto,
};

use crate::{
    config::network,
    conntrack::{create, new_flow, pick_port, track},
    fib::{Verdict, forward6, route6},
    icmp::icmp_error6,
    nat::{UPLINK6, host_addr6_bits, published6, under_rule},
    packet::Ipv6,
    reg::InReg,
};

/// An IPv6 packet of a tracked flow, translated and sent on.
#[inline(always)]
fn tracked6(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv6) -> Option<Verdict> {
    if ip.later_fragment && !ip.ports_from_first_fragment {
        return None;
    }
    let entry = track(&ip.key(), ip.l4_flags, ctx.len())?;
    Some(forward6(ctx, cfg, ip, entry).get())
}

/// Where an IPv6 packet an endpoint of network `vni` sent (past the
/// checks of its sender) goes: to another endpoint of the network, an
/// ICMPv6 error, to the host, or out. Each path is a function of its own,
/// called from here: their frames never add up.
#[inline(always)]
pub(crate) fn from_endpoint(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv6, vni: u32) -> Verdict {
    if crate::endpoint6(&ip.daddr).is_some() {
        // Another endpoint of its own network: the caller checked.
        return between_endpoints6(ctx, cfg, ip, vni).get();
    }
    if ip.hop_limit <= 1 {
        return Ok(TC_ACT_OK);
    }
    if ip.is_icmp_error() {
        error_from_endpoint6(ctx, cfg, ip).get()
    } else if host_addr6_bits(&ip.daddr).is_some() {
        to_host6(ctx, cfg, ip).get()
    } else {
        from_endpoint6(ctx, cfg, ip, vni).get()
    }
}

/// A packet between two endpoints of network `vni`: a reply of a flow
/// through a published port (hairpin) goes back translated; otherwise
/// `--icc` decides, whatever the hop limit (the bridge switches, no
/// router counts it).
#[inline(never)]
fn between_endpoints6(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv6, vni: u32) -> InReg<Verdict> {
    InReg::new(between_endpoints6_now(ctx, cfg, ip, vni))
}

#[inline(always)]
fn between_endpoints6_now(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv6, vni: u32) -> Verdict {
    if ip.hop_limit > 1
        && let Some(verdict) = tracked6(ctx, cfg, ip)
    {
        return verdict;
    }
    if network(cfg, vni).flags & NET_FLAG_ICC_DISABLED != 0 {
        return Err(DropReason::IccDenied);
    }
    Ok(TC_ACT_OK)
}

/// An IPv6 packet an endpoint of network `vni` sent, to an address that
/// is no endpoint's nor the host's: its flow's, or a new flow
/// masqueraded out of the uplink.
#[inline(never)]
pub(crate) fn from_endpoint6(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv6,
    vni: u32,
) -> InReg<Verdict> {
    InReg::new(from_endpoint6_now(ctx, cfg, ip, vni))
}

#[inline(always)]
fn from_endpoint6_now(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv6, vni: u32) -> Verdict {
    if let Some(verdict) = tracked6(ctx, cfg, ip) {
        return verdict;
    }
    if !leaves_by_uplink(ctx, cfg, ip) {
        return Ok(TC_ACT_OK);
    }
    if ip.later_fragment {
        // Of no flow: without its ports it cannot be translated.
        return Err(DropReason::Fragment);
    }
    let routed = network(cfg, vni).flags & NET_FLAG_IPV6_ROUTED != 0;
    let uplink = UPLINK6.get(0).map(|u| u.addr).unwrap_or_default();
    if !routed && uplink == [0; 16] {
        return Ok(TC_ACT_OK);
    }
    let flow = under_rule(
        new_flow(&ip.key(), ip.l4_flags, MASQUERADE_SLOT),
        MASQUERADE_SLOT,
    )?;
    if !routed {
        flow.translated.saddr_be = uplink;
        if ip.has_ports() {
            under_rule(pick_port(ctx, cfg, flow), MASQUERADE_SLOT)?;
        }
    }
    create(ctx, flow).get()?;
    forward6(ctx, cfg, ip, &flow.pair.fwd).get()
}

/// An ICMPv6 error an endpoint sent to an address that is no endpoint's:
/// translated when it is about a tracked flow. Kept apart from
/// [`from_endpoint6`] (and called instead of it), for the stack limit.
#[inline(never)]
fn error_from_endpoint6(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv6) -> InReg<Verdict> {
    InReg::new(match icmp_error6(ctx, cfg, ip).get() {
        Ok(Some(verdict)) => Ok(verdict),
        Err(e) => Err(e),
        // About no flow the data path tracks: untranslated, the packet it
        // quotes would carry the endpoint's address out.
        Ok(None) if leaves_by_uplink(ctx, cfg, ip) => Err(DropReason::UntrackedIcmpError),
        Ok(None) => Ok(TC_ACT_OK),
    })
}

/// A packet from an endpoint to an address of the host: of a tracked
/// flow, or to a published port, translated as from outside (an endpoint
/// reaching itself sees the host's address as the source, or its stack
/// would take the packet for a martian); anything else is the host's.
#[inline(never)]
fn to_host6(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv6) -> InReg<Verdict> {
    InReg::new(to_host6_now(ctx, cfg, ip))
}

#[inline(always)]
fn to_host6_now(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv6) -> Verdict {
    if let Some(verdict) = tracked6(ctx, cfg, ip) {
        return verdict;
    }
    if ip.later_fragment || !matches!(ip.proto, proto::TCP | proto::UDP) {
        return Ok(TC_ACT_OK);
    }
    let Some(target) = published6(&ip.daddr, ip.dport, ip.proto) else {
        return Ok(TC_ACT_OK);
    };
    let flow = under_rule(new_flow(&ip.key(), ip.l4_flags, target.slot), target.slot)?;
    flow.translated.daddr_be = target.addr;
    flow.translated.dport_be = target.port_be;
    if target.addr == ip.saddr {
        flow.translated.saddr_be = ip.daddr;
        under_rule(pick_port(ctx, cfg, flow), target.slot)?;
    }
    create(ctx, flow).get()?;
    forward6(ctx, cfg, ip, &flow.pair.fwd).get()
}

/// Whether the host routes `ip` out of the uplink.
#[inline(always)]
fn leaves_by_uplink(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv6) -> bool {
    cfg.uplink_ifindex != 0
        && route6(ctx, cfg, ip, &ip.saddr, &ip.daddr)
            .get()
            .is_ok_and(|r| r.ifindex == cfg.uplink_ifindex)
}

/// An IPv6 packet arriving on the uplink: replies of tracked flows and
/// new flows to published ports. Endpoints and gateways are not reached
/// otherwise, as for IPv4.
#[inline(never)]
pub(crate) fn from_uplink6(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv6) -> InReg<Verdict> {
    InReg::new(from_uplink6_now(ctx, cfg, ip))
}

#[inline(always)]
fn from_uplink6_now(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv6) -> Verdict {
    if ip.hop_limit <= 1 {
        return Ok(TC_ACT_OK);
    }
    if ip.is_icmp_error() {
        // Translated when about a tracked flow; the host's otherwise.
        return icmp_error6(ctx, cfg, ip)
            .get()
            .map(|v| v.unwrap_or(TC_ACT_OK));
    }
    if let Some(verdict) = tracked6(ctx, cfg, ip) {
        return verdict;
    }
    if crate::endpoint6(&ip.daddr).is_some() {
        return Err(DropReason::NotPublished);
    }
    let Some(bits) = host_addr6_bits(&ip.daddr) else {
        return Ok(TC_ACT_OK);
    };
    let target = if ip.later_fragment || !matches!(ip.proto, proto::TCP | proto::UDP) {
        None
    } else {
        published6(&ip.daddr, ip.dport, ip.proto)
    };
    let Some(target) = target else {
        return if bits & HOST_ADDR_GATEWAY != 0 {
            Err(DropReason::NotPublished)
        } else {
            Ok(TC_ACT_OK)
        };
    };
    if target.flags & PORT_FLAG_ALLOW_LIST != 0 {
        // Allow-lists name IPv4 sources only.
        return under_rule(Err(DropReason::NotAllowed), target.slot);
    }
    let flow = under_rule(new_flow(&ip.key(), ip.l4_flags, target.slot), target.slot)?;
    flow.translated.daddr_be = target.addr;
    flow.translated.dport_be = target.port_be;
    create(ctx, flow).get()?;
    forward6(ctx, cfg, ip, &flow.pair.fwd).get()
}
