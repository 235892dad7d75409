//! Real traffic through a [`Topo`]: servers in the endpoint, clients in the
//! world, each on a thread inside its namespace. Every exchange is checked;
//! a reply missing or wrong fails the benchmark instead of speeding it up.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::Sender,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, setsockopt, socket, sockopt,
};

use crate::topo::{Family, SERVICE_PORT, Topo, in_netns};

/// The servers: in the endpoint, TCP answering each byte with the next and
/// UDP counting datagrams sent to the published port; in the world, UDP
/// counting datagrams the endpoint sends out. Stopped on drop.
#[derive(Debug)]
pub struct Servers {
    stop: Arc<AtomicBool>,
    /// Datagrams received by the endpoint's UDP server, from the world.
    inbound: Arc<AtomicU64>,
    /// Datagrams received by the world's UDP server, from the endpoint.
    outbound: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

/// Which way [`datagrams`] go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the world to the published port (DNAT).
    Inbound,
    /// From the endpoint to the world (masquerade).
    Outbound,
}

/// The payload of every datagram [`datagrams`] sends: 18 bytes make a
/// 64-byte frame.
pub(crate) const PAYLOAD: [u8; 18] = [7; 18];

/// A UDP server at `bind` in `netns` counting the datagrams that carry
/// [`PAYLOAD`] and come from `from`: a translation that went wrong (say, a
/// masquerade that did not rewrite the source) counts nothing.
pub(crate) fn udp_counter(
    netns: &str,
    bind: SocketAddr,
    from: IpAddr,
    stop: Arc<AtomicBool>,
    ready: Sender<()>,
) -> (JoinHandle<()>, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    let thread = in_netns(netns, move || {
        let socket = UdpSocket::bind(bind).expect("UDP server");
        // Room for bursts, so that the socket is not what drops.
        setsockopt(&socket, sockopt::RcvBufForce, &(8 << 20)).expect("SO_RCVBUFFORCE");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let _ = ready.send(());
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((len, src)) = socket.recv_from(&mut buf)
                && src.ip() == from
                && buf[..len] == PAYLOAD
            {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (thread, count)
}

/// Accepts connections on `listener` and answers each byte with the next
/// until the client closes: one byte for a new connection, many for
/// request/response latency.
pub(crate) fn answer(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        // Woken by the kernel, not by a timer, so that a client never waits
        // on the server's sleep; the timeout lets it stop without a
        // connection to wake it.
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::from(100u8)), Ok(1..)) {
            continue;
        }
        let Ok((mut conn, _)) = listener.accept() else {
            continue;
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_nodelay(true);
        let mut byte = [0u8; 1];
        while conn.read_exact(&mut byte).is_ok()
            && conn.write_all(&[byte[0].wrapping_add(1)]).is_ok()
        {}
    }
}

impl Servers {
    pub fn start(topo: &Topo) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        // Each reports once listening, so no client races them.
        let (ready, listening) = std::sync::mpsc::channel();
        let family = topo.family;
        let (inbound_thread, inbound) = udp_counter(
            &topo.endpoint,
            family.any(SERVICE_PORT),
            topo.client_seen_as(),
            stop.clone(),
            ready.clone(),
        );
        let (outbound_thread, outbound) = udp_counter(
            &topo.world,
            family.world_server(),
            topo.endpoint_seen_as(),
            stop.clone(),
            ready.clone(),
        );
        let listener = in_netns(&topo.endpoint, move || {
            let listener = TcpListener::bind(family.any(SERVICE_PORT)).expect("TCP server");
            // Accepted by whichever handler gets there first; the others
            // go back to waiting.
            listener
                .set_nonblocking(true)
                .expect("non-blocking listener");
            Arc::new(listener)
        })
        .join()
        .expect("TCP server");
        let mut threads = vec![inbound_thread, outbound_thread];
        threads.extend((0..CONCURRENCY).map(|_| {
            let (listener, stop) = (listener.clone(), stop.clone());
            std::thread::spawn(move || answer(&listener, &stop))
        }));
        for _ in 0..2 {
            listening.recv().expect("a server failed to start");
        }
        Servers {
            stop,
            inbound,
            outbound,
            threads,
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

/// A connection from client address `client` to `target`.
fn connect_from(client: SocketAddr, target: SocketAddr) -> TcpStream {
    let family = match client {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd =
        socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
    bind(fd.as_raw_fd(), &SockaddrStorage::from(client)).expect("bind");
    connect(fd.as_raw_fd(), &SockaddrStorage::from(target))
        .unwrap_or_else(|e| panic!("connecting to {target}: {e}"));
    let stream = TcpStream::from(fd);
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
}

/// One request byte, and the server's answer to it checked.
pub(crate) fn ask(stream: &mut TcpStream, byte: u8) {
    stream.write_all(&[byte]).expect("request byte");
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply).expect("reply byte");
    assert_eq!(reply[0], byte.wrapping_add(1), "the server's answer");
}

/// Clients connecting at once in [`connections`], and server threads
/// answering them: enough that while some wait to be woken, others keep
/// the CPUs busy, so that the rate measured is the host's, not the latency
/// of one connection after another.
const CONCURRENCY: u64 = 4;

/// The time `n` new connections take (connect, a byte each way, close),
/// made by [`CONCURRENCY`] clients at once, each one after another, from
/// the world's client addresses in turn.
pub fn connections(topo: &Topo, n: u64) -> Duration {
    let (target, family) = (topo.target, topo.family);
    let start = Instant::now();
    let clients: Vec<_> = (0..CONCURRENCY)
        .map(|c| {
            in_netns(&topo.world, move || {
                for i in (c..n).step_by(CONCURRENCY as usize) {
                    ask(&mut connect_from(family.client(i), target), i as u8);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    start.elapsed()
}

/// The time `n` request/response round trips of one byte take on one
/// established connection (set up before the clock starts).
pub fn round_trips(topo: &Topo, n: u64) -> Duration {
    let (target, family) = (topo.target, topo.family);
    in_netns(&topo.world, move || {
        let mut stream = connect_from(family.client(0), target);
        let start = Instant::now();
        for i in 0..n {
            ask(&mut stream, i as u8);
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

/// Sends `n` datagrams of [`PAYLOAD`] the `way` given as fast as one
/// socket can and returns the `cost` of it, scaled by how many of them were
/// received: lost datagrams make it higher, as they should.
pub fn datagrams(topo: &Topo, servers: &Servers, way: Direction, n: u64, cost: Cost) -> Duration {
    let family: Family = topo.family;
    let (netns, from, target, counter) = match way {
        Direction::Inbound => (&topo.world, family.client(0), topo.target, &servers.inbound),
        Direction::Outbound => (
            &topo.endpoint,
            family.any(0),
            family.world_server(),
            &servers.outbound,
        ),
    };
    counted_datagrams(netns, from, target, counter, n, cost)
}

/// Sends `n` datagrams of [`PAYLOAD`] from `from` in `netns` to `target`
/// as fast as one socket can and returns the `cost` of it, scaled by how
/// many of them `counter` saw arrive (stragglers are waited for until the
/// count stops moving).
pub(crate) fn counted_datagrams(
    netns: &str,
    from: SocketAddr,
    target: SocketAddr,
    counter: &AtomicU64,
    n: u64,
    cost: Cost,
) -> Duration {
    let before = counter.load(Ordering::Relaxed);
    let start = Instant::now();
    let cpu_start = busy_cpu();
    in_netns(netns, move || {
        let socket = UdpSocket::bind(from).expect("UDP client");
        for _ in 0..n {
            // A full socket buffer is not loss: try again.
            while socket.send_to(&PAYLOAD, target).is_err() {}
        }
    })
    .join()
    .expect("sender thread");
    let mut received = counter.load(Ordering::Relaxed) - before;
    let mut settled = Instant::now();
    while received < n && settled.elapsed() < Duration::from_millis(20) {
        std::thread::sleep(Duration::from_micros(200));
        let now = counter.load(Ordering::Relaxed) - before;
        if now != received {
            received = now;
            settled = Instant::now();
        }
    }
    assert!(received > 0, "no datagram got from {netns} to {target}");
    let spent = match cost {
        Cost::Wall => start.elapsed(),
        Cost::Cpu => busy_cpu().saturating_sub(cpu_start),
    };
    spent.mul_f64(n as f64 / received as f64)
}
