//! The contract between netplane's eBPF programs and its control plane.
//!
//! Everything here is `no_std` and shared by both sides: map names, the
//! `#[repr(C)]` key and value types stored in those maps (explicit padding,
//! byte order stated per field), and the small pure functions the kernel
//! programs run, so that they can be unit-tested on the host.
#![no_std]

pub mod abi;
pub mod gre;
pub mod nat;
pub mod packet;
pub mod policy;
pub mod vxlan;
