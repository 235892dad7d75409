//! What the daemon tells the programs about the host: the bridge, the
//! uplink and its address, the flags of `up`, and the other networks.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use netplane_common::abi::{MAX_NETWORKS, NetConfig, NetworkPolicy};

#[map(name = "NP_NET_CONFIG")]
pub(crate) static NET_CONFIG: Array<NetConfig> = Array::pinned(1, 0);

#[map(name = "NP_NETWORKS")]
pub(crate) static NETWORKS: HashMap<u32, NetworkPolicy> = HashMap::pinned(MAX_NETWORKS, 0);

/// The policy of network `id` (0: the bridge network).
#[inline(always)]
pub(crate) fn network(cfg: &NetConfig, id: u32) -> NetworkPolicy {
    if id == 0 {
        return cfg.policy();
    }
    // SAFETY: a map value, copied out.
    unsafe { NETWORKS.get(&id).copied() }.unwrap_or(NetworkPolicy::UNKNOWN)
}
