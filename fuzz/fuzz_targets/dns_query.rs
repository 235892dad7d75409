//! The embedded DNS server's query path on arbitrary bytes: whatever
//! arrives, it decides without panicking, and whatever it replies parses.

#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

// The module alone, not the netplane crate: it needs only std and
// hickory-proto, and building the whole daemon with the sanitizer took
// minutes of every CI run.
#[path = "../../netplane/src/logic/dns.rs"]
#[allow(dead_code)]
mod dns;

use dns::{Outcome, Zone, decide};

fuzz_target!(|packet: &[u8]| {
    let mut zone = Zone::default();
    // A dual-stack name, so AAAA and ip6.arpa queries find answers too.
    zone.insert(
        "web",
        &["www".into()],
        Ipv4Addr::new(10, 88, 0, 2),
        Some(Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, 2)),
    );
    if let Outcome::Reply(reply) = decide(packet, &zone) {
        Message::from_vec(&reply).expect("a reply parses");
    }
});
