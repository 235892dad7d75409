//! Overlay networks across hosts: cutting the subnet into one /24 lease per
//! host, the VXLAN network identifier a network gets, and the routes to the
//! other hosts' leases that the data path encapsulates along.

use netplane_common::abi::addr_be;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netplane_common::{
    abi::{NET_FLAG_ENCAP_GRE, NET_FLAG_ENCAP_NONE, OverlayPeer},
    gre, vxlan,
};

pub use crate::types::Encap;

/// Each host's slice of an overlay subnet, as flannel hands them out.
pub const LEASE_PREFIX: u8 = 24;

/// VNIs below this are left for networks given one by hand.
const FIRST_DERIVED_VNI: u32 = 4096;

/// VXLAN network identifiers have 24 bits.
const VNI_LIMIT: u32 = 1 << 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OverlayError {
    #[error("overlay subnet {0} is narrower than one /24 lease")]
    SubnetTooNarrow(Ipv4Net),
    #[error("overlay subnet {subnet} has {leases} /24 leases for {hosts} hosts")]
    TooManyHosts {
        subnet: Ipv4Net,
        leases: usize,
        hosts: usize,
    },
    #[error("VNI {0} does not fit VXLAN's 24 bits")]
    VniOutOfRange(u32),
    #[error(
        "--encap none routes to each host's uplink address directly: host {peer} is not \
         on this uplink's subnet {link}; use --encap vxlan or gre"
    )]
    PeerNotOnLink { peer: Ipv4Addr, link: Ipv4Net },
}

/// An overlay network: the same on every host of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayNetwork {
    /// Name.
    pub name: String,
    /// The whole overlay subnet, cut into /24 leases.
    pub subnet: Ipv4Net,
    /// VXLAN network identifier, and GRE key.
    pub vni: u32,
    /// How its frames travel between hosts.
    pub encap: Encap,
}

impl Encap {
    /// The MTU left for endpoints on an uplink with `uplink_mtu`, so that
    /// no frame makes an outer packet the uplink cannot send.
    pub fn endpoint_mtu(self, uplink_mtu: u32) -> u32 {
        match self {
            Encap::Vxlan => vxlan::overlay_mtu(uplink_mtu),
            Encap::Gre => uplink_mtu.saturating_sub(gre::OVERHEAD as u32),
            Encap::None => uplink_mtu,
        }
    }

    /// Its `NET_FLAG_ENCAP_*` bit for the data path (none for VXLAN).
    pub fn policy_flags(self) -> u32 {
        match self {
            Encap::Vxlan => 0,
            Encap::Gre => NET_FLAG_ENCAP_GRE,
            Encap::None => NET_FLAG_ENCAP_NONE,
        }
    }
}

/// Refuses `--encap none` unless every one of `peers` is on the uplink's
/// subnet `link`: packets go to a peer's address as the next hop.
pub fn check_direct_peers(link: Ipv4Net, peers: &[Ipv4Addr]) -> Result<(), OverlayError> {
    match peers.iter().find(|p| !link.contains(*p)) {
        Some(peer) => Err(OverlayError::PeerNotOnLink {
            peer: *peer,
            link: link.trunc(),
        }),
        None => Ok(()),
    }
}

/// Leases under static membership: every host is given the same VTEP
/// addresses (its own among them) and takes the /24 at its address's rank,
/// so that all of them agree without a store.
pub fn static_leases(
    subnet: Ipv4Net,
    vteps: &[Ipv4Addr],
) -> Result<Vec<(Ipv4Addr, Ipv4Net)>, OverlayError> {
    let mut hosts = vteps.to_vec();
    hosts.sort_unstable();
    hosts.dedup();
    let leases: Vec<Ipv4Net> = subnet
        .subnets(LEASE_PREFIX)
        .map_err(|_| OverlayError::SubnetTooNarrow(subnet))?
        .collect();
    if hosts.len() > leases.len() {
        return Err(OverlayError::TooManyHosts {
            subnet,
            leases: leases.len(),
            hosts: hosts.len(),
        });
    }
    Ok(hosts.into_iter().zip(leases).collect())
}

/// The lease a host takes through a store, given the leases other hosts
/// hold: the one it held before if it is still free (so that a host that
/// comes back keeps its endpoints' addresses), else the first free /24.
pub fn pick_lease(
    subnet: Ipv4Net,
    taken: &[Ipv4Net],
    previous: Option<Ipv4Net>,
) -> Result<Ipv4Net, OverlayError> {
    let mut leases = subnet
        .subnets(LEASE_PREFIX)
        .map_err(|_| OverlayError::SubnetTooNarrow(subnet))?;
    if let Some(previous) = previous.filter(|p| subnet.contains(p) && !taken.contains(p)) {
        return Ok(previous);
    }
    let count = leases.count();
    leases
        .find(|l| !taken.contains(l))
        .ok_or(OverlayError::TooManyHosts {
            subnet,
            leases: count,
            hosts: taken.len() + 1,
        })
}

/// The VNI of a network created without one, from its name: every host
/// that creates the network by that name arrives at the same VNI.
pub fn default_vni(name: &str) -> u32 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    FIRST_DERIVED_VNI + hash % (VNI_LIMIT - FIRST_DERIVED_VNI)
}

/// Checks a VNI given by hand.
pub fn check_vni(vni: u32) -> Result<u32, OverlayError> {
    if vni == 0 || vni >= VNI_LIMIT {
        return Err(OverlayError::VniOutOfRange(vni));
    }
    Ok(vni)
}

/// What the data path needs to reach the other hosts: each one's lease
/// network address with its VTEP and the overlay's VNI.
pub fn peer_routes(
    leases: &[(Ipv4Addr, Ipv4Net)],
    me: Ipv4Addr,
    vni: u32,
) -> Vec<(Ipv4Addr, OverlayPeer)> {
    leases
        .iter()
        .filter(|(vtep, _)| *vtep != me)
        .map(|(vtep, lease)| {
            (
                lease.network(),
                OverlayPeer {
                    vtep_be: addr_be(*vtep),
                    vni,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn every_host_computes_the_same_leases_whatever_order_it_lists_peers_in() {
        let a = static_leases(
            net("10.200.0.0/16"),
            &[ip("192.0.2.3"), ip("192.0.2.1"), ip("192.0.2.2")],
        )
        .unwrap();
        let b = static_leases(
            net("10.200.0.0/16"),
            &[
                ip("192.0.2.2"),
                ip("192.0.2.3"),
                ip("192.0.2.1"),
                ip("192.0.2.2"),
            ],
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a,
            [
                (ip("192.0.2.1"), net("10.200.0.0/24")),
                (ip("192.0.2.2"), net("10.200.1.0/24")),
                (ip("192.0.2.3"), net("10.200.2.0/24")),
            ]
        );
    }

    #[test]
    fn each_encapsulation_leaves_endpoints_room_for_its_headers() {
        assert_eq!(Encap::Vxlan.endpoint_mtu(1500), 1450);
        assert_eq!(Encap::Gre.endpoint_mtu(1500), 1458);
        assert_eq!(Encap::None.endpoint_mtu(1500), 1500);
        assert_eq!("gre".parse(), Ok(Encap::Gre));
        assert!("geneve".parse::<Encap>().is_err());
    }

    #[test]
    fn direct_routing_needs_every_peer_on_the_link() {
        let link = net("192.0.2.11/24");
        assert_eq!(check_direct_peers(link, &[ip("192.0.2.12")]), Ok(()));
        assert_eq!(
            check_direct_peers(link, &[ip("192.0.2.12"), ip("198.51.100.7")]),
            Err(OverlayError::PeerNotOnLink {
                peer: ip("198.51.100.7"),
                link: net("192.0.2.0/24")
            })
        );
    }

    #[test]
    fn a_subnet_must_hold_a_lease_per_host() {
        assert_eq!(
            static_leases(net("10.200.0.0/25"), &[ip("192.0.2.1")]),
            Err(OverlayError::SubnetTooNarrow(net("10.200.0.0/25")))
        );
        assert_eq!(
            static_leases(
                net("10.200.0.0/23"),
                &[ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3")]
            ),
            Err(OverlayError::TooManyHosts {
                subnet: net("10.200.0.0/23"),
                leases: 2,
                hosts: 3
            })
        );
    }

    #[test]
    fn a_returning_host_gets_its_old_lease_back_while_it_is_free() {
        let subnet = net("10.201.0.0/22");
        let taken = [net("10.201.0.0/24"), net("10.201.2.0/24")];
        assert_eq!(
            pick_lease(subnet, &taken, Some(net("10.201.3.0/24"))),
            Ok(net("10.201.3.0/24"))
        );
        assert_eq!(
            pick_lease(subnet, &taken, Some(net("10.201.2.0/24"))),
            Ok(net("10.201.1.0/24")),
            "taken meanwhile: the first free one"
        );
        assert_eq!(
            pick_lease(subnet, &taken, Some(net("10.99.0.0/24"))),
            Ok(net("10.201.1.0/24")),
            "from another subnet: ignored"
        );
        let all: Vec<Ipv4Net> = subnet.subnets(24).unwrap().collect();
        assert_eq!(
            pick_lease(subnet, &all, None),
            Err(OverlayError::TooManyHosts {
                subnet,
                leases: 4,
                hosts: 5
            })
        );
    }

    #[test]
    fn derived_vnis_are_stable_and_clear_of_hand_picked_ones() {
        assert_eq!(default_vni("web"), default_vni("web"));
        assert_ne!(default_vni("web"), default_vni("db"));
        for name in ["web", "db", "a", "a-much-longer-network-name"] {
            let vni = default_vni(name);
            assert!(
                (FIRST_DERIVED_VNI..VNI_LIMIT).contains(&vni),
                "{name}: {vni}"
            );
        }
        assert_eq!(check_vni(42), Ok(42));
        assert_eq!(check_vni(0), Err(OverlayError::VniOutOfRange(0)));
        assert_eq!(
            check_vni(1 << 24),
            Err(OverlayError::VniOutOfRange(1 << 24))
        );
    }

    #[test]
    fn routes_lead_to_every_other_host() {
        let leases =
            static_leases(net("10.200.0.0/16"), &[ip("192.0.2.1"), ip("192.0.2.2")]).unwrap();
        assert_eq!(
            peer_routes(&leases, ip("192.0.2.1"), 42),
            [(
                ip("10.200.1.0"),
                OverlayPeer {
                    vtep_be: addr_be(ip("192.0.2.2")),
                    vni: 42
                }
            )]
        );
    }
}
