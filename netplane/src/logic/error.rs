//! Why the pure logic refuses a request: each names the value at fault.

use std::net::IpAddr;

use super::{
    endpoint::OptionError, ipam::LeaseError, ipam::SubnetError, network::NetworkError,
    overlay::OverlayError, portspec::PortSpecError,
};

/// A request the logic refuses, by kind.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A name that cannot name an endpoint.
    #[error("invalid name {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 63 characters")]
    InvalidName(String),
    /// `--net` names no attachment and cannot name a network.
    #[error("network {0} not found")]
    NoSuchNetwork(String),
    /// A `-p` argument.
    #[error(transparent)]
    PortSpec(#[from] PortSpecError),
    /// An address that cannot be leased.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// A subnet that cannot be given to a network.
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    /// A `--mac-address`, `--add-host` or `--dns-search` value.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// A local network that cannot be made as asked.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// An overlay network that cannot be planned.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// A network whose bridge nftables cannot name.
    #[error(transparent)]
    Firewall(#[from] super::firewall::UnquotableName),
    /// A `--publish-from` / `--from` value that is no IPv4 network.
    #[error("source {0} is not an IPv4 network (CIDR, such as 192.0.2.0/24)")]
    BadSource(String),
    /// A published host port is taken.
    #[error("host port {port}/{proto} on {ip} is already published by {owner}")]
    PortInUse {
        /// Host port.
        port: u16,
        /// Protocol.
        proto: String,
        /// Host address (0.0.0.0 for all).
        ip: IpAddr,
        /// Endpoint publishing it.
        owner: String,
    },
    /// No free host port for `-p CPORT`.
    #[error("no free host port left for {0}")]
    NoFreeHostPort(String),
    /// Every NAT counter slot is taken by a published rule.
    #[error("too many published port rules: every counter slot is taken")]
    NoFreeSlot,
    /// One request asks for more published rules than the data path holds.
    #[error("{asked} -p rules in one request: at most {max} fit the data path")]
    TooManyPorts {
        /// Rules asked for.
        asked: usize,
        /// The most there can be.
        max: usize,
    },
}

impl Error {
    /// Whether the request conflicts with what exists (the rest is the
    /// request's own fault, or names nothing).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::PortInUse { .. })
    }

    /// Whether the request names something that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NoSuchNetwork(_))
    }
}
