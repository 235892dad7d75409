//! The IPv4 and IPv6 header parsers the programs run, over any [`ByteSource`]: the
//! packet in the kernel (bounds-checked loads) or a byte slice on the host,
//! where unit tests check it against golden bytes and a fuzzer against
//! anything at all.

use crate::abi::{DropReason, FlowKey, FlowKey6, proto};

/// Bytes of an Ethernet header.
pub const ETH_HLEN: usize = 14;
const IP_DF: u16 = 0x4000;
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// ICMP echo reply.
pub const ICMP_ECHO_REPLY: u8 = 0;
/// ICMP destination unreachable.
pub const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP echo request.
pub const ICMP_ECHO: u8 = 8;
/// ICMP time exceeded.
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMP parameter problem.
pub const ICMP_PARAMETER_PROB: u8 = 12;

/// Where a packet's bytes are read from.
pub trait ByteSource {
    /// The `T` at `offset`, read unaligned; a `T` reaching past the end of
    /// the packet is [`DropReason::Truncated`], never a read past it.
    fn load<T: Copy>(&self, offset: usize) -> Result<T, DropReason>;
}

impl ByteSource for [u8] {
    fn load<T: Copy>(&self, offset: usize) -> Result<T, DropReason> {
        let end = offset
            .checked_add(core::mem::size_of::<T>())
            .ok_or(DropReason::Truncated)?;
        let bytes = self.get(offset..end).ok_or(DropReason::Truncated)?;
        // SAFETY: `bytes` holds exactly a `T`'s size; the ABI types read
        // here are plain integers, valid for any bytes, read unaligned.
        Ok(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) })
    }
}

/// An IPv4 header and the transport ports it carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv4 {
    /// Offset of the IPv4 header.
    pub l3: usize,
    /// Offset of the transport header.
    pub l4: usize,
    /// Transport protocol.
    pub proto: u8,
    /// Time to live.
    pub ttl: u8,
    /// Don't fragment.
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
    /// Source address, network byte order.
    pub saddr: u32,
    /// Destination address, network byte order.
    pub daddr: u32,
    /// Transport source and destination ports (ICMP echo: the identifier,
    /// see [`FlowKey`]), as in the packet.
    pub sport: u16,
    /// See `sport`.
    pub dport: u16,
    /// TCP flags byte, or the ICMP type.
    pub l4_flags: u8,
}

impl Ipv4 {
    /// The flow key of the packet.
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

    /// Whether this is an ICMP error, which quotes a packet.
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

/// The fixed part of an IPv4 header, as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
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
#[derive(Clone, Copy)]
struct L4Head {
    sport_or_type: u16,
    dport_or_csum: u16,
    id_or_rest: u16,
    rest: u16,
}

/// Parses the IPv4 header at `l3` and, unless this is a later fragment, the
/// first bytes of its transport header. A `quoted` packet is the one inside
/// an ICMP error, of which only 8 transport bytes are guaranteed. A later
/// fragment's ports are left 0: its first fragment has them (the programs
/// remember those).
///
/// The result goes to `ip`, which the programs keep in a per-CPU map value:
/// their stack is too small to hold it along every call chain.
#[inline(always)]
pub fn parse_ipv4<B: ByteSource + ?Sized>(
    src: &B,
    l3: usize,
    quoted: bool,
    ip: &mut Ipv4,
) -> Result<(), DropReason> {
    let h: IpHeader = src.load(l3)?;
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
    if ip.later_fragment || !matches!(ip.proto, proto::TCP | proto::UDP | proto::ICMP) {
        return Ok(());
    }
    // Also proves the option area is all there.
    let echo = (ICMP_ECHO, ICMP_ECHO_REPLY);
    (ip.sport, ip.dport, ip.l4_flags) = transport(src, ip.l4, ip.proto, !quoted, echo)?;
    Ok(())
}

/// The ports, or an ICMP echo's identifier (as the source port of a
/// request and the destination port of a reply, `echo` being the two
/// types), and the TCP flags or ICMP type of the transport header at
/// `at`, as in the packet. TCP flags are read only of a `whole` TCP
/// header (20 bytes; a quoted one has 8).
#[inline(always)]
fn transport<B: ByteSource + ?Sized>(
    src: &B,
    at: usize,
    proto: u8,
    whole: bool,
    (echo_request, echo_reply): (u8, u8),
) -> Result<(u16, u16, u8), DropReason> {
    let l4: L4Head = src.load(at)?;
    Ok(match proto {
        proto::TCP if whole => {
            // Flags at 13; the header is at least 20 bytes.
            let [flags, _]: [u8; 2] = src.load(at + 13)?;
            let _: u16 = src.load(at + 18)?;
            (l4.sport_or_type, l4.dport_or_csum, flags)
        }
        proto::TCP | proto::UDP => (l4.sport_or_type, l4.dport_or_csum, 0),
        _ => {
            let kind = l4.sport_or_type.to_ne_bytes()[0];
            match kind {
                k if k == echo_request => (l4.id_or_rest, 0, kind),
                k if k == echo_reply => (0, l4.id_or_rest, kind),
                _ => (0, 0, kind),
            }
        }
    })
}

/// ICMPv6 types the data path tells apart.
pub mod icmpv6 {
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
    /// Router solicitation.
    pub const ROUTER_SOLICIT: u8 = 133;
    /// Router advertisement.
    pub const ROUTER_ADVERT: u8 = 134;
    /// Neighbour solicitation.
    pub const NEIGHBOUR_SOLICIT: u8 = 135;
    /// Neighbour advertisement.
    pub const NEIGHBOUR_ADVERT: u8 = 136;
    /// Redirect.
    pub const REDIRECT: u8 = 137;
}

/// Extension headers the IPv6 parser walks past before giving up with
/// [`DropReason::UnknownExt`]: a bound the verifier can see, and more
/// than any ordinary packet carries (RFC 8200 recommends each at most
/// once, destination options twice).
pub const MAX_IPV6_EXTENSIONS: usize = 6;

/// Bytes of extension headers the IPv6 parser reads past at most (also
/// [`DropReason::UnknownExt`] beyond): the programs' offsets stay within
/// the headers they make directly readable.
pub const MAX_IPV6_EXTENSION_BYTES: usize = 256;

const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_AUTH: u8 = 51;
const NEXT_DEST_OPTS: u8 = 60;

/// An IPv6 header, what its extension headers say, and the transport
/// ports it carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv6 {
    /// Offset of the IPv6 header.
    pub l3: usize,
    /// Offset of the upper-layer header, past the extension headers.
    pub l4: usize,
    /// Upper-layer protocol (the last Next Header).
    pub proto: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Payload length, host byte order.
    pub payload_len: u16,
    /// Source address, as in the packet.
    pub saddr: [u8; 16],
    /// Destination address, as in the packet.
    pub daddr: [u8; 16],
    /// A fragment header is present.
    pub fragment: bool,
    /// Not the first fragment: no upper-layer header.
    pub later_fragment: bool,
    /// More fragments follow this one.
    pub more_fragments: bool,
    /// Fragment identification, as in the packet.
    pub frag_id: u32,
    /// A later fragment whose ports are its first fragment's, as the
    /// programs remembered them.
    pub ports_from_first_fragment: bool,
    /// Transport source and destination ports (ICMPv6 echo: the
    /// identifier), as in the packet.
    pub sport: u16,
    /// See `sport`.
    pub dport: u16,
    /// TCP flags byte, or the ICMPv6 type.
    pub l4_flags: u8,
}

impl Ipv6 {
    /// The flow key of this packet as it arrived.
    pub fn key(&self) -> FlowKey6 {
        FlowKey6 {
            saddr_be: self.saddr,
            daddr_be: self.daddr,
            sport_be: self.sport,
            dport_be: self.dport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// Offset of the transport checksum. Unlike ICMP's, ICMPv6's covers
    /// the pseudo-header, so it changes with the addresses too.
    pub fn l4_csum(&self) -> Option<usize> {
        match self.proto {
            proto::TCP => Some(self.l4 + 16),
            proto::UDP => Some(self.l4 + 6),
            proto::ICMPV6 => Some(self.l4 + 2),
            _ => None,
        }
    }

    /// Whether this is an ICMPv6 error (type below 128), which quotes a
    /// packet.
    pub fn is_icmp_error(&self) -> bool {
        self.proto == proto::ICMPV6 && self.l4_flags < 128
    }

    /// Whether the flow key of this packet carries ports (or an echo id).
    pub fn has_ports(&self) -> bool {
        (!self.later_fragment || self.ports_from_first_fragment)
            && match self.proto {
                proto::TCP | proto::UDP => true,
                proto::ICMPV6 => {
                    matches!(self.l4_flags, icmpv6::ECHO_REQUEST | icmpv6::ECHO_REPLY)
                }
                _ => false,
            }
    }
}

/// The fixed IPv6 header, as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Header {
    version_class_flow: u32,
    payload_len: u16,
    next: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// Parses the IPv6 header at `l3`, walks at most
/// [`MAX_IPV6_EXTENSIONS`] extension headers (hop-by-hop, routing,
/// fragment, authentication, destination options), and reads the first
/// bytes of the upper-layer header unless this is a later fragment.
#[inline(always)]
pub fn parse_ipv6<B: ByteSource + ?Sized>(
    src: &B,
    l3: usize,
    ip: &mut Ipv6,
) -> Result<(), DropReason> {
    let h: Ipv6Header = src.load(l3)?;
    if u32::from_be(h.version_class_flow) >> 28 != 6 {
        return Err(DropReason::Truncated);
    }
    ip.l3 = l3;
    ip.hop_limit = h.hop_limit;
    ip.payload_len = u16::from_be(h.payload_len);
    ip.saddr = h.saddr;
    ip.daddr = h.daddr;
    ip.fragment = false;
    ip.later_fragment = false;
    ip.more_fragments = false;
    ip.frag_id = 0;
    ip.ports_from_first_fragment = false;
    ip.sport = 0;
    ip.dport = 0;
    ip.l4_flags = 0;
    let mut next = h.next;
    let mut at = l3 + 40;
    let mut walked = 0;
    while matches!(
        next,
        NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_FRAGMENT | NEXT_AUTH | NEXT_DEST_OPTS
    ) {
        if walked == MAX_IPV6_EXTENSIONS {
            return Err(DropReason::UnknownExt);
        }
        walked += 1;
        let [following, len]: [u8; 2] = src.load(at)?;
        let this = next;
        next = following;
        match this {
            NEXT_FRAGMENT => {
                let offset_flags = u16::from_be(src.load(at + 2)?);
                ip.fragment = true;
                ip.later_fragment = offset_flags & 0xfff8 != 0;
                ip.more_fragments = offset_flags & 1 != 0;
                ip.frag_id = src.load(at + 4)?;
                at += 8;
            }
            // Its length is in 4-byte units, less 2.
            NEXT_AUTH => at += (usize::from(len) + 2) * 4,
            _ => at += (usize::from(len) + 1) * 8,
        }
        if at > l3 + 40 + MAX_IPV6_EXTENSION_BYTES {
            return Err(DropReason::UnknownExt);
        }
    }
    ip.l4 = at;
    ip.proto = next;
    if ip.later_fragment || !matches!(next, proto::TCP | proto::UDP | proto::ICMPV6) {
        return Ok(());
    }
    // Also proves the extension headers are all there.
    let echo = (icmpv6::ECHO_REQUEST, icmpv6::ECHO_REPLY);
    (ip.sport, ip.dport, ip.l4_flags) = transport(src, at, next, true, echo)?;
    Ok(())
}

/// The link-local address the kernel gives an interface with `mac`
/// (`addr_gen_mode` eui64, its default): fe80::/64 with the MAC's
/// modified EUI-64 (RFC 4291, appendix A).
pub const fn link_local_of(mac: [u8; 6]) -> [u8; 16] {
    [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{vec, vec::Vec};

    /// Ethernet, then IPv4 from 10.0.0.2 to 192.0.2.1 with `ihl` words,
    /// `frag` flags and offset, protocol `proto`, and `l4` after it.
    fn frame(ihl: u8, frag: u16, proto: u8, l4: &[u8]) -> [u8; 128] {
        let mut f = [0u8; 128];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[ETH_HLEN..];
        ip[0] = 0x40 | ihl;
        let len = usize::from(ihl) * 4 + l4.len();
        ip[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
        ip[16..20].copy_from_slice(&[192, 0, 2, 1]);
        let l4_at = usize::from(ihl) * 4;
        ip[l4_at..l4_at + l4.len()].copy_from_slice(l4);
        f
    }

    fn parse(bytes: &[u8], quoted: bool) -> Result<Ipv4, DropReason> {
        let mut ip = Ipv4::default();
        parse_ipv4(bytes, ETH_HLEN, quoted, &mut ip).map(|()| ip)
    }

    const SYN: [u8; 20] = [
        0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];

    #[test]
    fn a_tcp_syn_gives_addresses_ports_flags_and_offsets() {
        let f = frame(5, 0x4000, proto::TCP, &SYN);
        let ip = parse(&f, false).unwrap();
        assert_eq!((ip.l3, ip.l4), (14, 34));
        assert_eq!(ip.saddr, u32::from_ne_bytes([10, 0, 0, 2]));
        assert_eq!(ip.daddr, u32::from_ne_bytes([192, 0, 2, 1]));
        assert_eq!(u16::from_be(ip.sport), 40000);
        assert_eq!(u16::from_be(ip.dport), 80);
        assert_eq!(ip.l4_flags, 0x02, "SYN");
        assert!(ip.dont_fragment && !ip.later_fragment && !ip.more_fragments);
        assert_eq!((ip.ttl, ip.tot_len, u16::from_be(ip.id)), (64, 40, 0x1234));
        assert_eq!(ip.l4_csum(), Some(34 + 16));
        assert!(ip.has_ports() && !ip.is_icmp_error());
    }

    #[test]
    fn options_move_the_transport_header_and_must_all_be_there() {
        let f = frame(6, 0, proto::UDP, &[0x13, 0x88, 0x00, 0x35, 0, 8, 0, 0]);
        let ip = parse(&f, false).unwrap();
        assert_eq!(ip.l4, 14 + 24);
        assert_eq!(u16::from_be(ip.dport), 53);
        // The same header cut inside its transport bytes.
        assert_eq!(parse(&f[..14 + 24 + 4], false), Err(DropReason::Truncated));
    }

    #[test]
    fn icmp_echo_carries_its_identifier_as_a_port() {
        let f = frame(5, 0, proto::ICMP, &[ICMP_ECHO, 0, 0, 0, 0x00, 0x2a, 0, 1]);
        let ip = parse(&f, false).unwrap();
        assert_eq!(
            (ip.l4_flags, u16::from_be(ip.sport), ip.dport),
            (ICMP_ECHO, 42, 0)
        );
        let f = frame(
            5,
            0,
            proto::ICMP,
            &[ICMP_TIME_EXCEEDED, 0, 0, 0, 0, 0, 0, 0],
        );
        let ip = parse(&f, false).unwrap();
        assert!(ip.is_icmp_error() && !ip.has_ports());
    }

    #[test]
    fn a_quoted_tcp_header_needs_only_its_first_eight_bytes() {
        let f = frame(5, 0, proto::TCP, &SYN[..8]);
        let cut = &f[..14 + 20 + 8];
        assert_eq!(parse(cut, false), Err(DropReason::Truncated));
        let ip = parse(cut, true).unwrap();
        assert_eq!((u16::from_be(ip.sport), ip.l4_flags), (40000, 0));
    }

    /// Ethernet, then IPv6 from fd00::2 to 2001:db8::1 whose first
    /// Next Header is `next`, and `rest` (extension headers, then the
    /// upper layer) after it.
    fn frame6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        f.extend_from_slice(&[next, 64]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(rest);
        f
    }

    fn parse6(bytes: &[u8]) -> Result<Ipv6, DropReason> {
        let mut ip = Ipv6::default();
        parse_ipv6(bytes, ETH_HLEN, &mut ip).map(|()| ip)
    }

    /// A hop-by-hop header of 8 bytes (padding only) before `next`.
    fn hop_by_hop(next: u8) -> [u8; 8] {
        [next, 0, 1, 4, 0, 0, 0, 0]
    }

    #[test]
    fn an_ipv6_syn_gives_addresses_ports_and_flags() {
        let ip = parse6(&frame6(proto::TCP, &SYN)).unwrap();
        assert_eq!((ip.l3, ip.l4, ip.proto), (14, 54, proto::TCP));
        assert_eq!(ip.saddr[0], 0xfd);
        assert_eq!(ip.daddr[..4], [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(
            (u16::from_be(ip.sport), u16::from_be(ip.dport)),
            (40000, 80)
        );
        assert_eq!((ip.l4_flags, ip.hop_limit, ip.payload_len), (0x02, 64, 20));
        assert!(!ip.fragment);
    }

    #[test]
    fn extension_headers_are_walked_to_the_transport_header() {
        let mut rest = hop_by_hop(NEXT_DEST_OPTS).to_vec();
        // Destination options of 16 bytes (length 1).
        rest.extend_from_slice(&[NEXT_ROUTING, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // A routing header of 8 bytes, segments left 0.
        rest.extend_from_slice(&[proto::UDP, 0, 0, 0, 0, 0, 0, 0]);
        rest.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0, 8, 0, 0]);
        let ip = parse6(&frame6(NEXT_HOP_BY_HOP, &rest)).unwrap();
        assert_eq!((ip.proto, ip.l4), (proto::UDP, 54 + 8 + 16 + 8));
        assert_eq!(u16::from_be(ip.dport), 53);
        // Cut inside the transport header: the walk proves nothing past it.
        let f = frame6(NEXT_HOP_BY_HOP, &rest);
        assert_eq!(parse6(&f[..f.len() - 5]), Err(DropReason::Truncated));
    }

    #[test]
    fn too_many_extension_headers_are_refused() {
        let mut rest = Vec::new();
        for _ in 0..MAX_IPV6_EXTENSIONS {
            rest.extend_from_slice(&hop_by_hop(NEXT_DEST_OPTS));
        }
        rest.extend_from_slice(&hop_by_hop(proto::UDP));
        rest.extend_from_slice(&[0; 8]);
        assert_eq!(
            parse6(&frame6(NEXT_DEST_OPTS, &rest)),
            Err(DropReason::UnknownExt)
        );
        // One fewer is walked.
        let ip = parse6(&frame6(NEXT_DEST_OPTS, &rest[8..])).unwrap();
        assert_eq!(ip.proto, proto::UDP);
        // One long header reaching past the bytes the parser reads.
        let mut long = vec![proto::UDP, 32];
        long.resize(33 * 8, 0);
        long.extend_from_slice(&[0; 8]);
        assert_eq!(
            parse6(&frame6(NEXT_DEST_OPTS, &long)),
            Err(DropReason::UnknownExt)
        );
    }

    #[test]
    fn fragments_say_which_they_are() {
        let first = [proto::UDP, 0, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef];
        let mut rest = first.to_vec();
        rest.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0, 8, 0, 0]);
        let ip = parse6(&frame6(NEXT_FRAGMENT, &rest)).unwrap();
        assert!(ip.fragment && ip.more_fragments && !ip.later_fragment);
        assert_eq!(ip.frag_id, u32::from_ne_bytes([0xde, 0xad, 0xbe, 0xef]));
        assert_eq!(u16::from_be(ip.dport), 53);
        // Offset 185 (in 8-byte units), last fragment: no ports.
        let later = [proto::UDP, 0, 0x05, 0xc8, 0xde, 0xad, 0xbe, 0xef];
        let ip = parse6(&frame6(NEXT_FRAGMENT, &later)).unwrap();
        assert!(ip.later_fragment && !ip.more_fragments && ip.sport == 0);
    }

    #[test]
    fn icmpv6_gives_its_type_and_echo_identifier() {
        let ns = [icmpv6::NEIGHBOUR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
        let ip = parse6(&frame6(proto::ICMPV6, &ns)).unwrap();
        assert_eq!(ip.l4_flags, icmpv6::NEIGHBOUR_SOLICIT);
        let echo = [icmpv6::ECHO_REQUEST, 0, 0, 0, 0x00, 0x2a, 0, 1];
        let ip = parse6(&frame6(proto::ICMPV6, &echo)).unwrap();
        assert_eq!(u16::from_be(ip.sport), 42);
        let mut not6 = frame6(proto::UDP, &[0; 8]);
        not6[14] = 0x45;
        assert_eq!(parse6(&not6), Err(DropReason::Truncated));
        assert_eq!(parse6(&not6[..40]), Err(DropReason::Truncated));
    }

    #[test]
    fn link_local_addresses_come_from_the_mac() {
        // fe80::42:acff:fe11:2 for 02:42:ac:11:00:02, as `ip -6 addr` shows.
        assert_eq!(
            link_local_of([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]),
            [
                0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x00, 0x42, 0xac, 0xff, 0xfe, 0x11, 0x00, 0x02
            ]
        );
    }

    #[test]
    fn later_fragments_have_no_ports_and_bad_headers_are_refused() {
        let f = frame(5, 0x2000 | 185, proto::UDP, &[]);
        let ip = parse(&f, false).unwrap();
        assert!(ip.later_fragment && ip.more_fragments && !ip.has_ports());
        let mut v6 = frame(5, 0, proto::UDP, &[0; 8]);
        v6[14] = 0x65;
        assert_eq!(parse(&v6, false), Err(DropReason::Truncated));
        let short_ihl = frame(4, 0, proto::UDP, &[0; 8]);
        assert_eq!(parse(&short_ihl, false), Err(DropReason::Truncated));
        assert_eq!(parse(&f[..20], false), Err(DropReason::Truncated));
    }
}
