//! The only modules that touch the kernel: namespaces, netlink, sysctls,
//! mounts and the eBPF data path.

mod bpf;
pub mod datapath;
mod error;
pub mod exec;
pub mod host;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod pins;
pub mod ports;
pub mod splice;
pub mod tables;
pub mod wildcard;

pub use error::{Error, Result};
