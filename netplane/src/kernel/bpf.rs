//! The one door for raw bpf(2) calls, where aya offers none: batch
//! operations on maps and updating a pinned link. Everything else goes
//! through aya.

use std::{
    os::fd::{AsRawFd, BorrowedFd, FromRawFd},
    path::Path,
};

use aya_obj::generated::{bpf_attr, bpf_cmd};

/// Entries [`lookup_all`] reads per system call.
const DUMP_BATCH: usize = 4096;

/// Every entry of the hash map behind `fd` (not a per-CPU one), read with
/// BPF_MAP_LOOKUP_BATCH: a system call per few thousand entries, where
/// walking the keys takes two per entry.
///
/// # Safety
/// `K` and `V` must have the map's key and value sizes.
pub(super) unsafe fn lookup_all<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
) -> std::io::Result<Vec<(K, V)>> {
    let mut entries = Vec::new();
    // SAFETY: K and V are plain data, for which zero bytes are a value.
    let (zero_key, zero_value): (K, V) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    let mut keys = vec![zero_key; DUMP_BATCH];
    let mut values = vec![zero_value; DUMP_BATCH];
    // Where the kernel stopped: a bucket index for hash maps. None
    // before the first call.
    let mut resume: Option<u64> = None;
    loop {
        let mut stopped_at: u64 = 0;
        // SAFETY: bpf_attr is plain data; zero is what the kernel wants
        // in every field a command does not use.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: `batch` is the member the batch commands read.
        let batch = unsafe { &mut attr.batch };
        batch.map_fd = fd.as_raw_fd() as u32;
        batch.in_batch = resume.as_ref().map_or(0, |at| at as *const u64 as u64);
        batch.out_batch = &raw mut stopped_at as u64;
        batch.keys = keys.as_mut_ptr() as u64;
        batch.values = values.as_mut_ptr() as u64;
        batch.count = u32::try_from(keys.len()).unwrap_or(u32::MAX);
        // SAFETY: the kernel writes at most `count` keys and values of
        // the map's sizes, which K and V are, into buffers of that many,
        // and its position into `stopped_at`; all outlive the call.
        let result = unsafe { bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) };
        // SAFETY: as above; the kernel wrote back how many it read.
        let read = unsafe { attr.batch.count } as usize;
        entries.extend(keys.iter().copied().zip(values.iter().copied()).take(read));
        match result {
            Ok(_) => resume = Some(stopped_at),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(entries),
            // A bucket holds more entries than the buffers do.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && read == 0 => {
                keys.resize(2 * keys.len(), zero_key);
                values.resize(2 * values.len(), zero_value);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Swaps `prog` into the link pinned at `pin` (BPF_LINK_UPDATE): hooks
/// never run without a program, nor with two.
pub(super) fn update_pinned_link(pin: &Path, prog: BorrowedFd<'_>) -> std::io::Result<()> {
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())?;
    // SAFETY: bpf_attr is plain data; zero is what the kernel wants in
    // every field a command does not use.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    // SAFETY: the kernel reads the path, which outlives the call.
    let link = unsafe { bpf(bpf_cmd::BPF_OBJ_GET, &mut attr) }?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor, owned from here on.
    let link = unsafe { std::os::fd::OwnedFd::from_raw_fd(link as i32) };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.link_update.link_fd = link.as_raw_fd() as u32;
    attr.link_update.__bindgen_anon_1.new_prog_fd = prog.as_raw_fd() as u32;
    // SAFETY: the kernel reads two descriptors that stay open meanwhile.
    unsafe { bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr) }.map(drop)
}

/// The bpf(2) system call with `cmd` on `attr`.
///
/// # Safety
/// Whatever `attr` points at for `cmd` must be valid for the call.
unsafe fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<i64> {
    // SAFETY: the caller's.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// One BPF_MAP_UPDATE_BATCH or BPF_MAP_DELETE_BATCH call on the map behind
/// `fd`, with `values` for an update: how many elements the kernel got
/// through, and the error that stopped it.
///
/// # Safety
/// `K` and `V` must have the map's key and value sizes.
pub(super) unsafe fn map_batch<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    cmd: bpf_cmd,
    keys: &[K],
    values: Option<&[V]>,
) -> (usize, std::io::Result<()>) {
    if keys.is_empty() {
        return (0, Ok(()));
    }
    // SAFETY: bpf_attr is plain data; zero is what the kernel wants in
    // every field a command does not use.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: `batch` is the member the batch commands read.
    let batch = unsafe { &mut attr.batch };
    batch.map_fd = fd.as_raw_fd() as u32;
    batch.keys = keys.as_ptr() as u64;
    batch.values = values.map_or(0, |v| v.as_ptr() as u64);
    batch.count = u32::try_from(keys.len()).unwrap_or(u32::MAX);
    // SAFETY: the kernel reads `count` keys (and values) of the map's sizes,
    // which K and V are, from slices that outlive the call, and writes only
    // `attr`.
    let result = unsafe { bpf(cmd, &mut attr) }.map(drop);
    // SAFETY: as above; the kernel wrote back how many it did.
    let done = unsafe { attr.batch.count } as usize;
    (done, result)
}

/// Deletes `keys` from the hash map behind `fd` with BPF_MAP_DELETE_BATCH;
/// absent keys are fine. The kernel stops at the first absent key and says
/// how many it did: carry on after it.
///
/// # Safety
/// `K` must have the map's key size.
pub(super) unsafe fn delete_keys<K: aya::Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
) -> std::io::Result<()> {
    let mut rest = keys;
    while !rest.is_empty() {
        // SAFETY: the caller's; a delete passes no values.
        match unsafe { map_batch::<K, K>(fd, bpf_cmd::BPF_MAP_DELETE_BATCH, rest, None) } {
            (_, Ok(())) => break,
            (done, Err(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                rest = &rest[done + 1..];
            }
            (_, Err(e)) => return Err(e),
        }
    }
    Ok(())
}
