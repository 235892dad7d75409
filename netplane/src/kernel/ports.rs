//! Published host ports held by sockets of the daemon's own, bound but
//! never listening or read: while netplane runs, no host process can bind
//! a published port, and the kernel never picks one as the ephemeral
//! source port of a host connection (whose replies the data path would
//! otherwise send into the container). Binding is also how a port that a
//! host socket already uses is found.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd},
};

use nix::{
    errno::Errno,
    sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, setsockopt, socket, sockopt,
    },
};

use crate::{
    kernel::{Error, Result},
    logic::{
        forwarding::{self, Held},
        portspec::{Proto, PublishedPort},
    },
};

/// One host port of one protocol on what its socket binds.
type Key = (Held, u16, Proto);

/// The sockets holding published ports, closed when released or dropped,
/// and the ports whose socket the forwarder took over to listen on.
#[derive(Debug, Default)]
pub struct Reservations {
    held: HashMap<Key, OwnedFd>,
    lent: HashSet<Key>,
}

impl Reservations {
    /// Holds every host port of `ports`, or none of those it took in this
    /// call: the error names the first port a host socket uses, and the
    /// process owning it when one is found. Ports `shared` with a container
    /// runtime are held with SO_REUSEADDR, so that the runtime's own
    /// listener on them (Podman's) binds beside the daemon's socket; a
    /// host process still cannot take them from it. (See
    /// [`forwarding::held`] for the sockets a rule takes.)
    pub fn reserve(&mut self, ports: &[PublishedPort], shared: bool, ipv6: bool) -> Result<()> {
        let mut taken = Vec::new();
        for key in ports.iter().flat_map(|p| keys(p, ipv6, shared)) {
            if self.held.contains_key(&key) || self.lent.contains(&key) {
                continue;
            }
            match hold(key, shared) {
                Ok(fd) => {
                    self.held.insert(key, fd);
                    taken.push(key);
                }
                Err(e) => {
                    for k in taken {
                        self.held.remove(&k);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Lets the host ports of `ports` go.
    /// (The forwarder closes the sockets it took, when it stops serving
    /// them.)
    pub fn release(&mut self, ports: &[PublishedPort]) {
        for shared in [false, true] {
            for key in ports.iter().flat_map(|p| keys(p, true, shared)) {
                self.held.remove(&key);
                self.lent.remove(&key);
            }
        }
    }

    /// The socket holding `port` on `on`, handed to the forwarder to listen
    /// on: the port stays held by that same socket, now the forwarder's.
    pub fn lend(&mut self, on: Held, port: u16, proto: Proto) -> Result<OwnedFd> {
        let key = (on, port, proto);
        let fd = self.held.remove(&key).ok_or_else(|| {
            Error::io(
                "find the socket holding",
                SocketAddr::new(on.addr(), port),
                Errno::ENOENT,
            )
        })?;
        if proto == Proto::Tcp {
            // The connections it accepts inherit it: once closed, their
            // TIME_WAIT lets the next run hold the port again (see `hold`).
            // Listening, the socket still keeps every other bind out.
            setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| {
                Error::io("set SO_REUSEADDR on", SocketAddr::new(on.addr(), port), e)
            })?;
        }
        self.lent.insert(key);
        Ok(fd)
    }
}

/// Raises this process's limit of open files as far as it may: every
/// published host port is a held socket (two for a dual-stack endpoint),
/// and a soft limit of 1,024 (a service manager's default) would refuse
/// ports past about a thousand. With CAP_SYS_RESOURCE the hard limit goes
/// up to the kernel's `fs.nr_open` too, as Docker's unit file
/// (`LimitNOFILE=infinity`) has it; without, to the hard limit.
pub fn allow_held_ports() -> Result<()> {
    let nr_open = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok());
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit, which `limit` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(Error::io(
            "read the open files limit",
            "RLIMIT_NOFILE",
            std::io::Error::last_os_error(),
        ));
    }
    if let Some(most) = nr_open.filter(|n| *n > limit.rlim_max) {
        let raised = libc::rlimit {
            rlim_cur: most,
            rlim_max: most,
        };
        // SAFETY: setrlimit reads one rlimit, which `raised` is.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(());
        }
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads one rlimit, which `limit` is.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(Error::io(
                "raise the open files limit",
                "RLIMIT_NOFILE",
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Checks that no host socket uses a host port of `port` (on `::` too for
/// a rule on every address), without holding it: `-p` refuses such a
/// port, and picks another for `-p CPORT`.
pub fn check_free(port: &PublishedPort) -> Result<()> {
    keys(port, true, false).try_for_each(|key| hold(key, false).map(drop))
}

/// The sockets a rule needs, one per port on each [`forwarding::held`]
/// names.
fn keys(port: &PublishedPort, ipv6: bool, shared: bool) -> impl Iterator<Item = Key> + '_ {
    forwarding::held(port, ipv6, shared)
        .into_iter()
        .flat_map(move |ip| {
            (port.host_ports.start..=port.host_ports.end).map(move |p| (ip, p, port.proto))
        })
}

/// A socket bound to `key`, without SO_REUSEADDR: the bind fails when any
/// socket (IPv4, or IPv6 that also takes IPv4) uses the port on that
/// address or the wildcard, and later binds by others fail the same way.
/// A dual-stack one takes IPv4 too, unless the host has no IPv6 at all:
/// then it is an IPv4 one.
fn hold((on, port, proto): Key, shared: bool) -> Result<OwnedFd> {
    let kind = match proto {
        Proto::Tcp => SockType::Stream,
        Proto::Udp => SockType::Datagram,
    };
    let mut ip = on.addr();
    let fd = match socket(address_family(ip), kind, SockFlag::SOCK_CLOEXEC, None) {
        Err(Errno::EAFNOSUPPORT) if on == Held::DualStack => {
            ip = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
            socket(AddressFamily::Inet, kind, SockFlag::SOCK_CLOEXEC, None)
        }
        other => other,
    }
    .map_err(|e| Error::io("open a socket to hold", SocketAddr::new(ip, port), e))?;
    let at = SocketAddr::new(ip, port);
    if ip.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &matches!(on, Held::V6Only(_)))
            .map_err(|e| Error::io("set IPV6_V6ONLY on", at, e))?;
    }
    if proto == Proto::Udp {
        // Nothing is read from it; what strays to it is dropped early.
        let _ = setsockopt(&fd, sockopt::RcvBuf, &0);
    }
    if shared {
        setsockopt(&fd, sockopt::ReuseAddr, &true)
            .map_err(|e| Error::io("share with the container runtime", at, e))?;
    }
    let mut bound = bind(fd.as_raw_fd(), &SockaddrStorage::from(at));
    if bound == Err(Errno::EADDRINUSE)
        && proto == Proto::Tcp
        && !shared
        && only_orphans(port, proto)
    {
        // Connections a killed daemon's forwarder relayed linger closing
        // (TIME_WAIT), held by no process: SO_REUSEADDR binds past them,
        // as any TCP server restarting does, and past nothing else.
        setsockopt(&fd, sockopt::ReuseAddr, &true)
            .map_err(|e| Error::io("set SO_REUSEADDR on", at, e))?;
        bound = bind(fd.as_raw_fd(), &SockaddrStorage::from(at));
    }
    match bound {
        Ok(()) => Ok(fd),
        Err(Errno::EADDRINUSE) => Err(Error::HostPortInUse {
            port,
            proto: proto.to_string(),
            // A rule on every address names them as `-p` did.
            ip: match on {
                Held::DualStack => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                _ => ip,
            },
            user: owner(port, proto).unwrap_or_else(|| "a socket".into()),
        }),
        Err(e) => Err(Error::io("bind", at, e)),
    }
}

fn address_family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The process holding a socket on local port `port`, as "NAME (pid N)",
/// from /proc: the socket's inode in /proc/net/{tcp,udp}{,6}, then the
/// process with a descriptor for it.
fn owner(port: u16, proto: Proto) -> Option<String> {
    let inodes: Vec<String> = ["", "6"]
        .iter()
        .filter_map(|v6| fs::read_to_string(format!("/proc/net/{proto}{v6}")).ok())
        .flat_map(|table| socket_inodes(&table, port))
        .collect();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|target| {
                let target = target.to_string_lossy();
                inodes.iter().any(|i| target == format!("socket:[{i}]"))
            })
        });
        if holds {
            let name = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(format!("{} (pid {pid})", name.trim()));
        }
    }
    None
}

/// Whether every socket on local port `port` is an orphan (inode 0): a
/// connection closing after its process went.
fn only_orphans(port: u16, proto: Proto) -> bool {
    ["", "6"].iter().all(|v6| {
        fs::read_to_string(format!("/proc/net/{proto}{v6}"))
            .is_ok_and(|table| socket_inodes(&table, port).is_empty())
    })
}

/// Inodes of the sockets with local port `port` in a /proc/net/{tcp,udp}
/// table (its columns: `sl local_address rem_address st ... uid timeout
/// inode`, the port in hex after the address's colon).
fn socket_inodes(table: &str, port: u16) -> Vec<String> {
    let hex = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = cols.get(1)?;
            (local.ends_with(&hex) && cols.get(9)? != &"0").then(|| cols[9].to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_on_a_port_are_read_from_the_proc_tables() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 77 1 0000000000000000 100 0 0 10 0
   2: 0200A8C0:1B58 0100A8C0:9C40 06 00000000:00000000 03:00000C1E 00000000     0        0 0 3 0000000000000000
";
        // Port 7000 is 0x1B58; a TIME_WAIT entry has no inode.
        assert_eq!(socket_inodes(table, 7000), vec!["4242"]);
        assert_eq!(socket_inodes(table, 53), vec!["77"]);
        assert!(socket_inodes(table, 80).is_empty());
    }
}
