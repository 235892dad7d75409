//! Networks a user creates on one host (`network create`, Docker's local
//! scope): what a request asks for, checked and completed (subnet from
//! the default pools, gateway, address range) before anything is made.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::logic::ipam::{self, SubnetError};

/// Kinds of network a user creates on one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalDriver {
    /// Its own Linux bridge, NATed out of the uplink like the bridge
    /// network.
    Bridge,
    /// Straight onto the network of a parent interface (the uplink by
    /// default): each endpoint a macvlan child of it with an address of
    /// that network, no NAT.
    Macvlan,
}

impl LocalDriver {
    /// Its name, as `--driver` takes it.
    pub fn name(self) -> &'static str {
        match self {
            LocalDriver::Bridge => "bridge",
            LocalDriver::Macvlan => "macvlan",
        }
    }

    /// The `-o` options it takes.
    fn options(self) -> &'static [&'static str] {
        match self {
            LocalDriver::Bridge => &[],
            LocalDriver::Macvlan => &[PARENT, "macvlan_mode"],
        }
    }
}

/// `-o parent=IFACE` of a macvlan network.
pub const PARENT: &str = "parent";

impl LocalSpec {
    /// The parent interface of a macvlan network.
    pub fn parent(&self) -> Option<&str> {
        match self.driver {
            LocalDriver::Macvlan => self.options.get(PARENT).map(String::as_str),
            LocalDriver::Bridge => None,
        }
    }
}

/// A local network's settings, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSpec {
    pub driver: LocalDriver,
    /// Its subnet, network address and prefix.
    pub subnet: Ipv4Net,
    /// The bridge's address, the endpoints' default gateway.
    pub gateway: Ipv4Addr,
    /// Where addresses are leased from when none is asked for; the whole
    /// subnet when absent.
    pub ip_range: Option<Ipv4Net>,
    /// No masquerade and no published ports: endpoints reach only their
    /// own subnet.
    pub internal: bool,
    /// Whether endpoints may talk to each other.
    pub icc: bool,
    /// MTU of the endpoints' interfaces; the uplink's when absent.
    pub mtu: Option<u32>,
    /// `-o KEY=VALUE`, as given.
    pub options: BTreeMap<String, String>,
    /// `--label KEY=VALUE`.
    pub labels: BTreeMap<String, String>,
    /// Its IPv6 subnet and gateway, with `--ipv6`; IPv6 is off on
    /// networks without, as in Docker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Side>,
}

/// The IPv6 side of a dual-stack network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Side {
    /// Its subnet.
    pub subnet: Ipv6Net,
    /// The bridge's address there, the endpoints' IPv6 gateway.
    pub gateway: Ipv6Addr,
    /// `--ipv6-masquerade=false`: IPv6 flows leave with the endpoints'
    /// own addresses, the subnet being routed to the host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub routed: bool,
}

/// IPv6 ranges no network of endpoints may take: unspecified and
/// loopback, IPv4-mapped, link-local and multicast.
const SPECIAL_PURPOSE_V6: [&str; 4] = ["::/127", "::ffff:0:0/96", "fe80::/10", "ff00::/8"];

/// Completes and checks the IPv6 side of network `name`: the subnet
/// asked for, or a unique local /64 picked from `name`; the gateway its
/// first address after the subnet-router anycast one unless given. None
/// of the IPv6 subnets `in_use` may overlap it.
fn plan_ipv6(
    name: &str,
    subnet: Option<Ipv6Net>,
    gateway: Option<Ipv6Addr>,
    in_use: &[Ipv6Net],
) -> Result<Ipv6Side, NetworkError> {
    let overlaps = |a: &Ipv6Net, b: &Ipv6Net| a.contains(b) || b.contains(a);
    let subnet = match subnet {
        Some(subnet) => {
            let subnet = subnet.trunc();
            if let Some(special) = SPECIAL_PURPOSE_V6
                .iter()
                .map(|r| r.parse::<Ipv6Net>().expect("a valid range"))
                .find(|r| overlaps(r, &subnet))
            {
                return Err(NetworkError::SpecialV6 { subnet, special });
            }
            if let Some(other) = in_use.iter().find(|u| overlaps(u, &subnet)) {
                return Err(NetworkError::OverlapsV6 {
                    subnet,
                    other: *other,
                });
            }
            subnet
        }
        None if gateway.is_some() => return Err(NetworkError::NeedsSubnet),
        None => ipam::pick_ula(name, in_use).ok_or(NetworkError::PoolsExhausted)?,
    };
    let pool = ipam::Pool::new(subnet).map_err(|_| NetworkError::SubnetTooSmallV6(subnet))?;
    let gateway = gateway.unwrap_or(pool.gateway);
    if !subnet.contains(&gateway) || gateway == subnet.network() {
        return Err(NetworkError::GatewayOutsideV6 { gateway, subnet });
    }
    Ok(Ipv6Side {
        subnet,
        gateway,
        routed: false,
    })
}

/// A local network as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNetwork {
    pub name: String,
    /// The data path's identifier of the network (from
    /// `BRIDGE_NETWORK_IDS` on).
    pub id: u32,
    /// Docker-style identifier, 64 hex digits.
    pub uid: String,
    /// When it was created (RFC 3339).
    pub created: String,
    pub spec: LocalSpec,
}

impl LocalNetwork {
    /// Its Linux bridge.
    pub fn bridge(&self) -> String {
        bridge_name(&self.uid)
    }
}

/// A `network create` request for a local network, as the user typed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalRequest {
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
    pub icc: bool,
    pub mtu: Option<u32>,
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// `--ipv6`.
    pub ipv6: bool,
    /// An IPv6 `--subnet`.
    pub subnet6: Option<Ipv6Net>,
    /// An IPv6 `--gateway`.
    pub gateway6: Option<Ipv6Addr>,
    /// `--ipv6-masquerade`.
    pub ipv6_masquerade: bool,
}

/// The IPv6 subnets of other networks and the network's name, which
/// picks its unique local subnet when none is given.
#[derive(Clone, Copy, Debug)]
pub struct Ipv6Context<'a> {
    /// The new network's name.
    pub name: &'a str,
    /// IPv6 subnets of the host's other networks.
    pub in_use: &'a [Ipv6Net],
}

/// Why a local network cannot be made as asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    #[error("no free subnet left in the default address pools")]
    PoolsExhausted,
    #[error("subnet {0} is too small for a gateway and endpoints (need /30 or larger)")]
    SubnetTooSmall(Ipv4Net),
    #[error("gateway {gateway} is not a host address of subnet {subnet}")]
    GatewayOutside { gateway: Ipv4Addr, subnet: Ipv4Net },
    #[error("ip-range {range} is not inside subnet {subnet}")]
    RangeOutside { range: Ipv4Net, subnet: Ipv4Net },
    #[error("--gateway and --ip-range need --subnet")]
    NeedsSubnet,
    #[error("mtu {0} is outside 68..=65535")]
    BadMtu(u32),
    #[error("option {0} is not known to the {1} driver")]
    UnknownOption(String, &'static str),
    #[error("a macvlan network needs --subnet, the subnet of its parent's network")]
    MacvlanNeedsSubnet,
    #[error("a macvlan network needs -o parent=IFACE (there is no uplink to default to)")]
    MacvlanNeedsParent,
    #[error("macvlan_mode {0:?}: only bridge is supported")]
    MacvlanMode(String),
    #[error("{0} does not apply to macvlan networks")]
    NotForMacvlan(&'static str),
    #[error("an IPv6 --subnet or --gateway needs --ipv6")]
    NeedsIpv6,
    #[error("subnet {subnet} overlaps {other} already in use on this host")]
    OverlapsV6 { subnet: Ipv6Net, other: Ipv6Net },
    #[error("subnet {subnet} overlaps {special}, a range no network may take")]
    SpecialV6 { subnet: Ipv6Net, special: Ipv6Net },
    #[error("subnet {0} is too small for a gateway and endpoints (need /126 or larger)")]
    SubnetTooSmallV6(Ipv6Net),
    #[error("gateway {gateway} is not a host address of subnet {subnet}")]
    GatewayOutsideV6 { gateway: Ipv6Addr, subnet: Ipv6Net },
}

/// Completes and checks `req`: the subnet is the one asked for, or the
/// first of the default pools that overlaps nothing in `in_use` (routes
/// and addresses of the host, other networks); the gateway is the
/// subnet's first host address unless given.
///
/// A macvlan network shares its parent's network, so the host's routes
/// and addresses (`host`) are not in its way; other networks are.
pub fn plan_local(
    driver: LocalDriver,
    req: LocalRequest,
    host: &[Ipv4Net],
    networks: &[Ipv4Net],
    v6: Ipv6Context<'_>,
) -> Result<LocalSpec, NetworkError> {
    if !req.ipv6 && (req.subnet6.is_some() || req.gateway6.is_some() || !req.ipv6_masquerade) {
        return Err(NetworkError::NeedsIpv6);
    }
    if let Some(key) = req
        .options
        .keys()
        .find(|k| !driver.options().contains(&k.as_str()))
    {
        return Err(NetworkError::UnknownOption(key.clone(), driver.name()));
    }
    let in_use: Vec<Ipv4Net> = match driver {
        LocalDriver::Bridge => host.iter().chain(networks).copied().collect(),
        LocalDriver::Macvlan => {
            if let Some(mode) = req.options.get("macvlan_mode").filter(|m| *m != "bridge") {
                return Err(NetworkError::MacvlanMode(mode.clone()));
            }
            if !req.options.contains_key(PARENT) {
                return Err(NetworkError::MacvlanNeedsParent);
            }
            if req.subnet.is_none() {
                return Err(NetworkError::MacvlanNeedsSubnet);
            }
            if req.internal {
                return Err(NetworkError::NotForMacvlan("--internal"));
            }
            if !req.icc {
                return Err(NetworkError::NotForMacvlan("--icc=false"));
            }
            networks.to_vec()
        }
    };
    let in_use = in_use.as_slice();
    if let Some(mtu) = req.mtu
        && !(68..=65535).contains(&mtu)
    {
        return Err(NetworkError::BadMtu(mtu));
    }
    let subnet = match req.subnet {
        Some(subnet) => {
            let subnet = subnet.trunc();
            ipam::check_subnet(subnet, in_use)?;
            subnet
        }
        None if req.gateway.is_some() || req.ip_range.is_some() => {
            return Err(NetworkError::NeedsSubnet);
        }
        None => {
            ipam::pick_subnet(ipam::default_pools(), in_use).ok_or(NetworkError::PoolsExhausted)?
        }
    };
    if subnet.prefix_len() > 30 {
        return Err(NetworkError::SubnetTooSmall(subnet));
    }
    let first_host = subnet.hosts().next().expect("a /30 or larger has hosts");
    let gateway = req.gateway.unwrap_or(first_host);
    if !subnet.contains(&gateway) || gateway == subnet.network() || gateway == subnet.broadcast() {
        return Err(NetworkError::GatewayOutside { gateway, subnet });
    }
    if let Some(range) = req.ip_range
        && !subnet.contains(&range.trunc())
    {
        return Err(NetworkError::RangeOutside { range, subnet });
    }
    let ipv6 = match req.ipv6 {
        true if driver == LocalDriver::Macvlan => {
            return Err(NetworkError::NotForMacvlan("--ipv6"));
        }
        true => Some(Ipv6Side {
            routed: !req.ipv6_masquerade,
            ..plan_ipv6(v6.name, req.subnet6, req.gateway6, v6.in_use)?
        }),
        false => None,
    };
    Ok(LocalSpec {
        driver,
        subnet,
        gateway,
        ip_range: req.ip_range.map(|r| r.trunc()),
        internal: req.internal,
        icc: req.icc,
        mtu: req.mtu,
        options: req.options,
        labels: req.labels,
        ipv6,
    })
}

/// Name of the Linux bridge of the local network with identifier `uid`,
/// as Docker names its bridges (`br-` and 12 hex digits: 15 characters,
/// the most an interface name may have).
pub fn bridge_name(uid: &str) -> String {
    format!("br-{}", &uid[..12.min(uid.len())])
}

/// Parses `KEY=VALUE` (`--label`, `-o`).
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    const NO_V6: Ipv6Context<'static> = Ipv6Context {
        name: "n",
        in_use: &[],
    };

    fn req() -> LocalRequest {
        LocalRequest {
            icc: true,
            ipv6_masquerade: true,
            ..LocalRequest::default()
        }
    }

    #[test]
    fn subnets_come_from_the_pools_past_what_is_in_use() {
        let spec = plan_local(
            LocalDriver::Bridge,
            req(),
            &[net("172.17.0.0/16")],
            &[],
            NO_V6,
        )
        .unwrap();
        assert_eq!(spec.subnet, net("172.18.0.0/16"));
        assert_eq!(spec.gateway, "172.18.0.1".parse::<Ipv4Addr>().unwrap());
        let busy: Vec<Ipv4Net> = ipam::default_pools().collect();
        assert_eq!(
            plan_local(LocalDriver::Bridge, req(), &busy, &[], NO_V6),
            Err(NetworkError::PoolsExhausted)
        );
    }

    #[test]
    fn gateway_and_range_must_lie_in_the_subnet() {
        let with = |gateway: Option<&str>, range: Option<&str>| LocalRequest {
            subnet: Some(net("10.50.0.0/24")),
            gateway: gateway.map(|g| g.parse().unwrap()),
            ip_range: range.map(net),
            ..req()
        };
        let ok = plan_local(
            LocalDriver::Bridge,
            with(Some("10.50.0.254"), Some("10.50.0.128/25")),
            &[],
            &[],
            NO_V6,
        )
        .unwrap();
        assert_eq!(ok.gateway, "10.50.0.254".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ok.ip_range, Some(net("10.50.0.128/25")));
        for gateway in ["10.50.1.1", "10.50.0.0", "10.50.0.255"] {
            assert!(
                matches!(
                    plan_local(
                        LocalDriver::Bridge,
                        with(Some(gateway), None),
                        &[],
                        &[],
                        NO_V6
                    ),
                    Err(NetworkError::GatewayOutside { .. })
                ),
                "{gateway}"
            );
        }
        assert!(matches!(
            plan_local(
                LocalDriver::Bridge,
                with(None, Some("10.50.0.0/23")),
                &[],
                &[],
                NO_V6
            ),
            Err(NetworkError::RangeOutside { .. })
        ));
        let no_subnet = LocalRequest {
            gateway: Some("10.50.0.1".parse().unwrap()),
            ..req()
        };
        assert_eq!(
            plan_local(LocalDriver::Bridge, no_subnet, &[], &[], NO_V6),
            Err(NetworkError::NeedsSubnet)
        );
    }

    #[test]
    fn overlapping_and_odd_requests_are_refused() {
        let asked = |subnet: &str| LocalRequest {
            subnet: Some(net(subnet)),
            ..req()
        };
        assert!(matches!(
            plan_local(
                LocalDriver::Bridge,
                asked("172.17.3.0/24"),
                &[net("172.17.0.0/16")],
                &[],
                NO_V6
            ),
            Err(NetworkError::Subnet(SubnetError::Overlaps { .. }))
        ));
        assert_eq!(
            plan_local(LocalDriver::Bridge, asked("10.9.9.0/31"), &[], &[], NO_V6),
            Err(NetworkError::SubnetTooSmall(net("10.9.9.0/31")))
        );
        let mtu = LocalRequest {
            mtu: Some(40),
            ..req()
        };
        assert_eq!(
            plan_local(LocalDriver::Bridge, mtu, &[], &[], NO_V6),
            Err(NetworkError::BadMtu(40))
        );
        let mut options = req();
        options.options.insert("foo".into(), "1".into());
        assert_eq!(
            plan_local(LocalDriver::Bridge, options, &[], &[], NO_V6),
            Err(NetworkError::UnknownOption("foo".into(), "bridge"))
        );
    }

    #[test]
    fn a_macvlan_network_takes_its_parents_subnet_but_not_another_networks() {
        let lan = LocalRequest {
            subnet: Some(net("198.18.0.0/24")),
            gateway: Some("198.18.0.1".parse().unwrap()),
            options: [(PARENT.to_string(), "eth0".to_string())].into(),
            ..req()
        };
        let host = [net("198.18.0.0/24")];
        let spec = plan_local(LocalDriver::Macvlan, lan.clone(), &host, &[], NO_V6).unwrap();
        assert_eq!(spec.parent(), Some("eth0"));
        assert!(matches!(
            plan_local(LocalDriver::Bridge, lan.clone(), &host, &[], NO_V6),
            Err(NetworkError::UnknownOption(..))
        ));
        assert!(matches!(
            plan_local(LocalDriver::Macvlan, lan.clone(), &host, &host, NO_V6),
            Err(NetworkError::Subnet(SubnetError::Overlaps { .. }))
        ));
        let no_subnet = LocalRequest {
            subnet: None,
            gateway: None,
            ..lan.clone()
        };
        assert_eq!(
            plan_local(LocalDriver::Macvlan, no_subnet, &host, &[], NO_V6),
            Err(NetworkError::MacvlanNeedsSubnet)
        );
        let mut no_parent = lan.clone();
        no_parent.options.clear();
        assert_eq!(
            plan_local(LocalDriver::Macvlan, no_parent, &host, &[], NO_V6),
            Err(NetworkError::MacvlanNeedsParent)
        );
        let internal = LocalRequest {
            internal: true,
            ..lan
        };
        assert_eq!(
            plan_local(LocalDriver::Macvlan, internal, &host, &[], NO_V6),
            Err(NetworkError::NotForMacvlan("--internal"))
        );
    }

    #[test]
    fn bridges_are_named_like_dockers_and_fit_an_interface_name() {
        let name = bridge_name("0123456789abcdef0123");
        assert_eq!(name, "br-0123456789ab");
        assert_eq!(name.len(), 15);
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("=x").is_err() && parse_key_value("x").is_err());
    }
}
