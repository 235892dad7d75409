//! [`maps::PUBLISHED_ANY`] mapped into the daemon's memory: the array is
//! created with BPF_F_MMAPABLE, so publishing a port on every host address
//! is a store into shared memory rather than a system call per port.

use std::{
    ffi::c_void,
    num::NonZeroUsize,
    os::fd::BorrowedFd,
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use netplane_common::abi::{PUBLISHED_ANY_ENTRIES, PortTarget, maps};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use super::error::{Error, Result};

/// Bytes between array elements: the kernel rounds values up to 8.
const STRIDE: usize = std::mem::size_of::<PortTarget>().next_multiple_of(8);

/// The wildcard published-port array, mapped shared and writable.
#[derive(Debug)]
pub struct WildcardPorts {
    base: NonNull<c_void>,
    len: NonZeroUsize,
}

// SAFETY: the mapping is owned by this value alone; the kernel's readers
// are the programs, whose view `set` keeps consistent.
unsafe impl Send for WildcardPorts {}

impl WildcardPorts {
    /// Maps the array behind `fd`.
    pub fn map(fd: BorrowedFd<'_>) -> Result<Self> {
        let len = NonZeroUsize::new(PUBLISHED_ANY_ENTRIES as usize * STRIDE)
            .expect("the array has entries");
        // SAFETY: a new shared mapping of a BPF array fd, which the kernel
        // sizes to its elements; nothing else in this process aliases it.
        let base = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .map_err(|e| Error::io("mmap", maps::PUBLISHED_ANY, e))?;
        Ok(WildcardPorts { base, len })
    }

    /// Sets element `index` to `target`, or empties it when the target's
    /// address is 0. The address is what says an element is in use, so it
    /// is written last when filling and first when emptying, each time as
    /// one atomic store: a program reading concurrently sees the element
    /// empty or whole. Elements go from empty to full and back, never from
    /// one target to another: the control plane refuses a port in use.
    pub fn set(&mut self, index: u32, target: PortTarget) {
        assert!(
            index < PUBLISHED_ANY_ENTRIES,
            "port index {index} out of range"
        );
        // SAFETY: in bounds (checked above), aligned to 8, and PortTarget
        // is plain data.
        let elem =
            unsafe { self.base.as_ptr().byte_add(index as usize * STRIDE) }.cast::<PortTarget>();
        // SAFETY: `addr_be` is the element's first, aligned u32.
        let addr = unsafe { AtomicU32::from_ptr(&raw mut (*elem).addr_be) };
        if target.addr_be == 0 {
            addr.store(0, Ordering::Release);
            return;
        }
        // SAFETY: as above; plain stores to the element's other fields.
        unsafe {
            (&raw mut (*elem).port_be).write_volatile(target.port_be);
            (&raw mut (*elem).flags).write_volatile(target.flags);
            (&raw mut (*elem).slot).write_volatile(target.slot);
        }
        addr.store(target.addr_be, Ordering::Release);
    }
}

impl Drop for WildcardPorts {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        let _ = unsafe { munmap(self.base, self.len.get()) };
    }
}
