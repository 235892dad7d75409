//! Header parsing with `bpf_skb_load_bytes`: every read is bounds-checked by
//! the kernel against the whole packet, paged data included, so a truncated
//! header is an error and never a read past the end.

use aya_ebpf::programs::TcContext;
use aya_ebpf::{macros::map, maps::LruHashMap};

use netplane_common::abi::{DropReason, FlowKey, proto};

/// Ports of datagrams being fragmented, so that later fragments of a
/// translated flow are translated too (LRU: entries age out by themselves).
#[map]
pub(crate) static FRAGMENTS: LruHashMap<FragmentKey, FragmentPorts> =
    LruHashMap::with_max_entries(8192, 0);

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const IP_DF: u16 = 0x4000;
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROB: u8 = 12;

/// Bytes of headers the programs read: Ethernet, IPv4 with options, and
/// for ICMP errors the quoted IPv4 header with options and 8 bytes more.
const HEADERS: u32 = (ETH_HLEN + 60 + 8 + 60 + 8) as u32;

/// Makes the headers directly readable: packets whose headers sit in paged
/// data (rare) are pulled into the linear area once, so every later access
/// is a plain bounds-checked load instead of a helper call.
#[inline(always)]
pub fn linearize(ctx: &TcContext) {
    let want = HEADERS.min(ctx.len());
    if ctx.data() + want as usize > ctx.data_end() {
        let _ = ctx.pull_data(want);
    }
}

/// A pointer to a `T` at `offset`, if the packet's linear data holds it.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*mut T, DropReason> {
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
pub fn load<T>(ctx: &TcContext, offset: usize) -> Result<T, DropReason> {
    // SAFETY: `ptr_at` checked the bounds; the read is unaligned-safe.
    Ok(unsafe { core::ptr::read_unaligned(ptr_at::<T>(ctx, offset)?) })
}

/// Writes `v` at `offset`. Pointers are derived afresh, since helpers that
/// change the packet (checksum updates, pulls) invalidate older ones.
#[inline(always)]
pub fn store<T>(ctx: &TcContext, offset: usize, v: T) -> Result<(), DropReason> {
    // SAFETY: `ptr_at` checked the bounds; the write is unaligned-safe.
    unsafe { core::ptr::write_unaligned(ptr_at::<T>(ctx, offset)?, v) };
    Ok(())
}

/// What the Ethernet header carries.
pub enum L3 {
    /// IPv4 right after the Ethernet header.
    Ipv4,
    /// ARP; the sender protocol address is at this offset.
    Arp(usize),
    /// Anything else, 802.1Q-tagged frames included: a tag still in the
    /// data means the frame belongs to a VLAN device above this one (the
    /// kernel strips the tag of its own VLAN before tc sees the frame).
    Other,
}

#[inline(always)]
pub fn l3(ctx: &TcContext) -> Result<L3, DropReason> {
    Ok(match u16::from_be(load::<u16>(ctx, 12)?) {
        ETH_P_IP => L3::Ipv4,
        ETH_P_ARP => L3::Arp(ETH_HLEN + 14),
        _ => L3::Other,
    })
}

/// An IPv4 header and the transport ports it carries.
#[derive(Clone, Copy)]
pub struct Ipv4 {
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    pub ttl: u8,
    pub dont_fragment: bool,
    /// Not the first fragment: no transport header.
    pub later_fragment: bool,
    /// More fragments follow this one.
    pub more_fragments: bool,
    /// For a later fragment: the ports were taken from its first fragment.
    pub ports_from_first_fragment: bool,
    /// Identification, as in the packet.
    pub id: u16,
    /// Total length, host byte order.
    pub tot_len: u16,
    pub saddr: u32,
    pub daddr: u32,
    /// Transport source and destination ports (ICMP echo: the identifier,
    /// see [`FlowKey`]), as in the packet.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte, or the ICMP type.
    pub l4_flags: u8,
}

impl Ipv4 {
    #[inline(always)]
    pub fn key(&self) -> FlowKey {
        FlowKey {
            saddr_be: self.saddr,
            daddr_be: self.daddr,
            sport_be: self.sport,
            dport_be: self.dport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// Offset of the checksum covering the transport ports, for protocols
    /// whose ports are translated.
    #[inline(always)]
    pub fn l4_csum(&self) -> Option<usize> {
        match self.proto {
            proto::TCP => Some(self.l4 + 16),
            proto::UDP => Some(self.l4 + 6),
            proto::ICMP => Some(self.l4 + 2),
            _ => None,
        }
    }

    pub fn is_icmp_error(&self) -> bool {
        self.proto == proto::ICMP
            && matches!(
                self.l4_flags,
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROB
            )
    }

    /// Whether the flow key of this packet carries ports (or an echo id).
    pub fn has_ports(&self) -> bool {
        (!self.later_fragment || self.ports_from_first_fragment)
            && match self.proto {
                proto::TCP | proto::UDP => true,
                proto::ICMP => matches!(self.l4_flags, ICMP_ECHO | ICMP_ECHO_REPLY),
                _ => false,
            }
    }
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

/// The fixed part of an IPv4 header, as on the wire.
#[repr(C)]
struct IpHeader {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

/// The first 8 bytes of a transport header: ports (or ICMP type, code and
/// echo id), as on the wire.
#[repr(C)]
struct L4Head {
    sport_or_type: u16,
    dport_or_csum: u16,
    id_or_rest: u16,
    rest: u16,
}

/// Parses the IPv4 header at `l3` and, unless this is a later fragment, the
/// first bytes of its transport header. A `quoted` packet is the one inside
/// an ICMP error, of which only 8 transport bytes are guaranteed.
///
/// The result goes to `ip`, a per-CPU map value: the programs' stack is too
/// small to hold it along every call chain.
#[inline(always)]
pub fn ipv4(ctx: &TcContext, l3: usize, quoted: bool, ip: &mut Ipv4) -> Result<(), DropReason> {
    let h: IpHeader = load(ctx, l3)?;
    let ihl = usize::from(h.version_ihl & 0x0f) * 4;
    if h.version_ihl >> 4 != 4 || ihl < 20 {
        return Err(DropReason::Truncated);
    }
    let frag = u16::from_be(h.frag);
    ip.l3 = l3;
    ip.l4 = l3 + ihl;
    ip.proto = h.proto;
    ip.ttl = h.ttl;
    ip.dont_fragment = frag & IP_DF != 0;
    ip.later_fragment = frag & IP_OFFSET != 0;
    ip.more_fragments = frag & IP_MF != 0;
    ip.ports_from_first_fragment = false;
    ip.id = h.id;
    ip.tot_len = u16::from_be(h.tot_len);
    ip.saddr = h.saddr;
    ip.daddr = h.daddr;
    ip.sport = 0;
    ip.dport = 0;
    ip.l4_flags = 0;
    if ip.later_fragment {
        let key = FragmentKey::of(ip);
        // SAFETY: a map value, copied out.
        if let Some(ports) = unsafe { FRAGMENTS.get(&key) }.copied() {
            ip.sport = ports.sport;
            ip.dport = ports.dport;
            ip.ports_from_first_fragment = true;
        }
        return Ok(());
    }
    if !matches!(ip.proto, proto::TCP | proto::UDP | proto::ICMP) {
        return Ok(());
    }
    // Also proves the option area is all there.
    let l4: L4Head = load(ctx, ip.l4)?;
    match ip.proto {
        proto::TCP => {
            ip.sport = l4.sport_or_type;
            ip.dport = l4.dport_or_csum;
            if !quoted {
                // Flags at 13; the header is at least 20 bytes.
                let [flags, _]: [u8; 2] = load(ctx, ip.l4 + 13)?;
                let _: u16 = load(ctx, ip.l4 + 18)?;
                ip.l4_flags = flags;
            }
        }
        proto::UDP => {
            ip.sport = l4.sport_or_type;
            ip.dport = l4.dport_or_csum;
        }
        _ => {
            ip.l4_flags = l4.sport_or_type.to_ne_bytes()[0];
            match ip.l4_flags {
                ICMP_ECHO => ip.sport = l4.id_or_rest,
                ICMP_ECHO_REPLY => ip.dport = l4.id_or_rest,
                _ => {}
            }
        }
    }
    Ok(())
}

/// The interface the packet is on.
pub(crate) fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` points at the kernel's __sk_buff for this invocation.
    unsafe { (*ctx.skb.skb).ifindex }
}
