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

use crate::packet::{ICMP_ECHO, Ipv4, load, remember_fragment_ports, store};
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netplane_common::{
    abi::{CtEntry, DropReason, PORT_FLAG_ALLOW_LIST, PortKey, PortTarget, PublishFromKey, proto},
    nat::{add32, apply_diff, diff16, diff32, replace16},
};

#[map(name = "NP_HOST_ADDRS")]
pub(crate) static HOST_ADDRS: HashMap<u32, u32> = HashMap::pinned(MAX_HOST_ADDRS, 0);

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

/// Flags for `bpf_l4_csum_replace` on `ip`'s transport checksum: zero means
/// "no checksum" for UDP only.
pub(crate) fn l4_csum_flags(ip: &Ipv4) -> u64 {
    u64::from(if ip.proto == proto::UDP {
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
    csum_err(ctx.l4_csum_replace(csum, 0, u64::from(diff), l4_csum_flags(ip) | pseudo))
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
    match ip.proto {
        proto::TCP | proto::UDP => {
            if ip.sport == to.sport_be && ip.dport == to.dport_be {
                return Ok(());
            }
            let diff = add32(diff16(ip.sport, to.sport_be), diff16(ip.dport, to.dport_be));
            l4_csum_diff(ctx, ip, diff, false)?;
            store(ctx, ip.l4, to.sport_be)?;
            store(ctx, ip.l4 + 2, to.dport_be)
        }
        proto::ICMP => {
            // The echo identifier: the source port of requests, the
            // destination port of replies.
            let (old, new) = if ip.l4_flags == ICMP_ECHO {
                (ip.sport, to.sport_be)
            } else {
                (ip.dport, to.dport_be)
            };
            if old == new {
                return Ok(());
            }
            l4_csum_diff(ctx, ip, diff16(old, new), false)?;
            store(ctx, ip.l4 + 4, new)
        }
        _ => Ok(()),
    }
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
