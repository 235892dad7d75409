//! The programs' IPv4 parser on any bytes: it never reads past the end
//! (a slice read that would panic), and what it returns agrees with the
//! bytes it came from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netplane_common::{
    abi::proto,
    packet::{ETH_HLEN, Ipv4, parse_ipv4},
};

fuzz_target!(|data: &[u8]| {
    for quoted in [false, true] {
        let mut ip = Ipv4::default();
        if parse_ipv4(data, ETH_HLEN, quoted, &mut ip).is_err() {
            continue;
        }
        let ihl = usize::from(data[ETH_HLEN] & 0x0f) * 4;
        assert_eq!(ip.l4, ETH_HLEN + ihl);
        assert!(ihl >= 20);
        // Options are proven present only where the transport header is
        // read: nothing reads at `l4` of a later fragment or another protocol.
        let parsed_l4 =
            !ip.later_fragment && matches!(ip.proto, proto::TCP | proto::UDP | proto::ICMP);
        assert!(!parsed_l4 || ip.l4 + 8 <= data.len());
        assert_eq!(ip.saddr.to_ne_bytes(), data[ETH_HLEN + 12..ETH_HLEN + 16]);
        assert_eq!(ip.daddr.to_ne_bytes(), data[ETH_HLEN + 16..ETH_HLEN + 20]);
        if !ip.later_fragment && matches!(ip.proto, proto::TCP | proto::UDP) {
            assert_eq!(ip.sport.to_ne_bytes(), data[ip.l4..ip.l4 + 2]);
            assert_eq!(ip.dport.to_ne_bytes(), data[ip.l4 + 2..ip.l4 + 4]);
        }
        if !quoted && !ip.later_fragment && ip.proto == proto::TCP {
            assert!(ip.l4 + 20 <= data.len());
            assert_eq!(ip.l4_flags, data[ip.l4 + 13]);
        }
    }
});
