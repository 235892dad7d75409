//! What the daemon tells the programs about the host: the bridge, the
//! uplink and its address, the flags of `up`.

use aya_ebpf::{macros::map, maps::Array};
use netplane_common::abi::NetConfig;

#[map(name = "NP_NET_CONFIG")]
pub(crate) static NET_CONFIG: Array<NetConfig> = Array::pinned(1, 0);
