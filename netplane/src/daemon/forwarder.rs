//! The userspace forwarder, the data plane's slow path: one set of tasks
//! in the daemon serves every host port the eBPF programs leave to
//! userspace ([`crate::logic::forwarding`]), where Docker starts a
//! docker-proxy process per port and protocol. TCP is relayed with
//! splice(2), both directions apart, so a half-close passes through; UDP
//! with one session per client, expired when idle. Connections and UDP
//! sessions of every port share one limit, so a flood costs a bounded
//! amount of memory and is counted.

use std::{
    collections::{BTreeMap, HashMap, btree_map::Entry},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ppp::v2::{Builder, Command, Protocol, Version};
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::{JoinHandle, JoinSet},
    time::timeout,
};
use tracing::warn;

use crate::{
    kernel::splice::{self, Pipe},
    logic::{forwarding::Route, portspec::Proto},
    types::ProxyCounters,
};

/// Connections and UDP sessions relayed at once, over every port, unless
/// `up --proxy-max-connections` says otherwise. Each holds two sockets and,
/// for TCP, two pipes of [`splice::PIPE_BYTES`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// How long an endpoint gets to accept a relayed connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest UDP payload.
const DATAGRAM_MAX: usize = 65_535;
/// Room before a datagram for its PROXY protocol v2 header (16 bytes and
/// two IPv6 addresses and ports).
const HEADER_ROOM: usize = 52;
/// Backlog of a forwarded TCP port: the kernel caps it at somaxconn.
const BACKLOG: i32 = 4096;
/// How long an accept loop waits after a failed accept (out of file
/// descriptors, most likely) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What the forwarder counted under one rule.
#[derive(Debug, Default)]
struct RuleCounters {
    connections: AtomicU64,
    active: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    over_limit: AtomicU64,
    not_allowed: AtomicU64,
    unreachable: AtomicU64,
}

impl RuleCounters {
    fn snapshot(&self) -> ProxyCounters {
        let refused = [
            ("over_limit", &self.over_limit),
            ("not_allowed", &self.not_allowed),
            ("unreachable", &self.unreachable),
        ]
        .into_iter()
        .map(|(reason, n)| (reason.to_string(), n.load(Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect();
        ProxyCounters {
            connections: self.connections.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            refused,
        }
    }
}

/// Counts one connection or session as active while it lives.
struct Active(Arc<RuleCounters>);

impl Active {
    fn new(counters: &Arc<RuleCounters>) -> Self {
        counters.connections.fetch_add(1, Ordering::Relaxed);
        counters.active.fetch_add(1, Ordering::Relaxed);
        Active(counters.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the forwarder's tasks and the readers share.
#[derive(Debug)]
struct Shared {
    limit: Arc<Semaphore>,
    counters: Mutex<HashMap<u32, Arc<RuleCounters>>>,
    udp_idle: Duration,
}

impl Shared {
    fn rule(&self, slot: u32) -> Arc<RuleCounters> {
        let mut all = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(slot).or_default().clone()
    }
}

/// The forwarder's counters, read without the daemon (`nat ls`, metrics).
#[derive(Clone, Debug)]
pub struct Counters(Arc<Shared>);

impl Counters {
    /// What was relayed under the rule in counter slot `slot`, if the
    /// forwarder served it.
    pub fn of(&self, slot: u32) -> Option<ProxyCounters> {
        let all = self.0.counters.lock().unwrap_or_else(|e| e.into_inner());
        all.get(&slot).map(|c| c.snapshot())
    }
}

/// The forwarder: its listening tasks by host address, port and protocol,
/// each stopping its connections when stopped.
#[derive(Debug)]
pub struct Forwarder {
    shared: Arc<Shared>,
    listeners: HashMap<(SocketAddr, Proto), JoinHandle<()>>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for task in self.listeners.values() {
            task.abort();
        }
    }
}

impl Forwarder {
    /// A forwarder relaying at most `max_connections` connections and UDP
    /// sessions at once, forgetting a UDP client after `udp_idle` without
    /// a datagram.
    pub fn new(max_connections: usize, udp_idle: Duration) -> Self {
        Forwarder {
            shared: Arc::new(Shared {
                limit: Arc::new(Semaphore::new(max_connections)),
                counters: Mutex::new(HashMap::new()),
                udp_idle,
            }),
            listeners: HashMap::new(),
        }
    }

    pub fn counters(&self) -> Counters {
        Counters(self.shared.clone())
    }

    /// Serves `route` on `socket`, the socket holding its host port (bound,
    /// not yet listening), unless it is served already.
    pub fn serve(&mut self, route: Route, socket: OwnedFd) -> io::Result<()> {
        let key = (route.listen_addr(), route.proto);
        if self.listeners.contains_key(&key) {
            return Ok(());
        }
        let counters = self.shared.rule(route.slot);
        let std_socket = std::net::TcpListener::from(socket);
        std_socket.set_nonblocking(true)?;
        let task = match route.proto {
            Proto::Tcp => {
                nix::sys::socket::listen(
                    &std_socket,
                    nix::sys::socket::Backlog::new(BACKLOG).map_err(io::Error::from)?,
                )?;
                let listener = TcpListener::from_std(std_socket)?;
                tokio::spawn(serve_tcp(
                    listener,
                    Arc::new(route),
                    self.shared.clone(),
                    counters,
                ))
            }
            Proto::Udp => {
                let fd = OwnedFd::from(std_socket);
                // The daemon's holding socket takes nothing in; this one
                // does.
                nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBuf, &(1 << 20))?;
                let socket = UdpSocket::from_std(std::net::UdpSocket::from(fd))?;
                tokio::spawn(serve_udp(
                    Arc::new(socket),
                    Arc::new(route),
                    self.shared.clone(),
                    counters,
                ))
            }
        };
        self.listeners.insert(key, task);
        Ok(())
    }

    /// Stops serving `listen`, closing its connections.
    pub fn stop(&mut self, listen: SocketAddr, proto: Proto) {
        if let Some(task) = self.listeners.remove(&(listen, proto)) {
            task.abort();
        }
    }

    /// Zeroes the counters of slot `slot`, newly given to a rule.
    pub fn reset(&self, slot: u32) {
        let mut all = self
            .shared
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        all.remove(&slot);
    }
}

/// Accepts on a forwarded TCP port until stopped; the connections are its
/// own tasks, aborted with it.
async fn serve_tcp(
    listener: TcpListener,
    route: Arc<Route>,
    shared: Arc<Shared>,
    counters: Arc<RuleCounters>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let Some(permit) = admit(&route, &shared, &counters, peer) else {
                        continue;
                    };
                    connections.spawn(relay_tcp(client, peer, route.clone(), counters.clone(), permit));
                }
                Err(e) => {
                    warn!(port = %route.listen_addr(), "forwarder: accept: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

/// A place under the limit for a new connection or session from `peer`,
/// if the route's allow-list admits it; a refusal is counted.
fn admit(
    route: &Route,
    shared: &Shared,
    counters: &RuleCounters,
    peer: SocketAddr,
) -> Option<OwnedSemaphorePermit> {
    if !route.admits(peer.ip()) {
        counters.not_allowed.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let permit = shared.limit.clone().try_acquire_owned().ok();
    if permit.is_none() {
        counters.over_limit.fetch_add(1, Ordering::Relaxed);
    }
    permit
}

/// A PROXY protocol v2 header saying that `client` connected to `local`.
fn proxy_header(protocol: Protocol, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    // IPv4 clients of a dual-stack socket show IPv4-mapped.
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (client, local) = (canonical(client), canonical(local));
    let local = match (client, local) {
        // The two must be of one family; a wildcard of the other family
        // says nothing anyway.
        (SocketAddr::V6(_), SocketAddr::V4(l)) => {
            SocketAddr::new(IpAddr::V6(l.ip().to_ipv6_mapped()), l.port())
        }
        (SocketAddr::V4(_), SocketAddr::V6(l)) => SocketAddr::new(
            IpAddr::V4(l.ip().to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)),
            l.port(),
        ),
        _ => local,
    };
    Builder::with_addresses(Version::Two | Command::Proxy, protocol, (client, local))
        .build()
        .expect("a header of two addresses fits in memory")
}

/// Relays one TCP connection to the endpoint until both directions ended.
async fn relay_tcp(
    client: TcpStream,
    peer: SocketAddr,
    route: Arc<Route>,
    counters: Arc<RuleCounters>,
    _permit: OwnedSemaphorePermit,
) {
    let _active = Active::new(&counters);
    let target = route.target_for(peer.ip());
    let mut upstream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        _ => {
            counters.unreachable.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if route.proxy_protocol {
        let local = client.local_addr().unwrap_or(route.listen_addr());
        let header = proxy_header(Protocol::Stream, peer, local);
        if upstream.write_all(&header).await.is_err() {
            return;
        }
    }
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let to_endpoint = one_way(&client, &upstream, &counters.bytes_in);
    let to_client = one_way(&upstream, &client, &counters.bytes_out);
    tokio::pin!(to_endpoint, to_client);
    let (mut in_done, mut out_done) = (false, false);
    // A direction ending (a FIN, passed on) leaves the other going. One
    // that cannot read any more (its sender reset) ends both: nothing
    // more can reach that sender. One that cannot write (its receiver
    // reset) leaves the other to deliver what that receiver sent before.
    while !(in_done && out_done) {
        let ended = tokio::select! {
            r = &mut to_endpoint, if !in_done => { in_done = true; r }
            r = &mut to_client, if !out_done => { out_done = true; r }
        };
        if ended == Err(Broken::Reading) {
            return;
        }
    }
}

/// How one direction of a relayed connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Broken {
    Reading,
    Writing,
}

/// Moves what `from` receives to `to` through a pipe, until `from`'s
/// stream ends, which is then passed on as a FIN.
async fn one_way(from: &TcpStream, to: &TcpStream, bytes: &AtomicU64) -> Result<(), Broken> {
    let pipe = Pipe::new().map_err(|_| Broken::Reading)?;
    loop {
        from.readable().await.map_err(|_| Broken::Reading)?;
        let n = match from.try_io(Interest::READABLE, || pipe.fill(from.as_fd())) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(Broken::Reading),
        };
        if n == 0 {
            return splice::shutdown_write(to).map_err(|_| Broken::Writing);
        }
        let mut left = n;
        while left > 0 {
            to.writable().await.map_err(|_| Broken::Writing)?;
            match to.try_io(Interest::WRITABLE, || pipe.drain(to.as_fd(), left)) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(Broken::Writing),
            }
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// One UDP client's session: its socket towards the endpoint, and the task
/// relaying the endpoint's replies back.
struct Session {
    upstream: Arc<UdpSocket>,
    /// When the client or the endpoint last sent, in milliseconds since
    /// the port was served.
    last: Arc<AtomicU64>,
    replies: JoinHandle<()>,
    _active: Active,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

/// Relays a forwarded UDP port until stopped: one session per client,
/// expired after the forwarder's idle time.
async fn serve_udp(
    socket: Arc<UdpSocket>,
    route: Arc<Route>,
    shared: Arc<Shared>,
    counters: Arc<RuleCounters>,
) {
    let started = Instant::now();
    let since = move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let idle_ms = u64::try_from(shared.udp_idle.as_millis()).unwrap_or(u64::MAX);
    let mut sessions: BTreeMap<SocketAddr, Session> = BTreeMap::new();
    let mut sweep = tokio::time::interval((shared.udp_idle / 2).max(Duration::from_millis(100)));
    let mut buf = vec![0u8; HEADER_ROOM + DATAGRAM_MAX];
    loop {
        let (n, client) = tokio::select! {
            received = socket.recv_from(&mut buf[HEADER_ROOM..]) => match received {
                Ok(r) => r,
                Err(e) => {
                    warn!(port = %route.listen_addr(), "forwarder: receive: {e}");
                    continue;
                }
            },
            _ = sweep.tick() => {
                let now = since();
                sessions.retain(|_, s| now.saturating_sub(s.last.load(Ordering::Relaxed)) < idle_ms);
                continue;
            }
        };
        let session = match sessions.entry(client) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(vacant) => {
                let Some(permit) = admit(&route, &shared, &counters, client) else {
                    continue;
                };
                let Ok(upstream) = connect_udp(route.target_for(client.ip())).await else {
                    counters.unreachable.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let upstream = Arc::new(upstream);
                let last = Arc::new(AtomicU64::new(since()));
                let replies = tokio::spawn(relay_replies(
                    upstream.clone(),
                    socket.clone(),
                    client,
                    counters.clone(),
                    last.clone(),
                    started,
                ));
                let session = Session {
                    upstream,
                    last,
                    replies,
                    _active: Active::new(&counters),
                    _permit: permit,
                };
                vacant.insert(session)
            }
        };
        session.last.store(since(), Ordering::Relaxed);
        let datagram = if route.proxy_protocol {
            let local = socket.local_addr().unwrap_or(route.listen_addr());
            let header = proxy_header(Protocol::Datagram, client, local);
            let start = HEADER_ROOM - header.len();
            buf[start..HEADER_ROOM].copy_from_slice(&header);
            &buf[start..HEADER_ROOM + n]
        } else {
            &buf[HEADER_ROOM..HEADER_ROOM + n]
        };
        // A full socket buffer or an unreachable endpoint loses the
        // datagram, as the network would.
        if session.upstream.send(datagram).await.is_ok() {
            counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// A socket of `target`'s family, connected to it.
async fn connect_udp(target: SocketAddr) -> io::Result<UdpSocket> {
    let any: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    socket.connect(target).await?;
    Ok(socket)
}

/// Sends what the endpoint answers on `upstream` back to `client` from the
/// forwarded port.
async fn relay_replies(
    upstream: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    counters: Arc<RuleCounters>,
    last: Arc<AtomicU64>,
    started: Instant,
) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        // An ICMP error from the endpoint shows as a failed receive; the
        // session lives on until idle.
        let Ok(n) = upstream.recv(&mut buf).await else {
            continue;
        };
        if socket.send_to(&buf[..n], client).await.is_ok() {
            counters.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        }
        last.store(
            u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_the_client_and_the_address_it_reached() {
        let client: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
        let local: SocketAddr = "[2001:db8::1]:8080".parse().unwrap();
        let header = proxy_header(Protocol::Stream, client, local);
        let parsed = ppp::v2::Header::try_from(&header[..]).unwrap();
        assert_eq!(parsed.command, Command::Proxy);
        assert_eq!(parsed.protocol, Protocol::Stream);
        assert_eq!(parsed.addresses, ppp::v2::Addresses::from((client, local)));
        // An IPv4 client of a dual-stack socket, seen IPv4-mapped.
        let header = proxy_header(
            Protocol::Stream,
            "[::ffff:198.18.0.1]:40000".parse().unwrap(),
            "[::ffff:198.18.0.2]:9100".parse().unwrap(),
        );
        let parsed = ppp::v2::Header::try_from(&header[..]).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((
                "198.18.0.1:40000".parse::<SocketAddr>().unwrap(),
                "198.18.0.2:9100".parse::<SocketAddr>().unwrap()
            ))
        );
        // An IPv4 wildcard a UDP client of the other family reached.
        let header = proxy_header(Protocol::Datagram, client, "0.0.0.0:8080".parse().unwrap());
        assert!(header.len() <= HEADER_ROOM);
        let parsed = ppp::v2::Header::try_from(&header[..]).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((
                client,
                "[::ffff:0.0.0.0]:8080".parse::<SocketAddr>().unwrap()
            ))
        );
    }
}
