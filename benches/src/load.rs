//! Real traffic through a [`Topo`]: servers in the endpoint, clients in the
//! world, each on a thread inside its namespace. Every exchange is checked;
//! a reply missing or wrong fails the benchmark instead of speeding it up.

use std::{
    io::{Read, Write},
    net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::OwnedFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt,
};

use crate::topo::{CLIENTS, SERVICE_PORT, Topo, in_netns};

/// The endpoint's servers: TCP answering one byte with one byte, UDP
/// counting datagrams. Stopped on drop.
#[derive(Debug)]
pub struct Servers {
    stop: Arc<AtomicBool>,
    /// Datagrams received by the UDP server.
    pub datagrams: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub fn start(topo: &Topo) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let datagrams = Arc::new(AtomicU64::new(0));
        let (tcp_stop, udp_stop, count) = (stop.clone(), stop.clone(), datagrams.clone());
        // Both report once listening, so no client races them.
        let (ready, listening) = std::sync::mpsc::channel();
        let udp_ready = ready.clone();
        let tcp = in_netns(&topo.endpoint, move || {
            let listener = TcpListener::bind(("0.0.0.0", SERVICE_PORT)).expect("TCP server");
            // Polled, so that stopping needs no connection to wake it.
            listener
                .set_nonblocking(true)
                .expect("non-blocking listener");
            let _ = ready.send(());
            while !tcp_stop.load(Ordering::Relaxed) {
                let mut conn = match listener.accept() {
                    Ok((conn, _)) => conn,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(50));
                        continue;
                    }
                    Err(_) => continue,
                };
                let _ = conn.set_nonblocking(false);
                let mut byte = [0u8; 1];
                if conn.read_exact(&mut byte).is_ok() {
                    let _ = conn.write_all(&[byte[0].wrapping_add(1)]);
                }
            }
        });
        let udp = in_netns(&topo.endpoint, move || {
            let socket = UdpSocket::bind(("0.0.0.0", SERVICE_PORT)).expect("UDP server");
            // Room for bursts, so that the socket is not what drops.
            setsockopt(&socket, sockopt::RcvBufForce, &(8 << 20)).expect("SO_RCVBUFFORCE");
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            let _ = udp_ready.send(());
            let mut buf = [0u8; 2048];
            while !udp_stop.load(Ordering::Relaxed) {
                if socket.recv(&mut buf).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        for _ in 0..2 {
            listening.recv().expect("a server failed to start");
        }
        Servers {
            stop,
            datagrams,
            threads: vec![tcp, udp],
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One connection from client address `client`: connect, a byte each way,
/// close.
fn exchange(client: SocketAddrV4, target: SocketAddrV4, byte: u8) {
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(client),
    )
    .expect("bind");
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(target),
    )
    .unwrap_or_else(|e| panic!("connecting to {target}: {e}"));
    let mut stream = TcpStream::from(fd);
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    stream.write_all(&[byte]).expect("request byte");
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply).expect("reply byte");
    assert_eq!(reply[0], byte.wrapping_add(1), "the server's answer");
}

/// The time `n` new connections take, one after another, from the world's
/// client addresses in turn.
pub fn connections(topo: &Topo, n: u64) -> Duration {
    let target = topo.target;
    in_netns(&topo.world, move || {
        let start = Instant::now();
        for i in 0..n {
            let client = SocketAddrV4::new(
                std::net::Ipv4Addr::new(198, 18, 0, 100 + (i % u64::from(CLIENTS)) as u8),
                0,
            );
            exchange(client, target, i as u8);
        }
        start.elapsed()
    })
    .join()
    .expect("client thread")
}

/// What [`datagrams`] reports per datagram received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// Wall-clock time.
    Wall,
    /// CPU time of the whole machine (all cores busy, from /proc/stat):
    /// with sender and receiver sharing two cores, the fair figure.
    Cpu,
}

/// Busy CPU time of the whole machine so far.
fn busy_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().expect("ticks"))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle, iowait.
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(busy * 1_000_000_000 / hz)
}

/// Sends `n` datagrams of 18 bytes (64-byte frames) from the world as fast
/// as it can and returns the `cost` of it, scaled by how many of them were
/// received (stragglers are waited for until the count stops moving): lost
/// datagrams make it higher, as they should.
pub fn datagrams(topo: &Topo, servers: &Servers, n: u64, cost: Cost) -> Duration {
    let target = topo.target;
    let before = servers.datagrams.load(Ordering::Relaxed);
    let start = Instant::now();
    let cpu_start = busy_cpu();
    in_netns(&topo.world, move || {
        let socket = UdpSocket::bind("198.18.0.100:0").expect("UDP client");
        let payload = [7u8; 18];
        for _ in 0..n {
            // A full socket buffer is not loss: try again.
            while socket.send_to(&payload, target).is_err() {}
        }
    })
    .join()
    .expect("sender thread");
    let mut received = servers.datagrams.load(Ordering::Relaxed) - before;
    let mut settled = Instant::now();
    while received < n && settled.elapsed() < Duration::from_millis(20) {
        std::thread::sleep(Duration::from_micros(200));
        let now = servers.datagrams.load(Ordering::Relaxed) - before;
        if now != received {
            received = now;
            settled = Instant::now();
        }
    }
    assert!(received > 0, "no datagram got through");
    let spent = match cost {
        Cost::Wall => start.elapsed(),
        Cost::Cpu => busy_cpu().saturating_sub(cpu_start),
    };
    spent.mul_f64(n as f64 / received as f64)
}
