//! netplane: a container network data plane for one Linux host.
//!
//! Layers, each importing only those below it:
//! - [`types`]: what the API, the client and the CLI exchange;
//! - [`logic`]: pure decisions (addresses, `-p` specs, endpoint plans,
//!   overlay leases, flow lifetimes, DNS answers, event decoding);
//! - [`kernel`]: the only modules that touch the kernel (netlink, bpf(2),
//!   namespaces, sysctls, mounts);
//! - [`daemon`]: the use cases, with the state store, the cluster store,
//!   the embedded DNS server, the event relay and metrics;
//! - [`api`]: the REST server and its client;
//! - [`cli`]: the command line;
//! - [`cni`]: the CNI plugin, the API's other client.

#![deny(unsafe_code)]

pub mod api;
pub mod cli;
pub mod cni;
pub mod daemon;
#[allow(
    unsafe_code,
    reason = "the kernel layer alone makes system calls libc and aya leave unsafe, and reads \
              the programs' plain-integer records; each use says why it is sound"
)]
pub mod kernel;
pub mod logic;
pub mod types;
