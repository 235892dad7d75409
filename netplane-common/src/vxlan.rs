//! VXLAN (RFC 7348) framing: the 50 bytes of outer Ethernet, IPv4, UDP and
//! VXLAN headers an overlay frame travels in between hosts, and what a
//! received one must carry.

use crate::nat::fold;

/// The IANA port, which Linux's vxlan device and flannel use too.
pub const VXLAN_PORT: u16 = 4789;

/// Bytes of outer headers in front of the inner Ethernet frame.
pub const OVERHEAD: usize = 14 + 20 + 8 + 8;

/// The VXLAN flags byte with the I flag: the VNI is valid.
const FLAG_VNI: u8 = 0x08;

/// Offsets in the outer headers.
const IP: usize = 14;
const UDP: usize = IP + 20;
const VXLAN: usize = UDP + 8;

/// What the outer headers of one frame say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outer {
    /// The uplink's MAC.
    pub src_mac: [u8; 6],
    /// The next hop's MAC towards the remote VTEP.
    pub dst_mac: [u8; 6],
    /// This host's VTEP address, network byte order.
    pub src_be: u32,
    /// The remote host's VTEP address, network byte order.
    pub dst_be: u32,
    /// UDP source port, host byte order (see [`source_port`]).
    pub sport: u16,
    /// VXLAN network identifier, 24 bits.
    pub vni: u32,
}

/// Writes into `h` the outer headers for an inner Ethernet frame of
/// `inner_len` bytes: IPv4 without DF and with TTL 64, UDP without checksum
/// (RFC 7348 allows it over IPv4, and Linux's vxlan device sends none by
/// default).
pub fn write_outer_headers(o: &Outer, inner_len: u16, h: &mut [u8; OVERHEAD]) {
    *h = [0; OVERHEAD];
    write_outer_ip(o, inner_len, 17, h);
    let udp_len = inner_len.wrapping_add((OVERHEAD - UDP) as u16);
    h[UDP..UDP + 2].copy_from_slice(&o.sport.to_be_bytes());
    h[UDP + 2..UDP + 4].copy_from_slice(&VXLAN_PORT.to_be_bytes());
    h[UDP + 4..UDP + 6].copy_from_slice(&udp_len.to_be_bytes());
    h[VXLAN] = FLAG_VNI;
    h[VXLAN + 4..VXLAN + 8].copy_from_slice(&(o.vni << 8).to_be_bytes());
}

/// Writes the outer Ethernet and IPv4 headers (without DF, TTL 64) at
/// the start of `h`, whose length is all of the outer headers, for an
/// inner Ethernet frame of `inner_len` bytes carried in `protocol`.
pub(crate) fn write_outer_ip(o: &Outer, inner_len: u16, protocol: u8, h: &mut [u8]) {
    h[0..6].copy_from_slice(&o.dst_mac);
    h[6..12].copy_from_slice(&o.src_mac);
    h[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = inner_len.wrapping_add((h.len() - IP) as u16);
    h[IP] = 0x45;
    h[IP + 2..IP + 4].copy_from_slice(&ip_len.to_be_bytes());
    h[IP + 8] = 64;
    h[IP + 9] = protocol;
    h[IP + 12..IP + 16].copy_from_slice(&o.src_be.to_ne_bytes());
    h[IP + 16..IP + 20].copy_from_slice(&o.dst_be.to_ne_bytes());
    let check = ipv4_checksum(&h[IP..IP + 20]);
    h[IP + 10..IP + 12].copy_from_slice(&check.to_be_bytes());
}

/// The network address of the /24 lease `addr` (network byte order) falls
/// in: overlay subnets are handed out to hosts a /24 at a time.
pub const fn lease_of(addr_be: u32) -> u32 {
    addr_be & u32::from_ne_bytes([255, 255, 255, 0])
}

/// The Internet checksum of an IPv4 header whose checksum field is zero.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let sum = header
        .chunks_exact(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    !fold(sum)
}

/// The outer UDP source port for a hash of the inner flow, spread over
/// 49152-65535 (RFC 7348, section 5) so that an ECMP underlay spreads the
/// flows of an overlay and keeps each one on one path.
pub const fn source_port(hash: u32) -> u16 {
    49152 + ((hash as u64 * 16384) >> 32) as u16
}

/// The VNI of a VXLAN header, if its I flag says it has one.
pub const fn vni(header: [u8; 8]) -> Option<u32> {
    if header[0] & FLAG_VNI == 0 {
        return None;
    }
    Some(u32::from_be_bytes([0, header[4], header[5], header[6]]))
}

/// The MTU of an overlay on an uplink with `uplink_mtu`, so that no frame
/// of the overlay makes an outer packet the uplink cannot send.
pub const fn overlay_mtu(uplink_mtu: u32) -> u32 {
    uplink_mtu.saturating_sub(OVERHEAD as u32)
}

/// What the golden-bytes tests of the encapsulations share.
#[cfg(test)]
pub(crate) mod golden {
    extern crate std;

    use super::Outer;

    /// Outer headers from 02:00:00:00:00:01 at 192.0.2.1 to
    /// 02:00:00:00:00:02 at 192.0.2.2 with `vni` and source port 50000.
    pub(crate) fn outer(vni: u32) -> Outer {
        Outer {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_be: u32::from_ne_bytes([192, 0, 2, 1]),
            dst_be: u32::from_ne_bytes([192, 0, 2, 2]),
            sport: 50000,
            vni,
        }
    }

    pub(crate) fn hex(bytes: &[u8]) -> std::string::String {
        bytes.iter().map(|b| std::format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{golden::*, *};

    /// Outer headers of a 50-byte inner frame from 192.0.2.1 to 192.0.2.2,
    /// VNI 42, source port 50000, as scapy builds them:
    /// `Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")/IP(src=...,
    /// dst=..., ttl=64, id=0, flags=0)/UDP(sport=50000, dport=4789,
    /// chksum=0)/VXLAN(vni=42, flags=0x08)`.
    const GOLDEN: &str = "020000000002020000000001080045000056000000004011f693c0000201c0000202c35012b5004200000800000000002a00";

    #[test]
    fn outer_headers_match_what_scapy_builds() {
        let mut headers = [0xaa; OVERHEAD];
        write_outer_headers(&outer(42), 50, &mut headers);
        assert_eq!(hex(&headers), GOLDEN);
    }

    #[test]
    fn source_ports_cover_the_dynamic_range() {
        assert_eq!(source_port(0), 49152);
        assert_eq!(source_port(u32::MAX), 65535);
        assert_eq!(source_port(1 << 31), 49152 + 8192);
    }

    #[test]
    fn the_vni_needs_the_i_flag() {
        assert_eq!(vni([0x08, 0, 0, 0, 0, 0, 42, 0]), Some(42));
        assert_eq!(vni([0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0]), Some(0xff_ffff));
        assert_eq!(vni([0x00, 0, 0, 0, 0, 0, 42, 0]), None);
    }

    #[test]
    fn leases_are_the_24s_addresses_fall_in() {
        let be = |a: [u8; 4]| u32::from_ne_bytes(a);
        assert_eq!(lease_of(be([10, 201, 2, 3])), be([10, 201, 2, 0]));
        assert_eq!(lease_of(be([10, 201, 2, 255])), be([10, 201, 2, 0]));
    }

    #[test]
    fn the_overlay_leaves_room_for_the_outer_headers() {
        assert_eq!(overlay_mtu(1500), 1450);
        assert_eq!(overlay_mtu(9000), 8950);
    }
}
