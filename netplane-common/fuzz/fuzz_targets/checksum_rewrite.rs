//! Incremental checksum updates, as translation applies them: after
//! rewriting a 16-bit word (a port) and a 32-bit word (an address) of a
//! header, the updated checksum must verify over the rewritten header,
//! for the plain and the UDP variants.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netplane_common::nat::{fold, replace16, replace16_udp, replace32, replace32_udp};

/// The ones' complement sum of `words`.
fn sum(words: &[u16]) -> u32 {
    words.iter().fold(0, |s, w| s + u32::from(*w))
}

fuzz_target!(|data: &[u8]| {
    // A header of up to 30 words after a fixed nonzero first word, as every
    // header translation touches has (IPv4's version, the pseudo-header's
    // protocol), then where the two rewritten words sit and their new values.
    if data.len() < 10 {
        return;
    }
    let (edit, body) = data.split_at(10);
    let mut words = vec![0x4500u16];
    words.extend(
        body.chunks_exact(2)
            .take(30)
            .map(|w| u16::from_ne_bytes([w[0], w[1]])),
    );
    if words.len() < 4 {
        return;
    }
    let at16 = 1 + usize::from(edit[0]) % (words.len() - 1);
    let at32 = 1 + usize::from(edit[1]) % (words.len() - 2);
    let new16 = u16::from_ne_bytes([edit[2], edit[3]]);
    let new32 = u32::from_ne_bytes([edit[4], edit[5], edit[6], edit[7]]);
    let udp = edit[8] & 1 == 1;

    let check = match !fold(sum(&words)) {
        // A UDP sender sends a computed 0 as 0xffff: 0 means "none".
        0 if udp => 0xffff,
        c => c,
    };
    let old16 = words[at16];
    words[at16] = new16;
    let check = if udp {
        replace16_udp(check, old16, new16)
    } else {
        replace16(check, old16, new16)
    };
    let old32 = u32::from(words[at32]) | u32::from(words[at32 + 1]) << 16;
    words[at32] = new32 as u16;
    words[at32 + 1] = (new32 >> 16) as u16;
    let check = if udp {
        replace32_udp(check, old32, new32)
    } else {
        replace32(check, old32, new32)
    };
    assert!(
        !udp || check != 0,
        "a UDP checksum never becomes 0, which means none"
    );
    assert_eq!(
        fold(sum(&words) + u32::from(check)),
        0xffff,
        "the updated checksum verifies"
    );
});
