//! Docker's `-p` syntax: `[IP:][HOSTPORT[-END]:]CPORT[-END][/tcp|/udp]`,
//! an IPv6 address in brackets (`[::1]:8080:80`).

use netplane_common::abi::addr_be;
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::Ipv4Net;
use netplane_common::abi::{
    MAX_NAT_SLOTS, PORT_FLAG_ALLOW_LIST, PortKey, PortKey6, PortTarget, PortTarget6, proto,
};
use serde::{Deserialize, Serialize};

/// Transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP, the default.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// An inclusive range of ports, never containing port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port, `>= start`.
    pub end: u16,
}

impl PortRange {
    /// Number of ports in the range.
    pub fn count(&self) -> u32 {
        u32::from(self.end - self.start) + 1
    }

    /// Whether the two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    fn parse(s: &str) -> Result<Self, String> {
        let (start, end) = match s.split_once('-') {
            Some((a, b)) => (parse_port(a)?, parse_port(b)?),
            None => {
                let p = parse_port(s)?;
                (p, p)
            }
        };
        if start > end {
            return Err(format!("range {start}-{end} starts after it ends"));
        }
        Ok(PortRange { start, end })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 is not a port".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("{s:?} is not a port number (1-65535)")),
    }
}

/// One `-p` argument, parsed and checked for internal consistency. Whether
/// the host address belongs to the host and the host ports are free is
/// checked by the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// Host address to publish on; all addresses when absent.
    pub host_ip: Option<IpAddr>,
    /// Host ports; picked by the daemon when absent.
    pub host_ports: Option<PortRange>,
    /// Ports of the endpoint.
    pub container_ports: PortRange,
    /// Protocol.
    pub proto: Proto,
}

/// Why a `-p` argument was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid port spec {spec:?}: {reason}")]
pub struct PortSpecError {
    /// The argument as given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for PortSpec {
    type Err = PortSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        parse(spec).map_err(|reason| PortSpecError {
            spec: spec.to_string(),
            reason,
        })
    }
}

fn parse(spec: &str) -> Result<PortSpec, String> {
    let (addr_ports, proto) = match spec.rsplit_once('/') {
        Some((rest, "tcp")) => (rest, Proto::Tcp),
        Some((rest, "udp")) => (rest, Proto::Udp),
        Some((_, other)) => return Err(format!("unknown protocol {other:?} (tcp or udp)")),
        None => (spec, Proto::Tcp),
    };
    let (host_ip, ports) = match addr_ports.strip_prefix('[') {
        Some(bracketed) => {
            let (ip, rest) = bracketed
                .split_once("]:")
                .ok_or("expected [IPV6]:[HOSTPORT:]CONTAINERPORT")?;
            let ip = ip
                .parse::<Ipv6Addr>()
                .map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
            (Some(IpAddr::V6(ip)), rest)
        }
        None => (None, addr_ports),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (ip, host, container) = match (host_ip, parts.as_slice()) {
        (None, [c]) => (None, None, *c),
        (None, [h, c]) => (None, Some(*h), *c),
        (None, [ip, h, c]) => (Some(*ip), Some(*h), *c),
        (Some(_), [c]) => (None, Some(""), *c),
        (Some(_), [h, c]) => (None, Some(*h), *c),
        _ => return Err("expected [IP:][HOSTPORT:]CONTAINERPORT".into()),
    };
    let host_ip = match ip {
        Some(ip) => Some(IpAddr::V4(
            ip.parse::<Ipv4Addr>()
                .map_err(|_| format!("{ip:?} is not an IPv4 address"))?,
        )),
        None => host_ip,
    };
    let host_ports = host
        .filter(|h| !h.is_empty())
        .map(PortRange::parse)
        .transpose()?;
    let container_ports = PortRange::parse(container)?;
    if let Some(h) = host_ports
        && h.count() != container_ports.count()
    {
        return Err(format!(
            "host range {h} and container range {container_ports} differ in length"
        ));
    }
    Ok(PortSpec {
        host_ip,
        host_ports,
        container_ports,
        proto,
    })
}

/// A host address as `-p` writes it: IPv6 in brackets.
fn write_host_ip(f: &mut fmt::Formatter<'_>, ip: IpAddr) -> fmt::Result {
    match ip {
        IpAddr::V4(ip) => write!(f, "{ip}:"),
        IpAddr::V6(ip) => write!(f, "[{ip}]:"),
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write_host_ip(f, ip)?;
        }
        match (self.host_ports, self.host_ip) {
            (Some(h), _) => write!(f, "{h}:")?,
            (None, Some(_)) => f.write_str(":")?,
            (None, None) => {}
        }
        write!(f, "{}/{}", self.container_ports, self.proto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> PortSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        s.parse::<PortSpec>().expect_err(s).reason
    }

    #[test]
    fn container_port_only() {
        let p = ok("80");
        assert_eq!(p.host_ip, None);
        assert_eq!(p.host_ports, None);
        assert_eq!(p.container_ports, PortRange { start: 80, end: 80 });
        assert_eq!(p.proto, Proto::Tcp);
    }

    #[test]
    fn full_forms() {
        let p = ok("127.0.0.1:8080:80/udp");
        assert_eq!(p.host_ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(
            p.host_ports,
            Some(PortRange {
                start: 8080,
                end: 8080
            })
        );
        assert_eq!(p.proto, Proto::Udp);
        let p = ok("10.0.0.1::53/udp");
        assert_eq!(p.host_ports, None);
        let p = ok("8000-8010:9000-9010");
        assert_eq!(p.host_ports.unwrap().count(), 11);
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "80/tcp",
            "8080:80/tcp",
            "127.0.0.1:8080:80/udp",
            "10.0.0.1::53/udp",
            "1-3:4-6/tcp",
            "[::1]:8080:80/tcp",
            "[2001:db8::1]::53/udp",
        ] {
            assert_eq!(ok(s).to_string(), s);
        }
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(err("0").contains("port 0"));
        assert!(err("8080:0").contains("port 0"));
        assert!(err("70000").contains("not a port"));
        assert!(err("80/sctp").contains("unknown protocol"));
        assert!(err("90-80").contains("starts after"));
        assert!(err("8000-8002:80-81").contains("differ in length"));
        assert!(err("1.2.3:80:80").contains("not an IPv4"));
        assert!(err("a:b:c:d").contains("expected"));
        assert!(err("").contains("not a port"));
        assert!(err("[::1]80").contains("expected [IPV6]"));
        assert!(err("[1.2.3.4]:80:80").contains("not an IPv6"));
        assert!(err("[::1]:1.2.3.4:80:80").contains("expected"));
    }

    #[test]
    fn ipv6_host_addresses_in_brackets() {
        let p = ok("[::]:8080:80");
        assert_eq!(p.host_ip, Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
        assert_eq!(p.host_ports.unwrap().start, 8080);
        let p = ok("[2001:db8::1]:8080:80/udp");
        assert_eq!(p.host_ip, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(p.proto, Proto::Udp);
        let p = ok("[::1]::80");
        assert_eq!(p.host_ports, None);
        let p = ok("[::1]:80");
        assert_eq!(p.host_ports, None);
        assert_eq!(p.container_ports.start, 80);
    }
}

/// The networks of a `--publish-from` / `--from` list, each truncated to
/// its network address.
pub fn parse_sources(cidrs: &[String]) -> Result<Vec<Ipv4Net>, super::Error> {
    cidrs
        .iter()
        .map(|c| {
            c.parse::<Ipv4Net>()
                .map(|n| n.trunc())
                .map_err(|_| super::Error::BadSource(c.clone()))
        })
        .collect()
}

/// A port or range as published: host ports resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// Host address. 0.0.0.0 means every address of the host, of both
    /// families when the endpoint has IPv6 (Docker's `-p 8080:80`); `::`
    /// every IPv6 address.
    pub host_ip: IpAddr,
    /// Host ports.
    pub host_ports: PortRange,
    /// Endpoint ports, same length as `host_ports`.
    pub container_ports: PortRange,
    /// Protocol.
    pub proto: Proto,
    /// The data path's counter slot for this rule (`nat ls`).
    pub slot: u32,
    /// The sources new flows may come from (`--publish-from`); every one
    /// when empty, as in Docker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Ipv4Net>,
    /// Whether connections reach the endpoint through the userspace
    /// forwarder with a PROXY protocol v2 header naming the client
    /// (`--proxy-protocol`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
}

impl PublishedPort {
    /// Whether `spec` names this rule: same endpoint ports and protocol, and
    /// the same host address and ports when the spec gives them.
    pub fn matches(&self, spec: &PortSpec) -> bool {
        self.container_ports == spec.container_ports
            && self.proto == spec.proto
            && spec.host_ip.is_none_or(|ip| ip == self.host_ip)
            && spec.host_ports.is_none_or(|h| h == self.host_ports)
    }

    /// Host and endpoint port pairs, network byte order, with the
    /// protocol number and `PORT_FLAG_*` bits of the rule.
    fn port_pairs(&self) -> impl Iterator<Item = (u16, u16, u8, u16)> + '_ {
        let proto = match self.proto {
            Proto::Tcp => proto::TCP,
            Proto::Udp => proto::UDP,
        };
        let flags = if self.from.is_empty() {
            0
        } else {
            PORT_FLAG_ALLOW_LIST
        };
        (self.host_ports.start..=self.host_ports.end)
            .zip(self.container_ports.start..=self.container_ports.end)
            .map(move |(host, container)| (host.to_be(), container.to_be(), proto, flags))
    }

    /// The host address of the rule's IPv4 entries, if it has any.
    fn host_ip4(&self) -> Option<Ipv4Addr> {
        match self.host_ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }

    /// The host address of the rule's IPv6 entries, if it has any: its
    /// own, or every one for a rule on every address.
    pub fn host_ip6(&self) -> Option<Ipv6Addr> {
        match self.host_ip {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(ip) if ip.is_unspecified() => Some(Ipv6Addr::UNSPECIFIED),
            IpAddr::V4(_) => None,
        }
    }

    /// The data path's IPv4 entries for this rule: one per host port, each
    /// naming the endpoint port it maps to on `endpoint`.
    pub fn map_entries(&self, endpoint: Ipv4Addr) -> Vec<(PortKey, PortTarget)> {
        let Some(host_ip) = self.host_ip4() else {
            return Vec::new();
        };
        self.port_pairs()
            .map(|(port_be, target_be, proto, flags)| {
                let key = PortKey {
                    addr_be: addr_be(host_ip),
                    port_be,
                    proto,
                    _pad: 0,
                };
                let target = PortTarget {
                    addr_be: addr_be(endpoint),
                    port_be: target_be,
                    flags,
                    slot: self.slot,
                };
                (key, target)
            })
            .collect()
    }

    /// The data path's IPv6 entries for this rule, to `endpoint`'s IPv6
    /// address.
    pub fn map_entries6(&self, endpoint: Ipv6Addr) -> Vec<(PortKey6, PortTarget6)> {
        let Some(host_ip) = self.host_ip6() else {
            return Vec::new();
        };
        self.port_pairs()
            .map(|(port_be, target_be, proto, flags)| {
                let key = PortKey6 {
                    addr: host_ip.octets(),
                    port_be,
                    proto,
                    _pad: 0,
                };
                let target = PortTarget6 {
                    addr: endpoint.octets(),
                    port_be: target_be,
                    flags,
                    slot: self.slot,
                };
                (key, target)
            })
            .collect()
    }

    /// Whether both publish a common host port of the same protocol on
    /// addresses that can coincide.
    pub fn conflicts_with(&self, other: &PublishedPort) -> bool {
        let same_v4 = match (self.host_ip4(), other.host_ip4()) {
            (Some(a), Some(b)) => a == b || a.is_unspecified() || b.is_unspecified(),
            _ => false,
        };
        let same_v6 = match (self.host_ip6(), other.host_ip6()) {
            (Some(a), Some(b)) => a == b || a.is_unspecified() || b.is_unspecified(),
            _ => false,
        };
        self.proto == other.proto
            && self.host_ports.overlaps(&other.host_ports)
            && (same_v4 || same_v6)
    }
}

/// The published host ports by protocol and port, each with the rules
/// (indices into the list they were indexed from) that hold it: a conflict
/// check costs the ports a rule spans, not the rules published.
#[derive(Default)]
struct HostPortIndex(std::collections::HashMap<(Proto, u16), Vec<usize>>);

impl HostPortIndex {
    fn insert(&mut self, i: usize, p: &PublishedPort) {
        for port in p.host_ports.start..=p.host_ports.end {
            self.0.entry((p.proto, port)).or_default().push(i);
        }
    }

    /// The first of `rules` that `p` conflicts with.
    fn conflict<'a, T>(
        &self,
        rules: &'a [(T, PublishedPort)],
        p: &PublishedPort,
    ) -> Option<&'a (T, PublishedPort)> {
        (p.host_ports.start..=p.host_ports.end)
            .filter_map(|port| self.0.get(&(p.proto, port)))
            .flatten()
            .map(|i| &rules[*i])
            .find(|(_, other)| other.conflicts_with(p))
    }
}

/// Resolves `specs` against the ports already published (`taken`, with their
/// owners) and the host's own sockets (`host_free` says why a port is not
/// free of them): explicit host ports must be free, missing ones are the
/// lowest free ports of `ephemeral` (the host's ip_local_port_range, as
/// Docker does). Costs the host ports asked for and published, not their
/// product: one request may publish thousands.
pub fn assign_host_ports<E>(
    specs: &[PortSpec],
    taken: &[(String, PublishedPort)],
    ephemeral: PortRange,
    host_free: impl Fn(&PublishedPort) -> Result<(), E>,
) -> Result<Vec<PublishedPort>, E>
where
    E: From<super::Error>,
{
    if specs.len() >= MAX_NAT_SLOTS as usize {
        return Err(super::Error::TooManyPorts {
            asked: specs.len(),
            max: MAX_NAT_SLOTS as usize - 1,
        }
        .into());
    }
    let mut assigned: Vec<(String, PublishedPort)> = taken.to_vec();
    let mut index = HostPortIndex::default();
    for (i, (_, p)) in assigned.iter().enumerate() {
        index.insert(i, p);
    }
    let mut slots_used: std::collections::BTreeSet<u32> =
        assigned.iter().map(|(_, p)| p.slot).collect();
    let mut next_slot = 1;
    // Where the search for a free run of each width last ended: the runs
    // before it are taken, and stay taken while this request adds ports.
    let mut searched: std::collections::HashMap<(Proto, IpAddr, u16), u16> =
        std::collections::HashMap::new();
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let host_ip = spec.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let width = spec.container_ports.end - spec.container_ports.start;
        let candidate = |start: u16| PublishedPort {
            host_ip,
            host_ports: PortRange {
                start,
                end: start + width,
            },
            container_ports: spec.container_ports,
            proto: spec.proto,
            slot: 0,
            from: Vec::new(),
            proxy_protocol: false,
        };
        let port = match spec.host_ports {
            Some(h) => {
                let p = candidate(h.start);
                if let Some((owner, other)) = index.conflict(&assigned, &p) {
                    return Err(super::Error::PortInUse {
                        port: other.host_ports.start.max(p.host_ports.start),
                        proto: p.proto.to_string(),
                        ip: host_ip,
                        owner: owner.clone(),
                    }
                    .into());
                }
                host_free(&p)?;
                p
            }
            None => {
                let from = searched
                    .entry((spec.proto, host_ip, width))
                    .or_insert(ephemeral.start);
                let p = (*from..=ephemeral.end.saturating_sub(width))
                    .map(candidate)
                    .find(|p| index.conflict(&assigned, p).is_none() && host_free(p).is_ok())
                    .ok_or_else(|| super::Error::NoFreeHostPort(spec.to_string()))?;
                *from = p.host_ports.start;
                p
            }
        };
        while slots_used.contains(&next_slot) {
            next_slot += 1;
        }
        if next_slot >= MAX_NAT_SLOTS {
            return Err(super::Error::NoFreeSlot.into());
        }
        slots_used.insert(next_slot);
        let port = PublishedPort {
            slot: next_slot,
            ..port
        };
        index.insert(assigned.len(), &port);
        assigned.push((String::new(), port.clone()));
        out.push(port);
    }
    Ok(out)
}

#[cfg(test)]
mod assign_tests {
    use super::*;

    /// No host socket uses any port.
    fn free(_: &PublishedPort) -> Result<(), crate::logic::Error> {
        Ok(())
    }

    const EPHEMERAL: PortRange = PortRange {
        start: 32768,
        end: 60999,
    };

    fn specs(s: &[&str]) -> Vec<PortSpec> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ports_the_host_uses_are_refused_or_skipped() {
        let host_uses = |p: &PublishedPort| {
            if (p.host_ports.start..=p.host_ports.end).contains(&32769) {
                Err(crate::logic::Error::NoFreeSlot)
            } else {
                Ok(())
            }
        };
        let err = assign_host_ports(&specs(&["32769:80"]), &[], EPHEMERAL, host_uses).unwrap_err();
        assert_eq!(err, crate::logic::Error::NoFreeSlot, "the host's reason");
        let got = assign_host_ports(&specs(&["80", "81"]), &[], EPHEMERAL, host_uses).unwrap();
        let starts: Vec<u16> = got.iter().map(|p| p.host_ports.start).collect();
        assert_eq!(starts, [32768, 32770]);
        let range = assign_host_ports(&specs(&["80-81"]), &[], EPHEMERAL, host_uses).unwrap();
        assert_eq!(
            range[0].host_ports.start, 32770,
            "no port of the range is the host's"
        );
    }

    #[test]
    fn auto_ports_are_lowest_free_and_distinct() {
        let got = assign_host_ports(&specs(&["80", "81", "53/udp"]), &[], EPHEMERAL, free).unwrap();
        assert_eq!(got[0].host_ports.start, 32768);
        assert_eq!(got[1].host_ports.start, 32769);
        assert_eq!(got[2].host_ports.start, 32768, "udp is a separate space");
        assert!(got.iter().all(|p| p.host_ip.is_unspecified()));
    }

    #[test]
    fn explicit_conflicts_name_the_owner() {
        let taken = assign_host_ports(&specs(&["8080:80"]), &[], EPHEMERAL, free).unwrap();
        let taken = vec![("web".to_string(), taken[0].clone())];
        let err =
            assign_host_ports(&specs(&["127.0.0.1:8080:81"]), &taken, EPHEMERAL, free).unwrap_err();
        assert!(err.to_string().contains("published by web"), "{err}");
        assert!(assign_host_ports(&specs(&["8080:80/udp"]), &taken, EPHEMERAL, free).is_ok());
        assert!(assign_host_ports(&specs(&["8081:80"]), &taken, EPHEMERAL, free).is_ok());
        let err =
            assign_host_ports(&specs(&["9000:80", "9000:81"]), &[], EPHEMERAL, free).unwrap_err();
        assert!(err.to_string().contains("9000"));
    }

    #[test]
    fn rules_get_distinct_counter_slots_after_masquerade() {
        let first = assign_host_ports(&specs(&["80", "81"]), &[], EPHEMERAL, free).unwrap();
        assert_eq!((first[0].slot, first[1].slot), (1, 2));
        let taken = vec![("web".to_string(), first[1].clone())];
        let next = assign_host_ports(&specs(&["82"]), &taken, EPHEMERAL, free).unwrap();
        assert_eq!(next[0].slot, 1, "freed slots are reused");
    }

    #[test]
    fn map_entries_pair_each_host_port_with_its_endpoint_port() {
        let p = assign_host_ports(
            &specs(&["127.0.0.1:8000-8002:80-82/udp"]),
            &[],
            EPHEMERAL,
            free,
        )
        .unwrap()
        .remove(0);
        let entries = p.map_entries("172.17.0.2".parse().unwrap());
        assert_eq!(entries.len(), 3);
        let (key, target) = entries[2];
        assert_eq!(key.addr_be.to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!(u16::from_be(key.port_be), 8002);
        assert_eq!(key.proto, proto::UDP);
        assert_eq!(target.addr_be.to_ne_bytes(), [172, 17, 0, 2]);
        assert_eq!(u16::from_be(target.port_be), 82);
        assert_eq!(target.slot, p.slot);
    }

    #[test]
    fn specs_match_the_rules_they_name() {
        let p = assign_host_ports(&specs(&["127.0.0.1:8080:80"]), &[], EPHEMERAL, free)
            .unwrap()
            .remove(0);
        for (spec, matches) in [
            ("80", true),
            ("8080:80", true),
            ("127.0.0.1:8080:80", true),
            ("80/udp", false),
            ("8081:80", false),
            ("10.0.0.1:8080:80", false),
            ("81", false),
        ] {
            assert_eq!(p.matches(&spec.parse().unwrap()), matches, "{spec}");
        }
    }

    #[test]
    fn auto_ranges_fit_and_exhaust() {
        let tiny = PortRange {
            start: 40000,
            end: 40002,
        };
        let got = assign_host_ports(&specs(&["10-11"]), &[], tiny, free).unwrap();
        assert_eq!(
            got[0].host_ports,
            PortRange {
                start: 40000,
                end: 40001
            }
        );
        let err = assign_host_ports(&specs(&["10-11", "12-13"]), &[], tiny, free).unwrap_err();
        assert!(err.to_string().contains("no free host port"));
    }
}
