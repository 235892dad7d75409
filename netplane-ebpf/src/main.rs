//! netplane's kernel data path. Entry points are thin: count, parse with
//! bounds-checked accessors, decide with `netplane_common`, count every drop.
#![no_std]
#![no_main]

mod packet;

use aya_log_ebpf::debug;
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, map},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::TcContext,
};
use netplane_common::{
    abi::{DROP_REASONS, Direction, DropReason, IfCounters, IfStatsKey, MAX_INTERFACES, NetConfig},
    policy::endpoint_traffic_allowed,
};

#[map(name = "NP_NET_CONFIG")]
static NET_CONFIG: Array<NetConfig> = Array::pinned(1, 0);

#[map(name = "NP_IF_STATS")]
static IF_STATS: PerCpuHashMap<IfStatsKey, IfCounters> =
    PerCpuHashMap::pinned(MAX_INTERFACES * 2, 0);

#[map(name = "NP_DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DROP_REASONS, 0);

#[classifier]
pub fn np_count_ingress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Ingress);
    TC_ACT_OK
}

#[classifier]
pub fn np_count_egress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Egress);
    TC_ACT_OK
}

#[classifier]
pub fn np_endpoint_ingress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Ingress);
    match endpoint_verdict(&ctx) {
        Ok(()) => TC_ACT_OK,
        Err(reason) => drop_packet(&ctx, reason),
    }
}

/// Policy for traffic an endpoint sends into the bridge.
fn endpoint_verdict(ctx: &TcContext) -> Result<(), DropReason> {
    let Some(cfg) = NET_CONFIG.get(0) else {
        return Ok(());
    };
    let Some((src_be, dst_be)) = packet::ipv4_addrs(ctx) else {
        return Ok(());
    };
    if endpoint_traffic_allowed(cfg, src_be, dst_be) {
        Ok(())
    } else {
        Err(DropReason::IccDenied)
    }
}

/// Interfaces get their counter slots when the daemon attaches to them, so
/// the hot path never inserts.
fn count(ctx: &TcContext, direction: Direction) {
    // SAFETY: `skb` points at the kernel's __sk_buff for this invocation.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let key = IfStatsKey {
        ifindex,
        direction: direction as u32,
    };
    if let Some(counters) = IF_STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, so no other writer runs concurrently.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += u64::from(ctx.len());
        }
    }
}

fn drop_packet(ctx: &TcContext, reason: DropReason) -> i32 {
    // Off unless the daemon runs with debug logging (AYA_LOG_LEVEL).
    debug!(ctx, "dropped packet: {}", reason.name());
    if let Some(n) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU value, so no other writer runs concurrently.
        unsafe { *n += 1 };
    }
    TC_ACT_SHOT
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
