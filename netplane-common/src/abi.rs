//! Map names and the types stored in them.

/// Names of the maps, as declared in the eBPF object and pinned in bpffs.
pub mod maps {
    /// [`super::NetConfig`] at index 0: the bridge network the programs serve.
    pub const NET_CONFIG: &str = "NP_NET_CONFIG";
    /// Per-CPU [`super::IfCounters`] keyed by [`super::IfStatsKey`].
    pub const IF_STATS: &str = "NP_IF_STATS";
    /// Per-CPU `u64` drop counts indexed by [`super::DropReason`].
    pub const DROPS: &str = "NP_DROPS";
}

/// Names of the programs in the eBPF object.
pub mod programs {
    /// tc ingress of an endpoint's host-side veth (traffic the endpoint sends).
    pub const ENDPOINT_INGRESS: &str = "np_endpoint_ingress";
    /// tc ingress of the uplink and the bridge: counts.
    pub const COUNT_INGRESS: &str = "np_count_ingress";
    /// tc egress of the uplink and the bridge: counts.
    pub const COUNT_EGRESS: &str = "np_count_egress";
}

/// Capacity of [`maps::IF_STATS`]: two directions for this many interfaces.
pub const MAX_INTERFACES: u32 = 4096;

/// Bit in [`NetConfig::flags`]: endpoints of the bridge may not talk to each
/// other (Docker's `--icc=false`).
pub const NET_FLAG_ICC_DISABLED: u32 = 1 << 0;

/// The bridge network as the data path sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// Network address of the bridge subnet, network byte order.
    pub subnet_be: u32,
    /// Netmask of the bridge subnet, network byte order.
    pub mask_be: u32,
    /// The bridge's own address (the endpoints' gateway), network byte order.
    pub gateway_be: u32,
    /// `NET_FLAG_*` bits, host byte order.
    pub flags: u32,
}

/// Direction of a counted packet, relative to the interface it crossed.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Received by the interface (tc ingress).
    Ingress = 0,
    /// Sent by the interface (tc egress).
    Egress = 1,
}

/// Key of [`maps::IF_STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IfStatsKey {
    /// Interface index in the daemon's network namespace, host byte order.
    pub ifindex: u32,
    /// A [`Direction`] as `u32`, host byte order.
    pub direction: u32,
}

/// Value of [`maps::IF_STATS`], one per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfCounters {
    /// Packets seen, host byte order.
    pub packets: u64,
    /// Bytes seen (skb length, L2 header included), host byte order.
    pub bytes: u64,
}

/// Why a program dropped a packet: the index into [`maps::DROPS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Endpoint to endpoint traffic on a bridge with `--icc=false`.
    IccDenied = 0,
}

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [DropReason; 1] = [DropReason::IccDenied];

    /// Stable name, used in metrics and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::IccDenied => "icc_denied",
        }
    }
}

/// Capacity of [`maps::DROPS`].
pub const DROP_REASONS: u32 = DropReason::ALL.len() as u32;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers with no implicit padding.
    unsafe impl aya::Pod for super::NetConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IfStatsKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IfCounters {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn map_types_have_no_implicit_padding() {
        assert_eq!(size_of::<NetConfig>(), 16);
        assert_eq!(size_of::<IfStatsKey>(), 8);
        assert_eq!(size_of::<IfCounters>(), 16);
    }

    #[test]
    fn drop_reasons_are_indexed_in_order() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
    }
}
