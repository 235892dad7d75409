//! Header parsing with `bpf_skb_load_bytes`: every read is bounds-checked by
//! the kernel against the whole packet, paged data included, so a truncated
//! header is an error and never a read past the end.

use aya_ebpf::programs::{TcContext, XdpContext};
use aya_ebpf::{macros::map, maps::LruHashMap};

pub use netplane_common::packet::{ETH_HLEN, ICMP_ECHO, Ipv4, Ipv6};
use netplane_common::{
    abi::DropReason,
    packet::{ByteSource, MAX_IPV6_EXTENSION_BYTES, parse_ipv4, parse_ipv6},
};

/// Ports of datagrams being fragmented, so that later fragments of a
/// translated flow are translated too (LRU: entries age out by themselves).
#[map]
pub(crate) static FRAGMENTS: LruHashMap<FragmentKey, FragmentPorts> =
    LruHashMap::with_max_entries(8192, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

/// Bytes of headers the programs read: Ethernet, IPv4 with options, and
/// for ICMP errors the quoted IPv4 header with options and 8 bytes more.
const HEADERS: u32 = (ETH_HLEN + 60 + 8 + 60 + 8) as u32;

/// Bytes of headers the programs read of IPv6: Ethernet, the fixed
/// header, extension headers and a TCP header.
const HEADERS6: u32 = (ETH_HLEN + 40 + MAX_IPV6_EXTENSION_BYTES + 20) as u32;

/// Makes the headers directly readable: packets whose headers sit in paged
/// data (rare) are pulled into the linear area once, so every later access
/// is a plain bounds-checked load instead of a helper call.
#[inline(always)]
pub fn linearize(ctx: &TcContext) {
    pull(ctx, HEADERS);
}

/// [`linearize`] for IPv6, whose headers may reach further.
#[inline(always)]
pub fn linearize6(ctx: &TcContext) {
    pull(ctx, HEADERS6);
}

#[inline(always)]
fn pull(ctx: &TcContext, headers: u32) {
    let want = headers.min(ctx.len());
    if ctx.data() + want as usize > ctx.data_end() {
        let _ = ctx.pull_data(want);
    }
}

/// A packet whose bytes a program reads and writes directly: a tc
/// program's linear data, or an XDP program's frame.
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

/// A pointer to a `T` at `offset`, if the packet's linear data holds it.
#[inline(always)]
fn ptr_at<T>(ctx: &impl Frame, offset: usize) -> Result<*mut T, DropReason> {
    // Offsets kept in map values reach the verifier unbounded. Masking
    // (rather than comparing, which the compiler may fold into other
    // comparisons) gives it a range it accepts for pointer arithmetic; no
    // header offset comes near the mask.
    let offset = offset & 0x1ff;
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return Err(DropReason::Truncated);
    }
    Ok((start + offset) as *mut T)
}

/// Reads a `T` at `offset`; a header cut short is an error, never a read
/// past the end. (No single bytes: the compiler turns their bounds check
/// into a comparison the verifier does not follow.)
#[inline(always)]
pub fn load<T>(ctx: &impl Frame, offset: usize) -> Result<T, DropReason> {
    // SAFETY: `ptr_at` checked the bounds; the read is unaligned-safe.
    Ok(unsafe { core::ptr::read_unaligned(ptr_at::<T>(ctx, offset)?) })
}

/// Writes `v` at `offset`. Pointers are derived afresh, since helpers that
/// change the packet (checksum updates, pulls) invalidate older ones.
#[inline(always)]
pub fn store<T>(ctx: &impl Frame, offset: usize, v: T) -> Result<(), DropReason> {
    // SAFETY: `ptr_at` checked the bounds; the write is unaligned-safe.
    unsafe { core::ptr::write_unaligned(ptr_at::<T>(ctx, offset)?, v) };
    Ok(())
}

/// What the Ethernet header carries.
pub enum L3 {
    /// IPv4 right after the Ethernet header.
    Ipv4,
    /// IPv6 right after the Ethernet header.
    Ipv6,
    /// ARP; the sender protocol address is at this offset.
    Arp(usize),
    /// Anything else, 802.1Q-tagged frames included: a tag still in the
    /// data means the frame belongs to a VLAN device above this one (the
    /// kernel strips the tag of its own VLAN before tc sees the frame).
    Other,
}

#[inline(always)]
pub fn l3(ctx: &impl Frame) -> Result<L3, DropReason> {
    Ok(match u16::from_be(load::<u16>(ctx, 12)?) {
        ETH_P_IP => L3::Ipv4,
        ETH_P_IPV6 => L3::Ipv6,
        ETH_P_ARP => L3::Arp(ETH_HLEN + 14),
        _ => L3::Other,
    })
}

/// A datagram being fragmented: the later fragments carry no ports, so the
/// first one's are remembered under this key (values as in the packet).
#[repr(C)]
pub struct FragmentKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl FragmentKey {
    /// The datagram `ip` is a fragment of.
    #[inline(always)]
    fn of(ip: &Ipv4) -> FragmentKey {
        FragmentKey {
            saddr: ip.saddr,
            daddr: ip.daddr,
            id: ip.id,
            proto: ip.proto,
            _pad: 0,
        }
    }
}

/// An IPv6 datagram being fragmented, as [`FragmentKey`].
#[repr(C)]
pub struct FragmentKey6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FragmentKey6 {
    #[inline(always)]
    fn of(ip: &Ipv6) -> FragmentKey6 {
        FragmentKey6 {
            saddr: ip.saddr,
            daddr: ip.daddr,
            id: ip.frag_id,
            proto: ip.proto,
            _pad: [0; 3],
        }
    }
}

/// The same for IPv6 datagrams.
#[map]
pub(crate) static FRAGMENTS6: LruHashMap<FragmentKey6, FragmentPorts> =
    LruHashMap::with_max_entries(8192, 0);

/// Remembers the ports of an IPv6 first fragment for the fragments that
/// follow. Not inlined: its key stays off the stack of the callers.
#[inline(never)]
pub fn remember_fragment_ports6(ip: &Ipv6) {
    if !ip.more_fragments || ip.later_fragment {
        return;
    }
    let ports = FragmentPorts {
        sport: ip.sport,
        dport: ip.dport,
    };
    let _ = FRAGMENTS6.insert(&FragmentKey6::of(ip), &ports, 0);
}

/// The ports of a fragmented datagram, as in its first fragment.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FragmentPorts {
    pub sport: u16,
    pub dport: u16,
}

/// Remembers the ports of a first fragment for the fragments that follow.
#[inline(always)]
pub fn remember_fragment_ports(ip: &Ipv4) {
    if !ip.more_fragments || ip.later_fragment {
        return;
    }
    let key = FragmentKey::of(ip);
    let ports = FragmentPorts {
        sport: ip.sport,
        dport: ip.dport,
    };
    let _ = FRAGMENTS.insert(&key, &ports, 0);
}

/// The packet of a program, as the parser in `netplane_common` reads it.
pub struct Packet<'a, C: Frame>(pub &'a C);

impl<C: Frame> ByteSource for Packet<'_, C> {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Result<T, DropReason> {
        load(self.0, offset)
    }
}

/// Parses the IPv4 header at `l3` into `ip` (see [`parse_ipv4`]); a later
/// fragment gets the ports its first fragment had, when that was seen.
#[inline(always)]
pub fn ipv4(ctx: &TcContext, l3: usize, quoted: bool, ip: &mut Ipv4) -> Result<(), DropReason> {
    parse_ipv4(&Packet(ctx), l3, quoted, ip)?;
    if ip.later_fragment {
        let key = FragmentKey::of(ip);
        // SAFETY: a map value, copied out.
        if let Some(ports) = unsafe { FRAGMENTS.get(&key) }.copied() {
            ip.sport = ports.sport;
            ip.dport = ports.dport;
            ip.ports_from_first_fragment = true;
        }
    }
    Ok(())
}

/// Parses the IPv6 header at `l3` into `ip` (see [`parse_ipv6`]); a
/// later fragment gets the ports its first fragment had, when that was
/// seen.
#[inline(always)]
pub fn ipv6(ctx: &TcContext, l3: usize, ip: &mut Ipv6) -> Result<(), DropReason> {
    parse_ipv6(&Packet(ctx), l3, ip)?;
    if ip.later_fragment {
        // SAFETY: a map value, copied out.
        if let Some(ports) = unsafe { FRAGMENTS6.get(&FragmentKey6::of(ip)) }.copied() {
            ip.sport = ports.sport;
            ip.dport = ports.dport;
            ip.ports_from_first_fragment = true;
        }
    }
    Ok(())
}

/// The interface the packet is on.
pub(crate) fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` points at the kernel's __sk_buff for this invocation.
    unsafe { (*ctx.skb.skb).ifindex }
}
