//! Endpoints (Docker's containers, as far as the network is concerned): the
//! validated model and the plan of kernel steps that realises one.

use netplane_common::abi::addr_be;
use std::{
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    str::FromStr,
};

use ipnet::Ipv4Net;
use netplane_common::abi::endpoint_mac;
use serde::{Deserialize, Serialize};

use super::Error;

/// Name of the default bridge network, as in `docker network ls`.
pub const BRIDGE_NETWORK: &str = "bridge";
/// Prefix of the host-side veth names netplane creates.
pub const HOST_VETH_PREFIX: &str = "npv";
/// Where iproute2 keeps named network namespaces, netplane's among them.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Path of the named namespace `name`.
pub fn named_netns(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// How an endpoint is attached, Docker's `--net`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Own namespace with a veth into the bridge network.
    Bridge,
    /// The host's namespace.
    Host,
    /// Own namespace with only loopback.
    None,
    /// The namespace of another endpoint.
    Container(String),
    /// Own namespace with a veth into the named overlay network, which the
    /// daemon checks exists.
    Network(String),
}

impl Mode {
    /// Whether the endpoint has a veth into a bridge: the default one or an
    /// overlay network's.
    pub fn has_veth(&self) -> bool {
        matches!(self, Mode::Bridge | Mode::Network(_))
    }

    /// Whether the endpoint's namespace is its own: made with it, gone
    /// with it.
    pub fn owns_netns(&self) -> bool {
        !matches!(self, Mode::Host | Mode::Container(_))
    }
}

impl FromStr for Mode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            BRIDGE_NETWORK => Ok(Mode::Bridge),
            "host" => Ok(Mode::Host),
            "none" => Ok(Mode::None),
            _ => match s.strip_prefix("container:") {
                Some(other) => {
                    validate_name(other)?;
                    Ok(Mode::Container(other.to_string()))
                }
                None => {
                    validate_name(s).map_err(|_| Error::NoSuchNetwork(s.to_string()))?;
                    Ok(Mode::Network(s.to_string()))
                }
            },
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Bridge => f.write_str(BRIDGE_NETWORK),
            Mode::Host => f.write_str("host"),
            Mode::None => f.write_str("none"),
            Mode::Container(other) => write!(f, "container:{other}"),
            Mode::Network(name) => f.write_str(name),
        }
    }
}

/// Checks an endpoint name: Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 63
/// characters, since it also names a file in /run/netns and /etc/netns.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && name.len() <= 63 {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// The MAC of the endpoint with address `ip` (see [`endpoint_mac`]).
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    endpoint_mac(addr_be(ip))
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Host-side veth of the endpoint with store id `id` (unique, never
/// reused) for its interface `eth{seq}`.
pub fn host_veth_name(id: i64, seq: u32) -> String {
    match seq {
        0 => format!("{HOST_VETH_PREFIX}{id:x}"),
        seq => format!("{HOST_VETH_PREFIX}{id:x}n{seq}"),
    }
}

/// The name of an endpoint's interface `seq` inside its namespace.
pub fn interface_name(seq: u32) -> String {
    format!("eth{seq}")
}

/// The bridge network endpoints attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeNet {
    /// Bridge device name.
    pub bridge: String,
    /// Subnet with the gateway's prefix length.
    pub subnet: Ipv4Net,
    /// The bridge's address.
    pub gateway: Ipv4Addr,
    /// MTU of the endpoints' interfaces, when not the kernel's default:
    /// smaller on an overlay, to leave room for the encapsulation.
    pub mtu: Option<u32>,
    /// The overlay's VNI, 0 for the bridge network: the data path keeps
    /// endpoints to those of their own network.
    pub vni: u32,
    /// Endpoints get a macvlan child of `bridge` (then the parent
    /// interface, not a bridge) instead of a veth into it.
    pub macvlan: bool,
    /// The network's IPv6 subnet and gateway, on dual-stack networks.
    pub ipv6: Option<crate::logic::network::Ipv6Side>,
}

/// An interface's IPv6 address, its prefix length and (on the first
/// network) the IPv6 default gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V6Address {
    /// The address.
    pub ip: std::net::Ipv6Addr,
    /// The network's prefix length.
    pub prefix_len: u8,
    /// Default gateway; none on networks connected later.
    pub gateway: Option<std::net::Ipv6Addr>,
}

/// The kernel's MTU for Ethernet interfaces, and the uplink's when it
/// cannot be read.
pub const DEFAULT_MTU: u32 = 1500;

/// The MTU of a bridge endpoint's interfaces on a host whose uplink has
/// `uplink_mtu`: the uplink's when smaller than 1500 (a PPPoE or tunnel
/// uplink), so that what an endpoint sends fits the way out; the kernel's
/// default otherwise, as Docker's.
pub fn bridge_endpoint_mtu(uplink_mtu: u32) -> Option<u32> {
    (uplink_mtu < DEFAULT_MTU).then_some(uplink_mtu)
}

/// `--add-host NAME:IP`: one more line of an endpoint's hosts file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraHost {
    /// Host name.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// What `docker run` users set besides the network: the endpoint's MAC,
/// resolvers and hosts entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointOptions {
    /// `--mac-address`, instead of the one derived from the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<[u8; 6]>,
    /// `--dns`: the resolvers names the network does not know go to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
    /// `--dns-search`: resolv.conf's search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// `--add-host`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<ExtraHost>,
}

/// Why a `docker run`-style option is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// Not six hex octets, or not a unicast address of one's own.
    #[error("MAC address {0:?}: use six hex octets (02:42:ac:11:00:02), unicast and not zero")]
    BadMac(String),
    /// The MAC netplane gives the endpoint with some address.
    #[error("MAC address {mac} is the one netplane gives the endpoint at {ip}")]
    DerivedMac {
        /// The MAC.
        mac: String,
        /// The address it is derived from.
        ip: Ipv4Addr,
    },
    /// Not `NAME:IP`.
    #[error("--add-host {0:?}: use NAME:IPv4 or NAME:host-gateway")]
    BadExtraHost(String),
    /// Not a domain name.
    #[error("--dns-search {0:?} is not a domain name")]
    BadSearchDomain(String),
}

/// Parses `--mac-address`: six hex octets, unicast, not all zero.
pub fn parse_mac(s: &str) -> Result<[u8; 6], OptionError> {
    let bad = || OptionError::BadMac(s.to_string());
    let octets: Vec<u8> = s
        .split([':', '-'])
        .map(|o| {
            (o.len() == 2)
                .then(|| u8::from_str_radix(o, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let mac: [u8; 6] = octets.try_into().map_err(|_| bad())?;
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}

/// Refuses a `--mac-address` that is the MAC another endpoint of `subnet`
/// gets from its address, now or when it is leased later.
pub fn check_mac_free(mac: [u8; 6], subnet: Ipv4Net) -> Result<(), OptionError> {
    let ip = Ipv4Addr::new(mac[2], mac[3], mac[4], mac[5]);
    if mac_for(ip) == mac && subnet.contains(&ip) {
        return Err(OptionError::DerivedMac {
            mac: format_mac(&mac),
            ip,
        });
    }
    Ok(())
}

/// Parses `--add-host NAME:IP`; `host-gateway` is `gateway`, the
/// endpoint's way to the host, as in Docker.
pub fn parse_extra_host(s: &str, gateway: Ipv4Addr) -> Result<ExtraHost, OptionError> {
    let bad = || OptionError::BadExtraHost(s.to_string());
    let (name, ip) = s.split_once(':').ok_or_else(bad)?;
    let ip = match ip {
        "host-gateway" => gateway,
        ip => ip.parse().map_err(|_| bad())?,
    };
    if !is_domain_name(name) {
        return Err(bad());
    }
    Ok(ExtraHost {
        name: name.to_string(),
        ip,
    })
}

/// Checks `--dns-search` domains.
pub fn check_search_domains(domains: &[String]) -> Result<(), OptionError> {
    match domains.iter().find(|d| !is_domain_name(d)) {
        Some(d) => Err(OptionError::BadSearchDomain(d.clone())),
        None => Ok(()),
    }
}

/// Dot-separated labels of letters, digits, `-` and `_`, none empty or
/// longer than 63, at most 253 in all.
fn is_domain_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// An endpoint as stored: everything needed to (re)build or remove it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Store id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Attachment.
    pub mode: Mode,
    /// Leased address (bridge mode only).
    pub ip: Option<Ipv4Addr>,
    /// Leased IPv6 address, on dual-stack networks.
    pub ip6: Option<std::net::Ipv6Addr>,
    /// Its interface on its first network is `eth{seq}`: 0, unless that
    /// network was disconnected and a later one took its place.
    pub seq: u32,
    /// Hostname for processes started in it, if it has its own.
    pub hostname: Option<String>,
    /// MAC, resolvers and hosts entries asked for.
    pub options: EndpointOptions,
    /// The container runtime's namespace it was attached to, for
    /// endpoints made through CNI; `None` for netplane's own.
    pub sandbox: Option<Sandbox>,
}

/// A network namespace a container runtime made and owns (CNI's
/// `CNI_NETNS`): netplane puts an interface in it and takes it out, and
/// never makes, names, kills or deletes it, nor writes its /etc files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// The name of the CNI network configuration it was made with.
    pub config: String,
    /// The runtime's id of the container (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// The interface's name in it (`CNI_IFNAME`).
    pub ifname: String,
}

impl Endpoint {
    /// The MAC of its interface: the one asked for, else the one its
    /// address gives.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.options.mac.or(self.ip.map(mac_for))
    }

    /// The host-side veth, for bridge endpoints.
    pub fn host_veth(&self) -> Option<String> {
        self.mode
            .has_veth()
            .then(|| host_veth_name(self.id, self.seq))
    }

    /// Its network namespace: a runtime's, else the one netplane named
    /// after it; none in the host's.
    pub fn netns(&self) -> Option<PathBuf> {
        match (&self.sandbox, &self.mode) {
            (Some(sandbox), _) => Some(sandbox.netns.clone()),
            (None, Mode::Host) => None,
            (None, _) => Some(named_netns(&self.name)),
        }
    }

    /// The name of its interface on its first network.
    pub fn first_ifname(&self) -> String {
        match &self.sandbox {
            Some(sandbox) => sandbox.ifname.clone(),
            None => interface_name(self.seq),
        }
    }
}

/// One kernel or filesystem change. Each step can be undone, and undoing a
/// step that was never applied (or half applied) is harmless.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A new named network namespace /run/netns/NAME with `lo` up.
    Netns {
        /// Namespace name.
        name: String,
    },
    /// /run/netns/NAME naming the namespace of /run/netns/FROM.
    ShareNetns {
        /// New name.
        name: String,
        /// Existing namespace.
        from: String,
    },
    /// A veth pair: `host` on the bridge, `ifname` in `netns` with
    /// address, MAC and (on the first network) the default route.
    Veth {
        /// Host-side name.
        host: String,
        /// Namespace of the endpoint side.
        netns: PathBuf,
        /// Name of the endpoint side: `eth0`, `eth1`, ...
        ifname: String,
        /// Endpoint address.
        ip: Ipv4Addr,
        /// Prefix length of the bridge subnet.
        prefix_len: u8,
        /// Default gateway; none on networks connected later.
        gateway: Option<Ipv4Addr>,
        /// Its IPv6 address, on dual-stack networks; IPv6 is off on the
        /// interface without.
        ip6: Option<V6Address>,
        /// Bridge to enslave the host side to.
        bridge: String,
        /// MTU of both ends, when not the kernel's default.
        mtu: Option<u32>,
        /// MAC of the endpoint side.
        mac: [u8; 6],
    },
    /// A macvlan child of `parent`, as `ifname` in `netns`, with address,
    /// MAC and (on the first network) the default route.
    Macvlan {
        /// The parent interface.
        parent: String,
        /// Namespace of the endpoint.
        netns: PathBuf,
        /// Its name there.
        ifname: String,
        /// Endpoint address.
        ip: Ipv4Addr,
        /// Prefix length of the network.
        prefix_len: u8,
        /// Default gateway; none on networks connected later.
        gateway: Option<Ipv4Addr>,
        /// Its IPv6 address (IPv6 is off without).
        ip6: Option<V6Address>,
        /// MTU, when not the parent's.
        mtu: Option<u32>,
        /// Its MAC.
        mac: [u8; 6],
    },
    /// The data path's endpoint program on the host-side veth, and the
    /// endpoint's address and MAC in its maps.
    AttachDatapath {
        /// Host-side veth.
        ifname: String,
        /// Endpoint address.
        ip: Ipv4Addr,
        /// Its IPv6 address, on dual-stack networks.
        ip6: Option<std::net::Ipv6Addr>,
        /// Endpoint MAC.
        mac: [u8; 6],
        /// The endpoint's network: its overlay's VNI, 0 for the bridge.
        vni: u32,
    },
    /// /etc/netns/NAME/{hosts,resolv.conf}.
    EtcFiles {
        /// Namespace name.
        name: String,
        /// Contents of `hosts`.
        hosts: String,
        /// Contents of `resolv.conf`.
        resolv: String,
    },
}

impl Step {
    /// Whether a failed application of this step is to be undone too. Not
    /// for naming a namespace: it fails when the name is taken, by
    /// someone else's namespace (the daemon's own, even), and leaves
    /// nothing of its own behind.
    pub fn undone_after_failure(&self) -> bool {
        !matches!(self, Step::Netns { .. } | Step::ShareNetns { .. })
    }
}

/// The other endpoint and the alias of a `--link OTHER[:ALIAS]` spec.
pub fn parse_link(spec: &str) -> (&str, &str) {
    spec.split_once(':').unwrap_or((spec, spec))
}

/// A linked endpoint as `ep`'s hosts file names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkedHost {
    /// The linked endpoint's address.
    pub ip: Ipv4Addr,
    /// The alias given with `--link`.
    pub alias: String,
    /// The linked endpoint's name.
    pub name: String,
}

/// The steps that build `ep`, in order; removal undoes them in reverse.
/// Endpoints with a network of their own resolve through `dns`, that
/// network's embedded DNS server, when it has one.
pub fn plan(
    ep: &Endpoint,
    net: &BridgeNet,
    host_resolv: &str,
    dns: Option<Ipv4Addr>,
    links: &[LinkedHost],
) -> Vec<Step> {
    let name = ep.name.clone();
    let hostname = ep.hostname.clone().unwrap_or_else(|| name.clone());
    let dns = dns.filter(|_| ep.mode.has_veth());
    let etc = |ip| Step::EtcFiles {
        name: name.clone(),
        hosts: hosts_file(&hostname, &name, ip, links, &ep.options.extra_hosts),
        resolv: resolv_conf(host_resolv, dns, &ep.options),
    };
    match &ep.mode {
        Mode::Host => Vec::new(),
        Mode::None => vec![Step::Netns { name: name.clone() }, etc(None)],
        Mode::Container(other) => vec![
            Step::ShareNetns {
                name: name.clone(),
                from: other.clone(),
            },
            etc(ep.ip),
        ],
        // A runtime's namespace: the runtime made it, and writes its files.
        Mode::Bridge | Mode::Network(_) if ep.sandbox.is_some() => first_interface(ep, net),
        Mode::Bridge | Mode::Network(_) => {
            let mut steps = vec![Step::Netns { name: name.clone() }];
            steps.extend(first_interface(ep, net));
            steps.push(etc(ep.ip));
            steps
        }
    }
}

/// The steps of the interface of `ep` on its first network `net`, which
/// holds the default route.
pub fn first_interface(ep: &Endpoint, net: &BridgeNet) -> Vec<Step> {
    Interface {
        host: host_veth_name(ep.id, ep.seq),
        netns: ep
            .netns()
            .expect("endpoints with an interface have a namespace"),
        ifname: ep.first_ifname(),
        ip: ep.ip.expect("bridge and overlay endpoints have an address"),
        ip6: ep.ip6,
        mac: ep.mac().expect("endpoints with an address have a MAC"),
        default_route: true,
    }
    .steps(net)
}

/// One more network an endpoint was connected to (`network connect`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The network's name (`bridge` for the bridge network).
    pub network: String,
    /// Its place among the endpoint's interfaces: `eth{seq}`.
    pub seq: u32,
    /// The endpoint's address there.
    pub ip: Ipv4Addr,
    /// Its IPv6 address there, on a dual-stack network.
    pub ip6: Option<std::net::Ipv6Addr>,
    /// `--alias` names there.
    pub aliases: Vec<String>,
}

impl Attachment {
    /// How the endpoint is attached to the network.
    pub fn mode(&self) -> Mode {
        if self.network == BRIDGE_NETWORK {
            Mode::Bridge
        } else {
            Mode::Network(self.network.clone())
        }
    }

    /// Its host-side veth.
    pub fn host_veth(&self, ep: &Endpoint) -> String {
        host_veth_name(ep.id, self.seq)
    }
}

/// The steps that connect `ep` to one more network `net`: an interface
/// there without the default route, which stays on the first network.
pub fn plan_attachment(ep: &Endpoint, att: &Attachment, net: &BridgeNet) -> Vec<Step> {
    Interface {
        host: att.host_veth(ep),
        netns: ep.netns().expect("connected endpoints have a namespace"),
        ifname: interface_name(att.seq),
        ip: att.ip,
        ip6: att.ip6,
        mac: mac_for(att.ip),
        default_route: false,
    }
    .steps(net)
}

/// One interface of an endpoint on one network.
struct Interface {
    /// Host-side veth name (unused on macvlan networks).
    host: String,
    netns: PathBuf,
    ifname: String,
    ip: Ipv4Addr,
    ip6: Option<std::net::Ipv6Addr>,
    mac: [u8; 6],
    /// Whether it holds the default route (the first network's does).
    default_route: bool,
}

impl Interface {
    /// A veth into `net`'s bridge checked by the data path, or a macvlan
    /// child of its parent (checked on the parent's way out).
    fn steps(self, net: &BridgeNet) -> Vec<Step> {
        let gateway = self.default_route.then_some(net.gateway);
        let ip6 = self.ip6.zip(net.ipv6).map(|(ip, side)| V6Address {
            ip,
            prefix_len: side.subnet.prefix_len(),
            gateway: self.default_route.then_some(side.gateway),
        });
        if net.macvlan {
            return vec![Step::Macvlan {
                parent: net.bridge.clone(),
                netns: self.netns,
                ifname: self.ifname,
                ip: self.ip,
                prefix_len: net.subnet.prefix_len(),
                gateway,
                ip6,
                mtu: net.mtu,
                mac: self.mac,
            }];
        }
        vec![
            Step::Veth {
                host: self.host.clone(),
                netns: self.netns,
                ifname: self.ifname,
                ip: self.ip,
                prefix_len: net.subnet.prefix_len(),
                gateway,
                ip6,
                bridge: net.bridge.clone(),
                mtu: net.mtu,
                mac: self.mac,
            },
            Step::AttachDatapath {
                ifname: self.host,
                ip: self.ip,
                ip6: ip6.map(|v6| v6.ip),
                mac: self.mac,
                vni: net.vni,
            },
        ]
    }
}

/// The hosts file of an endpoint, as Docker writes it: linked endpoints
/// under their alias and their own name, `--add-host` entries, then the
/// endpoint itself.
pub fn hosts_file(
    hostname: &str,
    name: &str,
    ip: Option<Ipv4Addr>,
    links: &[LinkedHost],
    extra: &[ExtraHost],
) -> String {
    let mut hosts = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    for link in links {
        if link.alias == link.name {
            hosts.push_str(&format!("{}\t{}\n", link.ip, link.name));
        } else {
            hosts.push_str(&format!("{}\t{} {}\n", link.ip, link.alias, link.name));
        }
    }
    for host in extra {
        hosts.push_str(&format!("{}\t{}\n", host.ip, host.name));
    }
    let names = if hostname == name {
        name.to_string()
    } else {
        format!("{hostname} {name}")
    };
    match ip {
        Some(ip) => hosts.push_str(&format!("{ip}\t{names}\n")),
        None => hosts.push_str(&format!("127.0.1.1\t{names}\n")),
    }
    hosts
}

/// An endpoint's resolv.conf: its network's embedded DNS server `dns`
/// when it has one (which forwards to `--dns` servers), else the `--dns`
/// servers, else the host's nameservers but loopback ones, which an
/// endpoint in its own namespace cannot reach; `--dns-search` replaces the
/// host's search domains.
pub fn resolv_conf(host_resolv: &str, dns: Option<Ipv4Addr>, options: &EndpointOptions) -> String {
    let own: Vec<Ipv4Addr> = match dns {
        Some(d) => vec![d],
        None => options.dns.clone(),
    };
    let search = (!options.dns_search.is_empty())
        .then(|| format!("search {}\n", options.dns_search.join(" ")));
    let kept = host_resolv.lines().filter(|line| {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                own.is_empty()
                    && !words
                        .next()
                        .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                        .is_some_and(|a| a.is_loopback())
            }
            Some("search" | "domain") => search.is_none(),
            _ => true,
        }
    });
    own.iter()
        .map(|d| format!("nameserver {d}\n"))
        .chain(search.clone())
        .chain(kept.map(|l| format!("{l}\n")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> BridgeNet {
        BridgeNet {
            macvlan: false,
            bridge: "np0".into(),
            subnet: "172.17.0.1/16".parse().unwrap(),
            gateway: "172.17.0.1".parse().unwrap(),
            mtu: None,
            vni: 0,
            ipv6: None,
        }
    }

    fn ep(mode: Mode, ip: Option<&str>) -> Endpoint {
        Endpoint {
            id: 26,
            name: "web".into(),
            mode,
            ip: ip.map(|s| s.parse().unwrap()),
            ip6: None,
            seq: 0,
            hostname: None,
            options: EndpointOptions::default(),
            sandbox: None,
        }
    }

    #[test]
    fn bridge_endpoints_fit_a_smaller_uplink() {
        assert_eq!(bridge_endpoint_mtu(1400), Some(1400));
        assert_eq!(bridge_endpoint_mtu(1492), Some(1492));
        assert_eq!(bridge_endpoint_mtu(1500), None);
        assert_eq!(
            bridge_endpoint_mtu(9000),
            None,
            "jumbo uplinks: Docker's 1500"
        );
    }

    #[test]
    fn names() {
        for ok in ["a", "web-1", "db.prod_2", &"x".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "é", &"x".repeat(64), "../x"] {
            assert_eq!(
                validate_name(bad),
                Err(Error::InvalidName(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn modes_parse() {
        assert_eq!("bridge".parse::<Mode>().unwrap(), Mode::Bridge);
        assert_eq!("host".parse::<Mode>().unwrap(), Mode::Host);
        assert_eq!("none".parse::<Mode>().unwrap(), Mode::None);
        assert_eq!(
            "container:db".parse::<Mode>().unwrap(),
            Mode::Container("db".into())
        );
        assert_eq!("web".parse::<Mode>().unwrap(), Mode::Network("web".into()));
        assert_eq!(
            "no/pe".parse::<Mode>(),
            Err(Error::NoSuchNetwork("no/pe".into()))
        );
        assert!("container:".parse::<Mode>().is_err());
    }

    #[test]
    fn mac_and_veth_names() {
        assert_eq!(
            format_mac(&mac_for("172.17.0.2".parse().unwrap())),
            "02:42:ac:11:00:02"
        );
        assert_eq!(host_veth_name(26, 0), "npv1a");
        assert_eq!(host_veth_name(26, 3), "npv1an3");
        assert!(
            host_veth_name(i64::from(u32::MAX), 999).len() <= 15,
            "IFNAMSIZ"
        );
    }

    #[test]
    fn a_runtime_namespace_gets_only_its_interface() {
        // The runtime made the namespace and writes its files: the plan
        // puts the interface it named there, and undoing it touches
        // nothing of the runtime's.
        let mut ep = ep(Mode::Network("np".into()), Some("172.17.0.2"));
        ep.sandbox = Some(Sandbox {
            config: "np".into(),
            container_id: "69b0383772".into(),
            netns: "/run/netns/netns-31c9".into(),
            ifname: "net1".into(),
        });
        let steps = plan(&ep, &net(), "", Some("172.17.0.1".parse().unwrap()), &[]);
        assert_eq!(steps.len(), 2, "{steps:?}");
        let Step::Veth { netns, ifname, .. } = &steps[0] else {
            panic!("{steps:?}")
        };
        assert_eq!(netns, Path::new("/run/netns/netns-31c9"));
        assert_eq!(ifname, "net1");
        assert!(matches!(steps[1], Step::AttachDatapath { .. }));
        assert_eq!(ep.netns(), Some(PathBuf::from("/run/netns/netns-31c9")));
    }

    #[test]
    fn bridge_plan() {
        let steps = plan(
            &ep(Mode::Bridge, Some("172.17.0.2")),
            &net(),
            "nameserver 127.0.0.53\nnameserver 9.9.9.9\n",
            None,
            &[],
        );
        assert_eq!(steps.len(), 4);
        assert_eq!(steps[0], Step::Netns { name: "web".into() });
        assert_eq!(
            steps[1],
            Step::Veth {
                host: "npv1a".into(),
                netns: "/run/netns/web".into(),
                ifname: "eth0".into(),
                ip: "172.17.0.2".parse().unwrap(),
                prefix_len: 16,
                gateway: Some("172.17.0.1".parse().unwrap()),
                ip6: None,
                bridge: "np0".into(),
                mtu: None,
                mac: [0x02, 0x42, 172, 17, 0, 2],
            }
        );
        assert_eq!(
            steps[2],
            Step::AttachDatapath {
                ifname: "npv1a".into(),
                ip: "172.17.0.2".parse().unwrap(),
                ip6: None,
                mac: [0x02, 0x42, 172, 17, 0, 2],
                vni: 0,
            }
        );
        let Step::EtcFiles { hosts, resolv, .. } = &steps[3] else {
            panic!()
        };
        assert!(hosts.ends_with("172.17.0.2\tweb\n"));
        assert_eq!(resolv, "nameserver 9.9.9.9\n");
    }

    #[test]
    fn endpoints_of_a_network_with_dns_ask_only_it() {
        let dns = Some("172.17.0.1".parse().unwrap());
        let host =
            "search corp.example\nnameserver 127.0.0.53\nnameserver 9.9.9.9\noptions ndots:2\n";
        let steps = plan(
            &ep(Mode::Bridge, Some("172.17.0.2")),
            &net(),
            host,
            dns,
            &[],
        );
        let Step::EtcFiles { resolv, .. } = &steps[3] else {
            panic!()
        };
        assert_eq!(
            resolv,
            "nameserver 172.17.0.1\nsearch corp.example\noptions ndots:2\n"
        );
        // Sharing another's namespace: not an endpoint of a network itself.
        let shared = plan(&ep(Mode::None, None), &net(), host, dns, &[]);
        let Step::EtcFiles { resolv, .. } = &shared[1] else {
            panic!()
        };
        assert!(resolv.contains("nameserver 9.9.9.9") && !resolv.contains("172.17.0.1"));
    }

    #[test]
    fn other_mode_plans() {
        assert!(plan(&ep(Mode::Host, None), &net(), "", None, &[]).is_empty());
        let none = plan(&ep(Mode::None, None), &net(), "", None, &[]);
        assert_eq!(none[0], Step::Netns { name: "web".into() });
        assert_eq!(none.len(), 2);
        let shared = plan(
            &ep(Mode::Container("db".into()), Some("172.17.0.9")),
            &net(),
            "",
            None,
            &[],
        );
        assert_eq!(
            shared[0],
            Step::ShareNetns {
                name: "web".into(),
                from: "db".into()
            }
        );
        let Step::EtcFiles { hosts, .. } = &shared[1] else {
            panic!()
        };
        assert!(hosts.contains("172.17.0.9\tweb"));
    }

    #[test]
    fn hostname_goes_first_in_hosts() {
        assert!(hosts_file("box", "web", None, &[], &[]).ends_with("127.0.1.1\tbox web\n"));
    }

    #[test]
    fn links_are_named_by_alias_and_name() {
        let links = [
            LinkedHost {
                ip: "172.17.0.3".parse().unwrap(),
                alias: "db".into(),
                name: "postgres".into(),
            },
            LinkedHost {
                ip: "172.17.0.4".parse().unwrap(),
                alias: "cache".into(),
                name: "cache".into(),
            },
        ];
        let hosts = hosts_file("web", "web", "172.17.0.2".parse().ok(), &links, &[]);
        assert!(hosts.ends_with("172.17.0.3\tdb postgres\n172.17.0.4\tcache\n172.17.0.2\tweb\n"));
        assert_eq!(parse_link("postgres:db"), ("postgres", "db"));
        assert_eq!(parse_link("cache"), ("cache", "cache"));
    }

    #[test]
    fn docker_run_options_end_up_in_the_etc_files_and_the_veth() {
        let gateway: Ipv4Addr = "172.17.0.1".parse().unwrap();
        let mut e = ep(Mode::None, None);
        e.options = EndpointOptions {
            mac: Some(parse_mac("02:00:00:00:00:aa").unwrap()),
            dns: vec!["192.0.2.53".parse().unwrap()],
            dns_search: vec!["corp.example".into(), "lab".into()],
            extra_hosts: vec![
                parse_extra_host("db.internal:192.0.2.7", gateway).unwrap(),
                parse_extra_host("host.docker.internal:host-gateway", gateway).unwrap(),
            ],
        };
        let host = "search home\nnameserver 9.9.9.9\noptions ndots:2\n";
        let steps = plan(&e, &net(), host, None, &[]);
        let Step::EtcFiles { hosts, resolv, .. } = &steps[1] else {
            panic!("{steps:?}")
        };
        assert!(
            hosts.contains("192.0.2.7\tdb.internal\n172.17.0.1\thost.docker.internal\n"),
            "{hosts}"
        );
        assert_eq!(
            resolv,
            "nameserver 192.0.2.53\nsearch corp.example lab\noptions ndots:2\n"
        );
        // With the network's DNS, the endpoint asks it (which forwards to
        // --dns); the MAC asked for is the veth's.
        let mut e = ep(Mode::Bridge, Some("172.17.0.2"));
        e.options.mac = Some([2, 0, 0, 0, 0, 0xaa]);
        e.options.dns = vec!["192.0.2.53".parse().unwrap()];
        let steps = plan(&e, &net(), host, Some(gateway), &[]);
        assert!(matches!(
            steps[1],
            Step::Veth {
                mac: [2, 0, 0, 0, 0, 0xaa],
                ..
            }
        ));
        let Step::EtcFiles { resolv, .. } = &steps[3] else {
            panic!()
        };
        assert_eq!(
            resolv,
            "nameserver 172.17.0.1\nsearch home\noptions ndots:2\n"
        );
    }

    #[test]
    fn bad_docker_run_options_are_refused() {
        let gw = "172.17.0.1".parse().unwrap();
        for mac in [
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "02:00:00:00:00",
            "zz:00:00:00:00:01",
        ] {
            assert!(parse_mac(mac).is_err(), "{mac}");
        }
        assert_eq!(
            parse_mac("02-42-AC-11-00-09"),
            Ok([2, 0x42, 0xac, 0x11, 0, 9])
        );
        for spec in ["db", "db:300.1.1.1", ":192.0.2.1", "a b:192.0.2.1"] {
            assert!(parse_extra_host(spec, gw).is_err(), "{spec}");
        }
        assert!(check_search_domains(&["ok.example".into(), "bad..example".into()]).is_err());
        let subnet = "172.17.0.0/16".parse().unwrap();
        assert!(check_mac_free(mac_for("172.17.0.9".parse().unwrap()), subnet).is_err());
        assert!(check_mac_free(mac_for("10.0.0.9".parse().unwrap()), subnet).is_ok());
        assert!(check_mac_free([2, 0, 0, 0, 0, 9], subnet).is_ok());
    }
}
