//! The daemon's REST API on its unix socket: the server and the client
//! every subcommand but `up` uses.

pub mod client;
pub mod server;
