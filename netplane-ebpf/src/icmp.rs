//! ICMP errors about tracked flows: the quoted packet translated as its
//! flow was, checksums kept right.

use aya_ebpf::{macros::map, maps::PerCpuArray};

use crate::{
    conntrack::CONNTRACK,
    fib::{Next, next_hop, send, to_endpoint},
    nat::{count, csum_err, set_addrs, under_rule},
    packet::{ICMP_ECHO, Ipv4, ipv4, load, store},
    reg::InReg,
};
use aya_ebpf::programs::TcContext;
use netplane_common::{
    abi::{CtEntry, DropReason, FlowKey, NetConfig, proto},
    nat::{replace16, replace16_udp, replace32, replace32_udp},
};

/// Per-CPU room for the packet quoted in an ICMP error.
#[map]
pub(crate) static QUOTED: PerCpuArray<Ipv4> = PerCpuArray::with_max_entries(1, 0);

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
