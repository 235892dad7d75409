//! Overlay membership through etcd: the keys the hosts of a cluster share,
//! what a snapshot of them says, and the session (a TTL lease the daemon
//! keeps alive) each host holds its keys under, so that a host that stops,
//! even by kill -9, drops out when its lease expires.
//!
//! Keys, all under [`PREFIX`]:
//! - `networks/NAME` → `{"Subnet": "10.201.0.0/16", "Vni": 42}`
//! - `vnis/VNI` → `NAME` (so that two networks never share a VNI)
//! - `leases/NAME/LEASE-ADDRESS` → `{"Vtep": "192.0.2.11"}`, under the
//!   holding host's session
//! - `names/NAME/VTEP` → `[{"Name": "web", "Address": "10.201.0.2",
//!   "Aliases": ["api"]}, ...]`: the endpoints of network NAME on the host
//!   at VTEP, under that host's session

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, str::FromStr, time::Duration};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::logic::{
    discovery::{HostNames, PublishedName},
    overlay::{Encap, OverlayNetwork},
};

/// Every key netplane writes starts with this.
pub const PREFIX: &str = "/netplane/v1/";

/// How long the store keeps a host's keys after last hearing from it,
/// unless `up --store-ttl` says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// How long one request to the store may take: the daemon holds its lock
/// meanwhile, so an unreachable store must fail fast.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between attempts to reach the store again.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterError {
    #[error("cluster store {0:?}: expected etcd://HOST:PORT[,HOST:PORT...]")]
    BadUrl(String),
    #[error("cluster store {url}: {op}: {reason}")]
    Etcd {
        url: String,
        op: &'static str,
        reason: String,
    },
    #[error("cluster store {0} is not reachable at the moment")]
    Disconnected(String),
    #[error("cluster store {url}: session {session:x} expired")]
    SessionExpired { url: String, session: i64 },
    #[error("cluster store {0}: the watch ended")]
    WatchEnded(String),
}

type Result<T> = std::result::Result<T, ClusterError>;

/// `etcd://HOST:PORT[,HOST:PORT...]`: the members of an etcd cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreUrl {
    /// `HOST:PORT` of each member.
    pub members: Vec<String>,
}

impl FromStr for StoreUrl {
    type Err = ClusterError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || ClusterError::BadUrl(s.to_string());
        let members: Vec<String> = s
            .strip_prefix("etcd://")
            .ok_or_else(bad)?
            .split(',')
            .map(|m| {
                let (host, port) = m.rsplit_once(':').ok_or_else(bad)?;
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(bad());
                }
                Ok(m.to_string())
            })
            .collect::<Result<_>>()?;
        Ok(StoreUrl { members })
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "etcd://{}", self.members.join(","))
    }
}

fn network_key(name: &str) -> String {
    format!("{PREFIX}networks/{name}")
}

fn vni_key(vni: u32) -> String {
    format!("{PREFIX}vnis/{vni}")
}

fn leases_prefix(network: &str) -> String {
    format!("{PREFIX}leases/{network}/")
}

fn lease_key(network: &str, lease: Ipv4Net) -> String {
    format!("{}{}", leases_prefix(network), lease.network())
}

fn names_prefix(network: &str) -> String {
    format!("{PREFIX}names/{network}/")
}

fn names_key(network: &str, vtep: Ipv4Addr) -> String {
    format!("{}{vtep}", names_prefix(network))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkRecord {
    subnet: Ipv4Net,
    vni: u32,
    /// Absent from records of netplanes before other encapsulations.
    #[serde(default)]
    encap: Encap,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LeaseRecord {
    vtep: Ipv4Addr,
}

fn lease_value(vtep: Ipv4Addr) -> String {
    serde_json::to_string(&LeaseRecord { vtep }).expect("a lease record serialises")
}

/// A host's /24 of an overlay network, as the store holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    pub lease: Ipv4Net,
    pub vtep: Ipv4Addr,
    /// The etcd lease (session) the key lives under.
    pub session: i64,
}

/// What the store says at one revision: the overlay networks and which
/// host holds each /24 of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub networks: BTreeMap<String, OverlayNetwork>,
    holders: BTreeMap<String, Vec<Holder>>,
    /// Each network's endpoints, by the VTEP of their host.
    names: BTreeMap<String, BTreeMap<Ipv4Addr, Vec<PublishedName>>>,
}

impl ClusterView {
    /// Reads `(key, value, session)` triples from under [`PREFIX`]. Keys it
    /// cannot read (written by hand, or by a newer netplane) are skipped
    /// with a warning rather than stopping the host from following the rest.
    pub fn from_kvs<'a>(kvs: impl IntoIterator<Item = (&'a str, &'a [u8], i64)>) -> Self {
        let mut view = ClusterView::default();
        for (key, value, session) in kvs {
            let Some(rest) = key.strip_prefix(PREFIX) else {
                continue;
            };
            let read = match rest.split('/').collect::<Vec<_>>()[..] {
                ["networks", name] => serde_json::from_slice::<NetworkRecord>(value)
                    .map(|r| {
                        view.networks.insert(
                            name.to_string(),
                            OverlayNetwork {
                                name: name.to_string(),
                                subnet: r.subnet,
                                vni: r.vni,
                                encap: r.encap,
                            },
                        );
                    })
                    .is_ok(),
                ["leases", network, address] => {
                    match (
                        address.parse::<Ipv4Addr>().ok().and_then(|a| {
                            Ipv4Net::new(a, crate::logic::overlay::LEASE_PREFIX)
                                .ok()
                                .filter(|l| l.network() == a)
                        }),
                        serde_json::from_slice::<LeaseRecord>(value),
                    ) {
                        (Some(lease), Ok(r)) => {
                            view.holders
                                .entry(network.to_string())
                                .or_default()
                                .push(Holder {
                                    lease,
                                    vtep: r.vtep,
                                    session,
                                });
                            true
                        }
                        _ => false,
                    }
                }
                ["names", network, vtep] => match (
                    vtep.parse::<Ipv4Addr>(),
                    serde_json::from_slice::<Vec<PublishedName>>(value),
                ) {
                    (Ok(vtep), Ok(endpoints)) => {
                        view.names
                            .entry(network.to_string())
                            .or_default()
                            .insert(vtep, endpoints);
                        true
                    }
                    _ => false,
                },
                ["vnis", _] => true,
                _ => false,
            };
            if !read {
                warn!(key, "cluster store: skipping a key netplane cannot read");
            }
        }
        view
    }

    /// The hosts holding a /24 of overlay `network`.
    pub fn holders(&self, network: &str) -> &[Holder] {
        self.holders.get(network).map_or(&[], Vec::as_slice)
    }

    /// The endpoints of overlay `network` each host published, by VTEP.
    pub fn names(&self, network: &str) -> Option<&BTreeMap<Ipv4Addr, Vec<PublishedName>>> {
        self.names.get(network)
    }

    /// The /24 of overlay `network` the host at `vtep` holds.
    pub fn held_by(&self, network: &str, vtep: Ipv4Addr) -> Option<&Holder> {
        self.holders(network).iter().find(|h| h.vtep == vtep)
    }
}

/// The error of `op` on member `member` of the store at `url`.
fn failed(
    url: &StoreUrl,
    member: usize,
    op: &'static str,
) -> impl FnOnce(etcd_client::Error) -> ClusterError + use<> {
    let place = format!("{url} (member {})", url.members[member]);
    move |e| ClusterError::Etcd {
        url: place,
        op,
        reason: e.to_string(),
    }
}

/// A connection to one member of the store with a session: an etcd lease
/// of `ttl` that every key of this host lives under.
#[derive(Clone)]
pub struct Session {
    url: StoreUrl,
    client: Client,
    /// Index of the member in `url` the connection is to.
    pub member: usize,
    pub id: i64,
    pub ttl: Duration,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("member", &self.url.members[self.member])
            .field("id", &self.id)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Session {
    pub fn fail(
        &self,
        op: &'static str,
    ) -> impl FnOnce(etcd_client::Error) -> ClusterError + use<> {
        failed(&self.url, self.member, op)
    }

    /// Connects to the first member that answers, trying them in turn from
    /// member `first`, and opens a session of `ttl`. One member at a time:
    /// a client balanced over all of them keeps sending requests to one
    /// that is down.
    pub async fn open(url: &StoreUrl, ttl: Duration, first: usize) -> Result<Session> {
        let count = url.members.len();
        let mut failure = None;
        for member in (first..first + count).map(|m| m % count) {
            match Session::open_with(url, ttl, member).await {
                Ok(session) => return Ok(session),
                Err(e) => {
                    warn!("{e}");
                    failure = Some(e);
                }
            }
        }
        Err(failure.expect("a store URL names at least one member"))
    }

    async fn open_with(url: &StoreUrl, ttl: Duration, member: usize) -> Result<Session> {
        let address = &url.members[member];
        let fail = |op| failed(url, member, op);
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            // HTTP/2 pings: a watch on a dead connection errs instead of
            // waiting forever.
            .with_keep_alive(Duration::from_secs(1), REQUEST_TIMEOUT)
            .with_keep_alive_while_idle(true);
        let mut client = Client::connect([address], Some(options))
            .await
            .map_err(fail("connect"))?;
        let granted = client
            .lease_grant(ttl.as_secs().try_into().unwrap_or(i64::MAX), None)
            .await
            .map_err(fail("open a session"))?;
        Ok(Session {
            url: url.clone(),
            client,
            member,
            id: granted.id(),
            ttl,
        })
    }

    /// Everything under [`PREFIX`], and the revision it was read at.
    pub async fn snapshot(&self) -> Result<(ClusterView, i64)> {
        let resp = self
            .client
            .clone()
            .get(PREFIX, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(self.fail("read the cluster"))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let view = ClusterView::from_kvs(
            resp.kvs()
                .iter()
                .filter_map(|kv| Some((kv.key_str().ok()?, kv.value(), kv.lease()))),
        );
        Ok((view, revision))
    }

    /// Records a new overlay network. Returns the network that already has
    /// its name or VNI, if one does.
    pub async fn create_network(&self, net: &OverlayNetwork) -> Result<Option<String>> {
        let (key, vni) = (network_key(&net.name), vni_key(net.vni));
        let record = serde_json::to_string(&NetworkRecord {
            subnet: net.subnet,
            vni: net.vni,
            encap: net.encap,
        })
        .expect("a network record serialises");
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                Compare::create_revision(vni.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(key.as_str(), record, None),
                TxnOp::put(vni.as_str(), net.name.as_str(), None),
            ])
            .or_else([TxnOp::get(vni.as_str(), None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(self.fail("create a network"))?;
        if resp.succeeded() {
            return Ok(None);
        }
        let holder_of_vni = resp.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .and_then(|kv| kv.value_str().ok().map(str::to_string)),
            _ => None,
        });
        Ok(Some(holder_of_vni.unwrap_or_else(|| net.name.clone())))
    }

    /// Removes an overlay network with every host's lease of it.
    pub async fn delete_network(&self, net: &OverlayNetwork) -> Result<()> {
        let txn = Txn::new().and_then([
            TxnOp::delete(network_key(&net.name), None),
            TxnOp::delete(vni_key(net.vni), None),
            TxnOp::delete(
                leases_prefix(&net.name),
                Some(DeleteOptions::new().with_prefix()),
            ),
            TxnOp::delete(
                names_prefix(&net.name),
                Some(DeleteOptions::new().with_prefix()),
            ),
        ]);
        self.client
            .clone()
            .txn(txn)
            .await
            .map_err(self.fail("remove a network"))?;
        Ok(())
    }

    /// Takes `lease` of overlay `network` for the host at `vtep` under this
    /// session: when nobody holds it, or when that host itself does (under
    /// an earlier session, before a restart). False when another host has it.
    pub async fn claim(&self, network: &str, lease: Ipv4Net, vtep: Ipv4Addr) -> Result<bool> {
        let key = lease_key(network, lease);
        let value = lease_value(vtep);
        let put = TxnOp::put(
            key.as_str(),
            value.as_str(),
            Some(PutOptions::new().with_lease(self.id)),
        );
        for when in [
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Compare::value(key.as_str(), CompareOp::Equal, value.as_str()),
        ] {
            let resp = self
                .client
                .clone()
                .txn(Txn::new().when([when]).and_then([put.clone()]))
                .await
                .map_err(self.fail("take a lease"))?;
            if resp.succeeded() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Publishes the endpoints of each network in `names` as this host's
    /// (at `vtep`), under this session; a network without endpoints here
    /// loses its key. One transaction, so others see all or none of it.
    pub async fn publish_names(&self, vtep: Ipv4Addr, names: &HostNames) -> Result<()> {
        let ops: Vec<TxnOp> = names
            .iter()
            .map(|(network, endpoints)| {
                let key = names_key(network, vtep);
                if endpoints.is_empty() {
                    TxnOp::delete(key, None)
                } else {
                    let value =
                        serde_json::to_string(endpoints).expect("published names serialise");
                    TxnOp::put(key, value, Some(PutOptions::new().with_lease(self.id)))
                }
            })
            .collect();
        self.client
            .clone()
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(self.fail("publish names"))?;
        Ok(())
    }

    /// Ends the session: the store drops this host's keys at once.
    pub async fn close(&self) -> Result<()> {
        self.client
            .clone()
            .lease_revoke(self.id)
            .await
            .map_err(self.fail("close the session"))?;
        Ok(())
    }

    pub async fn keep_alive(&self) -> Result<(LeaseKeeper, LeaseKeepAliveStream)> {
        self.client
            .clone()
            .lease_keep_alive(self.id)
            .await
            .map_err(self.fail("keep the session alive"))
    }

    /// Renews the session once; an expired one is an error.
    pub async fn renew(
        &self,
        keeper: &mut LeaseKeeper,
        stream: &mut LeaseKeepAliveStream,
    ) -> Result<()> {
        keeper
            .keep_alive()
            .await
            .map_err(self.fail("keep the session alive"))?;
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, stream.message())
            .await
            .map_err(|_| ClusterError::Disconnected(self.url.to_string()))?
            .map_err(self.fail("keep the session alive"))?;
        match answer {
            Some(resp) if resp.ttl() > 0 => Ok(()),
            _ => Err(ClusterError::SessionExpired {
                url: self.url.to_string(),
                session: self.id,
            }),
        }
    }

    pub async fn watch(&self, from_revision: i64) -> Result<WatchStream> {
        self.client
            .clone()
            .watch(
                PREFIX,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(from_revision),
                ),
            )
            .await
            .map_err(self.fail("watch the cluster"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_every_member() {
        assert_eq!(
            "etcd://192.0.2.254:2379"
                .parse::<StoreUrl>()
                .unwrap()
                .members,
            ["192.0.2.254:2379"]
        );
        let three: StoreUrl = "etcd://a:2379,b:2379,c:2379".parse().unwrap();
        assert_eq!(three.members, ["a:2379", "b:2379", "c:2379"]);
        assert_eq!(three.to_string(), "etcd://a:2379,b:2379,c:2379");
        for bad in [
            "192.0.2.254:2379",
            "http://h:2379",
            "etcd://h",
            "etcd://h:port",
            "etcd://:2379",
            "etcd://a:2379,",
        ] {
            assert_eq!(
                bad.parse::<StoreUrl>(),
                Err(ClusterError::BadUrl(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_snapshot_reads_networks_and_who_holds_which_lease() {
        let net = network_key("ov");
        let lease0 = lease_key("ov", "10.201.0.0/24".parse().unwrap());
        let lease1 = lease_key("ov", "10.201.1.0/24".parse().unwrap());
        let kvs: Vec<(String, Vec<u8>, i64)> = vec![
            (net, br#"{"Subnet":"10.201.0.0/16","Vni":42}"#.to_vec(), 0),
            (vni_key(42), b"ov".to_vec(), 0),
            (lease0, lease_value("192.0.2.11".parse().unwrap()).into(), 7),
            (lease1, lease_value("192.0.2.12".parse().unwrap()).into(), 8),
            // Unreadable: skipped, the rest still read.
            (format!("{PREFIX}leases/ov/10.201.2.7"), b"{}".to_vec(), 9),
            (format!("{PREFIX}networks/bad"), b"nonsense".to_vec(), 0),
            (format!("{PREFIX}other"), b"".to_vec(), 0),
        ];
        let view =
            ClusterView::from_kvs(kvs.iter().map(|(k, v, s)| (k.as_str(), v.as_slice(), *s)));
        assert_eq!(
            view.networks.values().collect::<Vec<_>>(),
            [&OverlayNetwork {
                name: "ov".into(),
                subnet: "10.201.0.0/16".parse().unwrap(),
                vni: 42,
                // A record from before encapsulations were chosen.
                encap: Encap::Vxlan,
            }]
        );
        assert_eq!(view.holders("ov").len(), 2);
        assert_eq!(
            view.held_by("ov", "192.0.2.12".parse().unwrap()),
            Some(&Holder {
                lease: "10.201.1.0/24".parse().unwrap(),
                vtep: "192.0.2.12".parse().unwrap(),
                session: 8
            })
        );
        assert_eq!(view.held_by("ov", "192.0.2.13".parse().unwrap()), None);
        assert!(view.holders("other").is_empty());
    }
}
