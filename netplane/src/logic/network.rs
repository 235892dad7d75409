//! Networks a user creates on one host (`network create`, Docker's local
//! scope): what a request asks for, checked and completed (subnet from
//! the default pools, gateway, address range) before anything is made.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
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
) -> Result<LocalSpec, NetworkError> {
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

    fn req() -> LocalRequest {
        LocalRequest {
            icc: true,
            ..LocalRequest::default()
        }
    }

    #[test]
    fn subnets_come_from_the_pools_past_what_is_in_use() {
        let spec = plan_local(LocalDriver::Bridge, req(), &[net("172.17.0.0/16")], &[]).unwrap();
        assert_eq!(spec.subnet, net("172.18.0.0/16"));
        assert_eq!(spec.gateway, "172.18.0.1".parse::<Ipv4Addr>().unwrap());
        let busy: Vec<Ipv4Net> = ipam::default_pools().collect();
        assert_eq!(
            plan_local(LocalDriver::Bridge, req(), &busy, &[]),
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
        )
        .unwrap();
        assert_eq!(ok.gateway, "10.50.0.254".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ok.ip_range, Some(net("10.50.0.128/25")));
        for gateway in ["10.50.1.1", "10.50.0.0", "10.50.0.255"] {
            assert!(
                matches!(
                    plan_local(LocalDriver::Bridge, with(Some(gateway), None), &[], &[]),
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
                &[]
            ),
            Err(NetworkError::RangeOutside { .. })
        ));
        let no_subnet = LocalRequest {
            gateway: Some("10.50.0.1".parse().unwrap()),
            ..req()
        };
        assert_eq!(
            plan_local(LocalDriver::Bridge, no_subnet, &[], &[]),
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
                &[]
            ),
            Err(NetworkError::Subnet(SubnetError::Overlaps { .. }))
        ));
        assert_eq!(
            plan_local(LocalDriver::Bridge, asked("10.9.9.0/31"), &[], &[]),
            Err(NetworkError::SubnetTooSmall(net("10.9.9.0/31")))
        );
        let mtu = LocalRequest {
            mtu: Some(40),
            ..req()
        };
        assert_eq!(
            plan_local(LocalDriver::Bridge, mtu, &[], &[]),
            Err(NetworkError::BadMtu(40))
        );
        let mut options = req();
        options.options.insert("foo".into(), "1".into());
        assert_eq!(
            plan_local(LocalDriver::Bridge, options, &[], &[]),
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
        let spec = plan_local(LocalDriver::Macvlan, lan.clone(), &host, &[]).unwrap();
        assert_eq!(spec.parent(), Some("eth0"));
        assert!(matches!(
            plan_local(LocalDriver::Bridge, lan.clone(), &host, &[]),
            Err(NetworkError::UnknownOption(..))
        ));
        assert!(matches!(
            plan_local(LocalDriver::Macvlan, lan.clone(), &host, &host),
            Err(NetworkError::Subnet(SubnetError::Overlaps { .. }))
        ));
        let no_subnet = LocalRequest {
            subnet: None,
            gateway: None,
            ..lan.clone()
        };
        assert_eq!(
            plan_local(LocalDriver::Macvlan, no_subnet, &host, &[]),
            Err(NetworkError::MacvlanNeedsSubnet)
        );
        let mut no_parent = lan.clone();
        no_parent.options.clear();
        assert_eq!(
            plan_local(LocalDriver::Macvlan, no_parent, &host, &[]),
            Err(NetworkError::MacvlanNeedsParent)
        );
        let internal = LocalRequest {
            internal: true,
            ..lan
        };
        assert_eq!(
            plan_local(LocalDriver::Macvlan, internal, &host, &[]),
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
