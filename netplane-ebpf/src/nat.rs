//! Connection tracking, translation and delivery.
//!
//! A translated packet never goes through the host's IP stack: it is
//! rewritten here and redirected straight to the endpoint's veth or to the
//! device the FIB names, so no netfilter rule (or flush of them) is involved.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    mem::size_of,
    ptr,
};

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, TC_ACT_OK,
        bpf_fib_lookup, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_for_each_map_elem, bpf_get_prandom_u32,
        bpf_ktime_get_coarse_ns, bpf_loop, bpf_redirect, bpf_redirect_neigh, bpf_sk_lookup_udp,
        bpf_sk_release, bpf_skc_lookup_tcp,
    },
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netplane_common::{
    abi::{
        AddrPair, CT_REPLY, CT_SEEN_FIN, CT_SEEN_RST, CtEntry, DropReason, EndpointPort, FlowKey,
        HOST_ADDR_GATEWAY, MASQUERADE_SLOT, NetConfig, PORT_FLAG_ALLOW_LIST, PortKey, PortTarget,
        PublishFromKey, proto,
    },
    nat::{
        FirstPacket, FlowPair, add32, apply_diff, candidate_port, diff16, diff32, flow_entries,
        lifetime_ns, other_direction, reopened_reply_flags, replace16, replace16_udp, replace32,
        replace32_udp, tcp_entry_flags, tcp_opens_flow, tcp_seen_flags,
    },
    policy::endpoint_traffic_allowed,
};

use crate::{
    CONNTRACK, CT_SWEEP, CT_SWEEPING, CT_TIMEOUTS, DROP_RULE, ENDPOINTS, FIB_SCRATCH, HOST_ADDRS,
    LINKED, NAT_COUNTERS, NEW_FLOW, PUBLISH_FROM, PUBLISHED, PUBLISHED_ANY, QUOTED, events,
    overlay,
    packet::{ICMP_ECHO, Ipv4, ipv4, load, remember_fragment_ports, store},
    reg::{InReg, Route},
};

/// Source ports masquerade tries for a new flow: its own, then random ones
/// (Cilium tries as many). With three quarters of the range taken towards
/// one destination, all of them are taken one time in 10^16.
const PORT_TRIES: u32 = 128;
/// Ports found free of flows that are then checked against the host's
/// sockets, before giving up.
const SOCKET_TRIES: u32 = 4;

const EEXIST: i32 = 17;
const AF_INET: u8 = 2;

pub type Verdict = Result<i32, DropReason>;

/// CLOCK_MONOTONIC at tick resolution: plenty for lifetimes of seconds, and
/// cheaper than the precise clock.
fn now() -> u64 {
    // SAFETY: no arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// How stale a flow's timestamp may get before a packet refreshes it:
/// writing it on every packet would bounce its cache line between CPUs.
const TOUCH_NS: u64 = 1_000_000_000;

/// `r`, and if it is an error, the note for [`crate::drop_packet`] that the
/// packet was being translated under NAT rule `slot`. Only for errors that
/// are dropped, never for ones a caller turns into a pass.
#[inline(always)]
fn under_rule<T>(r: Result<T, DropReason>, slot: u32) -> Result<T, DropReason> {
    if r.is_err()
        && let Some(rule) = DROP_RULE.get_ptr_mut(0)
    {
        // SAFETY: per-CPU value, so no other writer runs concurrently.
        unsafe { *rule = slot + 1 };
    }
    r
}

fn count(slot: u32, len: u32) {
    if let Some(c) = NAT_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, so no other writer runs concurrently.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(len);
        }
    }
}

/// The entry of the flow this packet belongs to, updated with the packet.
#[inline(always)]
fn track(ctx: &TcContext, ip: &Ipv4) -> Option<&'static CtEntry> {
    let entry = CONNTRACK.get_ptr_mut(ip.key())?;
    // SAFETY: a map value, which stays valid while the program runs; racing
    // writers only lose a timestamp or a flag, which the next packet sets.
    let entry = unsafe {
        let stamp = now();
        if stamp.wrapping_sub((*entry).last_seen_ns) > TOUCH_NS {
            (*entry).last_seen_ns = stamp;
        }
        if ip.proto == proto::TCP
            && let Some(flags) = tcp_entry_flags((*entry).flags, ip.l4_flags)
        {
            let closed = CT_SEEN_FIN | CT_SEEN_RST;
            if (*entry).flags & closed != 0 && flags & closed == 0 {
                reopen_reply(&ip.key(), &*entry);
            }
            (*entry).flags = flags;
        }
        // A flow may be handled on several CPUs at once.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &raw mut (*entry).bytes,
            u64::from(ctx.len()),
        );
        &*entry
    };
    count(entry.slot, ctx.len());
    Some(entry)
}

/// A SYN reopened the flow whose forward entry is `entry` (keyed `key`):
/// its reply direction starts again too. Not inlined: rare, and off the
/// stack of every other packet.
#[inline(never)]
fn reopen_reply(key: &FlowKey, entry: &CtEntry) {
    if let Some(reply) = CONNTRACK.get_ptr_mut(&other_direction(key, entry)) {
        // SAFETY: a map value, valid while the program runs.
        unsafe { (*reply).flags = reopened_reply_flags() };
    }
}

/// A flow to record: its first packet `original` leaves as `translated`.
/// Lives in a per-CPU map value, as does the pair of entries built from it.
pub struct NewFlow {
    original: FlowKey,
    translated: FlowKey,
    slot: u32,
    first_seen: u32,
    pair: FlowPair,
}

/// The per-CPU [`NewFlow`], reset for a flow that `ip` opens under NAT
/// rule `slot`. TCP flows are opened by a SYN only.
#[inline(always)]
fn new_flow(ip: &Ipv4, slot: u32) -> Result<&'static mut NewFlow, DropReason> {
    let first_seen = if ip.proto == proto::TCP {
        if !tcp_opens_flow(ip.l4_flags) {
            return Err(DropReason::TcpNoFlow);
        }
        tcp_seen_flags(ip.l4_flags)
    } else {
        0
    };
    let flow = NEW_FLOW.get_ptr_mut(0).ok_or(DropReason::CtFull)?;
    // SAFETY: a per-CPU map value, used by this invocation only.
    let flow = unsafe { &mut *flow };
    flow.original = ip.key();
    flow.translated = flow.original;
    flow.slot = slot;
    flow.first_seen = first_seen;
    Ok(flow)
}

/// Records a new flow, reply entry first; its forward entry is then in
/// `flow.pair.fwd`. Not inlined: the verifier limits the stack of each
/// call chain, and this frame is only live while creating.
#[inline(never)]
fn create(ctx: &TcContext, flow: &mut NewFlow) -> InReg<Result<(), DropReason>> {
    let slot = flow.slot;
    InReg::new(under_rule(create_now(ctx, flow), slot))
}

#[inline(always)]
fn create_now(ctx: &TcContext, flow: &mut NewFlow) -> Result<(), DropReason> {
    flow_entries(
        &flow.original,
        &flow.translated,
        flow.slot,
        now(),
        FirstPacket {
            len: ctx.len(),
            seen: flow.first_seen,
        },
        &mut flow.pair,
    );
    let pair = &mut flow.pair;
    match insert_new(&pair.reply_key, &pair.reply) {
        Ok(()) => {}
        // Taken since [`free_port`] looked (another CPU's flow), or, with
        // the port kept, another flow's already: the sender's retry looks
        // again.
        Err(e) if e == -EEXIST => return Err(DropReason::NatPortsExhausted),
        Err(_) => return Err(DropReason::CtFull),
    }
    match insert_new(&pair.fwd_key, &pair.fwd) {
        Ok(()) => {
            count(flow.slot, ctx.len());
            events::new_flow(ctx, &flow.original, &flow.translated);
            Ok(())
        }
        Err(e) => {
            let _ = CONNTRACK.remove(&pair.reply_key);
            if e != -EEXIST {
                return Err(DropReason::CtFull);
            }
            // Another CPU created the flow first: use its entry.
            // SAFETY: a map value, copied out.
            pair.fwd = unsafe { CONNTRACK.get(&pair.fwd_key) }
                .copied()
                .ok_or(DropReason::CtFull)?;
            Ok(())
        }
    }
}

/// Inserts a new flow's entry; when the table is full, sweeps it for
/// expired flows once and tries again.
#[inline(always)]
fn insert_new(key: &FlowKey, entry: &CtEntry) -> Result<(), i32> {
    match CONNTRACK.insert(key, entry, u64::from(BPF_NOEXIST)) {
        Err(e) if e != -EEXIST && sweep_expired() => {
            CONNTRACK.insert(key, entry, u64::from(BPF_NOEXIST))
        }
        r => r,
    }
}

/// Entries one sweep of a full flow table reads, after skipping those the
/// sweeps before it read: a few milliseconds of one packet's time.
const SWEEP_WINDOW: u32 = 16_384;
/// Flows one sweep frees before it stops: room for a burst of new flows.
const SWEEP_FREES: u32 = 256;
/// The least time between two sweeps: a sweep costs the packet that runs
/// it, and a flood of new flows against a table of live ones must not make
/// every packet pay.
const SWEEP_AGAIN_NS: u64 = 1_000_000_000;

/// Where the sweeps stand, shared by every CPU.
#[repr(C)]
pub struct SweepCursor {
    /// CLOCK_MONOTONIC before which no sweep starts.
    next_ns: u64,
    /// Entries to skip: those the sweeps before read.
    start: u32,
    _pad: u32,
}

/// One sweep's progress, per CPU.
#[repr(C)]
pub struct Sweep {
    now: u64,
    start: u32,
    /// Entries met so far, skipped ones included.
    seen: u32,
    freed: u32,
    _pad: u32,
}

/// Deletes expired flows, both entries together, as the daemon's collector
/// does: a table the daemon stopped collecting (it is down, or refused a
/// layout it does not know) still takes new flows as old ones expire. A
/// sweep reads [`SWEEP_WINDOW`] entries where the one before stopped, and
/// stops early once it freed [`SWEEP_FREES`] flows. True when it freed
/// any. Not inlined: rare, and its frame stays off the stack of other
/// packets.
#[inline(never)]
fn sweep_expired() -> bool {
    let (Some(cursor), Some(sweep)) = (CT_SWEEP.get_ptr_mut(0), CT_SWEEPING.get_ptr_mut(0)) else {
        return false;
    };
    let now = now();
    // SAFETY: map values: the shared cursor, raced on harmlessly, and
    // this CPU's sweep.
    let (cursor, sweep) = unsafe { (&mut *cursor, &mut *sweep) };
    if now < cursor.next_ns {
        return false;
    }
    cursor.next_ns = now + SWEEP_AGAIN_NS;
    *sweep = Sweep {
        now,
        start: cursor.start,
        seen: 0,
        freed: 0,
        _pad: 0,
    };
    // SAFETY: the map is CONNTRACK itself, and the callback takes that
    // map's keys and values; it keeps its state in CT_SWEEPING.
    let read = unsafe {
        bpf_for_each_map_elem(
            (&raw const CONNTRACK).cast_mut().cast(),
            sweep_flow as *mut c_void,
            ptr::null_mut(),
            0,
        )
    };
    // Stopped before the end of the table: the next sweep goes on from
    // there. Otherwise it starts over.
    cursor.start = if (read as u32) < sweep.start.saturating_add(SWEEP_WINDOW) {
        0
    } else {
        sweep.start.saturating_add(SWEEP_WINDOW)
    };
    sweep.freed > 0
}

/// One entry of a sweep: a forward entry whose flow (with its reply entry)
/// has expired goes, with that reply entry; reply entries are judged with
/// their forward ones. 1 ends the sweep.
#[inline(never)]
extern "C" fn sweep_flow(
    _map: *mut c_void,
    key: *const FlowKey,
    entry: *const CtEntry,
    _ctx: *mut c_void,
) -> i64 {
    let Some(sweep) = CT_SWEEPING.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's sweep; the kernel passes the entry's key and
    // value.
    let (sweep, key, entry) = unsafe { (&mut *sweep, &*key, &*entry) };
    sweep.seen += 1;
    if sweep.seen <= sweep.start {
        return 0;
    }
    if sweep.seen > sweep.start.saturating_add(SWEEP_WINDOW) || sweep.freed >= SWEEP_FREES {
        return 1;
    }
    if entry.flags & CT_REPLY != 0 {
        return 0;
    }
    let Some(t) = CT_TIMEOUTS.get(0) else {
        return 1;
    };
    let reply_key = other_direction(key, entry);
    // SAFETY: a map value, copied out.
    let reply = unsafe { CONNTRACK.get(&reply_key).copied() };
    let (reply_flags, reply_seen) = reply.map_or((0, 0), |r| (r.flags, r.last_seen_ns));
    let life = lifetime_ns(key.proto, entry.flags, reply_flags, t);
    // All zero: no daemon wrote lifetimes yet.
    if life == 0 {
        return 1;
    }
    let last = if reply_seen > entry.last_seen_ns {
        reply_seen
    } else {
        entry.last_seen_ns
    };
    if sweep.now.saturating_sub(last) > life {
        let _ = CONNTRACK.remove(key);
        let _ = CONNTRACK.remove(&reply_key);
        sweep.freed += 1;
    }
    0
}

/// What [`free_port`] returns when every candidate was taken.
const NO_PORT: u32 = u32::MAX;

/// Makes `flow` leave from a port [`free_port`] found, or the drop for
/// none.
#[inline(always)]
fn pick_port(ctx: &TcContext, cfg: &NetConfig, flow: &mut NewFlow) -> Result<(), DropReason> {
    match free_port(ctx, cfg, flow) {
        NO_PORT => Err(DropReason::NatPortsExhausted),
        port => {
            flow.translated.sport_be = (port as u16).to_be();
            Ok(())
        }
    }
}

/// A source port (host byte order) for `flow` that neither a tracked
/// flow's reply nor the host uses towards its destination: the flow's own
/// first, then random ones of the range. It only looks; [`create`] claims
/// the port. Not inlined: its frame stays off the stack of other packets.
#[inline(never)]
fn free_port(ctx: &TcContext, cfg: &NetConfig, flow: &NewFlow) -> u32 {
    let mut probe = PortProbe {
        reply: flow.translated.reversed(),
        own: u16::from_be(flow.original.sport_be),
        min: cfg.nat_port_min,
        max: cfg.nat_port_max,
        skip_own: 0,
        found: NO_PORT,
    };
    for _ in 0..SOCKET_TRIES {
        probe.found = NO_PORT;
        // SAFETY: the callback reads and writes `probe` only, a stack
        // value of the type it expects, which outlives the call.
        unsafe {
            bpf_loop(
                PORT_TRIES,
                probe_port as *mut c_void,
                (&raw mut probe).cast(),
                0,
            )
        };
        if probe.found == NO_PORT {
            return NO_PORT;
        }
        probe.reply.dport_be = (probe.found as u16).to_be();
        if !host_socket_holds(ctx, &probe.reply) {
            return probe.found;
        }
        probe.skip_own = 1;
    }
    NO_PORT
}

/// A port search of [`free_port`], on its stack: `bpf_loop` hands its
/// callback a pointer to the caller's stack only.
#[repr(C)]
struct PortProbe {
    /// The key replies would arrive with; its destination port is the
    /// candidate.
    reply: FlowKey,
    /// The flow's own port and the range, host byte order.
    own: u16,
    min: u16,
    max: u16,
    /// 1 once the own port was found held by a host socket.
    skip_own: u16,
    /// The port found, host byte order, or [`NO_PORT`].
    found: u32,
}

/// One candidate of a [`PortProbe`] (RFC 6056's simple port
/// randomization): 1, ending the loop, when no flow's reply entry and no
/// published port hold it. Checked once by the verifier, however many
/// times `bpf_loop` calls it.
#[inline(never)]
extern "C" fn probe_port(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: the `PortProbe` [`free_port`] passed to bpf_loop.
    let p = unsafe { &mut *ctx.cast::<PortProbe>() };
    // SAFETY: no arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    let port = candidate_port(p.own, index + u32::from(p.skip_own), random, p.min, p.max);
    p.reply.dport_be = port.to_be();
    if published(p.reply.daddr_be, p.reply.dport_be, p.reply.proto).is_some() {
        return 0;
    }
    // SAFETY: only presence is read.
    if unsafe { CONNTRACK.get(&p.reply) }.is_some() {
        return 0;
    }
    p.found = u32::from(port);
    1
}

/// Whether a socket of the host holds the tuple a reply keyed `reply`
/// arrives as: one connected to that peer from that port, or listening or
/// bound to the port. Replies to the translation would otherwise meet the
/// host's own connection.
#[inline(always)]
fn host_socket_holds(ctx: &TcContext, reply: &FlowKey) -> bool {
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: reply.saddr_be,
                daddr: reply.daddr_be,
                sport: reply.sport_be,
                dport: reply.dport_be,
            },
        },
    };
    let size = size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
    let skb = ctx.skb.skb as *mut c_void;
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: `tuple` is an IPv4 tuple of the size passed; a socket found
    // is released before returning.
    let sk = unsafe {
        match reply.proto {
            proto::TCP => bpf_skc_lookup_tcp(skb, &mut tuple, size, netns, 0),
            proto::UDP => bpf_sk_lookup_udp(skb, &mut tuple, size, netns, 0),
            _ => ptr::null_mut(),
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a socket the lookup returned, released once.
    unsafe { bpf_sk_release(sk as *mut c_void) };
    true
}

pub fn published(daddr: u32, dport: u16, proto: u8) -> Option<PortTarget> {
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
fn open_to(target: &PortTarget, saddr: u32) -> Result<(), DropReason> {
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

pub fn is_host_addr(addr: u32) -> bool {
    // SAFETY: only presence is read.
    unsafe { HOST_ADDRS.get(&addr).is_some() }
}

/// The `HOST_ADDR*` bits of `addr`, if it is an address of the host.
fn host_addr_bits(addr: u32) -> Option<u32> {
    // SAFETY: a map value, copied out.
    unsafe { HOST_ADDRS.get(&addr).copied() }
}

fn csum_err<T>(r: Result<T, i64>) -> Result<T, DropReason> {
    r.map_err(|_| DropReason::Truncated)
}

/// Flags for `bpf_l4_csum_replace` on `ip`'s transport checksum: zero means
/// "no checksum" for UDP only.
fn l4_csum_flags(ip: &Ipv4) -> u64 {
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
fn l4_csum_diff(ctx: &TcContext, ip: &Ipv4, diff: u32, pseudo: bool) -> Result<(), DropReason> {
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
fn set_addrs(ctx: &TcContext, ip: &Ipv4, saddr: u32, daddr: u32) -> Result<(), DropReason> {
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
fn rewrite(ctx: &TcContext, ip: &Ipv4, to: &CtEntry) -> Result<(), DropReason> {
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
fn decrement_ttl(ctx: &TcContext, ip: &Ipv4) -> Result<(), DropReason> {
    let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
    let new = u16::from_ne_bytes([ip.ttl - 1, ip.proto]);
    let check: u16 = load(ctx, ip.l3 + 10)?;
    store(ctx, ip.l3 + 10, replace16(check, old, new))?;
    // The TTL with the protocol byte: single-byte accesses get their bounds
    // check compiled into a shape the verifier rejects.
    store(ctx, ip.l3 + 8, new)
}

/// Source and destination of a packet once translated.
#[derive(Clone, Copy)]
pub struct Addrs {
    pub saddr: u32,
    pub daddr: u32,
}

/// What the FIB is asked about a packet besides its addresses.
#[derive(Clone, Copy)]
pub struct FibFlow {
    pub proto: u8,
    /// Ports as in the packet.
    pub sport: u16,
    pub dport: u16,
    /// Total length, host byte order, for the MTU check.
    pub tot_len: u16,
}

impl FibFlow {
    #[inline(always)]
    fn of(ip: &Ipv4) -> FibFlow {
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
pub fn route(
    ctx: &TcContext,
    cfg: &NetConfig,
    flow: &FibFlow,
    addrs: &Addrs,
) -> InReg<Result<Route, DropReason>> {
    InReg::new(fib(ctx, cfg, flow, addrs))
}

#[inline(always)]
fn fib(
    ctx: &TcContext,
    cfg: &NetConfig,
    flow: &FibFlow,
    addrs: &Addrs,
) -> Result<Route, DropReason> {
    let Addrs { saddr, daddr } = *addrs;
    let p = FIB_SCRATCH.get_ptr_mut(0).ok_or(DropReason::NoRoute)?;
    // SAFETY: a per-CPU map value, used by this invocation only; all-zero
    // is a valid request to fill in.
    let p = unsafe {
        ptr::write_bytes(p, 0, 1);
        &mut *p
    };
    p.family = AF_INET;
    p.l4_protocol = flow.proto;
    p.sport = flow.sport;
    p.dport = flow.dport;
    // SAFETY: `skb` points at the kernel's __sk_buff for this invocation.
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    // GSO packets are segmented on the way out: only others can be too big.
    p.__bindgen_anon_1.tot_len = if gso { 0 } else { flow.tot_len };
    p.ifindex = cfg.bridge_ifindex;
    p.__bindgen_anon_3.ipv4_src = saddr;
    p.__bindgen_anon_4.ipv4_dst = daddr;
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

/// Sends a rewritten packet out of the host along `route`.
#[inline(always)]
fn send(ctx: &TcContext, ip: &Ipv4, route: &Route) -> Verdict {
    decrement_ttl(ctx, ip)?;
    out_along(ctx, route)
}

/// Redirects the frame out along `route`, its Ethernet addresses those the
/// FIB request of this invocation found, or the kernel's to resolve.
#[inline(always)]
pub fn out_along(ctx: &TcContext, route: &Route) -> Verdict {
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

/// Delivers a rewritten packet to the endpoint `to`, as if the gateway had
/// routed it there.
#[inline(always)]
fn to_endpoint(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4, to: &EndpointPort) -> Verdict {
    decrement_ttl(ctx, ip)?;
    store(ctx, 0, to.mac)?;
    store(ctx, 6, cfg.bridge_mac)?;
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(to.ifindex, 0) } as i32)
}

/// Where a packet of a known flow goes once rewritten to `to`.
enum Next {
    Endpoint(EndpointPort),
    Out(Route),
}

#[inline(always)]
fn next_hop(
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
fn forward(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4, to: &CtEntry) -> InReg<Verdict> {
    InReg::new(under_rule(forward_now(ctx, cfg, ip, to), to.slot))
}

#[inline(always)]
fn forward_now(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4, to: &CtEntry) -> Verdict {
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

/// Rewrites a 16-bit word inside an ICMP error's payload, keeping the ICMP
/// checksum right.
#[inline(always)]
fn set_quoted16(
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
fn set_quoted_addr(
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
fn set_quoted_port(
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
fn icmp_error(
    ctx: &TcContext,
    cfg: &NetConfig,
    ip: &Ipv4,
) -> InReg<Result<Option<i32>, DropReason>> {
    InReg::new(icmp_error_now(ctx, cfg, ip))
}

#[inline(always)]
fn icmp_error_now(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4) -> Result<Option<i32>, DropReason> {
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
fn translate_icmp_error(
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

/// The verdict for a packet of a tracked flow, or an ICMP error about one.
/// Protocols without ports are tracked by address alone.
#[inline(always)]
fn tracked(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4) -> Result<Option<i32>, DropReason> {
    if ip.is_icmp_error() {
        return icmp_error(ctx, cfg, ip).get();
    }
    if ip.later_fragment && !ip.ports_from_first_fragment {
        return Ok(None);
    }
    match track(ctx, ip) {
        Some(e) => forward(ctx, cfg, ip, e).get().map(Some),
        None => Ok(None),
    }
}

/// A packet an endpoint of network `vni` (0: the bridge network) sent:
/// overlay, tracked flows, hairpin to published ports, `--icc=false`,
/// masquerade.
#[inline(never)]
pub fn from_endpoint(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4, vni: u32) -> InReg<Verdict> {
    InReg::new(from_endpoint_now(ctx, cfg, ip, vni))
}

#[inline(always)]
fn from_endpoint_now(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4, vni: u32) -> Verdict {
    let on_bridge = ip.daddr & cfg.mask_be == cfg.subnet_be;
    // To another endpoint of the bridge: switched, not routed.
    let switched = on_bridge && ip.daddr != cfg.gateway_be;
    if ip.ttl <= 1 {
        // The stack answers "time exceeded" for what it would route
        // (traceroute's first hop); what the bridge switches passes no
        // router, and `--icc=false` holds for it whatever its TTL.
        return if switched {
            between_endpoints(cfg, ip)
        } else {
            Ok(TC_ACT_OK)
        };
    }
    // Overlay traffic keeps its addresses: no tracking, no translation.
    if let Some(peer) = overlay::peer_of(cfg, ip.daddr) {
        if peer.vni != vni {
            return Err(DropReason::OtherNetwork);
        }
        return overlay::encapsulate(ctx, cfg, ip, &peer).get();
    }
    if overlay::in_other_network(cfg, ip.daddr, vni) {
        return Err(DropReason::OtherNetwork);
    }
    if let Some(verdict) = tracked(ctx, cfg, ip)? {
        return Ok(verdict);
    }
    if switched {
        return between_endpoints(cfg, ip);
    }
    if is_host_addr(ip.daddr) {
        if matches!(ip.proto, proto::TCP | proto::UDP)
            && !ip.later_fragment
            && let Some(target) = published(ip.daddr, ip.dport, ip.proto)
        {
            // Hairpin. An endpoint reaching itself must see another source,
            // or its stack takes the packet for a martian.
            open_to(&target, ip.saddr)?;
            let flow = under_rule(new_flow(ip, target.slot), target.slot)?;
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

/// A packet from one endpoint of the bridge to another: `--icc=false`,
/// except `--link`ed pairs.
#[inline(always)]
fn between_endpoints(cfg: &NetConfig, ip: &Ipv4) -> Verdict {
    let pair = AddrPair {
        src_be: ip.saddr,
        dst_be: ip.daddr,
    };
    // SAFETY: only presence is read.
    let linked = unsafe { LINKED.get(&pair).is_some() };
    if endpoint_traffic_allowed(cfg, ip.saddr, ip.daddr, linked) {
        Ok(TC_ACT_OK)
    } else {
        Err(DropReason::IccDenied)
    }
}

/// A packet an endpoint sends out through the uplink, not of a flow yet:
/// a new flow from the host's address.
#[inline(always)]
fn masquerade(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4, route: &Route) -> Verdict {
    if ip.later_fragment {
        return Err(DropReason::Fragment);
    }
    if ip.is_icmp_error() {
        return Err(DropReason::UntrackedIcmpError);
    }
    let flow = new_flow(ip, MASQUERADE_SLOT)?;
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
pub fn from_uplink(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4) -> InReg<Verdict> {
    InReg::new(from_uplink_now(ctx, cfg, ip))
}

#[inline(always)]
fn from_uplink_now(ctx: &TcContext, cfg: &NetConfig, ip: &Ipv4) -> Verdict {
    if ip.ttl <= 1 {
        return Ok(TC_ACT_OK);
    }
    if overlay::is_vxlan_for(cfg, ip) {
        return overlay::decapsulate(ctx, cfg, ip).get();
    }
    if let Some(verdict) = tracked(ctx, cfg, ip)? {
        return Ok(verdict);
    }
    // SAFETY: only presence is read.
    if unsafe { ENDPOINTS.get(&ip.daddr) }.is_some() {
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
    let flow = under_rule(new_flow(ip, target.slot), target.slot)?;
    flow.translated.daddr_be = target.addr_be;
    flow.translated.dport_be = target.port_be;
    create(ctx, flow).get()?;
    forward(ctx, cfg, ip, &flow.pair.fwd).get()
}
