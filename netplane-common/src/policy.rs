//! Decisions the kernel programs take, as pure functions over header fields.

use crate::{
    abi::{DropReason, NET_FLAG_ICC_DISABLED, NetworkPolicy, proto},
    packet::{Ipv6, icmpv6},
};

/// What an endpoint may send over IPv6, by the addresses it owns (`own`,
/// its global address, and `link_local`, the one its MAC gives):
/// - from one of them, or from the unspecified address for duplicate
///   address detection and MLD reports (before it has an address);
/// - no router advertisements or redirects: an endpoint is no router;
/// - neighbour advertisements only for its own addresses (`target`, the
///   advertisement's target address), so it cannot take over another's.
pub fn ipv6_sender_allowed(
    ip: &Ipv6,
    own: &[u8; 16],
    link_local: &[u8; 16],
    target: Option<&[u8; 16]>,
) -> Result<(), DropReason> {
    let icmp = (ip.proto == proto::ICMPV6).then_some(ip.l4_flags);
    let unspecified_ok = matches!(
        icmp,
        Some(icmpv6::NEIGHBOUR_SOLICIT | MLD2_REPORT | icmpv6::ROUTER_SOLICIT)
    );
    let from_own = ip.saddr == *own || ip.saddr == *link_local;
    let from_nothing = ip.saddr == [0; 16] && unspecified_ok;
    if !(from_own || from_nothing) {
        return Err(DropReason::Spoofed);
    }
    match icmp {
        Some(icmpv6::ROUTER_ADVERT | icmpv6::REDIRECT) => Err(DropReason::Spoofed),
        Some(icmpv6::NEIGHBOUR_ADVERT) => match target {
            Some(t) if t == own || t == link_local => Ok(()),
            _ => Err(DropReason::Spoofed),
        },
        _ => Ok(()),
    }
}

/// ICMPv6 MLDv2 listener report, which a host sends from the unspecified
/// address before it has a link-local one.
const MLD2_REPORT: u8 = 143;

/// Whether `addr` is an IPv6 multicast address (ff00::/8): neighbour
/// discovery's solicited-node groups among them.
pub fn is_ipv6_multicast(addr: &[u8; 16]) -> bool {
    addr[0] == 0xff
}

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

    fn v6(last: u8) -> [u8; 16] {
        [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]
    }

    const LL: [u8; 16] = [
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x42, 0xac, 0xff, 0xfe, 0x11, 0, 2,
    ];

    fn sent(saddr: [u8; 16], proto: u8, icmp_type: u8) -> Ipv6 {
        Ipv6 {
            saddr,
            proto,
            l4_flags: icmp_type,
            ..Ipv6::default()
        }
    }

    #[test]
    fn an_ipv6_endpoint_sends_only_from_its_addresses() {
        let own = v6(2);
        for from in [own, LL] {
            assert_eq!(
                ipv6_sender_allowed(&sent(from, proto::UDP, 0), &own, &LL, None),
                Ok(())
            );
        }
        assert_eq!(
            ipv6_sender_allowed(&sent(v6(3), proto::TCP, 2), &own, &LL, None),
            Err(DropReason::Spoofed)
        );
        // Duplicate address detection, from no address at all.
        let dad = sent([0; 16], proto::ICMPV6, icmpv6::NEIGHBOUR_SOLICIT);
        assert_eq!(ipv6_sender_allowed(&dad, &own, &LL, None), Ok(()));
        let udp = sent([0; 16], proto::UDP, 0);
        assert_eq!(
            ipv6_sender_allowed(&udp, &own, &LL, None),
            Err(DropReason::Spoofed)
        );
    }

    #[test]
    fn neighbour_discovery_cannot_be_spoofed() {
        let own = v6(2);
        let na = sent(own, proto::ICMPV6, icmpv6::NEIGHBOUR_ADVERT);
        assert_eq!(ipv6_sender_allowed(&na, &own, &LL, Some(&own)), Ok(()));
        assert_eq!(ipv6_sender_allowed(&na, &own, &LL, Some(&LL)), Ok(()));
        assert_eq!(
            ipv6_sender_allowed(&na, &own, &LL, Some(&v6(1))),
            Err(DropReason::Spoofed),
            "claiming the gateway's address"
        );
        assert_eq!(
            ipv6_sender_allowed(&na, &own, &LL, None),
            Err(DropReason::Spoofed),
            "no target read"
        );
        for router_only in [icmpv6::ROUTER_ADVERT, icmpv6::REDIRECT] {
            let from_ll = sent(LL, proto::ICMPV6, router_only);
            assert_eq!(
                ipv6_sender_allowed(&from_ll, &own, &LL, None),
                Err(DropReason::Spoofed)
            );
        }
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
