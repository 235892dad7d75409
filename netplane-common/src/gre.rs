//! Ethernet over GRE (RFC 2784, with the key of RFC 2890): the 42 bytes
//! of outer Ethernet, IPv4 and GRE headers an overlay frame of a network
//! made with `--encap gre` travels in, the key carrying the network's
//! identifier; the encapsulation of the seed notes' GRE tunnels between
//! Docker hosts, with the frame's Ethernet header kept (protocol 0x6558,
//! transparent Ethernet bridging) as VXLAN keeps it.

use crate::vxlan::{Outer, write_outer_ip};

/// Bytes of outer headers in front of the inner Ethernet frame.
pub const OVERHEAD: usize = 14 + 20 + GRE_LEN;

/// The IP protocol number of GRE.
pub const IPPROTO_GRE: u8 = 47;

/// GRE header with a key: flags and version, protocol, key.
const GRE_LEN: usize = 8;
/// The K bit: a key follows the protocol. No checksum, no sequence
/// number, version 0.
const FLAGS_KEY: u16 = 0x2000;
/// Transparent Ethernet bridging: an Ethernet frame follows.
const PROTO_TEB: u16 = 0x6558;

const GRE: usize = 14 + 20;

/// Writes into `h` the outer headers for an inner Ethernet frame of
/// `inner_len` bytes, keyed with `o.vni` (`o.sport` is not used).
pub fn write_outer_headers(o: &Outer, inner_len: u16, h: &mut [u8; OVERHEAD]) {
    *h = [0; OVERHEAD];
    write_outer_ip(o, inner_len, IPPROTO_GRE, h);
    h[GRE..GRE + 2].copy_from_slice(&FLAGS_KEY.to_be_bytes());
    h[GRE + 2..GRE + 4].copy_from_slice(&PROTO_TEB.to_be_bytes());
    h[GRE + 4..GRE + 8].copy_from_slice(&o.vni.to_be_bytes());
}

/// The key of a GRE header, if it is one netplane sends: a key and
/// nothing else optional, version 0, an Ethernet frame inside.
pub const fn key(header: [u8; GRE_LEN]) -> Option<u32> {
    if u16::from_be_bytes([header[0], header[1]]) != FLAGS_KEY
        || u16::from_be_bytes([header[2], header[3]]) != PROTO_TEB
    {
        return None;
    }
    Some(u32::from_be_bytes([
        header[4], header[5], header[6], header[7],
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vxlan::golden::{hex, outer};

    /// Outer headers of a 50-byte inner frame from 192.0.2.1 to 192.0.2.2,
    /// key 42, as scapy builds them: `Ether(src="02:00:00:00:00:01",
    /// dst="02:00:00:00:00:02")/IP(src=..., dst=..., ttl=64, id=0, flags=0,
    /// len=78)/GRE(key_present=1, key=42, proto=0x6558)`.
    const GOLDEN: &str =
        "02000000000202000000000108004500004e00000000402ff67dc0000201c0000202200065580000002a";

    #[test]
    fn outer_headers_match_what_scapy_builds() {
        let mut headers = [0xaa; OVERHEAD];
        // The source port has no place in GRE.
        write_outer_headers(&outer(42), 50, &mut headers);
        assert_eq!(hex(&headers), GOLDEN);
    }

    #[test]
    fn only_keyed_ethernet_carrying_headers_are_taken() {
        assert_eq!(key([0x20, 0, 0x65, 0x58, 0, 0, 0, 42]), Some(42));
        assert_eq!(
            key([0x20, 0, 0x65, 0x58, 0, 0xff, 0xff, 0xff]),
            Some(0xff_ffff)
        );
        // No key, a checksum too, version 1, IPv4 inside.
        assert_eq!(key([0x00, 0, 0x65, 0x58, 0, 0, 0, 42]), None);
        assert_eq!(key([0xa0, 0, 0x65, 0x58, 0, 0, 0, 42]), None);
        assert_eq!(key([0x20, 1, 0x65, 0x58, 0, 0, 0, 42]), None);
        assert_eq!(key([0x20, 0, 0x08, 0x00, 0, 0, 0, 42]), None);
    }
}
