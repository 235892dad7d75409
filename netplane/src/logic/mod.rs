//! Pure decisions, with unit tests and no kernel in reach: each module
//! takes plain values and returns plain values.

pub mod conntrack;
pub mod discovery;
pub mod dns;
pub mod endpoint;
mod error;
pub mod firewall;
pub mod forwarding;
pub mod ipam;
pub mod layout;
pub mod monitor;
pub mod network;
pub mod overlay;
pub mod portspec;

pub use error::Error;
