//! Translation: published ports and host addresses, checksums, and the
//! rewrite of a packet to its flow's addresses and ports.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use netplane_common::abi::{
    IfCounters, MAX_HOST_ADDRS, MAX_NAT_SLOTS, MAX_PUBLISH_FROM, MAX_PUBLISHED,
    PUBLISHED_ANY_ENTRIES,
};

use crate::packet::{
    ICMP_ECHO, Ipv4, Ipv6, load, remember_fragment_ports, remember_fragment_ports6, store,
};
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netplane_common::{
    abi::{
        CtEntry, CtEntry6, DropReason, PORT_FLAG_ALLOW_LIST, PortKey, PortKey6, PortTarget,
        PortTarget6, PublishFromKey, Uplink6, proto,
    },
    nat::{Addr, add32, apply_diff, diff16, diff32, replace16},
    packet::icmpv6,
};

#[map(name = "NP_HOST_ADDRS")]
pub(crate) static HOST_ADDRS: HashMap<u32, u32> = HashMap::pinned(MAX_HOST_ADDRS, 0);

#[map(name = "NP_HOST_ADDRS6")]
pub(crate) static HOST_ADDRS6: HashMap<[u8; 16], u32> = HashMap::pinned(MAX_HOST_ADDRS, 0);

#[map(name = "NP_PUBLISHED6")]
pub(crate) static PUBLISHED6: HashMap<PortKey6, PortTarget6> = HashMap::pinned(MAX_PUBLISHED, 0);

#[map(name = "NP_UPLINK6")]
pub(crate) static UPLINK6: Array<Uplink6> = Array::pinned(1, 0);

#[map(name = "NP_PUBLISHED")]
pub(crate) static PUBLISHED: HashMap<PortKey, PortTarget> = HashMap::pinned(MAX_PUBLISHED, 0);

#[map(name = "NP_PUBLISHED_ANY")]
pub(crate) static PUBLISHED_ANY: Array<PortTarget> =
    Array::pinned(PUBLISHED_ANY_ENTRIES, BPF_F_MMAPABLE);

#[map(name = "NP_NAT_COUNTERS")]
pub(crate) static NAT_COUNTERS: PerCpuArray<IfCounters> = PerCpuArray::pinned(MAX_NAT_SLOTS, 0);

/// The NAT rule slot, plus one, under which the packet on its way to
/// [`drop_packet`] was being translated; 0 for none. Written only by
/// `nat::under_rule` on an error and cleared by the drop it leads to, so it
/// never outlives the packet.
#[map]
pub(crate) static DROP_RULE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "NP_PUBLISH_FROM")]
pub(crate) static PUBLISH_FROM: LpmTrie<PublishFromKey, u32> = LpmTrie::pinned(MAX_PUBLISH_FROM, 0);

/// `r`, and if it is an error, the note for [`crate::drop_packet`] that the
/// packet was being translated under NAT rule `slot`. Only for errors that
/// are dropped, never for ones a caller turns into a pass.
#[inline(always)]
pub(crate) fn under_rule<T>(r: Result<T, DropReason>, slot: u32) -> Result<T, DropReason> {
    if r.is_err()
        && let Some(rule) = DROP_RULE.get_ptr_mut(0)
    {
        // SAFETY: per-CPU value, so no other writer runs concurrently.
        unsafe { *rule = slot + 1 };
    }
    r
}

pub(crate) fn count(slot: u32, len: u32) {
    if let Some(c) = NAT_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, so no other writer runs concurrently.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(len);
        }
    }
}

pub(crate) fn published(daddr: u32, dport: u16, proto: u8) -> Option<PortTarget> {
    let key = PortKey {
        addr_be: daddr,
        port_be: dport,
        proto,
        _pad: 0,
    };
    // SAFETY: map values, copied out.
    unsafe { PUBLISHED.get(&key).copied() }.or_else(|| {
        PUBLISHED_ANY
            .get(key.wildcard_index()?)
            .copied()
            .filter(|t| t.addr_be != 0)
    })
}

/// The endpoint behind IPv6 port `dport` of host address `daddr`:
/// published on that address, or on all of them.
#[inline(always)]
pub(crate) fn published6(daddr: &[u8; 16], dport: u16, proto: u8) -> Option<PortTarget6> {
    let mut key = PortKey6 {
        addr: *daddr,
        port_be: dport,
        proto,
        _pad: 0,
    };
    // SAFETY: map values, copied out.
    unsafe { PUBLISHED6.get(&key).copied() }.or_else(|| {
        key.addr = [0; 16];
        // SAFETY: as above.
        unsafe { PUBLISHED6.get(&key).copied() }
    })
}

/// The `HOST_ADDR*` bits of IPv6 `addr`, if it is an address of the host.
#[inline(always)]
pub(crate) fn host_addr6_bits(addr: &[u8; 16]) -> Option<u32> {
    // SAFETY: a map value, copied out.
    unsafe { HOST_ADDRS6.get(addr).copied() }
}

/// The first packet of a flow from `saddr` to the published port
/// `target`: a flow it may open under the port's allow-list, if it has one
/// (new flows only: the flows it let in stay, as with an iptables `-s`).
#[inline(always)]
pub(crate) fn open_to(target: &PortTarget, saddr: u32) -> Result<(), DropReason> {
    if target.flags & PORT_FLAG_ALLOW_LIST == 0 {
        return Ok(());
    }
    let key = Key::new(
        64,
        PublishFromKey {
            slot_be: target.slot.to_be(),
            addr_be: saddr,
        },
    );
    match PUBLISH_FROM.get(&key) {
        Some(_) => Ok(()),
        None => under_rule(Err(DropReason::NotAllowed), target.slot),
    }
}

pub(crate) fn is_host_addr(addr: u32) -> bool {
    // SAFETY: only presence is read.
    unsafe { HOST_ADDRS.get(&addr).is_some() }
}

/// The `HOST_ADDR*` bits of `addr`, if it is an address of the host.
pub(crate) fn host_addr_bits(addr: u32) -> Option<u32> {
    // SAFETY: a map value, copied out.
    unsafe { HOST_ADDRS.get(&addr).copied() }
}

pub(crate) fn csum_err<T>(r: Result<T, i64>) -> Result<T, DropReason> {
    r.map_err(|_| DropReason::Truncated)
}

/// Flags for `bpf_l4_csum_replace` on a `protocol` checksum: zero means
/// "no checksum" for UDP only.
pub(crate) fn l4_csum_flags(protocol: u8) -> u64 {
    u64::from(if protocol == proto::UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    })
}

/// Applies a ones' complement `diff` (see [`diff32`]) to `ip`'s transport
/// checksum, in the kernel so that checksums left to offload are updated
/// the way they need (`pseudo`: the diff is of pseudo-header fields).
#[inline(always)]
pub(crate) fn l4_csum_diff(
    ctx: &TcContext,
    ip: &Ipv4,
    diff: u32,
    pseudo: bool,
) -> Result<(), DropReason> {
    let Some(csum) = ip.l4_csum() else {
        return Ok(());
    };
    let pseudo = if pseudo {
        u64::from(BPF_F_PSEUDO_HDR)
    } else {
        0
    };
    // No field size in the flags: `to` is a diff.
    csum_err(ctx.l4_csum_replace(csum, 0, u64::from(diff), l4_csum_flags(ip.proto) | pseudo))
}

/// Rewrites the addresses of `ip`: the IPv4 checksum directly, the
/// transport checksum (whose pseudo-header covers them) with one helper
/// call, never for ICMP, whose checksum does not cover them.
#[inline(always)]
pub(crate) fn set_addrs(
    ctx: &TcContext,
    ip: &Ipv4,
    saddr: u32,
    daddr: u32,
) -> Result<(), DropReason> {
    if ip.saddr == saddr && ip.daddr == daddr {
        return Ok(());
    }
    let diff = add32(diff32(ip.saddr, saddr), diff32(ip.daddr, daddr));
    if matches!(ip.proto, proto::TCP | proto::UDP) && !ip.later_fragment {
        l4_csum_diff(ctx, ip, diff, true)?;
    }
    let check: u16 = load(ctx, ip.l3 + 10)?;
    store(ctx, ip.l3 + 10, apply_diff(check, diff))?;
    store(ctx, ip.l3 + 12, saddr)?;
    store(ctx, ip.l3 + 16, daddr)
}

/// Makes the packet's addresses and ports those of `to`.
#[inline(always)]
pub(crate) fn rewrite(ctx: &TcContext, ip: &Ipv4, to: &CtEntry) -> Result<(), DropReason> {
    remember_fragment_ports(ip);
    set_addrs(ctx, ip, to.saddr_be, to.daddr_be)?;
    if ip.later_fragment {
        return Ok(());
    }
    let l4 = L4 {
        at: ip.l4,
        csum: ip.l4_csum(),
        csum_flags: l4_csum_flags(ip.proto),
        echo: match ip.proto {
            proto::ICMP => Some(ip.l4_flags == ICMP_ECHO),
            _ => None,
        },
        sport: ip.sport,
        dport: ip.dport,
    };
    set_ports(ctx, &l4, to)
}

/// Where a packet's transport ports are, for [`set_ports`].
pub(crate) struct L4 {
    pub at: usize,
    pub csum: Option<usize>,
    pub csum_flags: u64,
    /// For ICMP echo: whether this is a request (the identifier is the
    /// source port) or a reply (the destination port); `None` otherwise.
    pub echo: Option<bool>,
    pub sport: u16,
    pub dport: u16,
}

/// Makes the transport ports (or echo identifier) those of `to`.
#[inline(always)]
pub(crate) fn set_ports<A: Addr>(
    ctx: &TcContext,
    l4: &L4,
    to: &CtEntry<A>,
) -> Result<(), DropReason> {
    let (old, new, at) = match l4.echo {
        None => {
            if l4.sport == to.sport_be && l4.dport == to.dport_be {
                return Ok(());
            }
            store(ctx, l4.at, to.sport_be)?;
            store(ctx, l4.at + 2, to.dport_be)?;
            let diff = add32(diff16(l4.sport, to.sport_be), diff16(l4.dport, to.dport_be));
            return csum_update(ctx, l4, diff);
        }
        Some(true) => (l4.sport, to.sport_be, l4.at + 4),
        Some(false) => (l4.dport, to.dport_be, l4.at + 4),
    };
    if old == new {
        return Ok(());
    }
    store(ctx, at, new)?;
    csum_update(ctx, l4, diff16(old, new))
}

#[inline(always)]
fn csum_update(ctx: &TcContext, l4: &L4, diff: u32) -> Result<(), DropReason> {
    match l4.csum {
        Some(csum) => csum_err(ctx.l4_csum_replace(csum, 0, u64::from(diff), l4.csum_flags)),
        None => Ok(()),
    }
}

/// Makes an IPv6 packet's addresses and ports those of `to`. IPv6 has no
/// header checksum; every transport checksum, ICMPv6's included, covers
/// the addresses through its pseudo-header.
#[inline(always)]
pub(crate) fn rewrite6(ctx: &TcContext, ip: &Ipv6, to: &CtEntry6) -> Result<(), DropReason> {
    remember_fragment_ports6(ip);
    let addr_diff = add32(
        <[u8; 16]>::csum_diff(&ip.saddr, &to.saddr_be),
        <[u8; 16]>::csum_diff(&ip.daddr, &to.daddr_be),
    );
    if ip.saddr != to.saddr_be {
        store(ctx, ip.l3 + 8, to.saddr_be)?;
    }
    if ip.daddr != to.daddr_be {
        store(ctx, ip.l3 + 24, to.daddr_be)?;
    }
    if ip.later_fragment {
        return Ok(());
    }
    let l4 = L4 {
        at: ip.l4,
        csum: ip.l4_csum(),
        csum_flags: l4_csum_flags(ip.proto),
        echo: match ip.proto {
            proto::ICMPV6 => Some(ip.l4_flags == icmpv6::ECHO_REQUEST),
            _ => None,
        },
        sport: ip.sport,
        dport: ip.dport,
    };
    if (ip.saddr != to.saddr_be || ip.daddr != to.daddr_be)
        && let Some(csum) = l4.csum
    {
        let flags = l4.csum_flags | u64::from(BPF_F_PSEUDO_HDR);
        csum_err(ctx.l4_csum_replace(csum, 0, u64::from(addr_diff), flags))?;
    }
    set_ports(ctx, &l4, to)
}

/// Decrements the TTL, as the router the host is would.
#[inline(always)]
pub(crate) fn decrement_ttl(ctx: &TcContext, ip: &Ipv4) -> Result<(), DropReason> {
    let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
    let new = u16::from_ne_bytes([ip.ttl - 1, ip.proto]);
    let check: u16 = load(ctx, ip.l3 + 10)?;
    store(ctx, ip.l3 + 10, replace16(check, old, new))?;
    // The TTL with the protocol byte: single-byte accesses get their bounds
    // check compiled into a shape the verifier rejects.
    store(ctx, ip.l3 + 8, new)
}
