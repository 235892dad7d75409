//! Links, addresses and routes over rtnetlink.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{
    Handle, LinkBridge, LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        address::{AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope},
        link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage, MacVlanMode},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric},
        tc::{TcAttribute, TcHandle},
    },
};

use super::error::{Error, Result};
use super::netns;
pub use crate::logic::endpoint::V6Address;

const EEXIST: i32 = -libc::EEXIST;
const ENODEV: i32 = -libc::ENODEV;
const ENOENT: i32 = -libc::ENOENT;
const EINVAL: i32 = -libc::EINVAL;

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get()),
        _ => None,
    }
}

/// A link as listed by the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Index of the bridge it is enslaved to.
    pub controller: Option<u32>,
    /// Hardware address, for Ethernet-like links.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: Option<u32>,
    /// What kind of virtual device it is (`veth`, `bridge`, ...); none
    /// for a network card's.
    pub kind: Option<String>,
}

impl From<LinkMessage> for Link {
    fn from(m: LinkMessage) -> Self {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            controller: None,
            mac: None,
            mtu: None,
            kind: None,
        };
        for attr in m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Controller(c) => link.controller = Some(c),
                LinkAttribute::Address(a) => link.mac = a.try_into().ok(),
                LinkAttribute::Mtu(m) => link.mtu = Some(m),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.into_iter().find_map(|i| match i {
                        LinkInfo::Kind(k) => Some(k.to_string()),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        link
    }
}

/// An rtnetlink connection bound to one network namespace.
#[derive(Clone, Debug)]
pub struct Rtnl {
    handle: Handle,
}

impl Rtnl {
    /// A connection in the caller's namespace.
    pub fn current() -> Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("open", "rtnetlink socket", e))?;
        tokio::spawn(conn);
        Ok(Rtnl { handle })
    }

    /// A connection in the namespace `ns`.
    pub fn in_netns(ns: &File) -> Result<Self> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = netns::run_in(ns, move || {
            // The socket registers with the runtime's reactor when created.
            let _guard = rt.enter();
            rtnetlink::new_connection()
        })?
        .map_err(|e| Error::io("open", "rtnetlink socket", e))?;
        tokio::spawn(conn);
        Ok(Rtnl { handle })
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("list", "links", e))?;
        Ok(links.into_iter().map(Link::from).collect())
    }

    /// The link named `name`, if any.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut found = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match found.try_next().await {
            Ok(m) => Ok(m.map(Link::from)),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(Error::netlink("get link", name, e)),
        }
    }

    async fn index(&self, name: &str) -> Result<u32> {
        self.link(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| Error::InterfaceNotFound(name.to_string()))
    }

    /// Creates a bridge and brings it up.
    pub async fn create_bridge(&self, name: &str) -> Result<u32> {
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(|e| Error::netlink("create bridge", name, e))?;
        let index = self.index(name).await?;
        self.set_up(index, name).await?;
        Ok(index)
    }

    /// Gives a link the MAC `mac`.
    pub async fn set_mac(&self, index: u32, name: &str, mac: [u8; 6]) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| Error::netlink("set the MAC of", name, e))
    }

    /// Brings a link up.
    pub async fn set_up(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| Error::netlink("set up", name, e))
    }

    /// Adds an address; an address that is already there is fine.
    pub async fn add_address(
        &self,
        index: u32,
        name: &str,
        ip: IpAddr,
        prefix_len: u8,
    ) -> Result<()> {
        let mut req = self.handle.address().add(index, ip, prefix_len);
        if ip.is_ipv6() {
            // netplane's addresses are unique by lease: duplicate address
            // detection would only hold the address back for a second.
            req.message_mut().header.flags = AddressHeaderFlags::Nodad;
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(Error::netlink(
                "add address to",
                format!("{name} ({ip}/{prefix_len})"),
                e,
            )),
        }
    }

    /// Deletes a link; a link that does not exist is fine.
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        let Some(link) = self.link(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
            Err(e) => Err(Error::netlink("delete link", name, e)),
        }
    }

    /// Deletes the clsact qdisc of link `name`, with every filter on it; a
    /// link without one, or gone, is fine.
    pub async fn delete_clsact(&self, name: &str) -> Result<()> {
        let Some(link) = self.link(name).await? else {
            return Ok(());
        };
        let mut req = self.handle.qdisc().del(link.index as i32);
        let msg = req.message_mut();
        msg.header.parent = TcHandle::CLSACT;
        msg.header.handle = TcHandle {
            major: u16::MAX,
            minor: 0,
        };
        msg.attributes.push(TcAttribute::Kind("clsact".into()));
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(ENODEV | ENOENT | EINVAL)) => Ok(()),
            Err(e) => Err(Error::netlink("delete the clsact qdisc of", name, e)),
        }
    }

    /// Creates the veth pair of an endpoint in one request: `host` in this
    /// namespace, attached to `bridge` and up; its peer `peer` with `mac`
    /// straight in namespace `ns`, as `ip link add ... peer ... netns`
    /// does; both ends with `mtu` if given. Creating the peer where it belongs spares moving it across
    /// namespaces, which waits for RCU grace periods, and renaming it.
    pub async fn create_veth(
        &self,
        host: &str,
        bridge: &str,
        peer: &str,
        mac: [u8; 6],
        mtu: Option<u32>,
        ns: &File,
    ) -> Result<()> {
        let bridge_index = self.index(bridge).await?;
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .address(mac.to_vec())
            .setns_by_fd(ns.as_raw_fd());
        let mut veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .controller(bridge_index)
            .up();
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
            veth = veth.mtu(mtu);
        }
        let veth = veth
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .build();
        self.handle
            .link()
            .add(veth)
            .execute()
            .await
            .map_err(|e| Error::netlink("create veth", format!("{host} -> {bridge}"), e))
    }

    /// Creates a bridge-mode macvlan child of `parent` straight in
    /// namespace `ns`, named `name` there, with `mac`.
    pub async fn create_macvlan(
        &self,
        parent: &str,
        name: &str,
        mac: [u8; 6],
        mtu: Option<u32>,
        ns: &File,
    ) -> Result<()> {
        let parent_index = self.index(parent).await?;
        let mut link = LinkMacVlan::new(name, parent_index, MacVlanMode::Bridge)
            .address(mac.to_vec())
            .setns_by_fd(ns.as_raw_fd());
        if let Some(mtu) = mtu {
            link = link.mtu(mtu);
        }
        self.handle
            .link()
            .add(link.build())
            .execute()
            .await
            .map_err(|e| Error::netlink("create macvlan", format!("{name} on {parent}"), e))
    }

    /// Inside an endpoint's namespace: gives `ifname` its address (and
    /// its IPv6 one, `v6`), brings it and `lo` up and routes everything
    /// via `gateway` (and IPv6 via the IPv6 gateway).
    pub async fn configure_endpoint(
        &self,
        ifname: &str,
        ip: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
        v6: Option<&V6Address>,
    ) -> Result<()> {
        let index = self.index(ifname).await?;
        self.add_address(index, ifname, ip.into(), prefix_len)
            .await?;
        if let Some(v6) = v6 {
            self.add_address(index, ifname, v6.ip.into(), v6.prefix_len)
                .await?;
        }
        self.set_up(index, ifname).await?;
        self.loopback_up().await?;
        if let Some(gateway) = gateway {
            self.add_default_route(ifname, gateway.into()).await?;
        }
        match v6.and_then(|v6| v6.gateway) {
            Some(gateway) => self.add_default_route(ifname, gateway.into()).await,
            None => Ok(()),
        }
    }

    /// Routes everything of `gateway`'s family via `gateway` on `ifname`.
    pub async fn add_default_route(&self, ifname: &str, gateway: IpAddr) -> Result<()> {
        let index = self.index(ifname).await?;
        let route = match gateway {
            IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
            IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
        };
        match self.handle.route().add(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(Error::netlink("add default route via", gateway, e)),
        }
    }

    /// Routes `subnet` to the device `index` (named `ifname`) with path MTU
    /// `mtu`, replacing the route there was only if it was to that device:
    /// a route to `subnet` through anything else is not netplane's to take.
    pub async fn route_subnet(
        &self,
        subnet: Ipv4Net,
        index: u32,
        ifname: &str,
        mtu: u32,
    ) -> Result<()> {
        if self
            .routes()
            .await?
            .iter()
            .any(|(dst, oif)| *dst == subnet && *oif != Some(index))
        {
            return Err(Error::Foreign(format!(
                "route to {subnet} (not through {ifname})"
            )));
        }
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .output_interface(index)
            .build();
        route
            .attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink("route", format!("{subnet} to {ifname}"), e))
    }

    /// Brings `lo` up.
    pub async fn loopback_up(&self) -> Result<()> {
        let lo = self.index("lo").await?;
        self.set_up(lo, "lo").await
    }

    /// Interface of the IPv4 default route in the main table, if any.
    pub async fn default_route_interface(&self) -> Result<Option<String>> {
        let routes = self.routes().await?;
        let Some(oif) = routes
            .iter()
            .find(|(dst, _)| dst.prefix_len() == 0)
            .and_then(|(_, oif)| *oif)
        else {
            return Ok(None);
        };
        Ok(self
            .links()
            .await?
            .into_iter()
            .find(|l| l.index == oif)
            .map(|l| l.name))
    }

    /// The gateway and output interface of the IPv4 default route in the
    /// main table, if there is one with a gateway.
    pub async fn default_gateway(&self) -> Result<Option<(Ipv4Addr, u32)>> {
        Ok(self
            .route_messages()
            .await?
            .iter()
            .filter(|m| m.header.destination_prefix_length == 0)
            .find_map(|m| {
                let mut gateway = None;
                let mut oif = None;
                for attr in &m.attributes {
                    match attr {
                        RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                gateway.zip(oif)
            }))
    }

    async fn route_messages(&self) -> Result<Vec<RouteMessage>> {
        let req = RouteMessageBuilder::<Ipv4Addr>::new().build();
        self.handle
            .route()
            .get(req)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("list", "routes", e))
    }

    async fn routes(&self) -> Result<Vec<(Ipv4Net, Option<u32>)>> {
        Ok(self
            .route_messages()
            .await?
            .into_iter()
            .map(|m| {
                let mut dst = Ipv4Addr::UNSPECIFIED;
                let mut oif = None;
                for attr in &m.attributes {
                    match attr {
                        RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                let net = Ipv4Net::new(dst, m.header.destination_prefix_length).unwrap_or_default();
                (net, oif)
            })
            .collect())
    }

    /// Every address of every interface, as netlink gives them.
    async fn address_messages(&self) -> Result<Vec<AddressMessage>> {
        self.handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("list", "addresses", e))
    }

    /// IPv4 addresses with their prefixes and interface indexes.
    pub async fn addresses(&self) -> Result<Vec<(Ipv4Net, u32)>> {
        Ok(self
            .address_messages()
            .await?
            .into_iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(std::net::IpAddr::V4(ip)) => {
                        Ipv4Net::new(*ip, m.header.prefix_len)
                            .ok()
                            .map(|n| (n, m.header.index))
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// The host's global IPv6 addresses (scope universe: not loopback or
    /// link-local), each with the index of its interface.
    pub async fn addresses6(&self) -> Result<Vec<(Ipv6Addr, u32)>> {
        Ok(self
            .address_messages()
            .await?
            .into_iter()
            .filter(|m| m.header.scope == AddressScope::Universe)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V6(ip)) => Some((*ip, m.header.index)),
                    _ => None,
                })
            })
            .collect())
    }

    /// Networks in use by routes (other than default routes) and addresses,
    /// except those on the interface `except`.
    pub async fn networks_in_use(&self, except: Option<u32>) -> Result<Vec<Ipv4Net>> {
        let routes = self.routes().await?;
        let addresses = self.addresses().await?;
        Ok(routes
            .into_iter()
            .filter(|(n, oif)| n.prefix_len() > 0 && (oif.is_none() || *oif != except))
            .map(|(n, _)| n.trunc())
            .chain(
                addresses
                    .into_iter()
                    .filter(|(_, i)| Some(*i) != except)
                    .map(|(n, _)| n.trunc()),
            )
            .filter(|n| !n.network().is_loopback())
            .collect())
    }
}
