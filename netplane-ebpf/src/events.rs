//! Events for `netplane monitor`, put on a ring buffer only while the
//! daemon says someone watches: with nobody watching, a drop or a new flow
//! costs one array lookup more, and established flows nothing.

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use core::ptr;
use netplane_common::abi::EVENTS_BYTES;

use crate::packet::ifindex;
use aya_ebpf::{helpers::bpf_skb_load_bytes, maps::ring_buf::RingBufEntry, programs::TcContext};
use netplane_common::abi::{
    DropReason, EVENT_DROP, EVENT_HEADER_BYTES, EVENT_NEW_FLOW, EVENT_NEW_FLOW6, Event, FlowKey,
    FlowKey6,
};

/// Not pinned: a new daemon starts with monitoring off and a new ring,
/// which only the programs it loaded write to.
#[map(name = "NP_EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map(name = "NP_MONITOR")]
pub(crate) static MONITOR: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "NP_EVENTS_LOST")]
pub(crate) static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn monitoring() -> bool {
    MONITOR.get(0).is_some_and(|on| *on != 0)
}

/// An event about the packet in `ctx`, its first bytes copied in; `None`
/// (and counted lost) when the ring is full.
#[inline(always)]
fn reserve(ctx: &TcContext, kind: u32, reason: u32) -> Option<RingBufEntry<Event>> {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        if let Some(lost) = EVENTS_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU value, so no other writer runs concurrently.
            unsafe { *lost += 1 };
        }
        return None;
    };
    let event = entry.as_mut_ptr();
    let len = ctx.len();
    let captured = len.min(EVENT_HEADER_BYTES as u32);
    // SAFETY: `event` points at a reserved ring buffer record of an Event's
    // size, which this program owns until it submits or discards it.
    unsafe {
        ptr::write_bytes(event, 0, 1);
        (*event).kind = kind;
        (*event).reason = reason;
        (*event).ifindex = ifindex(ctx);
        (*event).len = len;
        if captured > 0
            && bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                0,
                ptr::addr_of_mut!((*event).header).cast(),
                captured,
            ) == 0
        {
            (*event).captured = captured;
        }
    }
    Some(entry)
}

/// A drop, for reason `reason`.
#[inline(never)]
pub fn dropped(ctx: &TcContext, reason: DropReason) {
    if !monitoring() {
        return;
    }
    if let Some(entry) = reserve(ctx, EVENT_DROP, reason as u32) {
        entry.submit(0);
    }
}

/// A flow recorded: its first packet `original` leaves as `translated`.
#[inline(never)]
pub fn new_flow(ctx: &TcContext, original: &FlowKey, translated: &FlowKey) {
    if !monitoring() {
        return;
    }
    if let Some(mut entry) = reserve(ctx, EVENT_NEW_FLOW, 0) {
        let event = entry.as_mut_ptr();
        // SAFETY: as in `reserve`.
        unsafe {
            (*event).original = *original;
            (*event).translated = *translated;
        }
        entry.submit(0);
    }
}

/// A new IPv6 flow: its keys travel where a packet's bytes would.
pub fn new_flow6(ctx: &TcContext, original: &FlowKey6, translated: &FlowKey6) {
    if !monitoring() {
        return;
    }
    if let Some(mut entry) = reserve(ctx, EVENT_NEW_FLOW6, 0) {
        let event = entry.as_mut_ptr();
        // SAFETY: as in `reserve`; two keys fit in the header bytes.
        unsafe {
            let keys = ptr::addr_of_mut!((*event).header).cast::<FlowKey6>();
            keys.write_unaligned(*original);
            keys.add(1).write_unaligned(*translated);
            (*event).captured = 0;
        }
        entry.submit(0);
    }
}
