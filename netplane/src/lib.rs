//! netplane: a container network data plane for one Linux host.
//!
//! The pure core (address management, `-p` parsing, endpoint plans) is
//! separate from the few modules under [`sys`] that talk to the kernel.

pub mod api;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod conntrack;
pub mod daemon;
pub mod dns;
pub mod endpoint;
pub mod error;
pub mod ipam;
pub mod layout;
pub mod metrics;
pub mod monitor;
pub mod overlay;
pub mod portspec;
pub mod relay;
pub mod resolver;
pub mod server;
pub mod store;
pub mod sys;
