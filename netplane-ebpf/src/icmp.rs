//! ICMP errors about tracked flows: the quoted packet translated as its
//! flow was, checksums kept right.

use aya_ebpf::{macros::map, maps::PerCpuArray};

use crate::{
    conntrack::{CONNTRACK, CONNTRACK6},
    fib::{Next, next_hop, route6, send, send6, to_endpoint, to_endpoint6},
    nat::{count, csum_err, set_addrs, under_rule},
    packet::{ICMP_ECHO, Ipv4, Ipv6, ipv4, ipv6, load, store},
    reg::InReg,
};
use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use netplane_common::{
    abi::{CtEntry, CtEntry6, DropReason, FlowKey, NetConfig, proto},
    nat::{Addr, add32, diff16, replace16, replace16_udp, replace32, replace32_udp},
    packet::icmpv6,
};

/// Per-CPU room for the packet quoted in an ICMP error.
#[map]
pub(crate) static QUOTED: PerCpuArray<Ipv4> = PerCpuArray::with_max_entries(1, 0);

/// The same for ICMPv6.
#[map]
pub(crate) static QUOTED6: PerCpuArray<Ipv6> = PerCpuArray::with_max_entries(1, 0);

/// Rewrites a 16-bit word inside an ICMP error's payload, keeping the ICMP
/// checksum right.
#[inline(always)]
pub(crate) fn set_quoted16(
    ctx: &TcContext,
    icmp_csum: usize,
    offset: usize,
    old: u16,
    new: u16,
) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    csum_err(ctx.l4_csum_replace(icmp_csum, u64::from(old), u64::from(new), 2))?;
    store(ctx, offset, new)
}

/// Rewrites an address of the packet quoted in an ICMP error, with its IP
/// checksum, its UDP checksum if it has one, and the ICMP checksum.
#[inline(always)]
pub(crate) fn set_quoted_addr(
    ctx: &TcContext,
    icmp_csum: usize,
    inner: &Ipv4,
    offset: usize,
    old: u32,
    new: u32,
) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    let ip_csum: u16 = load(ctx, inner.l3 + 10)?;
    set_quoted16(
        ctx,
        icmp_csum,
        inner.l3 + 10,
        ip_csum,
        replace32(ip_csum, old, new),
    )?;
    if inner.proto == proto::UDP {
        let udp_csum: u16 = load(ctx, inner.l4 + 6)?;
        set_quoted16(
            ctx,
            icmp_csum,
            inner.l4 + 6,
            udp_csum,
            replace32_udp(udp_csum, old, new),
        )?;
    }
    csum_err(ctx.l4_csum_replace(icmp_csum, u64::from(old), u64::from(new), 4))?;
    store(ctx, offset, new)
}

/// Rewrites a port (or echo id) of the packet quoted in an ICMP error.
#[inline(always)]
pub(crate) fn set_quoted_port(
    ctx: &TcContext,
    icmp_csum: usize,
    inner: &Ipv4,
    offset: usize,
    old: u16,
    new: u16,
) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    let inner_csum = match inner.proto {
        proto::UDP => Some(inner.l4 + 6),
        proto::ICMP => Some(inner.l4 + 2),
        // A quoted TCP checksum may lie beyond the 8 bytes quoted; nothing
        // checks it.
        _ => None,
    };
    if let Some(at) = inner_csum {
        let c: u16 = load(ctx, at)?;
        let updated = if inner.proto == proto::UDP {
            replace16_udp(c, old, new)
        } else {
            replace16(c, old, new)
        };
        set_quoted16(ctx, icmp_csum, at, c, updated)?;
    }
    set_quoted16(ctx, icmp_csum, offset, old, new)
}

/// An ICMP error about a packet of a translated flow: the quoted packet is
/// what the data path sent, so its reversed tuple is a reply key. The error
/// is translated like a reply, quoted packet included, and delivered.
/// `None` when the error is about no tracked flow. Not inlined, to keep
/// its frame off the stack of ordinary packets.
#[inline(never)]
pub(crate) fn icmp_error(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv4,
) -> InReg<Result<Option<i32>, DropReason>> {
    InReg::new(icmp_error_now(ctx, cfg, ip))
}

#[inline(always)]
pub(crate) fn icmp_error_now(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv4,
) -> Result<Option<i32>, DropReason> {
    let Some(inner) = QUOTED.get_ptr_mut(0) else {
        return Ok(None);
    };
    // SAFETY: a per-CPU map value, used by this invocation only.
    let inner = unsafe { &mut *inner };
    ipv4(ctx, ip.l4 + 8, true, inner)?;
    if !inner.has_ports() {
        return Ok(None);
    }
    let key = inner.key().reversed();
    // SAFETY: a map value, valid while the program runs.
    let Some(e) = (unsafe { CONNTRACK.get(&key) }) else {
        return Ok(None);
    };
    under_rule(translate_icmp_error(ctx, cfg, ip, inner, &key, e), e.slot)
}

/// Translates and delivers an ICMP error quoting `inner`, a packet of the
/// flow whose reply entry `key` is `e`.
#[inline(always)]
pub(crate) fn translate_icmp_error(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv4,
    inner: &Ipv4,
    key: &FlowKey,
    e: &CtEntry,
) -> Result<Option<i32>, DropReason> {
    // The error came from the flow's peer itself, or from a router between.
    let saddr = if ip.saddr == key.saddr_be {
        e.saddr_be
    } else {
        ip.saddr
    };
    let next = match next_hop(ctx, cfg, ip, saddr, e.daddr_be) {
        Ok(next) => next,
        Err(_) => return Ok(None),
    };
    let icmp_csum = ip.l4 + 2;
    set_quoted_addr(
        ctx,
        icmp_csum,
        inner,
        inner.l3 + 12,
        inner.saddr,
        e.daddr_be,
    )?;
    set_quoted_addr(
        ctx,
        icmp_csum,
        inner,
        inner.l3 + 16,
        inner.daddr,
        e.saddr_be,
    )?;
    match inner.proto {
        proto::TCP | proto::UDP => {
            set_quoted_port(ctx, icmp_csum, inner, inner.l4, inner.sport, e.dport_be)?;
            set_quoted_port(ctx, icmp_csum, inner, inner.l4 + 2, inner.dport, e.sport_be)?;
        }
        proto::ICMP if inner.l4_flags == ICMP_ECHO => {
            set_quoted_port(ctx, icmp_csum, inner, inner.l4 + 4, inner.sport, e.dport_be)?;
        }
        _ => {
            set_quoted_port(ctx, icmp_csum, inner, inner.l4 + 4, inner.dport, e.sport_be)?;
        }
    }
    set_addrs(ctx, ip, saddr, e.daddr_be)?;
    count(e.slot, ctx.len());
    match next {
        Next::Endpoint(ep) => to_endpoint(ctx, cfg, ip, &ep).map(Some),
        Next::Out(route) => send(ctx, ip, &route).map(Some),
    }
}

/// An ICMPv6 error about a packet of a translated flow, as
/// [`icmp_error`] for IPv4. Not inlined, to keep its frame off the stack
/// of ordinary packets.
#[inline(never)]
pub(crate) fn icmp_error6(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv6,
) -> InReg<Result<Option<i32>, DropReason>> {
    InReg::new(icmp_error6_now(ctx, cfg, ip))
}

#[inline(always)]
fn icmp_error6_now(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv6) -> Result<Option<i32>, DropReason> {
    let inner = quoted6(ctx, ip)?;
    if !inner.has_ports() {
        return Ok(None);
    }
    let key = inner.key().reversed();
    // SAFETY: a map value, valid while the program runs.
    let Some(e) = (unsafe { CONNTRACK6.get(&key) }) else {
        return Ok(None);
    };
    under_rule(translate_icmp_error6(ctx, cfg, ip, e), e.slot)
}

/// The packet an ICMPv6 error quotes, parsed into [`QUOTED6`]. Not
/// inlined: the walk's frame is gone before the translation takes its.
#[inline(never)]
fn quoted6(ctx: &TcContext, ip: &Ipv6) -> Result<&'static Ipv6, DropReason> {
    let inner = QUOTED6.get_ptr_mut(0).ok_or(DropReason::Truncated)?;
    // SAFETY: a per-CPU map value, used by this invocation only.
    let inner = unsafe { &mut *inner };
    ipv6(ctx, ip.l4 + 8, inner)?;
    Ok(inner)
}

/// Translates and delivers an ICMPv6 error quoting the packet in
/// [`QUOTED6`], of the flow whose reply entry is `e`. Its checksum covers
/// the pseudo-header and the whole message, the quoted packet included:
/// one update for each.
#[inline(always)]
fn translate_icmp_error6(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv6,
    e: &CtEntry6,
) -> Result<Option<i32>, DropReason> {
    let inner = QUOTED6.get(0).ok_or(DropReason::Truncated)?;
    // The error came from the flow's peer itself, or from a router between.
    let saddr = if ip.saddr == inner.daddr {
        e.saddr_be
    } else {
        ip.saddr
    };
    let endpoint = crate::endpoint6(&e.daddr_be);
    let route = match endpoint {
        Some(_) => None,
        None => match route6(ctx, cfg, ip, &saddr, &e.daddr_be).get() {
            Ok(route) => Some(route),
            Err(_) => return Ok(None),
        },
    };
    rewrite_quoted6(ctx, ip, e).get()?;
    let pseudo = add32(
        <[u8; 16]>::csum_diff(&ip.saddr, &saddr),
        <[u8; 16]>::csum_diff(&ip.daddr, &e.daddr_be),
    );
    store(ctx, ip.l3 + 8, saddr)?;
    store(ctx, ip.l3 + 24, e.daddr_be)?;
    csum_err(ctx.l4_csum_replace(ip.l4 + 2, 0, u64::from(pseudo), u64::from(BPF_F_PSEUDO_HDR)))?;
    count(e.slot, ctx.len());
    match (endpoint, route) {
        (Some(ep), _) => to_endpoint6(ctx, cfg, ip, &ep).map(Some),
        (None, Some(route)) => send6(ctx, ip, &route).map(Some),
        (None, None) => Ok(None),
    }
}

/// Rewrites the packet in [`QUOTED6`], quoted by the ICMPv6 error `ip`,
/// as its flow's reply entry `e` has it, and the error's checksum with
/// it. (The quoted transport checksum is left: nothing checks it, and it
/// may lie beyond what was quoted.) Not inlined, for the stack limit.
#[inline(never)]
fn rewrite_quoted6(ctx: &TcContext, ip: &Ipv6, e: &CtEntry6) -> InReg<Result<(), DropReason>> {
    InReg::new(rewrite_quoted6_now(ctx, ip, e))
}

#[inline(always)]
fn rewrite_quoted6_now(ctx: &TcContext, ip: &Ipv6, e: &CtEntry6) -> Result<(), DropReason> {
    let inner = QUOTED6.get(0).ok_or(DropReason::Truncated)?;
    let mut payload = add32(
        <[u8; 16]>::csum_diff(&inner.saddr, &e.daddr_be),
        <[u8; 16]>::csum_diff(&inner.daddr, &e.saddr_be),
    );
    store(ctx, inner.l3 + 8, e.daddr_be)?;
    store(ctx, inner.l3 + 24, e.saddr_be)?;
    match inner.proto {
        proto::TCP | proto::UDP => {
            payload = add32(payload, diff16(inner.sport, e.dport_be));
            payload = add32(payload, diff16(inner.dport, e.sport_be));
            store(ctx, inner.l4, e.dport_be)?;
            store(ctx, inner.l4 + 2, e.sport_be)?;
        }
        _ if inner.l4_flags == icmpv6::ECHO_REQUEST => {
            payload = add32(payload, diff16(inner.sport, e.dport_be));
            store(ctx, inner.l4 + 4, e.dport_be)?;
        }
        _ => {
            payload = add32(payload, diff16(inner.dport, e.sport_be));
            store(ctx, inner.l4 + 4, e.sport_be)?;
        }
    }
    csum_err(ctx.l4_csum_replace(ip.l4 + 2, 0, u64::from(payload), 0))
}
