//! Named network namespaces in the iproute2 convention (/run/netns/NAME),
//! and running code inside one.

use std::{
    fs::{self, File, OpenOptions},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

use super::error::{Error, Result};

pub use crate::logic::endpoint::NETNS_RUN_DIR;
/// Where iproute2 keeps per-namespace /etc overrides.
pub const NETNS_ETC_DIR: &str = "/etc/netns";

pub use crate::logic::endpoint::named_netns as path;

/// Opens a namespace file (a named one, or /proc/PID/ns/net).
pub fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io("open network namespace", path.display(), e))
}

/// Whether `path` names a live namespace (a bind-mounted nsfs file).
pub fn is_mounted(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Makes /run/netns a shared mount, as `ip netns add` does, so namespaces
/// named here are seen by every mount namespace that shares it.
fn prepare_run_dir() -> Result<()> {
    let dir = Path::new(NETNS_RUN_DIR);
    fs::create_dir_all(dir).map_err(|e| Error::io("create", dir.display(), e))?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::io("bind-mount", dir.display(), e))?;
            shared().map_err(|e| Error::io("make shared", dir.display(), e))
        }
        Err(e) => Err(Error::io("make shared", dir.display(), e)),
    }
}

/// Creates the empty file /run/netns/NAME that a namespace gets bound to;
/// fails if the name is taken.
fn reserve(name: &str) -> Result<PathBuf> {
    prepare_run_dir()?;
    let target = path(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)
        .map_err(|e| Error::io("create network namespace", target.display(), e))?;
    Ok(target)
}

/// Creates the named namespace `name`; fails if the name is taken.
pub fn create(name: &str) -> Result<PathBuf> {
    let target = reserve(name)?;
    let t = target.clone();
    let bound = std::thread::spawn(move || -> nix::Result<()> {
        // unshare moves only this short-lived thread into the new namespace.
        unshare(CloneFlags::CLONE_NEWNET)?;
        disable_ipv6_of_new_links()?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &t,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    })
    .join()
    .expect("netns thread panicked");
    if let Err(e) = bound {
        let _ = fs::remove_file(&target);
        return Err(Error::io("create network namespace", target.display(), e));
    }
    Ok(target)
}

/// IPv6 off for every interface made in the calling thread's namespace
/// from now on (its `lo` keeps `::1`), as Docker does on networks without
/// IPv6: the data path checks only IPv4 and ARP from endpoints, and drops
/// the rest. A kernel without IPv6 has nothing to turn off.
fn disable_ipv6_of_new_links() -> nix::Result<()> {
    match fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Errno::from_raw(e.raw_os_error().unwrap_or(0))),
    }
}

/// IPv6 on or off on interface `ifname` of namespace `ns`, before it
/// goes up: on for an interface on a dual-stack network; off otherwise,
/// as Docker has it, also in a container runtime's namespace, which keeps
/// the kernel's default (on), where the interface would send router
/// solicitations and neighbour discovery the data path drops.
pub fn set_ipv6(ns: &File, ifname: &str, on: bool) -> Result<()> {
    let knob = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    let value = if on { "0" } else { "1" };
    match run_in(ns, {
        let knob = knob.clone();
        move || fs::write(knob, value)
    })? {
        Ok(()) => Ok(()),
        // A kernel without IPv6 has nothing to turn off.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !on => Ok(()),
        Err(e) => Err(Error::io("write", knob, e)),
    }
}

/// Turns GRO on for interface `ifname` of namespace `ns` (ethtool's
/// `-K gro on`): a veth whose peer has GRO on receives through NAPI, and
/// only then takes the frames the uplink's XDP program redirects to it as
/// they are; without, it drops them.
pub fn enable_gro(ns: &File, ifname: &str) -> Result<()> {
    /// `struct ethtool_value` of `<linux/ethtool.h>`.
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const ETHTOOL_SGRO: u32 = 0x2c;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let name = ifname.to_string();
    run_in(ns, move || -> std::io::Result<()> {
        let mut value = EthtoolValue {
            cmd: ETHTOOL_SGRO,
            data: 1,
        };
        // SAFETY: an all-zero ifreq is valid; its name and data pointer
        // are set below.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req
            .ifr_name
            .iter_mut()
            .zip(name.bytes().take(libc::IFNAMSIZ - 1))
        {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_data = (&raw mut value).cast();
        // SAFETY: a datagram socket for the ioctl, closed on drop.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `sock` is a socket this thread owns.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        // SAFETY: SIOCETHTOOL reads `req` and the `value` it points at,
        // both alive for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &raw mut req) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    })?
    .map_err(|e| Error::io("turn GRO on for", ifname, e))
}

/// Names the namespace of `from` as `name` too.
pub fn share(name: &str, from: &Path) -> Result<PathBuf> {
    if !is_mounted(from) {
        return Err(Error::io(
            "share network namespace",
            from.display(),
            Errno::ENOENT,
        ));
    }
    let target = reserve(name)?;
    if let Err(e) = mount(
        Some(from),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = fs::remove_file(&target);
        return Err(Error::io("bind network namespace", target.display(), e));
    }
    Ok(target)
}

/// Removes the name `name`; the namespace goes when nothing else holds it.
/// Removing a name that does not exist succeeds.
pub fn delete(name: &str) -> Result<()> {
    let target = path(name);
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(Error::io("unmount network namespace", target.display(), e)),
    }
    match fs::remove_file(&target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", target.display(), e)),
    }
}

/// A process, as removing an endpoint reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Process id.
    pub pid: i32,
    /// Its command name (/proc/PID/comm).
    pub comm: String,
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.comm, self.pid)
    }
}

/// The processes whose network namespace is the one named at `path`.
fn processes_in(path: &Path) -> Result<Vec<Process>> {
    use std::os::unix::fs::MetadataExt;
    let ns = fs::metadata(path).map_err(|e| Error::io("stat", path.display(), e))?;
    let procs = fs::read_dir("/proc").map_err(|e| Error::io("list", "/proc", e))?;
    Ok(procs
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // Gone since the listing, or a kernel thread: not in it.
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.dev() == ns.dev() && m.ino() == ns.ino())
        })
        .map(|pid| Process {
            pid,
            comm: fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end().to_string())
                .unwrap_or_default(),
        })
        .collect())
}

/// Kills every process in the namespace named `name`, as removing a
/// container does, so that none is left in a namespace nobody can name;
/// returns them. Rounds of SIGKILL catch children forked meanwhile.
pub fn kill_all(name: &str) -> Result<Vec<Process>> {
    let target = path(name);
    if !is_mounted(&target) {
        return Ok(Vec::new());
    }
    let mut killed: Vec<Process> = Vec::new();
    for _ in 0..50 {
        let left = processes_in(&target)?;
        if left.is_empty() {
            return Ok(killed);
        }
        for p in left {
            let pid = nix::unistd::Pid::from_raw(p.pid);
            match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => return Err(Error::io("kill", &p, e)),
            }
            if !killed.contains(&p) {
                killed.push(p);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(Error::io(
        "kill the processes in",
        target.display(),
        Errno::EBUSY,
    ))
}

/// Runs `f` on a thread that has entered the namespace `ns`. Sockets `f`
/// opens stay in that namespace after the thread is gone.
pub fn run_in<T: Send + 'static>(ns: &File, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let fd = ns
        .try_clone()
        .map_err(|e| Error::io("dup namespace fd", "netns", e))?;
    std::thread::spawn(move || -> Result<T> {
        setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("enter network namespace", "netns", e))?;
        Ok(f())
    })
    .join()
    .expect("netns thread panicked")
}
