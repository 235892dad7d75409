//! netplane's kernel data path. Entry points are thin: count, parse with
//! bounds-checked accessors, decide with `netplane_common`, count every drop.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core's atomic types offer no
// `fetch_add`; the intrinsic becomes the instruction BPF does have
// (BPF_ATOMIC | BPF_ADD), which is what per-flow counters need.
#![allow(internal_features)]
#![feature(core_intrinsics)]
// Map keys and values are passed by reference on purpose: a reference into
// a per-CPU map value costs no stack, a value would be copied onto it.
#![allow(clippy::needless_borrows_for_generic_args)]

mod config;
mod conntrack;
mod events;
mod fib;
mod icmp;
mod nat;
mod overlay;
mod packet;
mod paths;
mod paths6;
mod reg;
mod sock;
mod xdp;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT, xdp_action::XDP_PASS},
    macros::{cgroup_sock_addr, classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use config::NET_CONFIG;
use nat::DROP_RULE;
use netplane_common::{
    abi::{
        DROP_REASONS, Direction, DropReason, EndpointIdentity, EndpointPort, IfCounters, IfDrops,
        IfStatsKey, MACVLAN_SOURCE_HOST, MAX_ENDPOINTS, MAX_INTERFACES, MAX_MACVLAN_SOURCES,
        MAX_RULE_DROPS, MacKey, MacvlanSource, NET_FLAG_MACVLAN, NetConfig, RuleDropKey, proto,
    },
    packet::{icmpv6, link_local_of},
    policy::{ipv6_sender_allowed, is_ipv6_multicast},
};
use packet::{L3, ifindex, load};
use reg::InReg;

/// Read by the daemon only; the programs never look at it.
#[map(name = "NP_LAYOUT")]
static LAYOUT: Array<u32> = Array::pinned(1, 0);

#[map(name = "NP_IF_STATS")]
static IF_STATS: PerCpuHashMap<IfStatsKey, IfCounters> =
    PerCpuHashMap::pinned(MAX_INTERFACES * 2, 0);

#[map(name = "NP_DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DROP_REASONS, 0);

#[map(name = "NP_IF_DROPS")]
static IF_DROPS: PerCpuHashMap<u32, IfDrops> = PerCpuHashMap::pinned(MAX_INTERFACES, 0);

#[map(name = "NP_ENDPOINT_IFACES")]
static ENDPOINT_IFACES: HashMap<u32, EndpointIdentity> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Per-CPU room for the parsed packet, too big for the stack along every
/// call chain (the verifier allows 512 bytes for all frames together).
#[map]
static PACKET: PerCpuArray<packet::Ipv4> = PerCpuArray::with_max_entries(1, 0);

/// The same for IPv6.
#[map]
static PACKET6: PerCpuArray<packet::Ipv6> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "NP_ENDPOINT6_IFACES")]
static ENDPOINT6_IFACES: HashMap<u32, [u8; 16]> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map(name = "NP_ENDPOINTS6")]
static ENDPOINTS6: HashMap<[u8; 16], EndpointPort> = HashMap::pinned(MAX_ENDPOINTS * 2, 0);

#[map(name = "NP_MACVLAN_SOURCES")]
static MACVLAN_SOURCES: HashMap<MacKey, MacvlanSource> = HashMap::pinned(MAX_MACVLAN_SOURCES, 0);

#[map(name = "NP_RULE_DROPS")]
static RULE_DROPS: PerCpuHashMap<RuleDropKey, u64> =
    PerCpuHashMap::pinned(MAX_RULE_DROPS, BPF_F_NO_PREALLOC);

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
pub fn np_parent_egress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Egress);
    verdict(&ctx, parent_egress(&ctx))
}

/// The uplink's XDP fast path (see [`xdp`]): redirects what it can take,
/// passes the rest to the uplink's tc program.
#[xdp]
pub fn np_uplink_xdp(ctx: XdpContext) -> u32 {
    let Some(cfg) = NET_CONFIG.get(0) else {
        return XDP_PASS;
    };
    xdp::uplink(&ctx, cfg).unwrap_or(XDP_PASS)
}

/// Passes every frame: on an endpoint's eth0, it lets its veth take
/// frames redirected by XDP in their native form.
#[xdp]
pub fn np_xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Returns at once: the floor the benchmarks measure the others against.
#[classifier]
pub fn np_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[classifier]
pub fn np_endpoint_ingress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Ingress);
    verdict(&ctx, endpoint_ingress(&ctx))
}

#[classifier]
pub fn np_uplink_ingress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Ingress);
    verdict(&ctx, uplink_ingress(&ctx))
}

/// Allow: the hooks translate, they never refuse.
const SOCK_ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn np_connect4(ctx: SockAddrContext) -> i32 {
    sock::redirect(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn np_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::redirect(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn np_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::restore(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn np_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::restore(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn np_connect6(ctx: SockAddrContext) -> i32 {
    sock::redirect6(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn np_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::redirect6(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn np_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::restore6(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn np_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::restore6(&ctx);
    SOCK_ALLOW
}

fn verdict(ctx: &TcContext, v: Result<i32, DropReason>) -> i32 {
    match v {
        Ok(action) => action,
        Err(reason) => drop_packet(ctx, reason),
    }
}

/// What an endpoint sends: only as itself, then NAT and policy.
fn endpoint_ingress(ctx: &TcContext) -> Result<i32, DropReason> {
    // SAFETY: a map value, copied out.
    let me = unsafe { ENDPOINT_IFACES.get(&ifindex(ctx)).copied() };
    let (Some(cfg), Some(me)) = (NET_CONFIG.get(0), me) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: `skb` points at the kernel's __sk_buff for this invocation.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        // The kernel took the tag off into the skb before tc; forwarded,
        // the frame would leave tagged.
        return Err(DropReason::VlanTagged);
    }
    packet::linearize(ctx);
    let src_mac: [u8; 6] = load(ctx, 6)?;
    if src_mac != me.mac {
        return Err(DropReason::Spoofed);
    }
    match packet::l3(ctx)? {
        L3::Ipv4 => {
            let ip = parsed(ctx)?;
            if ip.saddr != me.addr_be {
                return Err(DropReason::Spoofed);
            }
            paths::from_endpoint(ctx, cfg, ip, me.vni).get()
        }
        L3::Arp(sender_addr) => {
            if load::<u32>(ctx, sender_addr)? != me.addr_be {
                return Err(DropReason::Spoofed);
            }
            Ok(TC_ACT_OK)
        }
        L3::Ipv6 => match endpoint_ipv6(ctx, &me).get()? {
            Some(verdict) => Ok(verdict),
            None => {
                let ip = PACKET6.get(0).ok_or(DropReason::Truncated)?;
                paths6::from_endpoint(ctx, cfg, ip, me.vni)
            }
        },
        // Anything else: the checks above and `--icc=false` know only IP.
        L3::Other => Err(DropReason::UnknownL3),
    }
}

/// What an endpoint sends over IPv6: only endpoints of dual-stack
/// networks may, only as themselves (neighbour discovery included), and
/// to other endpoints only of their own network. `None` for a packet
/// parsed into [`PACKET6`] that the caller sends on its way (`--icc`,
/// flows, masquerade): this frame is gone by then.
#[inline(never)]
fn endpoint_ipv6(ctx: &TcContext, me: &EndpointIdentity) -> InReg<Result<Option<i32>, DropReason>> {
    InReg::new(endpoint_ipv6_now(ctx, me))
}

#[inline(always)]
fn endpoint_ipv6_now(ctx: &TcContext, me: &EndpointIdentity) -> Result<Option<i32>, DropReason> {
    // SAFETY: a map value, copied out.
    let Some(own) = (unsafe { ENDPOINT6_IFACES.get(&ifindex(ctx)).copied() }) else {
        return Err(DropReason::UnknownL3);
    };
    let ip = parsed6(ctx)?;
    let link_local = link_local_of(me.mac);
    let target: Option<[u8; 16]> =
        if ip.proto == proto::ICMPV6 && ip.l4_flags == icmpv6::NEIGHBOUR_ADVERT {
            Some(load(ctx, ip.l4 + 8)?)
        } else {
            None
        };
    ipv6_sender_allowed(ip, &own, &link_local, target.as_ref())?;
    if is_ipv6_multicast(&ip.daddr) || ip.daddr == own || ip.daddr == link_local {
        return Ok(Some(TC_ACT_OK));
    }
    match endpoint6(&ip.daddr) {
        Some(ep) if ep.vni != me.vni => Err(DropReason::OtherNetwork),
        _ => Ok(None),
    }
}

/// The endpoint with IPv6 address `addr`, if it is one.
pub(crate) fn endpoint6(addr: &[u8; 16]) -> Option<EndpointPort> {
    // SAFETY: a map value, copied out.
    unsafe { ENDPOINTS6.get(addr).copied() }
}

/// What leaves through a macvlan parent: its macvlan endpoints' frames
/// only from their own MAC and address, the host's from its own MAC.
fn parent_egress(ctx: &TcContext) -> Result<i32, DropReason> {
    match NET_CONFIG.get(0) {
        Some(cfg) if cfg.flags & NET_FLAG_MACVLAN != 0 => {}
        _ => return Ok(TC_ACT_OK),
    }
    let key = MacKey {
        mac: load(ctx, 6)?,
        _pad: [0; 2],
    };
    // SAFETY: a map value, copied out.
    let Some(sender) = (unsafe { MACVLAN_SOURCES.get(&key).copied() }) else {
        return Err(DropReason::Spoofed);
    };
    if sender.flags & MACVLAN_SOURCE_HOST != 0 {
        return Ok(TC_ACT_OK);
    }
    packet::linearize(ctx);
    let claimed = match packet::l3(ctx)? {
        L3::Ipv4 => parsed(ctx)?.saddr,
        L3::Arp(sender_addr) => load::<u32>(ctx, sender_addr)?,
        // macvlan networks have no IPv6.
        L3::Ipv6 | L3::Other => return Err(DropReason::UnknownL3),
    };
    if claimed == sender.addr_be {
        Ok(TC_ACT_OK)
    } else {
        Err(DropReason::Spoofed)
    }
}

/// What arrives from outside: replies to masquerade, published ports.
fn uplink_ingress(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(cfg) = NET_CONFIG.get(0) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: `skb` points at the kernel's __sk_buff for this invocation.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        // Frames of a VLAN device above the uplink are that device's.
        return Ok(TC_ACT_OK);
    }
    packet::linearize(ctx);
    match packet::l3(ctx)? {
        L3::Ipv4 => paths::from_uplink(ctx, cfg, parsed(ctx)?).get(),
        L3::Ipv6 => uplink_ipv6(ctx, cfg).get(),
        _ => Ok(TC_ACT_OK),
    }
}

#[inline(never)]
fn uplink_ipv6(ctx: &TcContext, cfg: &NetConfig) -> InReg<Result<i32, DropReason>> {
    InReg::new(uplink_ipv6_now(ctx, cfg))
}

#[inline(always)]
fn uplink_ipv6_now(ctx: &TcContext, cfg: &NetConfig) -> Result<i32, DropReason> {
    paths6::from_uplink6(ctx, cfg, parsed6(ctx)?).get()
}

/// The packet's IPv4 header and ports, parsed into [`PACKET`].
fn parsed(ctx: &TcContext) -> Result<&'static packet::Ipv4, DropReason> {
    let ip = PACKET.get_ptr_mut(0).ok_or(DropReason::Truncated)?;
    // SAFETY: a per-CPU map value, used by this invocation only.
    let ip = unsafe { &mut *ip };
    packet::ipv4(ctx, packet::ETH_HLEN, false, ip)?;
    Ok(ip)
}

/// The packet's IPv6 header, extension headers walked, parsed into
/// [`PACKET6`]. Not inlined: the walk's frame is gone before the paths
/// that follow take theirs.
#[inline(never)]
fn parsed6(ctx: &TcContext) -> Result<&'static packet::Ipv6, DropReason> {
    packet::linearize6(ctx);
    let ip = PACKET6.get_ptr_mut(0).ok_or(DropReason::Truncated)?;
    // SAFETY: a per-CPU map value, used by this invocation only.
    let ip = unsafe { &mut *ip };
    packet::ipv6(ctx, packet::ETH_HLEN, ip)?;
    Ok(ip)
}

fn count(ctx: &TcContext, direction: Direction) {
    count_interface(ifindex(ctx), direction, ctx.len());
}

/// Counts a packet of `len` bytes through interface `ifindex`. Interfaces
/// get their counter slots when the daemon attaches to them, so the hot
/// path never inserts.
#[inline(always)]
pub(crate) fn count_interface(ifindex: u32, direction: Direction, len: u32) {
    let key = IfStatsKey {
        ifindex,
        direction: direction as u32,
    };
    if let Some(counters) = IF_STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, so no other writer runs concurrently.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += u64::from(len);
        }
    }
}

fn drop_packet(ctx: &TcContext, reason: DropReason) -> i32 {
    // Off unless the daemon runs with debug logging (AYA_LOG_LEVEL).
    debug!(ctx, "dropped packet: {}", reason.name());
    events::dropped(ctx, reason);
    if let Some(n) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU value, so no other writer runs concurrently.
        unsafe { *n += 1 };
    }
    // Like the traffic counters, present once the daemon attached.
    if let Some(drops) = IF_DROPS.get_ptr_mut(ifindex(ctx)) {
        // The compiler knows a reason's range and would leave out the
        // bounds check the verifier needs; read through memory, it cannot.
        // SAFETY: a local.
        let slot = unsafe { core::ptr::read_volatile(&(reason as usize)) };
        // SAFETY: as above.
        if let Some(n) = unsafe { (*drops).by_reason.get_mut(slot) } {
            *n += 1;
        }
    }
    if let Some(rule) = DROP_RULE.get_ptr_mut(0) {
        // SAFETY: per-CPU value, so no other writer runs concurrently.
        let tagged = unsafe { core::mem::replace(&mut *rule, 0) };
        if let Some(slot) = tagged.checked_sub(1) {
            count_rule_drop(slot, reason);
        }
    }
    TC_ACT_SHOT
}

/// Counts a drop under NAT rule `slot`; the rule's first drop for `reason`
/// makes its entry.
fn count_rule_drop(slot: u32, reason: DropReason) {
    let key = RuleDropKey {
        slot,
        reason: reason as u32,
    };
    let add = || match RULE_DROPS.get_ptr_mut(&key) {
        Some(n) => {
            // SAFETY: per-CPU value, so no other writer runs concurrently.
            unsafe { *n += 1 };
            true
        }
        None => false,
    };
    // Made with this CPU's count and zero for the others; when another
    // CPU made it first, this one adds to it.
    if !add() && RULE_DROPS.insert(&key, &1, u64::from(BPF_NOEXIST)).is_err() {
        add();
    }
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
