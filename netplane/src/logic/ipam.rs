//! Address management: choosing a bridge subnet and leasing addresses in it.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

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

/// The IPv6 subnet of a network asked to have IPv6 without one given,
/// as Docker 27 picks it: a /64 of a unique local /48 (RFC 4193, fd00::/8)
/// whose 40-bit global ID comes from `seed` (the network's id, so the
/// choice is the same every time for one network and differs between
/// networks), the first /64 of it that overlaps no subnet `in_use`.
pub fn pick_ula(seed: &str, in_use: &[Ipv6Net]) -> Option<Ipv6Net> {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let global_id = u128::from(hash & 0xff_ffff_ffff);
    let prefix48 = (0xfd_u128 << 120) | (global_id << 80);
    (0..=u16::MAX)
        .map(|subnet_id| {
            let addr = Ipv6Addr::from(prefix48 | (u128::from(subnet_id) << 64));
            Ipv6Net::new(addr, 64).expect("64 is a valid prefix length")
        })
        .find(|candidate| {
            !in_use
                .iter()
                .any(|u| candidate.contains(u) || u.contains(candidate))
        })
}

/// An address family's subnets, as pools lease from them: IPv4 (whose
/// network and broadcast addresses are not leased) and IPv6 (whose
/// subnet-router anycast address, the first, is not).
pub trait Subnet: Copy + Eq + fmt::Debug + fmt::Display + Into<IpNet> {
    /// Its addresses.
    type Addr: Copy + Ord + fmt::Debug + fmt::Display + Into<IpAddr>;
    /// The widest prefix that leaves room for a gateway and endpoints.
    const MAX_PREFIX: u8;
    /// Host bits cleared.
    fn truncated(&self) -> Self;
    /// Prefix length.
    fn prefix(&self) -> u8;
    /// Whether `a` is in it.
    fn holds(&self, a: &Self::Addr) -> bool;
    /// The address that may not be leased besides the gateway's.
    fn reserved(&self, a: &Self::Addr) -> bool;
    /// Its addresses in order, the reserved ones included.
    fn addrs(&self) -> impl Iterator<Item = Self::Addr>;
}

impl Subnet for Ipv4Net {
    type Addr = Ipv4Addr;
    const MAX_PREFIX: u8 = 30;
    fn truncated(&self) -> Self {
        self.trunc()
    }
    fn prefix(&self) -> u8 {
        self.prefix_len()
    }
    fn holds(&self, a: &Ipv4Addr) -> bool {
        self.contains(a)
    }
    fn reserved(&self, a: &Ipv4Addr) -> bool {
        *a == self.network() || *a == self.broadcast()
    }
    fn addrs(&self) -> impl Iterator<Item = Ipv4Addr> {
        ipnet::Ipv4AddrRange::new(self.network(), self.broadcast())
    }
}

impl Subnet for Ipv6Net {
    type Addr = Ipv6Addr;
    const MAX_PREFIX: u8 = 126;
    fn truncated(&self) -> Self {
        self.trunc()
    }
    fn prefix(&self) -> u8 {
        self.prefix_len()
    }
    fn holds(&self, a: &Ipv6Addr) -> bool {
        self.contains(a)
    }
    fn reserved(&self, a: &Ipv6Addr) -> bool {
        *a == self.network()
    }
    fn addrs(&self) -> impl Iterator<Item = Ipv6Addr> {
        ipnet::Ipv6AddrRange::new(self.network(), self.broadcast())
    }
}

/// A subnet with its gateway: the addresses endpoints may lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool<N: Subnet = Ipv4Net> {
    /// The bridge subnet.
    pub subnet: N,
    /// The bridge's own address.
    pub gateway: N::Addr,
    /// Where free addresses are taken from; the whole subnet when absent.
    pub range: Option<N>,
}

/// Why an address cannot be leased.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    /// The subnet cannot hold endpoints at all.
    #[error("subnet {0} is too small for a gateway and endpoints")]
    SubnetTooSmall(IpNet),
    /// The requested address is outside the subnet.
    #[error("address {ip} is not in subnet {subnet}")]
    OutsideSubnet {
        /// Requested address.
        ip: IpAddr,
        /// The pool's subnet.
        subnet: IpNet,
    },
    /// The requested address is the network, broadcast or gateway address.
    #[error("address {0} is reserved (network, broadcast or gateway)")]
    Reserved(IpAddr),
    /// The requested address is leased already.
    #[error("address {0} is already leased")]
    InUse(IpAddr),
    /// No address is left.
    #[error("address pool {0} is exhausted")]
    Exhausted(IpNet),
}

impl<N: Subnet> Pool<N> {
    /// The pool of `subnet`, its first host address being the gateway.
    pub fn new(subnet: N) -> Result<Self, LeaseError> {
        let subnet = subnet.truncated();
        let too_small = || LeaseError::SubnetTooSmall(subnet.into());
        if subnet.prefix() > N::MAX_PREFIX {
            return Err(too_small());
        }
        let gateway = subnet
            .addrs()
            .find(|a| !subnet.reserved(a))
            .ok_or_else(too_small)?;
        Ok(Pool {
            subnet,
            gateway,
            range: None,
        })
    }

    /// The pool of a network with its own gateway and address range,
    /// both inside `subnet` (as `network create` checked).
    pub fn with(subnet: N, gateway: N::Addr, range: Option<N>) -> Self {
        Pool {
            subnet: subnet.truncated(),
            gateway,
            range,
        }
    }

    /// Checks that `ip` may be leased given the current `leased` addresses.
    pub fn check(&self, ip: N::Addr, leased: &BTreeSet<N::Addr>) -> Result<(), LeaseError> {
        if !self.subnet.holds(&ip) {
            return Err(LeaseError::OutsideSubnet {
                ip: ip.into(),
                subnet: self.subnet.into(),
            });
        }
        if self.subnet.reserved(&ip) || ip == self.gateway {
            return Err(LeaseError::Reserved(ip.into()));
        }
        if leased.contains(&ip) {
            return Err(LeaseError::InUse(ip.into()));
        }
        Ok(())
    }

    /// The lowest free address of the range (an address asked for may
    /// lie anywhere in the subnet, as with Docker's `--ip`).
    pub fn next_free(&self, leased: &BTreeSet<N::Addr>) -> Result<N::Addr, LeaseError> {
        let from = self.range.unwrap_or(self.subnet);
        from.addrs()
            .find(|ip| self.check(*ip, leased).is_ok())
            .ok_or(LeaseError::Exhausted(from.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_pools_lease_from_the_second_address_and_know_no_broadcast() {
        let subnet: Ipv6Net = "fd00:1::/64".parse().unwrap();
        let pool = Pool::new(subnet).unwrap();
        assert_eq!(pool.gateway, "fd00:1::1".parse::<Ipv6Addr>().unwrap());
        let mut leased = BTreeSet::new();
        let first = pool.next_free(&leased).unwrap();
        assert_eq!(first, "fd00:1::2".parse::<Ipv6Addr>().unwrap());
        leased.insert(first);
        assert_eq!(
            pool.next_free(&leased).unwrap(),
            "fd00:1::3".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            pool.check("fd00:1::".parse().unwrap(), &leased),
            Err(LeaseError::Reserved("fd00:1::".parse().unwrap())),
            "the subnet-router anycast address"
        );
        let last: Ipv6Addr = "fd00:1::ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(pool.check(last, &leased), Ok(()), "no broadcast in IPv6");
        assert!(matches!(
            pool.check("fd00:2::5".parse().unwrap(), &leased),
            Err(LeaseError::OutsideSubnet { .. })
        ));
        assert!(Pool::new("fd00::/127".parse::<Ipv6Net>().unwrap()).is_err());
    }

    #[test]
    fn unique_local_subnets_come_from_the_network_id_and_avoid_those_in_use() {
        let a = pick_ula("4f2c9e", &[]).unwrap();
        assert_eq!(a, pick_ula("4f2c9e", &[]).unwrap(), "stable");
        assert_ne!(a, pick_ula("77aa01", &[]).unwrap(), "one /48 per network");
        assert_eq!(a.prefix_len(), 64);
        assert_eq!(a.network().octets()[0], 0xfd);
        let next = pick_ula("4f2c9e", &[a]).unwrap();
        assert_eq!(
            u128::from(next.network()) - u128::from(a.network()),
            1 << 64,
            "the next /64 of the same /48"
        );
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
            Err(LeaseError::Exhausted(pool.subnet.into()))
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
            Err(LeaseError::Exhausted(net("10.9.0.252/30").into()))
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
            Err(LeaseError::InUse(ip("10.9.0.7").into()))
        );
        assert_eq!(
            pool.check(ip("10.9.0.1"), &leased),
            Err(LeaseError::Reserved(ip("10.9.0.1").into()))
        );
        assert_eq!(
            pool.check(ip("10.9.0.255"), &leased),
            Err(LeaseError::Reserved(ip("10.9.0.255").into()))
        );
        assert!(matches!(
            pool.check(ip("10.9.1.1"), &leased),
            Err(LeaseError::OutsideSubnet { .. })
        ));
        assert!(Pool::new(net("10.0.0.0/31")).is_err());
    }
}
