//! Map names and the types stored in them.

/// Names of the maps, as declared in the eBPF object and pinned in bpffs.
pub mod maps {
    /// `u32` at index 0: the [`super::LAYOUT_VERSION`] of the pinned maps,
    /// stamped by the daemon that pinned them (0 until it has).
    pub const LAYOUT: &str = "NP_LAYOUT";
    /// [`super::NetConfig`] at index 0: the bridge network the programs serve.
    pub const NET_CONFIG: &str = "NP_NET_CONFIG";
    /// Per-CPU [`super::IfCounters`] keyed by [`super::IfStatsKey`].
    pub const IF_STATS: &str = "NP_IF_STATS";
    /// Per-CPU `u64` drop counts indexed by [`super::DropReason`].
    pub const DROPS: &str = "NP_DROPS";
    /// Per-CPU [`super::IfDrops`] keyed by interface index (`u32`, host
    /// byte order): the drops among the packets that arrived on it.
    pub const IF_DROPS: &str = "NP_IF_DROPS";
    /// Device map (hash) of the endpoints' host-side veths the XDP program
    /// may redirect to, keyed and valued by ifindex (`u32`, host byte
    /// order).
    pub const XDP_PORTS: &str = "NP_XDP_PORTS";
    /// [`super::EndpointPort`] keyed by the endpoint's address (`u32`,
    /// network byte order): where packets for an endpoint are delivered.
    pub const ENDPOINTS: &str = "NP_ENDPOINTS";
    /// [`super::EndpointIdentity`] keyed by the host-side veth's ifindex
    /// (`u32`, host byte order): what an endpoint may send as.
    pub const ENDPOINT_IFACES: &str = "NP_ENDPOINT_IFACES";
    /// Addresses of the host itself (`u32` keys, network byte order; the
    /// value holds [`super::HOST_ADDR`] and [`super::HOST_ADDR_GATEWAY`]
    /// bits, host byte order): destinations published ports are reachable
    /// on.
    pub const HOST_ADDRS: &str = "NP_HOST_ADDRS";
    /// [`super::PortTarget`] keyed by [`super::PortKey`]: ports published
    /// on one address of the host.
    pub const PUBLISHED: &str = "NP_PUBLISHED";
    /// [`super::PortTarget`] array indexed by
    /// [`super::PortKey::wildcard_index`]: ports published on every address
    /// of the host, the common case, where an array is cheaper than a hash
    /// both to look up and to fill. An entry with address 0 is empty.
    pub const PUBLISHED_ANY: &str = "NP_PUBLISHED_ANY";
    /// [`super::OverlayPeer`] keyed by the network address of another
    /// host's /24 lease of an overlay subnet (`u32`, network byte order):
    /// where frames to that lease go, and what frames from it must carry.
    pub const OVERLAY_ROUTES: &str = "NP_OVERLAY_ROUTES";
    /// [`super::CtEntry`] keyed by [`super::FlowKey`]: connection tracking
    /// and NAT, one entry per direction of a flow.
    pub const CONNTRACK: &str = "NP_CONNTRACK";
    /// [`super::CtTimeouts`] at index 0: the lifetimes the daemon was
    /// started with, by which the programs reclaim expired flows
    /// themselves when the table is full (the daemon may be down).
    pub const CT_TIMEOUTS: &str = "NP_CT_TIMEOUTS";
    /// Per-CPU [`super::IfCounters`] indexed by NAT rule slot: slot
    /// [`super::MASQUERADE_SLOT`] is masquerade, the others published ports.
    pub const NAT_COUNTERS: &str = "NP_NAT_COUNTERS";
    /// Per-CPU `u64` keyed by [`super::RuleDropKey`]: packets dropped while
    /// being translated under a NAT rule, by rule and reason. Entries are
    /// made by the programs on a rule's first drop of a reason.
    pub const RULE_DROPS: &str = "NP_RULE_DROPS";
    /// [`super::SockRevValue`] keyed by [`super::SockRevKey`] (LRU): the
    /// published address a host socket sent to, so that replies read from
    /// an unconnected UDP socket come from the address it expects.
    pub const SOCK_REV: &str = "NP_SOCK_REV";
    /// Ring buffer of [`super::Event`]s for `netplane monitor`.
    pub const EVENTS: &str = "NP_EVENTS";
    /// `u32` at index 0, host byte order: the programs emit events only
    /// while it is not 0 (someone is watching).
    pub const MONITOR: &str = "NP_MONITOR";
    /// Per-CPU `u64` at index 0: events that found the ring buffer full.
    pub const EVENTS_LOST: &str = "NP_EVENTS_LOST";
    /// LPM trie of [`super::PublishFromKey`]s (the value, a `u32`, is
    /// unused): the sources each published port with an allow-list
    /// ([`super::PORT_FLAG_ALLOW_LIST`]) accepts new flows from.
    pub const PUBLISH_FROM: &str = "NP_PUBLISH_FROM";
    /// Pairs of endpoint addresses joined with `--link` ([`super::AddrPair`],
    /// both orders; the value is unused): allowed to talk with `--icc=false`.
    pub const LINKED: &str = "NP_LINKED";
    /// [`super::NetworkPolicy`] keyed by a network's identifier (`u32`,
    /// host byte order; [`super::EndpointIdentity::vni`]): the networks
    /// other than the bridge network, whose policy is in
    /// [`super::NetConfig`].
    pub const NETWORKS: &str = "NP_NETWORKS";
    /// [`super::MacvlanSource`] keyed by [`super::MacKey`]: who may send
    /// out of a macvlan parent with that source MAC, and as what address.
    pub const MACVLAN_SOURCES: &str = "NP_MACVLAN_SOURCES";
    /// An IPv6 endpoint's own global address (16 bytes, as in packets)
    /// keyed by the ifindex of its host-side veth (host byte order).
    pub const ENDPOINT6_IFACES: &str = "NP_ENDPOINT6_IFACES";
    /// [`super::EndpointPort`] keyed by every IPv6 address of an endpoint,
    /// global and link-local (16 bytes, as in packets): its network, and
    /// where packets for it go.
    pub const ENDPOINTS6: &str = "NP_ENDPOINTS6";
    /// [`super::CtEntry6`] keyed by [`super::FlowKey6`]: connection
    /// tracking and NAT of IPv6 flows, as [`CONNTRACK`] for IPv4.
    pub const CONNTRACK6: &str = "NP_CONNTRACK6";
    /// [`super::PortTarget6`] keyed by [`super::PortKey6`]: IPv6 published
    /// ports; the unspecified address (all zero) stands for every address
    /// of the host.
    pub const PUBLISHED6: &str = "NP_PUBLISHED6";
    /// The host's own IPv6 addresses (16 bytes, as in packets) with their
    /// `HOST_ADDR*` bits (`u32`, host byte order), as [`HOST_ADDRS`].
    pub const HOST_ADDRS6: &str = "NP_HOST_ADDRS6";
    /// [`super::Uplink6`] at index 0: the uplink's global IPv6 address,
    /// which NAT66 masquerades endpoints' flows to.
    pub const UPLINK6: &str = "NP_UPLINK6";
    /// [`super::SockRevValue6`] keyed by [`super::SockRevKey6`] (LRU): as
    /// [`SOCK_REV`] for IPv6 sockets.
    pub const SOCK_REV6: &str = "NP_SOCK_REV6";
}

/// The version of what the pinned maps' keys and values mean. A daemon
/// reuses pinned maps only when they carry its own version. Raise it with
/// any change the kernel cannot see in a map's type and sizes: a field
/// that changes meaning, byte order or place within the same size, a drop
/// reason given another slot, a NAT slot renumbered.
///
/// Versions: 1, the first stamped (and what a netplane before stamps left);
/// 2, [`CtEntry`] gained `created_ns`, `packets` and `bytes`.
pub const LAYOUT_VERSION: u32 = 2;

/// Names of the programs in the eBPF object.
pub mod programs {
    /// tc ingress of an endpoint's host-side veth (traffic the endpoint sends).
    pub const ENDPOINT_INGRESS: &str = "np_endpoint_ingress";
    /// tc ingress of the uplink and the bridge: counts.
    pub const COUNT_INGRESS: &str = "np_count_ingress";
    /// tc egress of the uplink and the bridge: counts.
    pub const COUNT_EGRESS: &str = "np_count_egress";
    /// Does nothing: the floor of the per-packet benchmarks.
    pub const PASS: &str = "np_pass";
    /// tc ingress of the uplink: counts, reverses masquerade, publishes ports.
    pub const UPLINK_INGRESS: &str = "np_uplink_ingress";
    /// XDP of the uplink: established flows to endpoints, redirected
    /// before an skb exists; the rest passes to [`UPLINK_INGRESS`].
    pub const UPLINK_XDP: &str = "np_uplink_xdp";
    /// XDP of an endpoint's eth0: passes every frame, so that its veth
    /// takes frames [`UPLINK_XDP`] redirects as they are.
    pub const XDP_PASS: &str = "np_xdp_pass";
    /// tc egress of the uplink and of every macvlan parent: counts, and
    /// lets macvlan endpoints send only as themselves.
    pub const PARENT_EGRESS: &str = "np_parent_egress";
    /// cgroup connect4: host processes reach published ports.
    pub const CONNECT4: &str = "np_connect4";
    /// cgroup sendmsg4: the same for unconnected UDP.
    pub const SENDMSG4: &str = "np_sendmsg4";
    /// cgroup recvmsg4: replies seem to come from the published address.
    pub const RECVMSG4: &str = "np_recvmsg4";
    /// cgroup/getpeername4: a connected socket's peer as it was asked for.
    pub const GETPEERNAME4: &str = "np_getpeername4";
    /// cgroup/connect6: as [`CONNECT4`] for IPv6 sockets, IPv4-mapped
    /// addresses of dual-stack sockets included.
    pub const CONNECT6: &str = "np_connect6";
    /// cgroup/sendmsg6.
    pub const SENDMSG6: &str = "np_sendmsg6";
    /// cgroup/recvmsg6.
    pub const RECVMSG6: &str = "np_recvmsg6";
    /// cgroup/getpeername6.
    pub const GETPEERNAME6: &str = "np_getpeername6";
}

/// Capacity of [`maps::IF_STATS`]: two directions for this many interfaces.
pub const MAX_INTERFACES: u32 = 4096;

/// Capacity of [`maps::ENDPOINTS`] and [`maps::ENDPOINT_IFACES`].
pub const MAX_ENDPOINTS: u32 = 4096;

/// Bit of every [`maps::HOST_ADDRS`] value (all a value held before there
/// were other bits).
pub const HOST_ADDR: u32 = 1 << 0;
/// Bit of a [`maps::HOST_ADDRS`] value: the gateway of one of netplane's
/// networks, where the services the host runs for its endpoints (the
/// embedded DNS) listen; the uplink reaches it through published ports
/// only.
pub const HOST_ADDR_GATEWAY: u32 = 1 << 1;

/// Capacity of [`maps::HOST_ADDRS`].
pub const MAX_HOST_ADDRS: u32 = 256;

/// Capacity of [`maps::PUBLISHED`], ports published on a given host
/// address: as many as every port of both protocols on one address.
pub const MAX_PUBLISHED: u32 = 2 * 65536;

/// Capacity of [`maps::PUBLISH_FROM`]: source networks of every
/// published port's allow-list together.
pub const MAX_PUBLISH_FROM: u32 = 16384;

/// Key of [`maps::PUBLISH_FROM`] after the LPM trie's prefix length: the
/// rule, then a source network. A list entry has prefix length 32 plus the
/// network's; a packet is looked up with 64, its rule and its source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PublishFromKey {
    /// [`PortTarget::slot`] of the rule, network byte order (the trie
    /// matches bits from the first byte on).
    pub slot_be: u32,
    /// Source address or network, network byte order.
    pub addr_be: u32,
}

/// Bit in [`PortTarget::flags`]: the port accepts new flows only from the
/// sources its rule has in [`maps::PUBLISH_FROM`].
pub const PORT_FLAG_ALLOW_LIST: u16 = 1 << 0;

/// Capacity of [`maps::OVERLAY_ROUTES`]: leases of other hosts.
pub const MAX_OVERLAY_LEASES: u32 = 4096;

/// Entries of [`maps::PUBLISHED_ANY`]: every port of TCP, then of UDP.
pub const PUBLISHED_ANY_ENTRIES: u32 = 2 * 65536;

/// Capacity of [`maps::NAT_COUNTERS`].
pub const MAX_NAT_SLOTS: u32 = 16384;

/// [`maps::NAT_COUNTERS`] slot of masquerade.
pub const MASQUERADE_SLOT: u32 = 0;

/// Default capacity of [`maps::CONNTRACK`] (entries, two per flow); `up
/// --ct-max` overrides it.
pub const DEFAULT_CT_MAX: u32 = 262_144;

/// Capacity of [`maps::RULE_DROPS`]: a few reasons for each rule slot. The
/// map is not preallocated, so only the pairs that dropped take memory.
pub const MAX_RULE_DROPS: u32 = 4 * MAX_NAT_SLOTS;

/// Key of [`maps::RULE_DROPS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleDropKey {
    /// [`maps::NAT_COUNTERS`] slot of the rule, host byte order.
    pub slot: u32,
    /// The [`DropReason`], host byte order.
    pub reason: u32,
}

/// Capacity of [`maps::SOCK_REV`].
pub const MAX_SOCK_REV: u32 = 65536;

/// Key of [`maps::SOCK_REV`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    /// Socket cookie, host byte order.
    pub cookie: u64,
    /// Endpoint address the socket really talks to, network byte order.
    pub addr_be: u32,
    /// Endpoint port, network byte order.
    pub port_be: u16,
    /// Explicit padding.
    pub _pad: u16,
}

/// Value of [`maps::SOCK_REV`]: the published address and port (for a
/// TCP socket too, which `getpeername` answers with).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevValue {
    /// Address the socket asked for, network byte order.
    pub addr_be: u32,
    /// Port it asked for, network byte order.
    pub port_be: u16,
    /// Explicit padding.
    pub _pad: u16,
}

/// Key of [`maps::SOCK_REV6`]: a socket and the endpoint address (16
/// bytes as in packets; IPv4-mapped for a dual-stack socket talking IPv4)
/// and port it was redirected to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey6 {
    /// Socket cookie, host byte order.
    pub cookie: u64,
    /// Endpoint address the socket really talks to.
    pub addr: [u8; 16],
    /// Endpoint port, network byte order.
    pub port_be: u16,
    /// Explicit padding.
    pub _pad: [u8; 6],
}

/// Value of [`maps::SOCK_REV6`]: the published address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevValue6 {
    /// Address the socket asked for.
    pub addr: [u8; 16],
    /// Port it asked for, network byte order.
    pub port_be: u16,
    /// Explicit padding.
    pub _pad: u16,
}

/// Capacity of [`maps::LINKED`].
pub const MAX_LINKED: u32 = 8192;

/// Bit in [`NetConfig::flags`]: endpoints of the bridge may not talk to each
/// other (Docker's `--icc=false`).
pub const NET_FLAG_ICC_DISABLED: u32 = 1 << 0;

/// [`NetConfig::flags`]: the host has overlay networks, so VXLAN to its
/// VTEP address is the data path's to take apart. Without one it is left
/// to the stack, where another VXLAN user of the host may want it.
pub const NET_FLAG_OVERLAY: u32 = 1 << 1;

/// [`NetConfig::flags`]: the host has more than one network (the bridge
/// network and others: overlays, user-defined bridges), so the network of
/// an endpoint a packet is for is compared with the sender's.
pub const NET_FLAG_NETWORKS: u32 = 1 << 2;

/// [`NetworkPolicy::flags`]: an internal network: its endpoints reach
/// only addresses of its own subnet (Docker's `--internal`).
pub const NET_FLAG_INTERNAL: u32 = 1 << 3;

/// [`NetConfig::flags`]: the host has macvlan networks, whose endpoints'
/// frames leave through their parent's egress, checked there.
pub const NET_FLAG_MACVLAN: u32 = 1 << 4;

/// [`NetworkPolicy::flags`]: the network's IPv6 flows leave with the
/// endpoints' own addresses (`--ipv6-masquerade=false`, a routed global
/// prefix): tracked, so replies come back in, but not translated.
pub const NET_FLAG_IPV6_ROUTED: u32 = 1 << 5;

/// [`NetworkPolicy::flags`]: an overlay whose frames travel between hosts
/// in GRE (`--encap gre`) instead of VXLAN. [`NetConfig::flags`]: the
/// host has such an overlay, so GRE to its VTEP address is the data
/// path's to take apart; without one it is left to the stack, where
/// another GRE user of the host may want it.
pub const NET_FLAG_ENCAP_GRE: u32 = 1 << 6;

/// [`NetworkPolicy::flags`]: an overlay whose packets are routed between
/// hosts as they are, to the peer's uplink address (`--encap none`).
pub const NET_FLAG_ENCAP_NONE: u32 = 1 << 7;

/// [`MacvlanSource::flags`]: the parent's own MAC, the host's traffic:
/// any source address.
pub const MACVLAN_SOURCE_HOST: u32 = 1 << 0;

/// Capacity of [`maps::MACVLAN_SOURCES`].
pub const MAX_MACVLAN_SOURCES: u32 = 4096;

/// Key of [`maps::MACVLAN_SOURCES`]: a source MAC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacKey {
    pub mac: [u8; 6],
    /// Explicit padding.
    pub _pad: [u8; 2],
}

/// Value of [`maps::MACVLAN_SOURCES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MacvlanSource {
    /// The only address frames with this MAC may come from, network byte
    /// order; unused with [`MACVLAN_SOURCE_HOST`].
    pub addr_be: u32,
    /// `MACVLAN_SOURCE_*` bits, host byte order.
    pub flags: u32,
}

/// Capacity of [`maps::NETWORKS`].
pub const MAX_NETWORKS: u32 = 1024;

/// Identifiers of user-defined bridge networks start here, above every
/// VXLAN network identifier (24 bits), which overlays use as theirs; the
/// bridge network's is 0.
pub const BRIDGE_NETWORK_IDS: u32 = 1 << 24;

/// What the programs decide an endpoint's traffic by, for one network:
/// value of [`maps::NETWORKS`], and [`NetConfig::policy`] for the bridge
/// network.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Network address of its subnet on this host, network byte order.
    pub subnet_be: u32,
    /// Its netmask, network byte order.
    pub mask_be: u32,
    /// Its gateway's address, network byte order.
    pub gateway_be: u32,
    /// [`NET_FLAG_ICC_DISABLED`], [`NET_FLAG_INTERNAL`],
    /// [`NET_FLAG_IPV6_ROUTED`] and an overlay's `NET_FLAG_ENCAP_*`, host
    /// byte order.
    pub flags: u32,
}

impl NetworkPolicy {
    /// The policy of a network the programs were not told about: no
    /// address is on its subnet, and nothing is restricted.
    pub const UNKNOWN: NetworkPolicy = NetworkPolicy {
        subnet_be: 0,
        mask_be: u32::MAX,
        gateway_be: 0,
        flags: 0,
    };

    /// Whether `addr_be` is on the network's subnet.
    #[inline(always)]
    pub fn contains(&self, addr_be: u32) -> bool {
        addr_be & self.mask_be == self.subnet_be
    }
}

/// The bridge network as the data path sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// Network address of the bridge subnet, network byte order.
    pub subnet_be: u32,
    /// Netmask of the bridge subnet, network byte order.
    pub mask_be: u32,
    /// The bridge's own address (the endpoints' gateway), network byte order.
    pub gateway_be: u32,
    /// `NET_FLAG_*` bits, host byte order.
    pub flags: u32,
    /// Masquerade source address (the uplink's), network byte order; 0 when
    /// there is no uplink.
    pub uplink_addr_be: u32,
    /// The uplink's ifindex, host byte order; 0 when there is none.
    pub uplink_ifindex: u32,
    /// The bridge's ifindex, host byte order.
    pub bridge_ifindex: u32,
    /// Lowest source port masquerade picks when it cannot keep a port, host
    /// byte order.
    pub nat_port_min: u16,
    /// Highest such port, host byte order.
    pub nat_port_max: u16,
    /// The bridge's MAC: the source of frames the data path delivers to
    /// endpoints, as if the gateway had routed them.
    pub bridge_mac: [u8; 6],
    /// Explicit padding.
    pub _pad: [u8; 2],
    /// Cookie of the daemon's network namespace, host byte order: the
    /// socket programs are attached to a whole cgroup and act only on
    /// sockets of this namespace.
    pub netns_cookie: u64,
}

impl NetConfig {
    /// The bridge network's policy.
    #[inline(always)]
    pub fn policy(&self) -> NetworkPolicy {
        NetworkPolicy {
            subnet_be: self.subnet_be,
            mask_be: self.mask_be,
            gateway_be: self.gateway_be,
            flags: self.flags & NET_FLAG_ICC_DISABLED,
        }
    }
}

/// Where packets for an endpoint go: value of [`maps::ENDPOINTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointPort {
    /// ifindex of the host-side veth, host byte order.
    pub ifindex: u32,
    /// The endpoint's MAC.
    pub mac: [u8; 6],
    /// Explicit padding.
    pub _pad: [u8; 2],
    /// The endpoint's network: the VNI of its overlay, 0 for the bridge
    /// network; host byte order.
    pub vni: u32,
}

/// What an endpoint may send as: value of [`maps::ENDPOINT_IFACES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointIdentity {
    /// Its address, network byte order.
    pub addr_be: u32,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Explicit padding.
    pub _pad: [u8; 2],
    /// Its network: the VNI of its overlay, 0 for the bridge network; host
    /// byte order.
    pub vni: u32,
}

/// Key of [`maps::LINKED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrPair {
    /// Source address, network byte order.
    pub src_be: u32,
    /// Destination address, network byte order.
    pub dst_be: u32,
}

/// IP protocol numbers the data path translates.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// Key of [`maps::PUBLISHED`]: a host address, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    /// Host address the port is published on, network byte order; 0 for
    /// every address of the host.
    pub addr_be: u32,
    /// Host port, network byte order.
    pub port_be: u16,
    /// [`proto`] number.
    pub proto: u8,
    /// Explicit padding.
    pub _pad: u8,
}

impl PortKey {
    /// The key's index in [`maps::PUBLISHED_ANY`], whatever its address;
    /// `None` for protocols that have no ports.
    pub const fn wildcard_index(&self) -> Option<u32> {
        let port = u16::from_be(self.port_be) as u32;
        match self.proto {
            proto::TCP => Some(port),
            proto::UDP => Some(65536 + port),
            _ => None,
        }
    }
}

/// Value of [`maps::PUBLISHED`] and [`maps::PUBLISHED_ANY`]: the endpoint
/// behind a published port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTarget {
    /// Endpoint address, network byte order.
    pub addr_be: u32,
    /// Endpoint port, network byte order.
    pub port_be: u16,
    /// `PORT_FLAG_*` bits, host byte order. (Explicit padding before
    /// there were flags: an entry of then reads as no flags, its meaning.)
    pub flags: u16,
    /// [`maps::NAT_COUNTERS`] slot of the rule, host byte order.
    pub slot: u32,
}

/// Key of [`maps::PUBLISHED6`]: a host IPv6 address, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey6 {
    /// Host address the port is published on, as in packets; all zero
    /// for every address of the host.
    pub addr: [u8; 16],
    /// Host port, network byte order.
    pub port_be: u16,
    /// [`proto`] number.
    pub proto: u8,
    /// Explicit padding.
    pub _pad: u8,
}

/// Value of [`maps::PUBLISHED6`]: the endpoint behind an IPv6 published
/// port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTarget6 {
    /// Endpoint address, as in packets.
    pub addr: [u8; 16],
    /// Endpoint port, network byte order.
    pub port_be: u16,
    /// `PORT_FLAG_*` bits, host byte order.
    pub flags: u16,
    /// [`maps::NAT_COUNTERS`] slot of the rule, host byte order.
    pub slot: u32,
}

/// Value of [`maps::UPLINK6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uplink6 {
    /// The uplink's global address, as in packets; all zero for none
    /// (IPv6 flows are then not masqueraded but passed to the stack).
    pub addr: [u8; 16],
}

/// An IPv4 address as the maps and packets hold it: network byte order,
/// in a `u32` read natively (the `_be` fields).
pub const fn addr_be(addr: core::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The IPv4 address in a network-order `u32` (see [`addr_be`]).
pub const fn addr_from_be(be: u32) -> core::net::Ipv4Addr {
    let [a, b, c, d] = be.to_ne_bytes();
    core::net::Ipv4Addr::new(a, b, c, d)
}

/// The MAC of the endpoint with address `addr_be` (network byte order):
/// Docker's scheme, 02:42 and the four octets, so locally administered,
/// unicast and unique within a subnet. The control plane gives endpoints
/// these MACs and the overlay addresses frames to remote endpoints by them.
pub const fn endpoint_mac(addr_be: u32) -> [u8; 6] {
    let [a, b, c, d] = addr_be.to_ne_bytes();
    [0x02, 0x42, a, b, c, d]
}

/// Value of [`maps::OVERLAY_ROUTES`]: the host holding a lease.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverlayPeer {
    /// The host's VTEP (uplink) address, network byte order.
    pub vtep_be: u32,
    /// The overlay's VXLAN network identifier, host byte order.
    pub vni: u32,
}

/// Key of [`maps::CONNTRACK`] (`A = u32`) and [`maps::CONNTRACK6`]
/// (`A = [u8; 16]`): one direction of a flow as it arrives at the data
/// path, before translation. For ICMP echo the identifier is the source
/// port of requests and the destination port of replies; the other is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey<A = u32> {
    /// Source address, network byte order.
    pub saddr_be: A,
    /// Destination address, network byte order.
    pub daddr_be: A,
    /// Source port, network byte order.
    pub sport_be: u16,
    /// Destination port, network byte order.
    pub dport_be: u16,
    /// [`proto`] number.
    pub proto: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}

/// An IPv6 flow's key: addresses as the 16 bytes of packets.
pub type FlowKey6 = FlowKey<[u8; 16]>;

/// [`CtEntry::flags`]: this entry is the reply direction of its flow.
pub const CT_REPLY: u32 = 1 << 0;
/// [`CtEntry::flags`]: a TCP SYN was seen in this direction.
pub const CT_SEEN_SYN: u32 = 1 << 1;
/// [`CtEntry::flags`]: a TCP ACK was seen in this direction.
pub const CT_SEEN_ACK: u32 = 1 << 2;
/// [`CtEntry::flags`]: a TCP FIN was seen in this direction.
pub const CT_SEEN_FIN: u32 = 1 << 3;
/// [`CtEntry::flags`]: a TCP RST was seen in this direction.
pub const CT_SEEN_RST: u32 = 1 << 4;

/// Value of [`maps::CT_TIMEOUTS`]: how long a flow lives after its last
/// packet, by what was seen of it, in nanoseconds, host byte order. All
/// zero until a daemon wrote them: nothing is reclaimed then.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP until both directions acknowledged.
    pub tcp_syn_ns: u64,
    /// TCP after the handshake, until FIN or RST.
    pub tcp_established_ns: u64,
    /// TCP after one direction's FIN.
    pub tcp_fin_wait_ns: u64,
    /// TCP after FIN from both directions, or RST.
    pub tcp_closing_ns: u64,
    /// UDP and protocols without ports.
    pub udp_ns: u64,
    /// ICMP echo.
    pub icmp_ns: u64,
}

/// Value of [`maps::CONNTRACK`] and [`maps::CONNTRACK6`]: the addresses and ports a packet of this
/// direction leaves with, and what was seen of the flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry<A = u32> {
    /// Source address after translation, network byte order.
    pub saddr_be: A,
    /// Destination address after translation, network byte order.
    pub daddr_be: A,
    /// Source port after translation, network byte order.
    pub sport_be: u16,
    /// Destination port after translation, network byte order.
    pub dport_be: u16,
    /// [`maps::NAT_COUNTERS`] slot, host byte order.
    pub slot: u32,
    /// `CT_*` bits, host byte order.
    pub flags: u32,
    /// Explicit padding (with 16-byte addresses too, the counters that
    /// follow are aligned).
    pub _pad: u32,
    /// CLOCK_MONOTONIC (`bpf_ktime_get_coarse_ns`) of the last packet, kept
    /// to within a second, host byte order.
    pub last_seen_ns: u64,
    /// CLOCK_MONOTONIC when the flow was recorded, host byte order.
    pub created_ns: u64,
    /// Packets of this direction, host byte order; added to atomically.
    pub packets: u64,
    /// Their bytes (skb length, L2 header included), host byte order.
    pub bytes: u64,
}

/// An IPv6 flow's entry.
pub type CtEntry6 = CtEntry<[u8; 16]>;

/// Direction of a counted packet, relative to the interface it crossed.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Received by the interface (tc ingress).
    Ingress = 0,
    /// Sent by the interface (tc egress).
    Egress = 1,
}

/// Key of [`maps::IF_STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IfStatsKey {
    /// Interface index in the daemon's network namespace, host byte order.
    pub ifindex: u32,
    /// A [`Direction`] as `u32`, host byte order.
    pub direction: u32,
}

/// Value of [`maps::IF_STATS`], one per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfCounters {
    /// Packets seen, host byte order.
    pub packets: u64,
    /// Bytes seen (skb length, L2 header included), host byte order.
    pub bytes: u64,
}

/// Value of [`maps::IF_DROPS`], one per CPU: packets dropped, indexed by
/// [`DropReason`], host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfDrops {
    pub by_reason: [u64; DROP_REASONS as usize],
}

impl Default for IfDrops {
    fn default() -> Self {
        IfDrops {
            by_reason: [0; DROP_REASONS as usize],
        }
    }
}

/// Declares [`DropReason`] from one list: each reason with its index in
/// [`maps::DROPS`] and its stable name, so that the enum, [`DropReason::ALL`]
/// and [`DropReason::name`] cannot disagree.
macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $reason:ident = $index:literal => $name:literal,)*) => {
        /// Why a program dropped a packet: the index into [`maps::DROPS`].
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum DropReason {
            $($(#[doc = $doc])* $reason = $index,)*
        }

        impl DropReason {
            /// Every reason, in index order.
            pub const ALL: &[DropReason] = &[$(DropReason::$reason,)*];

            /// Stable name, used in metrics and the CLI.
            pub const fn name(self) -> &'static str {
                match self {
                    $(DropReason::$reason => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// Endpoint to endpoint traffic on a bridge with `--icc=false`.
    IccDenied = 0 => "icc_denied",
    /// An endpoint sent with an address or MAC that is not its own.
    Spoofed = 1 => "spoofed",
    /// A header ends past the end of the packet.
    Truncated = 2 => "truncated",
    /// The connection tracking table is full: new flows are refused.
    CtFull = 3 => "ct_full",
    /// No source port was free for a new masqueraded flow.
    NatPortsExhausted = 4 => "nat_ports_exhausted",
    /// A non-first fragment of a flow that needs translation: without its
    /// ports it cannot be translated and must not leak untranslated.
    Fragment = 5 => "fragment",
    /// A translated packet has no route out of the host.
    NoRoute = 6 => "no_route",
    /// A translated packet is larger than the way out and may be fragmented.
    TooBig = 7 => "too_big",
    /// A VXLAN frame whose VNI, sender or inner source is not that of a
    /// known peer's lease, or whose inner destination is no endpoint here.
    OverlayUnknownPeer = 8 => "overlay_unknown_peer",
    /// A packet between endpoints of different networks (the bridge
    /// network, overlays), on this host or another: networks are isolated
    /// from each other, as Docker's are.
    OtherNetwork = 9 => "other_network",
    /// A packet from outside the host to an endpoint's own address, or to a
    /// gateway address of a network, that is neither part of a flow nor
    /// through a published port: endpoints (and the services the host runs
    /// for them, such as the embedded DNS) are reached from outside only
    /// through published ports, as Docker 28 does, not by routing straight
    /// to their addresses.
    NotPublished = 10 => "not_published",
    /// An ICMP error leaving through the uplink about no flow the data path
    /// tracks: translating it needs the flow, and untranslated the packet
    /// it quotes would carry the endpoint's address out.
    UntrackedIcmpError = 11 => "untracked_icmp_error",
    /// An endpoint sent a frame that is neither IPv4 nor ARP (IPv6 among
    /// them): nothing would check its source or apply `--icc=false` to it.
    UnknownL3 = 12 => "unknown_l3",
    /// An endpoint sent a VLAN-tagged frame: forwarded, it would leave in
    /// a VLAN the endpoint chose.
    VlanTagged = 13 => "vlan_tagged",
    /// A TCP packet other than a plain SYN, for no tracked flow, that
    /// would need one (to a published port, hairpinned, or out through
    /// masquerade): only a SYN opens a flow, so stray ACKs and RSTs cannot
    /// fill the table.
    TcpNoFlow = 14 => "tcp_no_flow",
    /// A new flow to a published port from a source its allow-list
    /// (`--publish-from`, `port add --from`) does not name.
    NotAllowed = 15 => "not_allowed",
    /// A packet from an endpoint of an internal network (`--internal`) to
    /// an address outside that network's subnet.
    Internal = 16 => "internal",
    /// An IPv6 packet with more extension headers than the programs walk
    /// (see `packet::MAX_IPV6_EXTENSIONS`): its transport header, and so
    /// its ports, cannot be found.
    UnknownExt = 17 => "unknown_ext",
}

// The list is in index order, with no gaps: `ALL[i]` is reason `i`.
const _: () = {
    let mut i = 0;
    while i < DropReason::ALL.len() {
        assert!(DropReason::ALL[i] as usize == i);
        i += 1;
    }
};

/// Size of [`maps::EVENTS`] in bytes: a power of two pages; about 1,700
/// events.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Bytes of a packet an [`Event`] carries, from its Ethernet header on:
/// room for IPv4 with options and a TCP header with options.
pub const EVENT_HEADER_BYTES: usize = 128;

/// [`Event::kind`]: a packet the data path dropped.
pub const EVENT_DROP: u32 = 1;
/// [`Event::kind`]: a flow recorded, with its translation.
pub const EVENT_NEW_FLOW: u32 = 2;
/// [`Event::kind`]: an IPv6 flow recorded. `original` and `translated`
/// are zero; `header` holds the two [`FlowKey6`]s instead, original
/// first, and `captured` is 0.
pub const EVENT_NEW_FLOW6: u32 = 3;

const _: () = assert!(2 * core::mem::size_of::<FlowKey6>() <= EVENT_HEADER_BYTES);

/// What [`maps::EVENTS`] carries: one data path event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `EVENT_*`, host byte order.
    pub kind: u32,
    /// For a drop, the [`DropReason`], host byte order.
    pub reason: u32,
    /// Interface the packet arrived on, host byte order.
    pub ifindex: u32,
    /// The packet's length (skb length, L2 header included).
    pub len: u32,
    /// How many bytes of `header` hold the packet's first bytes.
    pub captured: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// For a new flow: its first packet as it arrived, and as it left.
    pub original: FlowKey,
    pub translated: FlowKey,
    /// The packet's first bytes, Ethernet header on.
    pub header: [u8; EVENT_HEADER_BYTES],
}

/// Capacity of [`maps::DROPS`]: room for reasons yet to come, so that
/// adding one keeps the map's layout and its counts across an upgrade.
pub const DROP_REASONS: u32 = 32;

const _: () = assert!(DropReason::ALL.len() as u32 <= DROP_REASONS);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers with no implicit padding.
    unsafe impl aya::Pod for super::NetConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IfStatsKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IfCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EndpointPort {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EndpointIdentity {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AddrPair {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortTarget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PublishFromKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtTimeouts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtEntry {}
    // SAFETY: as above, with byte-array addresses.
    unsafe impl aya::Pod for super::FlowKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtEntry6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortTarget6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Uplink6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockRevKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockRevValue6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IfDrops {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleDropKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockRevKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockRevValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OverlayPeer {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetworkPolicy {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MacKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MacvlanSource {}
}

// The map types have no implicit padding: their sizes are the sums of
// their fields, checked where both the programs and the daemon are built.
const _: () = {
    assert!(core::mem::size_of::<NetConfig>() == 48);
    assert!(core::mem::size_of::<SockRevKey>() == 16);
    assert!(core::mem::size_of::<SockRevValue>() == 8);
    assert!(core::mem::size_of::<EndpointPort>() == 16);
    assert!(core::mem::size_of::<EndpointIdentity>() == 16);
    assert!(core::mem::size_of::<AddrPair>() == 8);
    assert!(core::mem::size_of::<PortKey>() == 8);
    assert!(core::mem::size_of::<PortTarget>() == 12);
    assert!(core::mem::size_of::<OverlayPeer>() == 8);
    assert!(core::mem::size_of::<NetworkPolicy>() == 16);
    assert!(core::mem::size_of::<MacKey>() == 8);
    assert!(core::mem::size_of::<MacvlanSource>() == 8);
    assert!(core::mem::size_of::<FlowKey>() == 16);
    assert!(core::mem::size_of::<CtEntry>() == 56);
    assert!(core::mem::size_of::<Event>() == 24 + 32 + EVENT_HEADER_BYTES);
    assert!(core::mem::size_of::<IfStatsKey>() == 8);
    assert!(core::mem::size_of::<IfCounters>() == 16);
    assert!(core::mem::size_of::<RuleDropKey>() == 8);
};

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn wildcard_ports_index_by_protocol_then_host_order_port() {
        let key = |port: u16, proto| PortKey {
            addr_be: 0x0100_a8c0,
            port_be: port.to_be(),
            proto,
            _pad: 0,
        };
        assert_eq!(key(8080, proto::TCP).wildcard_index(), Some(8080));
        assert_eq!(key(8080, proto::UDP).wildcard_index(), Some(65536 + 8080));
        assert_eq!(
            key(65535, proto::UDP).wildcard_index(),
            Some(PUBLISHED_ANY_ENTRIES - 1)
        );
        assert_eq!(key(0, proto::ICMP).wildcard_index(), None);
    }

    #[test]
    fn endpoint_macs_carry_the_address() {
        let addr_be = u32::from_ne_bytes([10, 201, 2, 3]);
        assert_eq!(endpoint_mac(addr_be), [0x02, 0x42, 10, 201, 2, 3]);
    }
}
