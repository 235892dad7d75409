//! Which side of the data plane serves each published port: the eBPF
//! programs translate what they can, and the userspace forwarder takes
//! what they cannot, which is a client of one family reaching an endpoint
//! of the other, every port of `up --userland-proxy`, and ports whose
//! endpoint wants the PROXY protocol (only a relay can add a header).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::Ipv4Net;

use crate::logic::portspec::{Proto, PublishedPort};

/// One host port the forwarder listens on, and where it relays to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The host socket's address: an address of the host, or a wildcard.
    pub listen: SocketAddr,
    /// The endpoint's address and port.
    pub target: SocketAddr,
    pub proto: Proto,
    /// The rule's counter slot, which names it in `nat ls`.
    pub slot: u32,
    /// Whether each connection (each UDP datagram) starts with a PROXY
    /// protocol v2 header naming the client.
    pub proxy_protocol: bool,
    /// The sources new connections may come from; every one when empty.
    pub from: Vec<Ipv4Net>,
}

impl Route {
    /// Whether a client at `peer` may open a connection, by the rule's
    /// `--publish-from` list; as in the data path, the list names IPv4
    /// networks and an IPv6 client is refused when there is one.
    pub fn admits(&self, peer: IpAddr) -> bool {
        if self.from.is_empty() {
            return true;
        }
        match peer {
            IpAddr::V4(ip) => self.from.iter().any(|n| n.contains(&ip)),
            IpAddr::V6(ip) => ip
                .to_ipv4_mapped()
                .is_some_and(|ip| self.from.iter().any(|n| n.contains(&ip))),
        }
    }
}

/// How one rule is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Whether the data path's IPv4 entries are written.
    pub ebpf4: bool,
    /// Whether the data path's IPv6 entries are written.
    pub ebpf6: bool,
    /// The host ports the forwarder serves.
    pub routes: Vec<Route>,
}

/// Plans `port` of an endpoint at `ip` (and `ip6` when it is dual-stack).
/// `userland_proxy` sends every port through the forwarder. A port
/// `shared` with a container runtime, whose own listener binds beside the
/// daemon's socket, is never listened on by the forwarder: such a port of
/// an IPv4-only endpoint stays IPv4-only, as before the forwarder.
pub fn plan(
    port: &PublishedPort,
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
    userland_proxy: bool,
    shared: bool,
) -> Plan {
    let relayed = userland_proxy || port.proxy_protocol;
    let host4 = match port.host_ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    };
    let host6 = port.host_ip6().filter(|_| ip6.is_some() || !shared);
    let mut listens: Vec<(IpAddr, IpAddr)> = Vec::new();
    if let Some(h) = host4.filter(|_| relayed) {
        listens.push((h.into(), ip.into()));
    }
    if let Some(h) = host6 {
        match ip6 {
            Some(e) if relayed => listens.push((h.into(), e.into())),
            Some(_) => {}
            None => listens.push((h.into(), ip.into())),
        }
    }
    let routes = listens
        .into_iter()
        .flat_map(|(host, endpoint)| {
            (port.host_ports.start..=port.host_ports.end)
                .zip(port.container_ports.start..=port.container_ports.end)
                .map(move |(hp, cp)| Route {
                    listen: SocketAddr::new(host, hp),
                    target: SocketAddr::new(endpoint, cp),
                    proto: port.proto,
                    slot: port.slot,
                    proxy_protocol: port.proxy_protocol,
                    from: port.from.clone(),
                })
        })
        .collect();
    Plan {
        ebpf4: host4.is_some() && !relayed,
        ebpf6: host6.is_some() && ip6.is_some() && !relayed,
        routes,
    }
}

/// The host sockets a rule needs held: one per port on its address, and
/// on `::` too for a rule on every IPv4 address, unless the port is
/// `shared` with a container runtime and the endpoint has no IPv6 (see
/// [`plan`]).
pub fn held_addresses(port: &PublishedPort, ipv6: bool, shared: bool) -> Vec<IpAddr> {
    let also_v6 = (port.host_ip.is_ipv4() && port.host_ip.is_unspecified() && (ipv6 || !shared))
        .then_some(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    std::iter::once(port.host_ip).chain(also_v6).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::portspec::PortRange;

    fn rule(host_ip: &str, host: (u16, u16), container: (u16, u16)) -> PublishedPort {
        PublishedPort {
            host_ip: host_ip.parse().unwrap(),
            host_ports: PortRange {
                start: host.0,
                end: host.1,
            },
            container_ports: PortRange {
                start: container.0,
                end: container.1,
            },
            proto: Proto::Tcp,
            slot: 3,
            from: Vec::new(),
            proxy_protocol: false,
        }
    }

    const EP: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
    const EP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

    fn listens(plan: &Plan) -> Vec<(String, String)> {
        plan.routes
            .iter()
            .map(|r| (r.listen.to_string(), r.target.to_string()))
            .collect()
    }

    #[test]
    fn dual_stack_endpoints_stay_in_the_data_path() {
        let p = plan(
            &rule("0.0.0.0", (8080, 8080), (80, 80)),
            EP,
            Some(EP6),
            false,
            false,
        );
        assert!(p.ebpf4 && p.ebpf6);
        assert!(p.routes.is_empty());
    }

    #[test]
    fn ipv6_clients_of_an_ipv4_endpoint_are_relayed() {
        let p = plan(
            &rule("0.0.0.0", (8080, 8081), (80, 81)),
            EP,
            None,
            false,
            false,
        );
        assert!(p.ebpf4 && !p.ebpf6);
        assert_eq!(
            listens(&p),
            [
                ("[::]:8080".into(), "172.17.0.2:80".into()),
                ("[::]:8081".into(), "172.17.0.2:81".into())
            ]
        );
        let only6 = plan(
            &rule("2001:db8::1", (8080, 8080), (80, 80)),
            EP,
            None,
            false,
            false,
        );
        assert!(!only6.ebpf4 && !only6.ebpf6);
        assert_eq!(
            listens(&only6),
            [("[2001:db8::1]:8080".into(), "172.17.0.2:80".into())]
        );
        // A specific IPv4 address has no IPv6 side to relay.
        let one4 = plan(
            &rule("192.0.2.1", (8080, 8080), (80, 80)),
            EP,
            None,
            false,
            false,
        );
        assert!(one4.ebpf4 && one4.routes.is_empty());
    }

    #[test]
    fn a_runtimes_shared_port_is_never_listened_on() {
        let p = plan(
            &rule("0.0.0.0", (8080, 8080), (80, 80)),
            EP,
            None,
            false,
            true,
        );
        assert!(p.ebpf4 && p.routes.is_empty());
        assert_eq!(
            held_addresses(&rule("0.0.0.0", (8080, 8080), (80, 80)), false, true),
            ["0.0.0.0".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            held_addresses(&rule("0.0.0.0", (8080, 8080), (80, 80)), false, false).len(),
            2
        );
    }

    #[test]
    fn userland_proxy_and_proxy_protocol_relay_both_families() {
        for (userland, proxy_protocol) in [(true, false), (false, true)] {
            let mut r = rule("0.0.0.0", (8080, 8080), (80, 80));
            r.proxy_protocol = proxy_protocol;
            let p = plan(&r, EP, Some(EP6), userland, false);
            assert!(!p.ebpf4 && !p.ebpf6);
            assert_eq!(
                listens(&p),
                [
                    ("0.0.0.0:8080".into(), "172.17.0.2:80".into()),
                    ("[::]:8080".into(), "[fd00::2]:80".into())
                ]
            );
            assert!(p.routes.iter().all(|r| r.proxy_protocol == proxy_protocol));
        }
    }

    #[test]
    fn publish_from_admits_ipv4_clients_of_its_networks_only() {
        let mut r = rule("0.0.0.0", (8080, 8080), (80, 80));
        r.from = vec!["10.1.0.0/16".parse().unwrap()];
        let route = &plan(&r, EP, None, true, false).routes[0];
        assert!(route.admits("10.1.2.3".parse().unwrap()));
        assert!(route.admits("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!route.admits("10.2.0.1".parse().unwrap()));
        assert!(!route.admits("2001:db8::7".parse().unwrap()));
        let open = &plan(
            &rule("0.0.0.0", (8080, 8080), (80, 80)),
            EP,
            None,
            true,
            false,
        )
        .routes[0];
        assert!(open.admits("2001:db8::7".parse().unwrap()));
    }
}
