//! Host files the daemon reads and writes: sysctls, bpffs, /etc/netns, and
//! the per-namespace daemon lock.

use std::{
    fs,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::netns::NETNS_ETC_DIR;
use crate::{
    kernel::{Error, Result},
    logic::portspec::PortRange,
};

/// IPv4 forwarding of the caller's network namespace.
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// Reads a sysctl (of the caller's network namespace, for net.*).
pub fn read_sysctl(path: &str) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io("read", path, e))
}

/// Writes a sysctl.
pub fn write_sysctl(path: &str, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| Error::io("write", path, e))
}

/// Turns IPv6 forwarding on for interface `ifname` (not for the host as a
/// whole, which would stop it taking router advertisements). A kernel
/// without IPv6 has nothing to turn on.
pub fn enable_ipv6_forwarding(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/forwarding");
    if !Path::new(&path).exists() {
        return Ok(());
    }
    write_sysctl(&path, "1")
}

/// The host's ephemeral port range, from which `-p CPORT` picks host ports.
pub fn ephemeral_ports() -> Result<PortRange> {
    let s = read_sysctl(LOCAL_PORT_RANGE)?;
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(start)), Some(Ok(end))) if start > 0 && start <= end => {
            Ok(PortRange { start, end })
        }
        _ => Err(Error::io(
            "parse",
            LOCAL_PORT_RANGE,
            std::io::Error::other(s),
        )),
    }
}

/// How long `up` waits for the lock of a daemon that is going away.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Holds the abstract socket that marks this network namespace as managed.
/// Abstract unix sockets live in the network namespace, and the kernel frees
/// the name when the daemon dies, however it dies: shortly after, since a
/// killed process's files are closed by a kernel worker (8 to 50 ms measured
/// after `kill -9`).
#[derive(Debug)]
pub struct DaemonLock(#[allow(dead_code, reason = "held for its name")] UnixListener);

impl DaemonLock {
    /// Takes the lock, or fails if another daemon still holds it after
    /// `LOCK_WAIT`: one killed just before lets go within it.
    pub fn acquire() -> Result<Self> {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(b"netplane-daemon")
            .map_err(|e| Error::io("name", "daemon lock", e))?;
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match UnixListener::bind_addr(&addr) {
                Ok(l) => return Ok(DaemonLock(l)),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    if std::time::Instant::now() >= deadline {
                        return Err(Error::AlreadyRunning);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(Error::io("bind", "daemon lock", e)),
            }
        }
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Makes `dir` a directory on a bpffs: inside an existing one, or by mounting
/// one there. Returns the mount point it created, if it did.
pub fn ensure_bpffs(dir: &Path) -> Result<Option<PathBuf>> {
    if is_bpffs(dir) {
        return Ok(None);
    }
    if dir.parent().is_some_and(is_bpffs) {
        fs::create_dir_all(dir).map_err(|e| Error::io("create", dir.display(), e))?;
        return Ok(None);
    }
    // /sys/fs/bpf/NAME: sysfs allows no new directories, so mount the
    // standard bpffs at /sys/fs/bpf first.
    let mount_point = match dir.parent() {
        Some(parent) if fs::create_dir_all(dir).is_err() && parent.exists() => parent.to_path_buf(),
        _ => dir.to_path_buf(),
    };
    mount(
        Some("bpffs"),
        &mount_point,
        Some("bpf"),
        MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|e| Error::io("mount bpffs on", mount_point.display(), e))?;
    fs::create_dir_all(dir).map_err(|e| Error::io("create", dir.display(), e))?;
    Ok(Some(mount_point))
}

/// Unmounts a bpffs that [`ensure_bpffs`] mounted.
pub fn unmount_bpffs(mount_point: &Path) -> Result<()> {
    umount2(mount_point, MntFlags::MNT_DETACH)
        .map_err(|e| Error::io("unmount bpffs", mount_point.display(), e))
}

/// /etc/netns/NAME.
/// Where the unified (v2) cgroup hierarchy is mounted: the socket programs
/// attach to its root, covering every process.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts")
        .map_err(|e| Error::io("read", "/proc/self/mounts", e))?;
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .ok_or_else(|| {
            Error::io(
                "find",
                "a cgroup2 mount",
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "host-local access to published ports needs the unified cgroup hierarchy mounted",
                ),
            )
        })
}

/// The cookie of the current network namespace, as `bpf_get_netns_cookie`
/// returns it to programs.
pub fn netns_cookie() -> Result<u64> {
    use std::os::fd::AsRawFd;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .map_err(|e| Error::io("open", "socket for the netns cookie", e))?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of the length passed.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(Error::io(
            "read",
            "SO_NETNS_COOKIE",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(cookie)
}

pub fn etc_dir(name: &str) -> PathBuf {
    Path::new(NETNS_ETC_DIR).join(name)
}

/// Writes /etc/netns/NAME/{hosts,resolv.conf}.
pub fn write_etc_files(name: &str, hosts: &str, resolv: &str) -> Result<()> {
    let dir = etc_dir(name);
    fs::create_dir_all(&dir).map_err(|e| Error::io("create", dir.display(), e))?;
    for (file, contents) in [(ETC_FILES[0], hosts), (ETC_FILES[1], resolv)] {
        let path = dir.join(file);
        fs::write(&path, contents).map_err(|e| Error::io("write", path.display(), e))?;
    }
    Ok(())
}

/// The files of /etc/netns/NAME that netplane writes.
const ETC_FILES: [&str; 2] = ["hosts", "resolv.conf"];

/// Removes the files netplane wrote in /etc/netns/NAME, and the directory
/// if nothing else is left in it: files a user put there stay. Missing
/// ones are fine.
pub fn remove_etc_files(name: &str) -> Result<()> {
    let dir = etc_dir(name);
    for file in ETC_FILES {
        let path = dir.join(file);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", path.display(), e)),
        }
    }
    match fs::remove_dir(&dir) {
        Ok(()) => Ok(()),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::DirectoryNotEmpty =>
        {
            Ok(())
        }
        Err(e) => Err(Error::io("remove", dir.display(), e)),
    }
}

/// The host's resolv.conf, empty if there is none.
pub fn host_resolv_conf() -> String {
    fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
}
