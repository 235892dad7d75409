//! Which side of the data plane serves each published port: the eBPF
//! programs translate what they can, and the userspace forwarder takes
//! what they cannot, which is a client of one family reaching an endpoint
//! of the other, every port of `up --userland-proxy`, and ports whose
//! endpoint wants the PROXY protocol (only a relay can add a header).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::Ipv4Net;

use crate::logic::portspec::{Proto, PublishedPort};

/// What a socket holding a published host port binds: one address of a
/// family, or every address of both with one IPv6 socket that takes IPv4
/// too (one descriptor per port: ten thousand published ports stay under
/// a common open-files limit of twenty thousand).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Held {
    V4(Ipv4Addr),
    V6Only(Ipv6Addr),
    DualStack,
}

impl Held {
    /// The address the socket binds.
    pub fn addr(self) -> IpAddr {
        match self {
            Held::V4(a) => a.into(),
            Held::V6Only(a) => a.into(),
            Held::DualStack => Ipv6Addr::UNSPECIFIED.into(),
        }
    }
}

/// One host port the forwarder listens on, and where it relays to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The socket holding the host port, which the forwarder listens on.
    pub listen: Held,
    pub port: u16,
    /// The endpoint's IPv4 address and port.
    pub target: SocketAddr,
    /// Its IPv6 address and port, where IPv6 clients go if it has one.
    pub target6: Option<SocketAddr>,
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
    /// The address the forwarder listens on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen.addr(), self.port)
    }

    /// Where a connection from `peer` goes: the endpoint's address of the
    /// client's family when it has one, its IPv4 address otherwise.
    pub fn target_for(&self, peer: IpAddr) -> SocketAddr {
        match (peer.to_canonical(), self.target6) {
            (IpAddr::V6(_), Some(t)) => t,
            _ => self.target,
        }
    }

    /// Whether a client at `peer` may open a connection, by the rule's
    /// `--publish-from` list; as in the data path, the list names IPv4
    /// networks and an IPv6 client is refused when there is one.
    pub fn admits(&self, peer: IpAddr) -> bool {
        if self.from.is_empty() {
            return true;
        }
        match peer.to_canonical() {
            IpAddr::V4(ip) => self.from.iter().any(|n| n.contains(&ip)),
            IpAddr::V6(_) => false,
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

/// The sockets holding a rule's host ports, one per port on each of
/// these. A rule on every address takes one dual-stack socket, unless the
/// port is `shared` with a container runtime, whose own listener binds
/// beside the daemon's IPv4 socket (and IPv6 one, for an endpoint with
/// `ipv6`).
pub fn held(port: &PublishedPort, ipv6: bool, shared: bool) -> Vec<Held> {
    match port.host_ip {
        IpAddr::V4(a) if a.is_unspecified() && shared => std::iter::once(Held::V4(a))
            .chain(ipv6.then_some(Held::V6Only(Ipv6Addr::UNSPECIFIED)))
            .collect(),
        IpAddr::V4(a) if a.is_unspecified() => vec![Held::DualStack],
        IpAddr::V4(a) => vec![Held::V4(a)],
        IpAddr::V6(a) => vec![Held::V6Only(a)],
    }
}

/// Plans `port` of an endpoint at `ip` (and `ip6` when it is dual-stack).
/// `userland_proxy` sends every port through the forwarder. A port
/// `shared` with a container runtime is never relayed for a family the
/// data path cannot translate: the runtime's listener holds it beside
/// the daemon's socket, which must not listen.
pub fn plan(
    port: &PublishedPort,
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
    userland_proxy: bool,
    shared: bool,
) -> Plan {
    let relayed = userland_proxy || port.proxy_protocol;
    let covers4 = port.host_ip.is_ipv4();
    let covers6 = port.host_ip.is_ipv6() || port.host_ip.is_unspecified();
    let listens: Vec<Held> = held(port, ip6.is_some(), shared)
        .into_iter()
        .filter(|h| match h {
            // A dual-stack socket relays IPv6 for an IPv4-only endpoint.
            Held::DualStack => relayed || ip6.is_none(),
            Held::V6Only(_) => relayed || (ip6.is_none() && !shared),
            Held::V4(_) => relayed,
        })
        .collect();
    let routes = listens
        .into_iter()
        .flat_map(|listen| {
            (port.host_ports.start..=port.host_ports.end)
                .zip(port.container_ports.start..=port.container_ports.end)
                .map(move |(hp, cp)| Route {
                    listen,
                    port: hp,
                    target: SocketAddr::new(ip.into(), cp),
                    target6: ip6.map(|a| SocketAddr::new(a.into(), cp)),
                    proto: port.proto,
                    slot: port.slot,
                    proxy_protocol: port.proxy_protocol,
                    from: port.from.clone(),
                })
        })
        .collect();
    Plan {
        ebpf4: covers4 && !relayed,
        ebpf6: covers6 && ip6.is_some() && !relayed,
        routes,
    }
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
            .map(|r| (r.listen_addr().to_string(), r.target.to_string()))
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
        assert_eq!(p.routes[0].listen, Held::DualStack);
        let v6_client = "2001:db8::7".parse().unwrap();
        assert_eq!(
            p.routes[0].target_for(v6_client).to_string(),
            "172.17.0.2:80"
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
    fn a_port_on_every_address_is_one_dual_stack_socket_unless_shared() {
        let every = rule("0.0.0.0", (8080, 8080), (80, 80));
        assert_eq!(held(&every, false, false), [Held::DualStack]);
        assert_eq!(held(&every, true, false), [Held::DualStack]);
        assert_eq!(held(&every, false, true), [Held::V4(Ipv4Addr::UNSPECIFIED)]);
        assert_eq!(
            held(&every, true, true),
            [
                Held::V4(Ipv4Addr::UNSPECIFIED),
                Held::V6Only(Ipv6Addr::UNSPECIFIED)
            ]
        );
        // A runtime's shared port is never listened on.
        let p = plan(&every, EP, None, false, true);
        assert!(p.ebpf4 && p.routes.is_empty());
    }

    #[test]
    fn userland_proxy_and_proxy_protocol_relay_both_families() {
        for (userland, proxy_protocol) in [(true, false), (false, true)] {
            let mut r = rule("0.0.0.0", (8080, 8080), (80, 80));
            r.proxy_protocol = proxy_protocol;
            let p = plan(&r, EP, Some(EP6), userland, false);
            assert!(!p.ebpf4 && !p.ebpf6);
            assert_eq!(listens(&p), [("[::]:8080".into(), "172.17.0.2:80".into())]);
            let route = &p.routes[0];
            assert!(route.proxy_protocol == proxy_protocol);
            assert_eq!(
                route.target_for("2001:db8::7".parse().unwrap()).to_string(),
                "[fd00::2]:80"
            );
            // IPv4 clients reach a dual-stack socket IPv4-mapped.
            assert_eq!(
                route
                    .target_for("::ffff:192.0.2.9".parse().unwrap())
                    .to_string(),
                "172.17.0.2:80"
            );
            // Shared with a runtime: one socket per family.
            let shared = plan(&r, EP, Some(EP6), userland, true);
            assert_eq!(
                listens(&shared),
                [
                    ("0.0.0.0:8080".into(), "172.17.0.2:80".into()),
                    ("[::]:8080".into(), "172.17.0.2:80".into())
                ]
            );
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
