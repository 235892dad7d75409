//! The two paths packets take, composed of the leaves: from an endpoint
//! (isolation, hairpin, masquerade, overlay) and from the uplink
//! (replies, published ports, overlay decapsulation).

use aya_ebpf::{macros::map, maps::HashMap};
use netplane_common::abi::MAX_LINKED;

use crate::{
    config::network,
    conntrack::{create, new_flow, pick_port, track},
    fib::{Addrs, ENDPOINTS, FibFlow, Verdict, forward, route, send},
    icmp::icmp_error,
    nat::{host_addr_bits, is_host_addr, open_to, published, rewrite, under_rule},
    overlay,
    packet::Ipv4,
    reg::{InReg, Route},
};
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use netplane_common::{
    abi::{
        AddrPair, DropReason, HOST_ADDR_GATEWAY, MASQUERADE_SLOT, NET_FLAG_INTERNAL, NetConfig,
        NetworkPolicy, proto,
    },
    policy::endpoint_traffic_allowed,
};

#[map(name = "NP_LINKED")]
pub(crate) static LINKED: HashMap<AddrPair, u32> = HashMap::pinned(MAX_LINKED, 0);

/// The verdict for a packet of a tracked flow, or an ICMP error about one.
/// Protocols without ports are tracked by address alone.
#[inline(always)]
pub(crate) fn tracked(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv4,
) -> Result<Option<i32>, DropReason> {
    if ip.is_icmp_error() {
        return icmp_error(ctx, cfg, ip).get();
    }
    if ip.later_fragment && !ip.ports_from_first_fragment {
        return Ok(None);
    }
    match track(&ip.key(), ip.l4_flags, ctx.len()) {
        Some(e) => forward(ctx, cfg, ip, e).get().map(Some),
        None => Ok(None),
    }
}

/// A packet an endpoint of network `vni` (0: the bridge network) sent:
/// overlay, isolation, tracked flows, hairpin to published ports,
/// `--icc=false`, `--internal`, masquerade.
#[inline(never)]
pub(crate) fn from_endpoint(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv4,
    vni: u32,
) -> InReg<Verdict> {
    InReg::new(from_endpoint_now(ctx, cfg, ip, vni))
}

#[inline(always)]
pub(crate) fn from_endpoint_now(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4, vni: u32) -> Verdict {
    let net = network(cfg, vni);
    let on_bridge = net.contains(ip.daddr);
    // To another endpoint of the bridge: switched, not routed.
    let switched = on_bridge && ip.daddr != net.gateway_be;
    if ip.ttl <= 1 {
        // The stack answers "time exceeded" for what it would route
        // (traceroute's first hop); what the bridge switches passes no
        // router, and `--icc=false` holds for it whatever its TTL.
        return if switched {
            between_endpoints(&net, ip)
        } else {
            Ok(TC_ACT_OK)
        };
    }
    // Overlay traffic keeps its addresses: no tracking, no translation.
    if let Some(peer) = overlay::peer_of(cfg, ip.daddr) {
        if peer.vni != vni {
            return Err(DropReason::OtherNetwork);
        }
        return overlay::encapsulate(ctx, cfg, ip, &peer, net.flags).get();
    }
    if overlay::in_other_network(cfg, ip.daddr, vni) {
        return Err(DropReason::OtherNetwork);
    }
    if net.flags & NET_FLAG_INTERNAL != 0 && !on_bridge {
        return Err(DropReason::Internal);
    }
    if let Some(verdict) = tracked(ctx, cfg, ip)? {
        return Ok(verdict);
    }
    if switched {
        return between_endpoints(&net, ip);
    }
    if is_host_addr(ip.daddr) {
        if matches!(ip.proto, proto::TCP | proto::UDP)
            && !ip.later_fragment
            && let Some(target) = published(ip.daddr, ip.dport, ip.proto)
        {
            // Hairpin. An endpoint reaching itself must see another source,
            // or its stack takes the packet for a martian.
            open_to(&target, ip.saddr)?;
            let flow = under_rule(new_flow(&ip.key(), ip.l4_flags, target.slot), target.slot)?;
            flow.translated.daddr_be = target.addr_be;
            flow.translated.dport_be = target.port_be;
            if target.addr_be == ip.saddr {
                flow.translated.saddr_be = cfg.gateway_be;
                under_rule(pick_port(ctx, cfg, flow), target.slot)?;
            }
            create(ctx, flow).get()?;
            return forward(ctx, cfg, ip, &flow.pair.fwd).get();
        }
        return Ok(TC_ACT_OK);
    }
    if cfg.uplink_ifindex == 0 || on_bridge {
        return Ok(TC_ACT_OK);
    }
    let addrs = Addrs {
        saddr: ip.saddr,
        daddr: ip.daddr,
    };
    let route = match route(ctx, cfg, &FibFlow::of(ip), &addrs).get() {
        Ok(route) => route,
        // The stack answers: "unreachable", or "fragmentation needed" for a
        // DF packet; it must not fragment and send one untranslated.
        Err(DropReason::TooBig) if !ip.dont_fragment => return Err(DropReason::TooBig),
        Err(_) => return Ok(TC_ACT_OK),
    };
    if route.ifindex != cfg.uplink_ifindex {
        return Ok(TC_ACT_OK);
    }
    under_rule(masquerade(ctx, cfg, ip, &route), MASQUERADE_SLOT)
}

/// A packet from one endpoint of network `net` to another: `--icc=false`,
/// except `--link`ed pairs.
#[inline(always)]
pub(crate) fn between_endpoints(net: &NetworkPolicy, ip: &Ipv4) -> Verdict {
    let pair = AddrPair {
        src_be: ip.saddr,
        dst_be: ip.daddr,
    };
    // SAFETY: only presence is read.
    let linked = unsafe { LINKED.get(&pair).is_some() };
    if endpoint_traffic_allowed(net, ip.saddr, ip.daddr, linked) {
        Ok(TC_ACT_OK)
    } else {
        Err(DropReason::IccDenied)
    }
}

/// A packet an endpoint sends out through the uplink, not of a flow yet:
/// a new flow from the host's address.
#[inline(always)]
pub(crate) fn masquerade(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4, route: &Route) -> Verdict {
    if ip.later_fragment {
        return Err(DropReason::Fragment);
    }
    if ip.is_icmp_error() {
        return Err(DropReason::UntrackedIcmpError);
    }
    let flow = new_flow(&ip.key(), ip.l4_flags, MASQUERADE_SLOT)?;
    flow.translated.saddr_be = cfg.uplink_addr_be;
    if ip.has_ports() {
        pick_port(ctx, cfg, flow)?;
    }
    create(ctx, flow).get()?;
    rewrite(ctx, ip, &flow.pair.fwd)?;
    send(ctx, ip, route)
}

/// A packet arriving on the uplink: replies to masqueraded flows and
/// published ports.
#[inline(never)]
pub(crate) fn from_uplink(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4) -> InReg<Verdict> {
    InReg::new(from_uplink_now(ctx, cfg, ip))
}

#[inline(always)]
pub(crate) fn from_uplink_now(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4) -> Verdict {
    if ip.ttl <= 1 {
        return Ok(TC_ACT_OK);
    }
    if overlay::is_vxlan_for(cfg, ip) || overlay::is_gre_for(cfg, ip) {
        return overlay::decapsulate(ctx, cfg, ip).get();
    }
    if let Some(verdict) = tracked(ctx, cfg, ip)? {
        return Ok(verdict);
    }
    // SAFETY: a map value, copied out.
    if let Some(to) = unsafe { ENDPOINTS.get(&ip.daddr).copied() } {
        if let Some(verdict) = overlay::routed_from_peer(ctx, cfg, ip, &to) {
            return verdict;
        }
        // Not a flow of the endpoint's: the stack would route it in.
        return Err(DropReason::NotPublished);
    }
    let host_bits = host_addr_bits(ip.daddr);
    let target =
        if ip.later_fragment || !matches!(ip.proto, proto::TCP | proto::UDP) || host_bits.is_none()
        {
            None
        } else {
            published(ip.daddr, ip.dport, ip.proto)
        };
    let Some(target) = target else {
        // Gateways and the rest of the bridge's subnet serve the endpoints
        // (the embedded DNS among them), not the uplink's side.
        let gateway = host_bits.is_some_and(|bits| bits & HOST_ADDR_GATEWAY != 0);
        return if ip.daddr & cfg.mask_be == cfg.subnet_be || gateway {
            Err(DropReason::NotPublished)
        } else {
            Ok(TC_ACT_OK)
        };
    };
    open_to(&target, ip.saddr)?;
    let flow = under_rule(new_flow(&ip.key(), ip.l4_flags, target.slot), target.slot)?;
    flow.translated.daddr_be = target.addr_be;
    flow.translated.dport_be = target.port_be;
    create(ctx, flow).get()?;
    forward(ctx, cfg, ip, &flow.pair.fwd).get()
}
