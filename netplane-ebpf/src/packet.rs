//! Bounds-checked access to packet headers.

use aya_ebpf::programs::TcContext;

const ETH_HLEN: usize = 14;
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const IPV4_SADDR: usize = ETH_HLEN + 12;

/// A pointer to a `T` at `offset` in the packet, if the packet is that long.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Source and destination of an IPv4 packet, network byte order.
#[inline(always)]
pub fn ipv4_addrs(ctx: &TcContext) -> Option<(u32, u32)> {
    let proto: *const u16 = ptr_at(ctx, 12)?;
    // SAFETY: `ptr_at` checked the bounds.
    if unsafe { core::ptr::read_unaligned(proto) } != ETH_P_IP_BE {
        return None;
    }
    let addrs: *const [u32; 2] = ptr_at(ctx, IPV4_SADDR)?;
    // SAFETY: `ptr_at` checked the bounds.
    let [src, dst] = unsafe { core::ptr::read_unaligned(addrs) };
    Some((src, dst))
}
