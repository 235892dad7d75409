//! Decisions the kernel programs take, as pure functions over header fields.

use crate::abi::{NET_FLAG_ICC_DISABLED, NetworkPolicy};

/// Whether an IPv4 packet sent by an endpoint of network `net` to another
/// address of it may be delivered.
///
/// With inter-container communication disabled, only traffic whose
/// destination is another endpoint of the same subnet is refused: the
/// gateway and everything beyond the bridge stay reachable, as with
/// Docker's `--icc=false`, and pairs joined with `--link` (`linked`) stay
/// allowed. Addresses are in network byte order.
pub fn endpoint_traffic_allowed(
    net: &NetworkPolicy,
    src_be: u32,
    dst_be: u32,
    linked: bool,
) -> bool {
    if net.flags & NET_FLAG_ICC_DISABLED == 0 || linked {
        return true;
    }
    !net.contains(dst_be) || dst_be == net.gateway_be || dst_be == src_be
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn cfg(flags: u32) -> NetworkPolicy {
        NetworkPolicy {
            subnet_be: be([172, 17, 0, 0]),
            mask_be: be([255, 255, 0, 0]),
            gateway_be: be([172, 17, 0, 1]),
            flags,
        }
    }

    #[test]
    fn icc_enabled_allows_everything() {
        let c = cfg(0);
        assert!(endpoint_traffic_allowed(
            &c,
            be([172, 17, 0, 2]),
            be([172, 17, 0, 3]),
            false
        ));
    }

    #[test]
    fn icc_disabled_denies_endpoint_to_endpoint() {
        let c = cfg(NET_FLAG_ICC_DISABLED);
        assert!(!endpoint_traffic_allowed(
            &c,
            be([172, 17, 0, 2]),
            be([172, 17, 0, 3]),
            false
        ));
        assert!(!endpoint_traffic_allowed(
            &c,
            be([172, 17, 0, 2]),
            be([172, 17, 255, 255]),
            false
        ));
    }

    #[test]
    fn icc_disabled_allows_gateway_self_and_outside() {
        let c = cfg(NET_FLAG_ICC_DISABLED);
        let me = be([172, 17, 0, 2]);
        assert!(endpoint_traffic_allowed(&c, me, be([172, 17, 0, 1]), false));
        assert!(endpoint_traffic_allowed(&c, me, me, false));
        assert!(endpoint_traffic_allowed(&c, me, be([198, 18, 0, 1]), false));
    }

    #[test]
    fn icc_disabled_allows_linked_pairs() {
        let c = cfg(NET_FLAG_ICC_DISABLED);
        assert!(endpoint_traffic_allowed(
            &c,
            be([172, 17, 0, 2]),
            be([172, 17, 0, 3]),
            true
        ));
    }
}
