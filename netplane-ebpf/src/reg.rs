//! Results of out-of-line functions, carried in one register.
//!
//! A BPF function that returns an aggregate does so through memory and may
//! leave a pointer to its stack in r0, which the verifier refuses at the
//! exit of a subprogram. The functions kept out of line (for the stack
//! limit) therefore return an [`InReg`]: a `u64` with a tag in bits 32..40.

use core::marker::PhantomData;

use netplane_common::abi::DropReason;

const TAG_SHIFT: u32 = 32;
const OK: u64 = 0;
const ERR: u64 = 1;
const NONE: u64 = 2;
/// For a route: the neighbour is resolved.
const RESOLVED: u64 = 1 << 40;

/// A value of `T` packed into a register.
#[repr(transparent)]
pub struct InReg<T>(u64, PhantomData<T>);

/// What can travel in an [`InReg`].
pub trait Packed: Sized {
    fn pack(self) -> u64;
    fn unpack(bits: u64) -> Self;
}

impl<T: Packed> InReg<T> {
    #[inline(always)]
    pub fn new(v: T) -> Self {
        InReg(v.pack(), PhantomData)
    }

    #[inline(always)]
    pub fn get(self) -> T {
        T::unpack(self.0)
    }
}

#[inline(always)]
fn tag(bits: u64) -> u64 {
    (bits >> TAG_SHIFT) & 0xff
}

#[inline(always)]
fn err(reason: DropReason) -> u64 {
    (ERR << TAG_SHIFT) | reason as u64
}

#[inline(always)]
fn reason(bits: u64) -> DropReason {
    DropReason::ALL
        .get(bits as u32 as usize)
        .copied()
        .unwrap_or(DropReason::Truncated)
}

impl Packed for Result<i32, DropReason> {
    #[inline(always)]
    fn pack(self) -> u64 {
        match self {
            Ok(v) => u64::from(v as u32),
            Err(r) => err(r),
        }
    }

    #[inline(always)]
    fn unpack(bits: u64) -> Self {
        match tag(bits) {
            OK => Ok(bits as u32 as i32),
            _ => Err(reason(bits)),
        }
    }
}

impl Packed for Result<Option<i32>, DropReason> {
    #[inline(always)]
    fn pack(self) -> u64 {
        match self {
            Ok(Some(v)) => u64::from(v as u32),
            Ok(None) => NONE << TAG_SHIFT,
            Err(r) => err(r),
        }
    }

    #[inline(always)]
    fn unpack(bits: u64) -> Self {
        match tag(bits) {
            OK => Ok(Some(bits as u32 as i32)),
            NONE => Ok(None),
            _ => Err(reason(bits)),
        }
    }
}

impl Packed for Result<(), DropReason> {
    #[inline(always)]
    fn pack(self) -> u64 {
        match self {
            Ok(()) => OK,
            Err(r) => err(r),
        }
    }

    #[inline(always)]
    fn unpack(bits: u64) -> Self {
        match tag(bits) {
            OK => Ok(()),
            _ => Err(reason(bits)),
        }
    }
}

/// The device a packet leaves by, and whether its neighbour is resolved
/// (the MACs are then in the FIB request's per-CPU map value).
#[derive(Clone, Copy)]
pub struct Route {
    pub ifindex: u32,
    pub resolved: bool,
}

impl Packed for Result<Route, DropReason> {
    #[inline(always)]
    fn pack(self) -> u64 {
        match self {
            Ok(r) => u64::from(r.ifindex) | if r.resolved { RESOLVED } else { 0 },
            Err(r) => err(r),
        }
    }

    #[inline(always)]
    fn unpack(bits: u64) -> Self {
        match tag(bits) {
            OK => Ok(Route {
                ifindex: bits as u32,
                resolved: bits & RESOLVED != 0,
            }),
            _ => Err(reason(bits)),
        }
    }
}
