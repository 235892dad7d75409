//! The daemon's REST API: paths and JSON bodies, shared by server and client.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// Prefix of every path.
pub const PREFIX: &str = "/v1";

/// `POST /v1/endpoints`: the flags of `create` and `run`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CreateEndpoint {
    /// Endpoint name.
    pub name: String,
    /// `bridge`, `host`, `none`, `container:OTHER` or a network name.
    pub net: String,
    /// Requested address.
    pub ip: Option<Ipv4Addr>,
    /// Requested IPv6 address (`--ip6`), on dual-stack networks.
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    /// Hostname of processes started in it.
    pub hostname: Option<String>,
    /// `-p` specs.
    pub publish: Vec<String>,
    /// `--link OTHER:ALIAS` specs.
    pub links: Vec<String>,
    /// More names of the endpoint in its network's DNS.
    #[serde(default)]
    pub network_aliases: Vec<String>,
    /// The only sources the `-p` ports accept new flows from (CIDR); all
    /// when empty.
    #[serde(default)]
    pub publish_from: Vec<String>,
    /// Relay the `-p` ports' connections with a PROXY protocol v2 header.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// `--mac-address`.
    #[serde(default)]
    pub mac_address: Option<String>,
    /// `--dns`: resolvers for names its network does not know.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// `--dns-search`.
    #[serde(default)]
    pub dns_search: Vec<String>,
    /// `--add-host NAME:IP`.
    #[serde(default)]
    pub add_hosts: Vec<String>,
}

/// One host binding of a published port, as in `docker inspect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostBinding {
    /// Host address, `0.0.0.0` for all.
    pub host_ip: String,
    /// Host port.
    pub host_port: String,
    /// The only sources new flows may come from; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_from: Vec<String>,
}

/// Network settings in the shape of `docker inspect`'s `NetworkSettings`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSettings {
    /// Path of the network namespace.
    pub sandbox_key: String,
    /// Address, empty when none.
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    /// Prefix length, 0 when no address.
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    /// Default gateway, empty when none.
    pub gateway: String,
    /// MAC of eth0, empty when none.
    pub mac_address: String,
    /// `"CPORT/proto"` to host bindings.
    pub ports: BTreeMap<String, Vec<HostBinding>>,
    /// The network it is attached to, by name, as Docker lists each.
    #[serde(default)]
    pub networks: BTreeMap<String, EndpointNetwork>,
}

/// An endpoint's attachment to one network, in the shape of `docker
/// inspect`'s `NetworkSettings.Networks.NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointNetwork {
    /// Its address there.
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    /// The network's prefix length.
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    /// The network's gateway.
    pub gateway: String,
    /// Its MAC there.
    pub mac_address: String,
    /// Its other names in the network's DNS.
    pub aliases: Vec<String>,
    /// Its IPv6 address there, empty when none.
    #[serde(rename = "GlobalIPv6Address", default)]
    pub global_ipv6_address: String,
    /// The network's IPv6 prefix length, 0 when no IPv6.
    #[serde(rename = "GlobalIPv6PrefixLen", default)]
    pub global_ipv6_prefix_len: u8,
    /// The network's IPv6 gateway, empty when none.
    #[serde(rename = "IPv6Gateway", default)]
    pub ipv6_gateway: String,
}

/// `docker inspect`'s `State`, of an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointState {
    /// `ready`, or `creating` / `removing` while that runs.
    pub status: String,
}

/// `GET /v1/endpoints/NAME`: what `netplane inspect` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInfo {
    /// 64 hex digits naming it for good, as Docker's container ids.
    #[serde(default)]
    pub id: String,
    /// Name.
    pub name: String,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created: String,
    /// Its lifecycle state.
    #[serde(default)]
    pub state: EndpointState,
    /// `bridge`, `host`, `none` or `container:OTHER`.
    pub mode: String,
    /// Hostname of processes started in it, when it has its own.
    pub hostname: Option<String>,
    /// `--link` specs.
    pub links: Vec<String>,
    /// `--network-alias` names.
    pub network_aliases: Vec<String>,
    /// The container runtime's id of the container it is the network of,
    /// when a runtime made it through CNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Network settings.
    pub network_settings: NetworkSettings,
}

/// How an overlay's frames travel between hosts (`network create
/// --encap`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    /// VXLAN (RFC 7348): Ethernet in UDP, port 4789.
    #[default]
    Vxlan,
    /// Ethernet in GRE (RFC 2784/2890), the key carrying the VNI.
    Gre,
    /// No encapsulation: routed to the peer's uplink address, for hosts
    /// on one link (flannel's host-gw).
    None,
}

impl Encap {
    /// Its name on the command line and in the API.
    pub fn name(self) -> &'static str {
        match self {
            Encap::Vxlan => "vxlan",
            Encap::Gre => "gre",
            Encap::None => "none",
        }
    }
}

impl std::str::FromStr for Encap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Encap::Vxlan, Encap::Gre, Encap::None]
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("encapsulation {s:?}: expected vxlan, gre or none"))
    }
}

impl std::fmt::Display for Encap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A name of an overlay several hosts' endpoints have: who answers it,
/// who does not (see `logic::discovery::settle`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NameClash {
    pub name: String,
    /// `ADDRESS on VTEP`, the endpoint the name answers.
    pub answers: String,
    /// The same for each endpoint whose name is shadowed.
    pub shadowed: Vec<String>,
}

/// `GET /v1/networks/NAME`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkInfo {
    /// Network name.
    pub name: String,
    /// `bridge`, `host` or `null`, as Docker names them.
    pub driver: String,
    /// Bridge device, for bridge networks.
    pub bridge: Option<String>,
    /// Subnet, for bridge networks.
    pub subnet: Option<String>,
    /// Gateway, for bridge networks.
    pub gateway: Option<String>,
    /// Whether endpoints may talk to each other, for bridge networks.
    pub icc: Option<bool>,
    /// Endpoints attached.
    pub endpoints: Vec<String>,
    /// VXLAN network identifier, for overlays.
    #[serde(rename = "VNI", default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// This host's /24 of the subnet, for overlays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// How an overlay's frames travel between hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encap: Option<Encap>,
    /// Names of an overlay that endpoints on several hosts have, and which
    /// one each answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub name_clashes: Vec<NameClash>,
    /// Every host of the overlay with its lease, this one included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerInfo>,
    /// Identifier: 64 hex digits, as Docker's.
    #[serde(default)]
    pub id: String,
    /// `local` (this host's) or `global` (an overlay of the cluster).
    #[serde(default)]
    pub scope: String,
    /// When it was created (RFC 3339), for networks a user created here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// No masquerade and no published ports.
    #[serde(default)]
    pub internal: bool,
    /// Addresses, as Docker's `IPAM`.
    #[serde(rename = "IPAM", default)]
    pub ipam: Ipam,
    /// Whether its endpoints get IPv6 addresses too.
    #[serde(rename = "EnableIPv6", default)]
    pub enable_ipv6: bool,
    /// `-o` options.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// `--label`s.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The endpoints attached, by name, with their address here.
    #[serde(default)]
    pub containers: BTreeMap<String, NetworkMember>,
}

/// A network's addresses, as Docker's `IPAM`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ipam {
    /// Always `default`.
    pub driver: String,
    /// One entry per subnet.
    pub config: Vec<IpamConfig>,
}

/// One subnet of a network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamConfig {
    pub subnet: String,
    pub gateway: String,
    #[serde(rename = "IPRange", default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
}

/// An endpoint in `network inspect`'s `Containers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkMember {
    pub name: String,
    /// Its address on the network, with the subnet's prefix length.
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    pub mac_address: String,
}

/// A host of an overlay network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerInfo {
    /// Its VTEP address.
    pub vtep: String,
    /// Its /24 of the overlay subnet.
    pub lease: String,
    /// `static` (given at `up`), `registered` (in the cluster store now)
    /// or `last known` (as the store said before it became unreachable).
    pub state: String,
}

/// `POST /v1/networks`: a new network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateNetwork {
    /// Name.
    pub name: String,
    /// `bridge` (the default) or `overlay`.
    #[serde(default = "bridge_driver")]
    pub driver: String,
    /// The subnet; for overlays (where it is required) the whole subnet,
    /// cut into a /24 per host. Picked from the default pools for a
    /// bridge when absent.
    pub subnet: Option<Ipv4Net>,
    /// VXLAN network identifier of an overlay; derived from the name when
    /// absent.
    pub vni: Option<u32>,
    /// How an overlay's frames travel between hosts; VXLAN when absent.
    #[serde(default)]
    pub encap: Option<Encap>,
    /// The bridge's address; the subnet's first host address when absent.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Where endpoints' addresses are leased from.
    #[serde(default)]
    pub ip_range: Option<Ipv4Net>,
    /// No masquerade and no published ports.
    #[serde(default)]
    pub internal: bool,
    /// Whether endpoints may talk to each other.
    #[serde(default = "yes")]
    pub icc: bool,
    /// MTU of the endpoints' interfaces.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Driver options (`-o KEY=VALUE`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// `--label KEY=VALUE`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `--ipv6`: an IPv6 subnet too (`subnet6`, or a unique local /64).
    #[serde(default)]
    pub ipv6: bool,
    /// The IPv6 `--subnet`.
    #[serde(default)]
    pub subnet6: Option<Ipv6Net>,
    /// The IPv6 `--gateway`.
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    /// `--ipv6-masquerade`: IPv6 flows leave from the uplink's address
    /// (NAT66); with false, from the endpoints' own (a routed prefix).
    #[serde(default = "yes")]
    pub ipv6_masquerade: bool,
}

impl CreateNetwork {
    /// A request for network `name` of `driver` with every setting left
    /// to its default.
    pub fn new(name: &str, driver: &str) -> Self {
        CreateNetwork {
            name: name.into(),
            driver: driver.into(),
            subnet: None,
            vni: None,
            encap: None,
            gateway: None,
            ip_range: None,
            internal: false,
            icc: true,
            mtu: None,
            options: BTreeMap::new(),
            labels: BTreeMap::new(),
            ipv6: false,
            subnet6: None,
            gateway6: None,
            ipv6_masquerade: true,
        }
    }
}

fn bridge_driver() -> String {
    "bridge".into()
}

fn yes() -> bool {
    true
}

/// `POST /v1/networks/NAME/connect`: `network connect`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// The endpoint.
    pub endpoint: String,
    /// Its address on the network; the lowest free when absent.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Its IPv6 address on a dual-stack network; the lowest free when
    /// absent.
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    /// Its other names on the network.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// `POST /v1/networks/NAME/disconnect`: `network disconnect`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisconnectRequest {
    /// The endpoint.
    pub endpoint: String,
}

/// `POST /v1/networks/prune`'s answer: the networks removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Pruned {
    pub networks_deleted: Vec<String>,
}

/// `GET /v1/info`: the daemon itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DaemonInfo {
    /// Daemon process id.
    pub pid: u32,
    /// Network namespace the daemon manages (`/proc/PID/ns/net`).
    pub netns: String,
    /// Bridge device.
    pub bridge: String,
    /// Uplink interface, if any.
    pub uplink: Option<String>,
    /// Bridge subnet.
    pub subnet: String,
    /// How the data path's tc programs hang on interfaces: `tcx` (Linux
    /// 6.6 and later) or `clsact`.
    #[serde(default)]
    pub tc_hook: String,
    /// The data path: `ebpf`, or `none` when `--userland-proxy` runs
    /// without it.
    #[serde(default)]
    pub datapath: String,
    /// Whether every published port is relayed by the daemon
    /// (`--userland-proxy`).
    #[serde(default)]
    pub userland_proxy: bool,
    /// How the uplink's XDP fast path runs: `native`, `generic` or `off`.
    #[serde(default)]
    pub xdp: String,
    /// The daemon's netplane version.
    #[serde(default)]
    pub version: String,
}

/// `GET /v1/stats`: data path counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Stats {
    /// Counters per interface the data path is attached to.
    pub interfaces: BTreeMap<String, InterfaceStats>,
    /// Dropped packets by reason, all interfaces together.
    pub drops: BTreeMap<String, u64>,
}

/// Packet and byte counts of one interface, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Traffic {
    /// Packets received (tc ingress).
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets sent (tc egress).
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// How full a data path table is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableUse {
    /// The map.
    pub map: String,
    /// Entries in it.
    pub entries: u64,
    /// Entries it holds at most.
    pub capacity: u64,
}

/// Counters of one interface, as the data path's hooks on it see them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceStats {
    #[serde(flatten)]
    pub traffic: Traffic,
    /// Drops by reason among the packets that arrived on it.
    pub drops: BTreeMap<String, u64>,
}

/// `GET /v1/stats/NAME`: one endpoint's counters from its own side: `rx`
/// is what it received, `tx` what it sent (the host veth's reverse).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointStats {
    pub endpoint: String,
    /// Its host-side veth.
    pub interface: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Drops by reason among the packets it sent.
    pub drops: BTreeMap<String, u64>,
}

/// `POST /v1/endpoints/NAME/ports` (publish) and `DELETE` on the same path
/// (withdraw): a `-p` spec. Withdrawing matches the endpoint ports and
/// protocol, and the host address and ports when the spec gives them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortRequest {
    /// `[IP:][HOSTPORT[-END]:]CPORT[-END][/tcp|/udp]`.
    pub spec: String,
    /// The only sources the port accepts new flows from (CIDR), when
    /// publishing; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
    /// Relay the port's connections with a PROXY protocol v2 header, when
    /// publishing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
}

/// One published rule, as `port ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortInfo {
    /// Endpoint.
    pub endpoint: String,
    /// Endpoint address.
    pub endpoint_ip: Ipv4Addr,
    /// Host address, `0.0.0.0` for all.
    pub host_ip: IpAddr,
    /// First host port.
    pub host_port: u16,
    /// Last host port.
    pub host_port_end: u16,
    /// First endpoint port.
    pub container_port: u16,
    /// Last endpoint port.
    pub container_port_end: u16,
    /// `tcp` or `udp`.
    pub proto: String,
    /// The only sources new flows may come from; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
}

/// One NAT rule with the packets and bytes the data path translated under
/// it (every packet of every flow, not only the first as with iptables).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NatRule {
    /// `MASQUERADE` or `DNAT`.
    pub target: String,
    /// `all`, `tcp` or `udp`.
    pub prot: String,
    /// Source the rule matches.
    pub source: String,
    /// Destination the rule matches.
    pub destination: String,
    /// The rest, in iptables' words (`tcp dpt:8080 to:172.17.0.2:80`).
    pub detail: String,
    /// Packets translated.
    pub packets: u64,
    /// Bytes translated.
    pub bytes: u64,
    /// Packets dropped while being translated under the rule, by reason;
    /// only reasons that dropped any.
    pub drops: BTreeMap<String, u64>,
    /// What the userspace forwarder relayed under the rule, when it serves
    /// any of its ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxied: Option<ProxyCounters>,
}

/// What the userspace forwarder relayed under one rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProxyCounters {
    /// TCP connections and UDP sessions opened.
    pub connections: u64,
    /// Those open now.
    pub active: u64,
    /// Payload bytes from clients to the endpoint.
    pub bytes_in: u64,
    /// Payload bytes from the endpoint to clients.
    pub bytes_out: u64,
    /// Connections and sessions refused, by reason (`over_limit`,
    /// `not_allowed`, `unreachable`); only reasons that refused any.
    pub refused: BTreeMap<String, u64>,
}

/// `GET /v1/nat`: what `netplane nat ls` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NatTable {
    /// Masquerade first, then published ports.
    pub rules: Vec<NatRule>,
    /// Flows tracked now (each has two entries).
    pub tracked_flows: usize,
    /// Dropped packets by reason.
    pub drops: BTreeMap<String, u64>,
}

/// One direction of a tracked flow, as its packets arrive at the data
/// path (before translation), and what was counted of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FlowTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Port, or the echo identifier for ICMP (0 where it is the other's).
    pub sport: u16,
    pub dport: u16,
    pub packets: u64,
    /// Bytes, L2 header included.
    pub bytes: u64,
}

/// `GET /v1/flows`: one tracked flow, as `ct ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FlowInfo {
    /// `tcp`, `udp`, `icmp`.
    pub proto: String,
    /// `SYN_SENT`, `SYN_RECV`, `ESTABLISHED`, `FIN_WAIT`, `CLOSE` for TCP;
    /// `UNREPLIED` or `REPLIED` otherwise.
    pub state: String,
    /// The direction of the first packet.
    pub original: FlowTuple,
    /// The reply direction: its source is where the original went after
    /// translation, its destination where the original came from after it.
    pub reply: FlowTuple,
    /// Since the first packet, in seconds.
    pub age_secs: u64,
    /// Since the last packet either way.
    pub idle_secs: u64,
    /// Until the flow expires unless a packet comes.
    pub expires_secs: u64,
    /// The endpoint that sent the first packet or that it went to.
    pub endpoint: Option<String>,
}

/// `GET /v1/flows` and `DELETE /v1/flows`: flows of one endpoint only.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FlowFilter {
    pub endpoint: Option<String>,
}

/// `DELETE /v1/flows`: how many flows were removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Flushed {
    pub flows: usize,
}

/// `DELETE /v1/endpoints/NAME`: what went with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Removed {
    /// The endpoints removed: the one named last, after those that shared
    /// its namespace (`--net container:NAME`, with `force`).
    pub endpoints: Vec<String>,
    /// The processes killed in its namespace ("COMM (pid N)").
    pub killed: Vec<String>,
}

/// Query of `DELETE /v1/endpoints/NAME`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RemoveQuery {
    /// Remove the endpoints sharing its namespace too.
    #[serde(default)]
    pub force: bool,
}

/// Body of every error response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One line naming what is wrong.
    pub error: String,
}

/// One container's attachment as CNI names it: the network configuration's
/// name, `CNI_CONTAINERID` and `CNI_IFNAME`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachmentKey {
    /// The CNI network configuration's `name`.
    pub config: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

/// `POST /v1/cni/add`: a CNI ADD, as the plugin read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAdd {
    /// Which attachment.
    pub key: CniAttachmentKey,
    /// `CNI_NETNS`.
    pub netns: PathBuf,
    /// The netplane network (`bridge` for the default one).
    pub network: String,
    /// Its subnet, to create it with when it does not exist.
    pub subnet: Option<Ipv4Net>,
    /// The endpoint's name: the container's (`K8S_POD_NAME`), else one
    /// derived from the container id.
    pub name: String,
    /// The address asked for (`ips` capability, `IP=`).
    pub ip: Option<Ipv4Addr>,
    /// The IPv6 address asked for, on a dual-stack network.
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    /// The MAC asked for (`mac` capability, `MAC=`).
    pub mac: Option<String>,
    /// `portMappings`, as `-p` specs.
    pub publish: Vec<String>,
}

/// What ADD made (and CHECK verifies): the plugin's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachment {
    /// The netplane endpoint's name.
    pub endpoint: String,
    /// The host-side veth and its MAC; none on a macvlan network.
    pub host: Option<(String, String)>,
    /// The interface in the container (`CNI_IFNAME`).
    pub ifname: String,
    /// Its MAC.
    pub mac: String,
    /// Its MTU, when not the kernel's default.
    pub mtu: Option<u32>,
    /// The container's namespace.
    pub sandbox: PathBuf,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The network's prefix length.
    pub prefix_len: u8,
    /// The network's gateway, its default route.
    pub gateway: Ipv4Addr,
    /// The network's embedded DNS server, when it has one.
    pub dns: Option<Ipv4Addr>,
    /// Its IPv6 address, the network's IPv6 prefix length and gateway,
    /// on a dual-stack network.
    #[serde(default)]
    pub ip6: Option<(Ipv6Addr, u8, Ipv6Addr)>,
}

/// `POST /v1/cni/gc`: removes the attachments of CNI network `config`
/// that are not among `valid`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniGc {
    /// The CNI network configuration's `name`.
    pub config: String,
    /// `cni.dev/valid-attachments`, as (container id, ifname).
    pub valid: Vec<(String, String)>,
}
