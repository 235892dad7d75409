//! Errors of the daemon's use cases: the logic's refusals and the kernel's
//! failures, and the daemon's own. Each names the object and the operation.

use std::{io, net::IpAddr, path::PathBuf};

use crate::{
    kernel,
    logic::{
        self, endpoint::OptionError, ipam::LeaseError, ipam::SubnetError, network::NetworkError,
        overlay::OverlayError, portspec::PortSpecError,
    },
};

/// What went wrong, by kind, so the API can answer with the right status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The logic refused the request.
    #[error(transparent)]
    Logic(#[from] logic::Error),
    /// A kernel operation failed.
    #[error(transparent)]
    Kernel(#[from] kernel::Error),
    /// An endpoint of that name exists.
    #[error("endpoint {0} already exists")]
    EndpointExists(String),
    /// Endpoints share the namespace of the one to remove.
    #[error(
        "endpoint {endpoint} is the namespace of {dependents} (--net container:{endpoint}): \
         remove them first, or rm -f to remove them with it"
    )]
    HasDependents {
        /// The endpoint to remove.
        endpoint: String,
        /// Those sharing its namespace, comma-separated.
        dependents: String,
    },
    /// A `--network-alias` that is another endpoint's name in its network.
    #[error("alias {alias} is the name of endpoint {other} in the same network")]
    AliasIsName {
        /// The alias asked for.
        alias: String,
        /// The endpoint of that name.
        other: String,
    },
    /// No endpoint of that name.
    #[error("endpoint {0} not found")]
    EndpointNotFound(String),
    /// No network of that name.
    #[error("network {0} not found")]
    NetworkNotFound(String),
    /// The name or the VNI of a new overlay network is taken.
    #[error("network {name} (VNI {vni}): network {other} already has that name or VNI")]
    NetworkExists {
        /// The new network.
        name: String,
        /// Its VNI.
        vni: u32,
        /// The network in the way.
        other: String,
    },
    /// A new network may not take the name of a built-in attachment.
    #[error("network name {0:?} is reserved for a built-in network")]
    NetworkNameReserved(String),
    /// A network still has endpoints.
    #[error("network {network} is in use by {endpoint}: remove or disconnect them first")]
    NetworkInUse {
        /// The network.
        network: String,
        /// Its endpoints, comma-separated.
        endpoint: String,
    },
    /// `network connect` to a network the endpoint is on.
    #[error("endpoint {endpoint} is already connected to network {network}")]
    AlreadyConnected {
        /// The endpoint.
        endpoint: String,
        /// The network.
        network: String,
    },
    /// `network disconnect` from a network the endpoint is not on.
    #[error("endpoint {endpoint} is not connected to network {network}")]
    NotConnected {
        /// The endpoint.
        endpoint: String,
        /// The network.
        network: String,
    },
    /// `network disconnect` from an endpoint's only network.
    #[error("network {network} is the only network of endpoint {endpoint}: remove it instead")]
    OnlyNetwork {
        /// The endpoint.
        endpoint: String,
        /// The network.
        network: String,
    },
    /// A macvlan parent without a MAC of its own.
    #[error("macvlan parent {0} has no Ethernet address")]
    MacvlanParent(String),
    /// A network of that name exists.
    #[error("network {0} already exists")]
    NetworkNameTaken(String),
    /// No such network driver.
    #[error("network driver {0:?} is not supported: use bridge or overlay")]
    UnsupportedDriver(String),
    /// An overlay needs its whole subnet given.
    #[error("an overlay network needs --subnet, the whole subnet its hosts share")]
    OverlayNeedsSubnet,
    /// A flag that only local networks take, given for an overlay.
    #[error("{0} does not apply to overlay networks")]
    NotForOverlays(&'static str),
    /// Publishing to an endpoint whose networks are all internal.
    #[error(
        "endpoint {endpoint}: network {network} is internal, its endpoints cannot publish ports"
    )]
    InternalNoPorts {
        /// The endpoint.
        endpoint: String,
        /// Its network.
        network: String,
    },
    /// Overlays need the uplink's address as this host's VTEP.
    #[error("overlay networks need an uplink with an IPv4 address, the host's VTEP")]
    NoVtep,
    /// The cluster store refused or could not be reached.
    #[error(transparent)]
    Cluster(#[from] crate::daemon::cluster::ClusterError),
    /// This host holds no /24 of an overlay network (yet).
    #[error("network {0}: this host holds no lease of it in the cluster store")]
    NoLease(String),
    /// Another endpoint on the bridge has the MAC asked for.
    #[error("MAC address {mac} is endpoint {other}'s")]
    MacInUse {
        /// The MAC.
        mac: String,
        /// The endpoint that has it.
        other: String,
    },
    /// A flag was given for a mode it does not apply to.
    #[error("{flag} only applies to bridge endpoints, not {mode}")]
    NotApplicable {
        /// The flag.
        flag: &'static str,
        /// The endpoint's mode.
        mode: String,
    },
    /// Removing or rewiring an endpoint a container runtime made through
    /// CNI, which the runtime removes.
    #[error(
        "endpoint {endpoint} belongs to container {container_id} of a container runtime \
         (CNI): remove the container with that runtime"
    )]
    RuntimeOwned {
        /// The endpoint.
        endpoint: String,
        /// The runtime's container id.
        container_id: String,
    },
    /// A CNI ADD for a container that has an interface of that name on
    /// another network, or another container with the endpoint's name.
    #[error("CNI ADD of container {container_id} as {ifname}: {reason}")]
    CniConflict {
        /// The runtime's container id.
        container_id: String,
        /// The interface asked for.
        ifname: String,
        /// What is in the way.
        reason: String,
    },
    /// A CNI CHECK found the attachment differing from what was made.
    #[error("CNI CHECK of container {container_id} ({ifname}): {differences}")]
    CniCheck {
        /// The runtime's container id.
        container_id: String,
        /// Its interface.
        ifname: String,
        /// What differs, `; `-separated.
        differences: String,
    },
    /// `--hostname` for an endpoint in the host's namespace.
    #[error("--hostname does not apply to --net host: processes there have the host's name")]
    HostnameOfHost,
    /// `container:OTHER` where OTHER has no namespace of its own.
    #[error("endpoint {0} uses the host's namespace; container: needs one with its own")]
    NoNamespace(String),
    /// `port rm` named no published rule.
    #[error("{spec} is not published by {endpoint}")]
    PortNotPublished {
        /// The spec given.
        spec: String,
        /// The endpoint.
        endpoint: String,
    },
    /// A `-p` host address is not an address of this host.
    #[error("host address {0} in -p is not an address of this host")]
    HostIpNotLocal(IpAddr),
    /// A port published on an IPv6 host address, to an endpoint without
    /// IPv6 (the eBPF path does not translate between families).
    #[error("-p {port}: endpoint {endpoint} has no IPv6 address (its network has no --ipv6)")]
    PortNeedsIpv6 {
        /// The published rule.
        port: String,
        /// The endpoint.
        endpoint: String,
    },
    /// Something only the eBPF data path does, asked of a daemon running
    /// without it (`--userland-proxy` where eBPF cannot load).
    #[error("{what} needs the eBPF data path, which this daemon runs without (see its log)")]
    NeedsDatapath {
        /// What was asked.
        what: &'static str,
    },
    /// The eBPF data path did not load, and `--userland-proxy` was not
    /// given to run without it.
    #[error(
        "loading the eBPF data path: {0}; `up --userland-proxy` runs without it, relaying \
         published ports in the daemon"
    )]
    DatapathUnavailable(#[source] kernel::Error),
    /// No default pool is free.
    #[error("no free subnet in the default pools; pass --subnet")]
    NoFreeSubnet,
    /// The daemon was restarted with settings that contradict its state.
    #[error("{what} is {stored} in the state in {dir}; `netplane down` first to change it")]
    ConfigChanged {
        /// Setting.
        what: &'static str,
        /// Stored value.
        stored: String,
        /// State directory.
        dir: PathBuf,
    },
    /// A row of the state store cannot be read as what it stands for.
    #[error("state store: {0}")]
    Corrupt(String),
    /// The state store failed.
    #[error("state store: {0}")]
    Store(#[from] rusqlite::Error),
}

impl Error {
    /// A kernel [`kernel::Error::Io`] for `op` on `object`.
    pub fn io(
        op: &'static str,
        object: impl std::fmt::Display,
        source: impl Into<io::Error>,
    ) -> Self {
        Error::Kernel(kernel::Error::io(op, object, source))
    }

    /// Whether the request was at fault (as opposed to the host or netplane).
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            Error::NotApplicable { .. }
                | Error::UnsupportedDriver(_)
                | Error::OverlayNeedsSubnet
                | Error::NotForOverlays(_)
                | Error::InternalNoPorts { .. }
                | Error::NoNamespace(_)
                | Error::HostIpNotLocal(_)
                | Error::PortNeedsIpv6 { .. }
                | Error::HostnameOfHost
                | Error::NeedsDatapath { .. }
        ) || matches!(self, Error::Logic(e) if !e.is_conflict() && !e.is_not_found())
    }

    /// Whether the request names something that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::EndpointNotFound(_)
                | Error::NetworkNotFound(_)
                | Error::PortNotPublished { .. }
                | Error::NotConnected { .. }
        ) || matches!(self, Error::Logic(e) if e.is_not_found())
    }

    /// Whether the request conflicts with existing state.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::EndpointExists(_)
                | Error::NetworkExists { .. }
                | Error::NetworkNameTaken(_)
                | Error::AlreadyConnected { .. }
                | Error::OnlyNetwork { .. }
                | Error::NetworkNameReserved(_)
                | Error::NetworkInUse { .. }
                | Error::HasDependents { .. }
                | Error::AliasIsName { .. }
                | Error::MacInUse { .. }
                | Error::RuntimeOwned { .. }
                | Error::CniConflict { .. }
        ) || matches!(self, Error::Logic(e) if e.is_conflict())
            || matches!(self, Error::Kernel(e) if e.is_conflict())
            || matches!(
                self,
                Error::Store(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation
            )
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// The logic's own refusals convert through [`logic::Error`].
macro_rules! through_logic {
    ($($refusal:ty),*) => {$(
        impl From<$refusal> for Error {
            fn from(e: $refusal) -> Self {
                Error::Logic(e.into())
            }
        }
    )*};
}
through_logic!(
    PortSpecError,
    LeaseError,
    SubnetError,
    OptionError,
    OverlayError,
    NetworkError
);

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
