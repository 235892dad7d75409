//! Routing and delivery: the FIB's way out for a packet, and redirecting
//! it there or straight to an endpoint's veth, rewritten, so that no
//! netfilter rule (or flush of them) is involved.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use core::{ffi::c_void, mem::size_of, ptr};
use netplane_common::abi::MAX_ENDPOINTS;

use crate::{
    nat::{decrement_ttl, rewrite, rewrite6, under_rule},
    packet::{Ipv4, Ipv6, load, store},
    reg::{InReg, Route},
};
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        TC_ACT_OK, bpf_fib_lookup, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use netplane_common::abi::{CtEntry, CtEntry6, DropReason, EndpointPort, NetConfig};

#[map(name = "NP_ENDPOINTS")]
pub(crate) static ENDPOINTS: HashMap<u32, EndpointPort> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Per-CPU room for a FIB lookup request, too big for the stack.
#[map]
pub(crate) static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

pub(crate) const AF_INET: u8 = 2;
pub(crate) const AF_INET6: u8 = 10;

pub(crate) type Verdict = Result<i32, DropReason>;

/// Source and destination of a packet once translated.
#[derive(Clone, Copy)]
pub(crate) struct Addrs {
    pub saddr: u32,
    pub daddr: u32,
}

/// What the FIB is asked about a packet besides its addresses.
#[derive(Clone, Copy)]
pub(crate) struct FibFlow {
    pub proto: u8,
    /// Ports as in the packet.
    pub sport: u16,
    pub dport: u16,
    /// Total length, host byte order, for the MTU check.
    pub tot_len: u16,
}

impl FibFlow {
    #[inline(always)]
    pub(crate) fn of(ip: &Ipv4) -> FibFlow {
        FibFlow {
            proto: ip.proto,
            sport: ip.sport,
            dport: ip.dport,
            tot_len: ip.tot_len,
        }
    }
}

/// The way out of the host for a packet. Not inlined, and the request
/// lives in a per-CPU map: both keep the programs' stack within the
/// verifier's limit.
#[inline(never)]
pub(crate) fn route(
    ctx: &TcContext,
    cfg: &NetConfig,
    flow: &FibFlow,
    addrs: &Addrs,
) -> InReg<Result<Route, DropReason>> {
    InReg::new(fib(ctx, cfg, flow, addrs))
}

#[inline(always)]
pub(crate) fn fib(
    ctx: &TcContext,
    cfg: &NetConfig,
    flow: &FibFlow,
    addrs: &Addrs,
) -> Result<Route, DropReason> {
    let p = fib_request(ctx, cfg, flow)?;
    p.family = AF_INET;
    p.__bindgen_anon_3.ipv4_src = addrs.saddr;
    p.__bindgen_anon_4.ipv4_dst = addrs.daddr;
    fib_ask(ctx, p)
}

/// The per-CPU FIB request, reset and filled in but for the family and
/// addresses.
#[inline(always)]
fn fib_request(
    ctx: &TcContext,
    cfg: &NetConfig,
    flow: &FibFlow,
) -> Result<&'static mut bpf_fib_lookup, DropReason> {
    let p = FIB_SCRATCH.get_ptr_mut(0).ok_or(DropReason::NoRoute)?;
    // SAFETY: a per-CPU map value, used by this invocation only; all-zero
    // is a valid request to fill in.
    let p = unsafe {
        ptr::write_bytes(p, 0, 1);
        &mut *p
    };
    p.l4_protocol = flow.proto;
    p.sport = flow.sport;
    p.dport = flow.dport;
    // SAFETY: `skb` points at the kernel's __sk_buff for this invocation.
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    // GSO packets are segmented on the way out: only others can be too big.
    p.__bindgen_anon_1.tot_len = if gso { 0 } else { flow.tot_len };
    // The bridge: the kernel checks that it forwards (for IPv6, that
    // forwarding is on for that device).
    p.ifindex = cfg.bridge_ifindex;
    Ok(p)
}

#[inline(always)]
fn fib_ask(ctx: &TcContext, p: &mut bpf_fib_lookup) -> Result<Route, DropReason> {
    // SAFETY: `p` is a bpf_fib_lookup of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut c_void,
            p,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(Route {
            ifindex: p.ifindex,
            resolved: true,
        }),
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok(Route {
            ifindex: p.ifindex,
            resolved: false,
        }),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(DropReason::TooBig),
        _ => Err(DropReason::NoRoute),
    }
}

/// The way out for an IPv6 packet once its addresses are `saddr` and
/// `daddr`. Not inlined, for the stack limit.
#[inline(never)]
pub(crate) fn route6(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv6,
    saddr: &[u8; 16],
    daddr: &[u8; 16],
) -> InReg<Result<Route, DropReason>> {
    InReg::new(fib6(ctx, cfg, ip, saddr, daddr))
}

#[inline(always)]
fn fib6(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv6,
    saddr: &[u8; 16],
    daddr: &[u8; 16],
) -> Result<Route, DropReason> {
    let flow = FibFlow {
        proto: ip.proto,
        sport: ip.sport,
        dport: ip.dport,
        tot_len: ip.payload_len.saturating_add(40),
    };
    let p = fib_request(ctx, cfg, &flow)?;
    p.family = AF_INET6;
    // SAFETY: plain byte copies into the request's address unions.
    unsafe {
        ptr::copy_nonoverlapping(
            saddr.as_ptr(),
            p.__bindgen_anon_3.ipv6_src.as_mut_ptr().cast(),
            16,
        );
        ptr::copy_nonoverlapping(
            daddr.as_ptr(),
            p.__bindgen_anon_4.ipv6_dst.as_mut_ptr().cast(),
            16,
        );
    }
    fib_ask(ctx, p)
}

/// Translates an IPv6 packet of a tracked flow to `to` and sends it on,
/// to an endpoint or out of the host. Not inlined, for the stack limit.
#[inline(never)]
pub(crate) fn forward6(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv6,
    to: &CtEntry6,
) -> InReg<Verdict> {
    InReg::new(under_rule(forward6_now(ctx, cfg, ip, to), to.slot))
}

#[inline(always)]
fn forward6_now(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv6, to: &CtEntry6) -> Verdict {
    if let Some(ep) = crate::endpoint6(&to.daddr_be) {
        rewrite6(ctx, ip, to)?;
        return to_endpoint6(ctx, cfg, ip, &ep);
    }
    let route = match route6(ctx, cfg, ip, &to.saddr_be, &to.daddr_be).get() {
        Ok(route) => route,
        // Untranslated, the stack answers "packet too big" or drops it.
        Err(DropReason::TooBig) => return Ok(TC_ACT_OK),
        Err(e) => return Err(e),
    };
    rewrite6(ctx, ip, to)?;
    send6(ctx, ip, &route)
}

/// Sends a rewritten IPv6 packet on along `route`, its hop limit
/// decremented as the router the host is would.
#[inline(always)]
pub(crate) fn send6(ctx: &TcContext, ip: &Ipv6, route: &Route) -> Verdict {
    decrement_hop_limit(ctx, ip)?;
    out_along(ctx, route)
}

/// Delivers a rewritten IPv6 packet to the endpoint `to` as IPv4's are:
/// straight to its veth with the MAC it has, no neighbour to resolve.
#[inline(always)]
pub(crate) fn to_endpoint6(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv6,
    to: &EndpointPort,
) -> Verdict {
    decrement_hop_limit(ctx, ip)?;
    deliver(ctx, cfg, to)
}

#[inline(always)]
fn decrement_hop_limit(ctx: &TcContext, ip: &Ipv6) -> Result<(), DropReason> {
    // The next header with the hop limit: single-byte stores get a bounds
    // check the verifier rejects.
    let [next, hops]: [u8; 2] = load(ctx, ip.l3 + 6)?;
    store(ctx, ip.l3 + 6, [next, hops.saturating_sub(1)])
}

/// Sends a rewritten packet out of the host along `route`.
#[inline(always)]
pub(crate) fn send(ctx: &TcContext, ip: &Ipv4, route: &Route) -> Verdict {
    decrement_ttl(ctx, ip)?;
    out_along(ctx, route)
}

/// Redirects the frame out along `route`, its Ethernet addresses those the
/// FIB request of this invocation found, or the kernel's to resolve.
#[inline(always)]
pub(crate) fn out_along(ctx: &TcContext, route: &Route) -> Verdict {
    if !route.resolved {
        // SAFETY: a plain helper call; the kernel resolves the neighbour.
        return Ok(unsafe { bpf_redirect_neigh(route.ifindex, ptr::null_mut(), 0, 0) } as i32);
    }
    // SAFETY: the per-CPU FIB request `route` came from, in this invocation.
    let (smac, dmac) = match FIB_SCRATCH.get_ptr(0) {
        Some(p) => unsafe { ((*p).smac, (*p).dmac) },
        None => return Err(DropReason::NoRoute),
    };
    store(ctx, 0, dmac)?;
    store(ctx, 6, smac)?;
    // SAFETY: a plain helper call.
    Ok(unsafe { bpf_redirect(route.ifindex, 0) } as i32)
}

/// [`out_along`] for a packet whose next hop is `nexthop_be` (a peer's
/// uplink address), not its destination: a neighbour not yet resolved is
/// resolved for that hop.
#[inline(always)]
pub(crate) fn out_via(ctx: &TcContext, route: &Route, nexthop_be: u32) -> Verdict {
    if route.resolved {
        return out_along(ctx, route);
    }
    let mut hop = bpf_redir_neigh {
        nh_family: u32::from(AF_INET),
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
            ipv4_nh: nexthop_be,
        },
    };
    // SAFETY: a plain helper call with a parameter block on the stack.
    Ok(unsafe {
        bpf_redirect_neigh(
            route.ifindex,
            &mut hop,
            size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    } as i32)
}

/// Delivers a rewritten packet to the endpoint `to`, as if the gateway had
/// routed it there.
#[inline(always)]
pub(crate) fn to_endpoint(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv4,
    to: &EndpointPort,
) -> Verdict {
    decrement_ttl(ctx, ip)?;
    deliver(ctx, cfg, to)
}

/// Redirects the frame to the endpoint `to`, from the bridge's MAC.
#[inline(always)]
fn deliver(ctx: &TcContext, cfg: &NetConfig, to: &EndpointPort) -> Verdict {
    store(ctx, 0, to.mac)?;
    store(ctx, 6, cfg.bridge_mac)?;
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(to.ifindex, 0) } as i32)
}

/// Where a packet of a known flow goes once rewritten to `to`.
pub(crate) enum Next {
    Endpoint(EndpointPort),
    Out(Route),
}

#[inline(always)]
pub(crate) fn next_hop(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv4,
    saddr: u32,
    daddr: u32,
) -> Result<Next, DropReason> {
    // SAFETY: a map value, copied out.
    match unsafe { ENDPOINTS.get(&daddr) } {
        Some(ep) => Ok(Next::Endpoint(*ep)),
        None => route(ctx, cfg, &FibFlow::of(ip), &Addrs { saddr, daddr })
            .get()
            .map(Next::Out),
    }
}

/// Translates a packet of a tracked flow and delivers it. Not inlined, for
/// the stack limit.
#[inline(never)]
pub(crate) fn forward(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4, to: &CtEntry) -> InReg<Verdict> {
    InReg::new(under_rule(forward_now(ctx, cfg, ip, to), to.slot))
}

#[inline(always)]
pub(crate) fn forward_now(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4, to: &CtEntry) -> Verdict {
    let next = match next_hop(ctx, cfg, ip, to.saddr_be, to.daddr_be) {
        Ok(next) => next,
        // Untranslated, the stack answers "fragmentation needed" and drops it.
        Err(DropReason::TooBig) if ip.dont_fragment => return Ok(TC_ACT_OK),
        Err(e) => return Err(e),
    };
    rewrite(ctx, ip, to)?;
    match next {
        Next::Endpoint(ep) => to_endpoint(ctx, cfg, ip, &ep),
        Next::Out(route) => send(ctx, ip, &route),
    }
}
