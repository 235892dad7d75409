//! Outer VXLAN headers for any addresses, port, VNI and inner length: the
//! IPv4 header checksum verifies, the lengths add up, and the VNI reads
//! back as written.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netplane_common::{
    nat::fold,
    vxlan::{OVERHEAD, Outer, VXLAN_PORT, vni, write_outer_headers},
};

fuzz_target!(|data: &[u8]| {
    let Ok(bytes) = <[u8; 28]>::try_from(data.get(..28).unwrap_or_default()) else {
        return;
    };
    let word = |i: usize| u32::from_ne_bytes(bytes[i..i + 4].try_into().unwrap());
    let outer = Outer {
        src_mac: bytes[0..6].try_into().unwrap(),
        dst_mac: bytes[6..12].try_into().unwrap(),
        src_be: word(12),
        dst_be: word(16),
        sport: u16::from_ne_bytes([bytes[20], bytes[21]]),
        vni: word(22) & 0x00ff_ffff,
    };
    // Inner frames fit the outer IPv4 length.
    let inner_len = u16::from_ne_bytes([bytes[26], bytes[27]]) % (u16::MAX - 36);
    let mut h = [0u8; OVERHEAD];
    write_outer_headers(&outer, inner_len, &mut h);

    let ip = &h[14..34];
    let ip_sum = ip
        .chunks_exact(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    assert_eq!(fold(ip_sum), 0xffff, "the IPv4 header checksum verifies");
    let ip_len = u16::from_be_bytes([ip[2], ip[3]]);
    assert_eq!(usize::from(ip_len), usize::from(inner_len) + OVERHEAD - 14);
    let udp = &h[34..42];
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), VXLAN_PORT);
    assert_eq!(
        usize::from(u16::from_be_bytes([udp[4], udp[5]])),
        usize::from(ip_len) - 20
    );
    assert_eq!(vni(h[42..50].try_into().unwrap()), Some(outer.vni));
    assert_eq!(&h[0..6], &outer.dst_mac);
    assert_eq!(&h[6..12], &outer.src_mac);
});
