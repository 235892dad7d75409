//! Errors of the netplane library. Each names the object and the operation.

use std::{io, net::Ipv4Addr, path::PathBuf};

use crate::{
    logic::ipam::{LeaseError, SubnetError},
    logic::portspec::PortSpecError,
};

/// What went wrong, by kind, so the API can answer with the right status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name that cannot name an endpoint.
    #[error("invalid name {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 63 characters")]
    InvalidName(String),
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
    /// An overlay network still has endpoints.
    #[error("network {network} still has endpoint {endpoint}")]
    NetworkInUse {
        /// The network.
        network: String,
        /// One of its endpoints.
        endpoint: String,
    },
    /// Only overlay networks can be created.
    #[error("network driver {0:?} is not supported: only overlay networks can be created")]
    UnsupportedDriver(String),
    /// Overlays need the uplink's address as this host's VTEP.
    #[error("overlay networks need an uplink with an IPv4 address, the host's VTEP")]
    NoVtep,
    /// An overlay network cannot be planned.
    #[error(transparent)]
    Overlay(#[from] crate::logic::overlay::OverlayError),
    /// The cluster store refused or could not be reached.
    #[error(transparent)]
    Cluster(#[from] crate::daemon::cluster::ClusterError),
    /// This host holds no /24 of an overlay network (yet).
    #[error("network {0}: this host holds no lease of it in the cluster store")]
    NoLease(String),
    /// A `--mac-address`, `--add-host` or `--dns-search` value was refused.
    #[error(transparent)]
    Option(#[from] crate::logic::endpoint::OptionError),
    /// Another endpoint on the bridge has the MAC asked for.
    #[error("MAC address {mac} is endpoint {other}'s")]
    MacInUse {
        /// The MAC.
        mac: String,
        /// The endpoint that has it.
        other: String,
    },
    /// A `-p` argument was refused.
    #[error(transparent)]
    PortSpec(#[from] PortSpecError),
    /// An address could not be leased.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// A flag was given for a mode it does not apply to.
    #[error("{flag} only applies to bridge endpoints, not {mode}")]
    NotApplicable {
        /// The flag.
        flag: &'static str,
        /// The endpoint's mode.
        mode: String,
    },
    /// `--hostname` for an endpoint in the host's namespace.
    #[error("--hostname does not apply to --net host: processes there have the host's name")]
    HostnameOfHost,
    /// `container:OTHER` where OTHER has no namespace of its own.
    #[error("endpoint {0} uses the host's namespace; container: needs one with its own")]
    NoNamespace(String),
    /// A published host port is taken.
    #[error("host port {port}/{proto} on {ip} is already published by {owner}")]
    PortInUse {
        /// Host port.
        port: u16,
        /// Protocol.
        proto: String,
        /// Host address (0.0.0.0 for all).
        ip: Ipv4Addr,
        /// Endpoint publishing it.
        owner: String,
    },
    /// A host port to publish is used by a socket of the host itself.
    #[error("host port {port}/{proto} on {ip} is already in use on the host by {user}")]
    HostPortInUse {
        /// Host port.
        port: u16,
        /// Protocol.
        proto: String,
        /// Host address (0.0.0.0 for all).
        ip: Ipv4Addr,
        /// The process holding it ("NAME (pid N)"), or "a socket".
        user: String,
    },
    /// A `--publish-from` / `--from` value that is no IPv4 network.
    #[error("source {0} is not an IPv4 network (CIDR, such as 192.0.2.0/24)")]
    BadSource(String),
    /// No free host port for `-p CPORT`.
    #[error("no free host port left for {0}")]
    NoFreeHostPort(String),
    /// `port rm` named no published rule.
    #[error("{spec} is not published by {endpoint}")]
    PortNotPublished {
        /// The spec given.
        spec: String,
        /// The endpoint.
        endpoint: String,
    },
    /// One request asks for more published rules than the data path holds.
    #[error("{asked} -p rules in one request: at most {max} fit the data path")]
    TooManyPorts {
        /// Rules asked for.
        asked: usize,
        /// The most there can be.
        max: usize,
    },
    /// Every NAT counter slot is taken by a published rule.
    #[error("too many published port rules: every counter slot is taken")]
    NoFreeSlot,
    /// A `-p` host address is not an address of this host.
    #[error("host address {0} in -p is not an address of this host")]
    HostIpNotLocal(Ipv4Addr),
    /// A subnet asked for cannot be given to a network here.
    #[error(transparent)]
    Subnet(#[from] SubnetError),
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
    /// Another daemon manages this network namespace.
    #[error("a netplane daemon already runs in this network namespace")]
    AlreadyRunning,
    /// An interface that must exist does not.
    #[error("interface {0} not found")]
    InterfaceNotFound(String),
    /// A device netplane would create exists and is not netplane's.
    #[error("{0} already exists and is not managed by this netplane")]
    Foreign(String),
    /// The embedded eBPF object is empty.
    #[error(
        "this netplane was built without its eBPF object (bpf-linker missing); run `cargo xtask build-ebpf`"
    )]
    NoEbpfObject,
    /// A map pinned by another build has another layout than this one's
    /// programs need; reusing it would have them read past its values.
    #[error(
        "pinned map {map} in {dir}: {mismatch}; it was pinned by another netplane version: \
         `netplane down` with that version (or removing the pins) lets this one start"
    )]
    PinnedMapLayout {
        /// The map.
        map: String,
        /// Its pin directory.
        dir: std::path::PathBuf,
        /// What differs.
        mismatch: String,
    },
    /// Maps pinned by another build are stamped with another layout
    /// version: their entries mean something else to this one's programs.
    #[error(
        "maps pinned in {dir} have layout version {found}, this netplane reads version {want}: \
         they were pinned by {pinned_by} netplane; `netplane down` with that version (which \
         drops tracked connections), then `up` with this one"
    )]
    PinnedLayoutVersion {
        /// The maps' pin directory.
        dir: std::path::PathBuf,
        /// The version stamped on them.
        found: u32,
        /// This build's [`netplane_common::abi::LAYOUT_VERSION`].
        want: u32,
        /// "a newer" or "an older".
        pinned_by: &'static str,
    },
    /// A netlink request failed.
    #[error("{op} {object}: {source}")]
    Netlink {
        /// Operation.
        op: &'static str,
        /// Object operated on.
        object: String,
        /// Cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// A system call or file operation failed.
    #[error("{op} {object}: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// Object operated on.
        object: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Loading, attaching or updating eBPF failed.
    #[error("{op} {object}: {source}")]
    Ebpf {
        /// Operation.
        op: &'static str,
        /// Object operated on.
        object: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The state store failed.
    #[error("state store: {0}")]
    Store(#[from] rusqlite::Error),
}

impl Error {
    /// An [`Error::Io`] for `op` on `object`.
    pub fn io(
        op: &'static str,
        object: impl std::fmt::Display,
        source: impl Into<io::Error>,
    ) -> Self {
        Error::Io {
            op,
            object: object.to_string(),
            source: source.into(),
        }
    }

    /// An [`Error::Netlink`] for `op` on `object`.
    pub fn netlink(
        op: &'static str,
        object: impl std::fmt::Display,
        source: rtnetlink::Error,
    ) -> Self {
        Error::Netlink {
            op,
            object: object.to_string(),
            source,
        }
    }

    /// An [`Error::Ebpf`] for `op` on `object`.
    pub fn ebpf(
        op: &'static str,
        object: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Ebpf {
            op,
            object: object.to_string(),
            source: Box::new(source),
        }
    }

    /// Whether the request was at fault (as opposed to the host or netplane).
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            Error::InvalidName(_)
                | Error::PortSpec(_)
                | Error::Option(_)
                | Error::Lease(_)
                | Error::NotApplicable { .. }
                | Error::NoNamespace(_)
                | Error::HostIpNotLocal(_)
                | Error::Subnet(_)
                | Error::Overlay(_)
                | Error::NoFreeHostPort(_)
                | Error::NoFreeSlot
                | Error::TooManyPorts { .. }
                | Error::BadSource(_)
                | Error::HostnameOfHost
        )
    }

    /// Whether the request names something that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::EndpointNotFound(_) | Error::NetworkNotFound(_) | Error::PortNotPublished { .. }
        )
    }

    /// Whether the request conflicts with existing state.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::EndpointExists(_)
                | Error::NetworkExists { .. }
                | Error::NetworkNameReserved(_)
                | Error::NetworkInUse { .. }
                | Error::PortInUse { .. }
                | Error::HostPortInUse { .. }
                | Error::Foreign(_)
                | Error::HasDependents { .. }
                | Error::AliasIsName { .. }
                | Error::MacInUse { .. }
        ) || matches!(
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

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
