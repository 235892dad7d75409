//! Connection tracking: a packet's flow, new flows with a free source
//! port (checked against flows and the host's sockets), and sweeps of a
//! full table.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    mem::size_of,
    ptr,
};
use netplane_common::abi::{CtTimeouts, DEFAULT_CT_MAX};

use crate::{
    events,
    nat::{count, published, published6, under_rule},
    reg::InReg,
};
use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_NOEXIST, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::{
        bpf_for_each_map_elem, bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_loop,
        bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp,
    },
    programs::TcContext,
};
use netplane_common::{
    abi::{
        CT_REPLY, CT_SEEN_FIN, CT_SEEN_RST, CtEntry, CtEntry6, DropReason, FlowKey, FlowKey6,
        NetConfig, proto,
    },
    nat::{
        Addr, FirstPacket, FlowPair, candidate_port, flow_entries, lifetime_ns, other_direction,
        reopened_reply_flags, tcp_entry_flags, tcp_opens_flow, tcp_seen_flags,
    },
};

#[map(name = "NP_CONNTRACK")]
pub(crate) static CONNTRACK: HashMap<FlowKey, CtEntry> = HashMap::pinned(DEFAULT_CT_MAX, 0);

#[map(name = "NP_CONNTRACK6")]
pub(crate) static CONNTRACK6: HashMap<FlowKey6, CtEntry6> = HashMap::pinned(DEFAULT_CT_MAX, 0);

/// An address family's flow table and the maps that go with it. The
/// tracking below is written once, for either.
pub(crate) trait Family: Addr + Default + 'static {
    fn table() -> &'static HashMap<FlowKey<Self>, CtEntry<Self>>;
    fn new_flows() -> &'static PerCpuArray<NewFlow<Self>>;
    fn sweep_cursor() -> &'static Array<SweepCursor>;
    /// Whether a published port holds the destination of `key`.
    fn is_published(key: &FlowKey<Self>) -> bool;
    /// Whether a socket of the host holds the tuple of `reply`.
    fn host_socket_holds(ctx: &TcContext, reply: &FlowKey<Self>) -> bool;
    fn new_flow_event(ctx: &TcContext, original: &FlowKey<Self>, translated: &FlowKey<Self>);
}

impl Family for u32 {
    #[inline(always)]
    fn table() -> &'static HashMap<FlowKey, CtEntry> {
        &CONNTRACK
    }
    #[inline(always)]
    fn new_flows() -> &'static PerCpuArray<NewFlow<u32>> {
        &NEW_FLOW
    }
    #[inline(always)]
    fn sweep_cursor() -> &'static Array<SweepCursor> {
        &CT_SWEEP
    }
    #[inline(always)]
    fn is_published(key: &FlowKey) -> bool {
        published(key.daddr_be, key.dport_be, key.proto).is_some()
    }
    #[inline(always)]
    fn host_socket_holds(ctx: &TcContext, reply: &FlowKey) -> bool {
        let tuple = bpf_sock_tuple {
            __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                    saddr: reply.saddr_be,
                    daddr: reply.daddr_be,
                    sport: reply.sport_be,
                    dport: reply.dport_be,
                },
            },
        };
        let size = size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>();
        socket_holds(ctx, tuple, size as u32, reply.proto)
    }
    #[inline(always)]
    fn new_flow_event(ctx: &TcContext, original: &FlowKey, translated: &FlowKey) {
        events::new_flow(ctx, original, translated);
    }
}

impl Family for [u8; 16] {
    #[inline(always)]
    fn table() -> &'static HashMap<FlowKey6, CtEntry6> {
        &CONNTRACK6
    }
    #[inline(always)]
    fn new_flows() -> &'static PerCpuArray<NewFlow<[u8; 16]>> {
        &NEW_FLOW6
    }
    #[inline(always)]
    fn sweep_cursor() -> &'static Array<SweepCursor> {
        &CT_SWEEP6
    }
    #[inline(always)]
    fn is_published(key: &FlowKey6) -> bool {
        published6(&key.daddr_be, key.dport_be, key.proto).is_some()
    }
    #[inline(always)]
    fn host_socket_holds(ctx: &TcContext, reply: &FlowKey6) -> bool {
        let word = |a: &[u8; 16], i: usize| {
            u32::from_ne_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]])
        };
        let words = |a: &[u8; 16]| [word(a, 0), word(a, 1), word(a, 2), word(a, 3)];
        let tuple = bpf_sock_tuple {
            __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                ipv6: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                    saddr: words(&reply.saddr_be),
                    daddr: words(&reply.daddr_be),
                    sport: reply.sport_be,
                    dport: reply.dport_be,
                },
            },
        };
        let size = size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>();
        socket_holds(ctx, tuple, size as u32, reply.proto)
    }
    #[inline(always)]
    fn new_flow_event(ctx: &TcContext, original: &FlowKey6, translated: &FlowKey6) {
        events::new_flow6(ctx, original, translated);
    }
}

#[map(name = "NP_CT_TIMEOUTS")]
pub(crate) static CT_TIMEOUTS: Array<CtTimeouts> = Array::pinned(1, 0);

/// Where the programs' sweeps of a full flow table stand: shared by every
/// CPU, raced on harmlessly (two CPUs at worst sweep the same part).
#[map]
pub(crate) static CT_SWEEP: Array<SweepCursor> = Array::with_max_entries(1, 0);

/// The same for [`CONNTRACK6`].
#[map]
pub(crate) static CT_SWEEP6: Array<SweepCursor> = Array::with_max_entries(1, 0);

/// The sweep in progress on this CPU: in a map, not on the stack, so that
/// the verifier does not follow its counters' values through every
/// iteration.
#[map]
pub(crate) static CT_SWEEPING: PerCpuArray<Sweep> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room for a flow being created.
#[map]
pub(crate) static NEW_FLOW: PerCpuArray<NewFlow> = PerCpuArray::with_max_entries(1, 0);

/// The same for IPv6 flows.
#[map]
pub(crate) static NEW_FLOW6: PerCpuArray<NewFlow<[u8; 16]>> = PerCpuArray::with_max_entries(1, 0);

/// Source ports masquerade tries for a new flow: its own, then random ones
/// (Cilium tries as many). With three quarters of the range taken towards
/// one destination, all of them are taken one time in 10^16.
pub(crate) const PORT_TRIES: u32 = 128;

/// Ports found free of flows that are then checked against the host's
/// sockets, before giving up.
pub(crate) const SOCKET_TRIES: u32 = 4;

pub(crate) const EEXIST: i32 = 17;

/// CLOCK_MONOTONIC at tick resolution: plenty for lifetimes of seconds, and
/// cheaper than the precise clock.
pub(crate) fn now() -> u64 {
    // SAFETY: no arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// How stale a flow's timestamp may get before a packet refreshes it:
/// writing it on every packet would bounce its cache line between CPUs.
pub(crate) const TOUCH_NS: u64 = 1_000_000_000;

/// The entry of the flow this packet (of `len` bytes) belongs to, updated
/// with the packet.
#[inline(always)]
pub(crate) fn track<A: Family>(
    key: &FlowKey<A>,
    l4_flags: u8,
    len: u32,
) -> Option<&'static CtEntry<A>> {
    let entry = A::table().get_ptr_mut(key)?;
    Some(touch(entry, key, l4_flags, len))
}

/// Updates `entry`, a flow's entry found under `key`, with a packet of
/// `len` bytes: its timestamp, TCP flags and counters, and its rule's.
#[inline(always)]
pub(crate) fn touch<A: Family>(
    entry: *mut CtEntry<A>,
    key: &FlowKey<A>,
    l4_flags: u8,
    len: u32,
) -> &'static CtEntry<A> {
    // SAFETY: a map value, which stays valid while the program runs; racing
    // writers only lose a timestamp or a flag, which the next packet sets.
    let entry = unsafe {
        let stamp = now();
        if stamp.wrapping_sub((*entry).last_seen_ns) > TOUCH_NS {
            (*entry).last_seen_ns = stamp;
        }
        if key.proto == proto::TCP
            && let Some(flags) = tcp_entry_flags((*entry).flags, l4_flags)
        {
            let closed = CT_SEEN_FIN | CT_SEEN_RST;
            if (*entry).flags & closed != 0 && flags & closed == 0 {
                reopen_reply(key, &*entry);
            }
            (*entry).flags = flags;
        }
        // A flow may be handled on several CPUs at once.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &raw mut (*entry).bytes,
            u64::from(len),
        );
        &*entry
    };
    count(entry.slot, len);
    entry
}

/// A SYN reopened the flow whose forward entry is `entry` (keyed `key`):
/// its reply direction starts again too. Not inlined: rare, and off the
/// stack of every other packet.
#[inline(never)]
pub(crate) fn reopen_reply<A: Family>(key: &FlowKey<A>, entry: &CtEntry<A>) {
    if let Some(reply) = A::table().get_ptr_mut(&other_direction(key, entry)) {
        // SAFETY: a map value, valid while the program runs.
        unsafe { (*reply).flags = reopened_reply_flags() };
    }
}

/// A flow to record: its first packet `original` leaves as `translated`.
/// Lives in a per-CPU map value, as does the pair of entries built from it.
pub(crate) struct NewFlow<A = u32> {
    original: FlowKey<A>,
    /// Where the flow goes once translated; the caller sets the part it
    /// translates.
    pub(crate) translated: FlowKey<A>,
    slot: u32,
    first_seen: u32,
    /// Both entries, once created.
    pub(crate) pair: FlowPair<A>,
}

/// The per-CPU [`NewFlow`], reset for a flow that the packet keyed `key`
/// opens under NAT rule `slot`. TCP flows are opened by a SYN only.
#[inline(always)]
pub(crate) fn new_flow<A: Family>(
    key: &FlowKey<A>,
    l4_flags: u8,
    slot: u32,
) -> Result<&'static mut NewFlow<A>, DropReason> {
    let first_seen = if key.proto == proto::TCP {
        if !tcp_opens_flow(l4_flags) {
            return Err(DropReason::TcpNoFlow);
        }
        tcp_seen_flags(l4_flags)
    } else {
        0
    };
    let flow = A::new_flows().get_ptr_mut(0).ok_or(DropReason::CtFull)?;
    // SAFETY: a per-CPU map value, used by this invocation only.
    let flow = unsafe { &mut *flow };
    flow.original = *key;
    flow.translated = flow.original;
    flow.slot = slot;
    flow.first_seen = first_seen;
    Ok(flow)
}

/// Records a new flow, reply entry first; its forward entry is then in
/// `flow.pair.fwd`. Not inlined: the verifier limits the stack of each
/// call chain, and this frame is only live while creating.
#[inline(never)]
pub(crate) fn create<A: Family>(
    ctx: &TcContext,
    flow: &mut NewFlow<A>,
) -> InReg<Result<(), DropReason>> {
    let slot = flow.slot;
    InReg::new(under_rule(create_now(ctx, flow), slot))
}

#[inline(always)]
pub(crate) fn create_now<A: Family>(
    ctx: &TcContext,
    flow: &mut NewFlow<A>,
) -> Result<(), DropReason> {
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
            A::new_flow_event(ctx, &flow.original, &flow.translated);
            Ok(())
        }
        Err(e) => {
            let _ = A::table().remove(&pair.reply_key);
            if e != -EEXIST {
                return Err(DropReason::CtFull);
            }
            // Another CPU created the flow first: use its entry.
            // SAFETY: a map value, copied out.
            pair.fwd = unsafe { A::table().get(&pair.fwd_key) }
                .copied()
                .ok_or(DropReason::CtFull)?;
            Ok(())
        }
    }
}

/// Inserts a new flow's entry; when the table is full, sweeps it for
/// expired flows once and tries again.
#[inline(always)]
pub(crate) fn insert_new<A: Family>(key: &FlowKey<A>, entry: &CtEntry<A>) -> Result<(), i32> {
    match A::table().insert(key, entry, u64::from(BPF_NOEXIST)) {
        Err(e) if e != -EEXIST && sweep_expired::<A>() => {
            A::table().insert(key, entry, u64::from(BPF_NOEXIST))
        }
        r => r,
    }
}

/// Entries one sweep of a full flow table reads, after skipping those the
/// sweeps before it read: a few milliseconds of one packet's time.
pub(crate) const SWEEP_WINDOW: u32 = 16_384;

/// Flows one sweep frees before it stops: room for a burst of new flows.
pub(crate) const SWEEP_FREES: u32 = 256;

/// The least time between two sweeps: a sweep costs the packet that runs
/// it, and a flood of new flows against a table of live ones must not make
/// every packet pay.
pub(crate) const SWEEP_AGAIN_NS: u64 = 1_000_000_000;

/// Where the sweeps stand, shared by every CPU.
#[repr(C)]
pub(crate) struct SweepCursor {
    /// CLOCK_MONOTONIC before which no sweep starts.
    next_ns: u64,
    /// Entries to skip: those the sweeps before read.
    start: u32,
    _pad: u32,
}

/// One sweep's progress, per CPU.
#[repr(C)]
pub(crate) struct Sweep {
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
pub(crate) fn sweep_expired<A: Family>() -> bool {
    let (Some(cursor), Some(sweep)) =
        (A::sweep_cursor().get_ptr_mut(0), CT_SWEEPING.get_ptr_mut(0))
    else {
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
    // SAFETY: the map is the family's flow table, and the callback takes
    // that map's keys and values; it keeps its state in CT_SWEEPING.
    let read = unsafe {
        bpf_for_each_map_elem(
            (A::table() as *const HashMap<FlowKey<A>, CtEntry<A>>)
                .cast_mut()
                .cast(),
            sweep_flow::<A> as *mut c_void,
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
pub(crate) extern "C" fn sweep_flow<A: Family>(
    _map: *mut c_void,
    key: *const FlowKey<A>,
    entry: *const CtEntry<A>,
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
    let reply = unsafe { A::table().get(&reply_key).copied() };
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
        let _ = A::table().remove(key);
        let _ = A::table().remove(&reply_key);
        sweep.freed += 1;
    }
    0
}

/// What [`free_port`] returns when every candidate was taken.
pub(crate) const NO_PORT: u32 = u32::MAX;

/// Makes `flow` leave from a port [`free_port`] found, or the drop for
/// none.
#[inline(always)]
pub(crate) fn pick_port<A: Family>(
    ctx: &TcContext,
    cfg: &NetConfig,
    flow: &mut NewFlow<A>,
) -> Result<(), DropReason> {
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
pub(crate) fn free_port<A: Family>(ctx: &TcContext, cfg: &NetConfig, flow: &NewFlow<A>) -> u32 {
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
                probe_port::<A> as *mut c_void,
                (&raw mut probe).cast(),
                0,
            )
        };
        if probe.found == NO_PORT {
            return NO_PORT;
        }
        probe.reply.dport_be = (probe.found as u16).to_be();
        if !A::host_socket_holds(ctx, &probe.reply) {
            return probe.found;
        }
        probe.skip_own = 1;
    }
    NO_PORT
}

/// A port search of [`free_port`], on its stack: `bpf_loop` hands its
/// callback a pointer to the caller's stack only.
#[repr(C)]
pub(crate) struct PortProbe<A> {
    /// The key replies would arrive with; its destination port is the
    /// candidate.
    reply: FlowKey<A>,
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
pub(crate) extern "C" fn probe_port<A: Family>(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: the `PortProbe` [`free_port`] passed to bpf_loop.
    let p = unsafe { &mut *ctx.cast::<PortProbe<A>>() };
    // SAFETY: no arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    let port = candidate_port(p.own, index + u32::from(p.skip_own), random, p.min, p.max);
    p.reply.dport_be = port.to_be();
    if A::is_published(&p.reply) {
        return 0;
    }
    // SAFETY: only presence is read.
    if unsafe { A::table().get(&p.reply) }.is_some() {
        return 0;
    }
    p.found = u32::from(port);
    1
}

/// Whether a socket of the host holds `tuple` (of `size` bytes, for
/// `protocol`), the tuple a reply arrives as: one connected to that peer
/// from that port, or listening or bound to the port. Replies to the
/// translation would otherwise meet the host's own connection.
#[inline(always)]
fn socket_holds(ctx: &TcContext, mut tuple: bpf_sock_tuple, size: u32, protocol: u8) -> bool {
    let skb = ctx.skb.skb as *mut c_void;
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: `tuple` is a tuple of the size passed; a socket found is
    // released before returning.
    let sk = unsafe {
        match protocol {
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
