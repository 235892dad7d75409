//! The programs' IPv6 parser on any bytes: it never reads past the end
//! (a slice read that would panic), walks a bounded number of extension
//! headers, and what it returns agrees with the bytes it came from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netplane_common::{
    abi::proto,
    packet::{ETH_HLEN, Ipv6, parse_ipv6},
};

fuzz_target!(|data: &[u8]| {
    let mut ip = Ipv6::default();
    if parse_ipv6(data, ETH_HLEN, &mut ip).is_err() {
        return;
    }
    assert_eq!(data[ETH_HLEN] >> 4, 6);
    assert!(ip.l4 >= ETH_HLEN + 40);
    assert_eq!(ip.saddr, data[ETH_HLEN + 8..ETH_HLEN + 24]);
    assert_eq!(ip.daddr, data[ETH_HLEN + 24..ETH_HLEN + 40]);
    let parsed_l4 =
        !ip.later_fragment && matches!(ip.proto, proto::TCP | proto::UDP | proto::ICMPV6);
    assert!(!parsed_l4 || ip.l4 + 8 <= data.len());
    if parsed_l4 && ip.proto != proto::ICMPV6 {
        assert_eq!(ip.sport.to_ne_bytes(), data[ip.l4..ip.l4 + 2]);
        assert_eq!(ip.dport.to_ne_bytes(), data[ip.l4 + 2..ip.l4 + 4]);
    }
    if parsed_l4 && ip.proto == proto::TCP {
        assert!(ip.l4 + 20 <= data.len());
        assert_eq!(ip.l4_flags, data[ip.l4 + 13]);
    }
});
