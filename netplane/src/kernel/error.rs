//! What went wrong touching the kernel: each names the operation and the
//! object.

use std::{io, net::IpAddr, path::PathBuf};

/// A failed kernel operation, by kind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// An interface that must exist does not.
    #[error("interface {0} not found")]
    InterfaceNotFound(String),
    /// Something netplane would make or change exists and is not netplane's.
    #[error("{0} already exists and is not managed by this netplane")]
    Foreign(String),
    /// Another daemon manages this network namespace.
    #[error("a netplane daemon already runs in this network namespace")]
    AlreadyRunning,
    /// A host port to publish is used by a socket of the host itself.
    #[error("host port {port}/{proto} on {ip} is already in use on the host by {user}")]
    HostPortInUse {
        /// Host port.
        port: u16,
        /// Protocol.
        proto: String,
        /// Host address (0.0.0.0 for all).
        ip: IpAddr,
        /// The process holding it ("NAME (pid N)"), or "a socket".
        user: String,
    },
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
        dir: PathBuf,
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
        dir: PathBuf,
        /// The version stamped on them.
        found: u32,
        /// This build's [`netplane_common::abi::LAYOUT_VERSION`].
        want: u32,
        /// "a newer" or "an older".
        pinned_by: &'static str,
    },
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

    /// Whether what the request asked for is in the way of what exists.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::HostPortInUse { .. } | Error::Foreign(_))
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
