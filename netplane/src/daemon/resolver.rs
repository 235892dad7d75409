//! The embedded DNS server's sockets: UDP and TCP port 53 on each
//! network's gateway address, answering from that network's names
//! ([`crate::logic::dns`]) and forwarding the rest to the upstream resolvers.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::op::{Message, ResponseCode};
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
    task::JoinHandle,
    time::timeout,
};
use tracing::{debug, warn};

use crate::{
    daemon::error::{Error, Result},
    logic::dns::{Cache, Outcome, Zone, decide},
};

/// How long one upstream resolver gets to answer before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Rounds over the upstream resolvers, as resolv.conf's `attempts`.
const UPSTREAM_ROUNDS: usize = 2;
/// How long a TCP client may take to send the next message.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// DNS over UDP carries at most this much with EDNS.
const UDP_MAX: usize = 4096;
/// Queries and TCP clients of one network handled at once; more wait (TCP)
/// or are dropped (UDP, which clients retry), so that a flood costs a
/// bounded amount of memory and leaves the daemon running.
const IN_FLIGHT: usize = 256;

/// What every network's server shares.
#[derive(Debug, Default)]
struct Shared {
    zones: RwLock<BTreeMap<String, Zone>>,
    upstream: Vec<SocketAddr>,
    cache: Mutex<Cache>,
    /// Queries answered or forwarded, and those no upstream answered.
    queries: AtomicU64,
    failures: AtomicU64,
}

/// The servers of every network, stopped on drop.
#[derive(Debug)]
pub struct Resolver {
    shared: Arc<Shared>,
    servers: BTreeMap<String, Vec<JoinHandle<()>>>,
}

impl Resolver {
    /// Queries answered or forwarded so far, and those that failed because
    /// no upstream resolver answered.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.queries.load(Ordering::Relaxed),
            self.shared.failures.load(Ordering::Relaxed),
        )
    }

    /// A resolver forwarding to `upstream`, serving no network yet.
    pub fn new(upstream: Vec<SocketAddr>) -> Self {
        Resolver {
            shared: Arc::new(Shared {
                upstream,
                ..Shared::default()
            }),
            servers: BTreeMap::new(),
        }
    }

    /// Replaces every network's names.
    pub fn set_zones(&self, zones: BTreeMap<String, Zone>) {
        *self.shared.zones.write().unwrap_or_else(|e| e.into_inner()) = zones;
    }

    /// Whether network `network` is served.
    pub fn serves(&self, network: &str) -> bool {
        self.servers.contains_key(network)
    }

    /// Serves `network`'s endpoints on its gateway, port 53, unless it
    /// already does: on `subnet`'s address, and on `subnet6`'s on a
    /// dual-stack network. Each is the gateway's address with the
    /// network's prefix: only senders inside them are answered, as
    /// Docker's resolver, inside each container, is never reachable from
    /// elsewhere.
    pub async fn serve(
        &mut self,
        network: &str,
        subnet: Ipv4Net,
        subnet6: Option<Ipv6Net>,
    ) -> Result<()> {
        if self.serves(network) {
            return Ok(());
        }
        let served = Arc::new(Served {
            network: network.to_string(),
            subnet: subnet.trunc(),
            subnet6: subnet6.map(|s| s.trunc()),
        });
        let mut tasks = Vec::new();
        let gateways = std::iter::once(IpAddr::from(subnet.addr()))
            .chain(subnet6.map(|s| IpAddr::from(s.addr())));
        for gateway in gateways {
            let at = SocketAddr::new(gateway, 53);
            let udp = UdpSocket::bind(at)
                .await
                .map_err(|e| Error::io("bind DNS (UDP) on", at, e))?;
            let tcp = TcpListener::bind(at)
                .await
                .map_err(|e| Error::io("bind DNS (TCP) on", at, e))?;
            let shared = self.shared.clone();
            tasks.push(tokio::spawn(serve_udp(
                Arc::new(udp),
                shared.clone(),
                served.clone(),
            )));
            tasks.push(tokio::spawn(serve_tcp(tcp, shared, served.clone())));
        }
        self.servers.insert(network.to_string(), tasks);
        Ok(())
    }

    /// Stops serving `network`.
    pub fn stop(&mut self, network: &str) {
        for task in self.servers.remove(network).into_iter().flatten() {
            task.abort();
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        for task in self.servers.values().flatten() {
            task.abort();
        }
    }
}

/// How a query reached the server: a UDP answer must fit a datagram, a
/// truncated one sends the client to TCP, where upstream is asked by TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// A network a server answers for, and who may ask.
#[derive(Debug)]
struct Served {
    network: String,
    /// The network's subnet: the senders answered.
    subnet: Ipv4Net,
    /// Its IPv6 subnet, on a dual-stack network.
    subnet6: Option<Ipv6Net>,
}

impl Served {
    /// Whether `client` is on the network. Anyone else (the uplink's LAN
    /// routing the subnet via the host, another network's endpoint) gets
    /// no answer, not even a refusal.
    fn admits(&self, client: SocketAddr) -> bool {
        let admitted = match client.ip() {
            IpAddr::V4(ip) => self.subnet.contains(&ip),
            IpAddr::V6(ip) => self.subnet6.is_some_and(|s| s.contains(&ip)),
        };
        if !admitted {
            debug!(network = self.network, %client, "DNS: not on the network, ignored");
        }
        admitted
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>, served: Arc<Served>) {
    let network = &served.network;
    let mut buf = vec![0u8; UDP_MAX];
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                warn!(network, "DNS: receiving: {e}");
                continue;
            }
        };
        if !served.admits(client) {
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(network, "DNS: too many queries at once, one dropped");
            continue;
        };
        let packet = buf[..len].to_vec();
        let (socket, shared, served) = (socket.clone(), shared.clone(), served.clone());
        // Forwarded queries wait on upstream: each on its own task.
        tokio::spawn(async move {
            let asked = respond(&shared, &served.network, client, &packet, Transport::Udp).await;
            if let Some(reply) = asked {
                let _ = socket.send_to(&reply, client).await;
            }
            drop(slot);
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, served: Arc<Served>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((conn, client)) = listener.accept().await else {
            continue;
        };
        if !served.admits(client) {
            continue;
        }
        let (shared, served) = (shared.clone(), served.clone());
        tokio::spawn(async move {
            let network = &served.network;
            if let Err(e) = serve_tcp_client(conn, &shared, network, client).await {
                debug!(network, "DNS over TCP: {e}");
            }
            drop(slot);
        });
    }
}

/// Answers length-prefixed messages on `conn` until the client stops
/// sending, closes, or idles past [`TCP_IDLE`].
async fn serve_tcp_client(
    mut conn: TcpStream,
    shared: &Shared,
    network: &str,
    client: SocketAddr,
) -> std::io::Result<()> {
    loop {
        let Ok(len) = timeout(TCP_IDLE, conn.read_u16()).await else {
            return Ok(());
        };
        let mut packet = vec![0u8; usize::from(len?)];
        timeout(TCP_IDLE, conn.read_exact(&mut packet))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let Some(reply) = respond(shared, network, client, &packet, Transport::Tcp).await else {
            return Ok(());
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return Ok(());
        };
        conn.write_all(&[&reply_len.to_be_bytes()[..], &reply].concat())
            .await?;
    }
}

/// The reply to `packet` from `client`, an endpoint of `network`, if any.
async fn respond(
    shared: &Shared,
    network: &str,
    client: SocketAddr,
    packet: &[u8],
    via: Transport,
) -> Option<Vec<u8>> {
    let (outcome, own_upstream) = {
        let zones = shared.zones.read().unwrap_or_else(|e| e.into_inner());
        let empty = Zone::default();
        let zone = zones.get(network).unwrap_or(&empty);
        let own = zone.upstream_of(client.ip()).map(<[SocketAddr]>::to_vec);
        let view = zone.view_for(client.ip());
        (decide(packet, view), own)
    };
    if outcome != Outcome::Ignore {
        shared.queries.fetch_add(1, Ordering::Relaxed);
    }
    let query = match outcome {
        Outcome::Reply(reply) => return Some(reply),
        Outcome::Ignore => return None,
        Outcome::Forward(query) => query,
    };
    // An endpoint with resolvers of its own (`--dns`) asks them, and their
    // answers are its own: they neither come from nor go to the cache the
    // others share.
    let shared_upstream = own_upstream.is_none();
    let cached = shared_upstream
        .then(|| {
            shared
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&query, Instant::now())
        })
        .flatten();
    if let Some(hit) = cached {
        return Some(hit);
    }
    let upstream = own_upstream.as_deref().unwrap_or(&shared.upstream);
    match forward(upstream, packet, via).await {
        Some(answer) => {
            if shared_upstream {
                shared.cache.lock().unwrap_or_else(|e| e.into_inner()).put(
                    &query,
                    &answer,
                    Instant::now(),
                );
            }
            Some(answer)
        }
        None => {
            shared.failures.fetch_add(1, Ordering::Relaxed);
            Message::error_msg(query.id(), query.op_code(), ResponseCode::ServFail)
                .to_vec()
                .ok()
        }
    }
}

/// Upstream's answer to `packet`: each resolver in turn, for
/// [`UPSTREAM_ROUNDS`] rounds, over the transport the client used.
async fn forward(upstream: &[SocketAddr], packet: &[u8], via: Transport) -> Option<Vec<u8>> {
    let id = packet.get(..2)?;
    for _ in 0..UPSTREAM_ROUNDS {
        for server in upstream {
            let asked = match via {
                Transport::Udp => timeout(UPSTREAM_TIMEOUT, ask_udp(*server, packet)).await,
                Transport::Tcp => timeout(UPSTREAM_TIMEOUT, ask_tcp(*server, packet)).await,
            };
            match asked {
                Ok(Ok(answer)) if answer.get(..2) == Some(id) => return Some(answer),
                Ok(Ok(_)) => debug!(%server, "DNS upstream answered another query"),
                Ok(Err(e)) => debug!(%server, "DNS upstream: {e}"),
                Err(_) => debug!(%server, "DNS upstream timed out"),
            }
        }
    }
    None
}

async fn ask_udp(server: SocketAddr, packet: &[u8]) -> std::io::Result<Vec<u8>> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    socket.connect(server).await?;
    socket.send(packet).await?;
    let mut buf = vec![0u8; UDP_MAX];
    let len = socket.recv(&mut buf).await?;
    buf.truncate(len);
    Ok(buf)
}

async fn ask_tcp(server: SocketAddr, packet: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut conn = TcpStream::connect(server).await?;
    let len = u16::try_from(packet.len()).map_err(std::io::Error::other)?;
    conn.write_all(&[&len.to_be_bytes()[..], packet].concat())
        .await?;
    let mut answer = vec![0u8; usize::from(conn.read_u16().await?)];
    conn.read_exact(&mut answer).await?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_senders_on_the_served_network_are_admitted() {
        let served = Served {
            network: "bridge".into(),
            subnet: "172.17.0.1/16".parse::<Ipv4Net>().unwrap().trunc(),
            subnet6: Some("fd00:17::/64".parse().unwrap()),
        };
        assert!(served.admits("172.17.0.2:5353".parse().unwrap()));
        assert!(served.admits("172.17.255.254:5353".parse().unwrap()));
        assert!(served.admits("[fd00:17::2]:5353".parse().unwrap()));
        assert!(!served.admits("[fd00:18::2]:5353".parse().unwrap()));
        // The uplink's LAN, another network, loopback, a link-local sender.
        assert!(!served.admits("198.18.0.1:5353".parse().unwrap()));
        assert!(!served.admits("172.18.0.2:5353".parse().unwrap()));
        assert!(!served.admits("127.0.0.1:5353".parse().unwrap()));
        assert!(!served.admits("[fe80::1]:5353".parse().unwrap()));
    }
}
