//! Address management: choosing a bridge subnet and leasing addresses in it.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

/// Docker's default local pools: 172.17.0.0/16 to 172.31.0.0/16, then
/// 192.168.0.0/16 in /20 slices.
pub fn default_pools() -> impl Iterator<Item = Ipv4Net> {
    let wide = (17..=31u8).map(|b| Ipv4Net::new(Ipv4Addr::new(172, b, 0, 0), 16).unwrap());
    let narrow = Ipv4Net::new(Ipv4Addr::new(192, 168, 0, 0), 16)
        .unwrap()
        .subnets(20)
        .unwrap();
    wide.chain(narrow)
}

/// Whether two networks share any address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Ranges no network of endpoints may take (RFC 6890): "this network",
/// loopback, link-local, and multicast with the reserved space above it.
const SPECIAL_PURPOSE: [(&str, &str); 4] = [
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/3", "multicast and reserved"),
];

/// Why a subnet cannot be given to a network on this host.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// It shares addresses with a route, an address or another network.
    #[error("subnet {subnet} overlaps {other} already in use on this host")]
    Overlaps {
        /// Requested subnet.
        subnet: Ipv4Net,
        /// What it overlaps.
        other: Ipv4Net,
    },
    /// It reaches into a special-purpose range.
    #[error("subnet {subnet} overlaps {range}, the {purpose} range")]
    SpecialPurpose {
        /// Requested subnet.
        subnet: Ipv4Net,
        /// The range.
        range: Ipv4Net,
        /// What the range is for.
        purpose: &'static str,
    },
}

/// Checks that `want` overlaps neither a special-purpose range nor any of
/// the networks `in_use` (routes, addresses and networks of the host).
pub fn check_subnet(want: Ipv4Net, in_use: &[Ipv4Net]) -> Result<(), SubnetError> {
    let want = want.trunc();
    for (range, purpose) in SPECIAL_PURPOSE {
        let range: Ipv4Net = range.parse().expect("a valid range");
        if overlaps(&want, &range) {
            return Err(SubnetError::SpecialPurpose {
                subnet: want,
                range,
                purpose,
            });
        }
    }
    match in_use.iter().find(|u| overlaps(&want, u)) {
        Some(other) => Err(SubnetError::Overlaps {
            subnet: want,
            other: *other,
        }),
        None => Ok(()),
    }
}

/// The first pool that overlaps none of the networks in use on the host.
pub fn pick_subnet(
    pools: impl IntoIterator<Item = Ipv4Net>,
    in_use: &[Ipv4Net],
) -> Option<Ipv4Net> {
    pools
        .into_iter()
        .find(|p| !in_use.iter().any(|u| overlaps(p, u)))
}

/// A subnet with its gateway: the addresses endpoints may lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// The bridge subnet.
    pub subnet: Ipv4Net,
    /// The bridge's own address.
    pub gateway: Ipv4Addr,
    /// Where free addresses are taken from; the whole subnet when absent.
    pub range: Option<Ipv4Net>,
}

/// Why an address cannot be leased.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    /// The subnet cannot hold endpoints at all.
    #[error("subnet {0} is too small for a gateway and endpoints (need /30 or larger)")]
    SubnetTooSmall(Ipv4Net),
    /// The requested address is outside the subnet.
    #[error("address {ip} is not in subnet {subnet}")]
    OutsideSubnet {
        /// Requested address.
        ip: Ipv4Addr,
        /// The pool's subnet.
        subnet: Ipv4Net,
    },
    /// The requested address is the network, broadcast or gateway address.
    #[error("address {0} is reserved (network, broadcast or gateway)")]
    Reserved(Ipv4Addr),
    /// The requested address is leased already.
    #[error("address {0} is already leased")]
    InUse(Ipv4Addr),
    /// No address is left.
    #[error("address pool {0} is exhausted")]
    Exhausted(Ipv4Net),
}

impl Pool {
    /// The pool of `subnet`, its first host address being the gateway.
    pub fn new(subnet: Ipv4Net) -> Result<Self, LeaseError> {
        let subnet = subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(LeaseError::SubnetTooSmall(subnet));
        }
        let gateway = subnet
            .hosts()
            .next()
            .ok_or(LeaseError::SubnetTooSmall(subnet))?;
        Ok(Pool {
            subnet,
            gateway,
            range: None,
        })
    }

    /// The pool of a network with its own gateway and address range,
    /// both inside `subnet` (as `network create` checked).
    pub fn with(subnet: Ipv4Net, gateway: Ipv4Addr, range: Option<Ipv4Net>) -> Self {
        Pool {
            subnet: subnet.trunc(),
            gateway,
            range,
        }
    }

    /// Checks that `ip` may be leased given the current `leased` addresses.
    pub fn check(&self, ip: Ipv4Addr, leased: &BTreeSet<Ipv4Addr>) -> Result<(), LeaseError> {
        if !self.subnet.contains(&ip) {
            return Err(LeaseError::OutsideSubnet {
                ip,
                subnet: self.subnet,
            });
        }
        if ip == self.subnet.network() || ip == self.subnet.broadcast() || ip == self.gateway {
            return Err(LeaseError::Reserved(ip));
        }
        if leased.contains(&ip) {
            return Err(LeaseError::InUse(ip));
        }
        Ok(())
    }

    /// The lowest free address of the range (an address asked for may
    /// lie anywhere in the subnet, as with Docker's `--ip`).
    pub fn next_free(&self, leased: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr, LeaseError> {
        let from = self.range.unwrap_or(self.subnet);
        ipnet::Ipv4AddrRange::new(from.network(), from.broadcast())
            .find(|ip| self.check(*ip, leased).is_ok())
            .ok_or(LeaseError::Exhausted(from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn a_subnet_is_refused_over_routes_addresses_and_special_ranges() {
        let in_use = [net("172.17.0.0/16"), net("10.0.2.0/24")];
        assert_eq!(check_subnet(net("10.20.0.0/16"), &in_use), Ok(()));
        for (want, other) in [
            ("172.17.0.0/16", "172.17.0.0/16"),
            ("172.17.5.0/24", "172.17.0.0/16"),
            ("172.16.0.0/12", "172.17.0.0/16"),
            ("10.0.0.0/8", "10.0.2.0/24"),
        ] {
            assert_eq!(
                check_subnet(net(want), &in_use),
                Err(SubnetError::Overlaps {
                    subnet: net(want),
                    other: net(other)
                }),
                "{want}"
            );
        }
        for (want, range) in [
            ("0.0.0.0/0", "0.0.0.0/8"),
            ("127.0.0.0/24", "127.0.0.0/8"),
            ("169.254.1.0/24", "169.254.0.0/16"),
            ("239.1.0.0/16", "224.0.0.0/3"),
            ("240.0.0.0/8", "224.0.0.0/3"),
        ] {
            assert!(
                matches!(
                    check_subnet(net(want), &[]),
                    Err(SubnetError::SpecialPurpose { range: r, .. }) if r == net(range)
                ),
                "{want}"
            );
        }
    }

    #[test]
    fn pools_start_like_docker() {
        let pools: Vec<_> = default_pools().collect();
        assert_eq!(pools[0], net("172.17.0.0/16"));
        assert_eq!(pools[14], net("172.31.0.0/16"));
        assert_eq!(pools[15], net("192.168.0.0/20"));
        assert_eq!(pools.len(), 15 + 16);
    }

    #[test]
    fn pick_skips_overlapping_routes_and_addresses() {
        let in_use = [
            net("172.17.5.0/24"),
            net("172.16.0.0/12"),
            net("10.0.0.1/32"),
        ];
        assert_eq!(
            pick_subnet(default_pools(), &in_use),
            Some(net("192.168.0.0/20"))
        );
        assert_eq!(
            pick_subnet(default_pools(), &[net("172.17.0.0/16")]),
            Some(net("172.18.0.0/16"))
        );
        assert_eq!(pick_subnet(default_pools(), &[net("0.0.0.0/0")]), None);
    }

    #[test]
    fn leases_skip_gateway_and_taken() {
        let pool = Pool::new(net("10.9.0.0/29")).unwrap();
        assert_eq!(pool.gateway, "10.9.0.1".parse::<Ipv4Addr>().unwrap());
        let mut leased = BTreeSet::new();
        for expected in ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"] {
            let ip = pool.next_free(&leased).unwrap();
            assert_eq!(ip.to_string(), expected);
            leased.insert(ip);
        }
        assert_eq!(
            pool.next_free(&leased),
            Err(LeaseError::Exhausted(pool.subnet))
        );
        leased.remove(&"10.9.0.4".parse().unwrap());
        assert_eq!(pool.next_free(&leased).unwrap().to_string(), "10.9.0.4");
    }

    #[test]
    fn a_range_bounds_free_addresses_but_not_requested_ones() {
        let pool = Pool::with(
            net("10.9.0.0/24"),
            "10.9.0.254".parse().unwrap(),
            Some(net("10.9.0.252/30")),
        );
        let mut leased = BTreeSet::new();
        for expected in ["10.9.0.252", "10.9.0.253"] {
            let ip = pool.next_free(&leased).unwrap();
            assert_eq!(ip.to_string(), expected);
            leased.insert(ip);
        }
        // The gateway and the broadcast address are the rest of the range.
        assert_eq!(
            pool.next_free(&leased),
            Err(LeaseError::Exhausted(net("10.9.0.252/30")))
        );
        assert!(pool.check("10.9.0.9".parse().unwrap(), &leased).is_ok());
    }

    #[test]
    fn requested_addresses_are_checked() {
        let pool = Pool::new(net("10.9.0.0/24")).unwrap();
        let leased: BTreeSet<Ipv4Addr> = ["10.9.0.7".parse().unwrap()].into();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(pool.check(ip("10.9.0.8"), &leased).is_ok());
        assert_eq!(
            pool.check(ip("10.9.0.7"), &leased),
            Err(LeaseError::InUse(ip("10.9.0.7")))
        );
        assert_eq!(
            pool.check(ip("10.9.0.1"), &leased),
            Err(LeaseError::Reserved(ip("10.9.0.1")))
        );
        assert_eq!(
            pool.check(ip("10.9.0.255"), &leased),
            Err(LeaseError::Reserved(ip("10.9.0.255")))
        );
        assert!(matches!(
            pool.check(ip("10.9.1.1"), &leased),
            Err(LeaseError::OutsideSubnet { .. })
        ));
        assert!(Pool::new(net("10.0.0.0/31")).is_err());
    }
}
