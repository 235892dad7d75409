//! Network drivers, as netavark's `NetworkDriver`: each kind of network
//! says what endpoints attach to on this host, sets the network up and
//! tears it down. What is common stays in the daemon: checking a subnet
//! against the host before anything is touched
//! ([`crate::logic::ipam::check_subnet`]), the state, the DNS servers and
//! the data path's routes. A new kind of network is a new implementation
//! here.

use std::{future::Future, pin::Pin};

use crate::{
    daemon::error::Result,
    kernel::{
        self,
        netlink::{Link, Rtnl},
    },
    logic::{
        endpoint::{BridgeNet, mac_for},
        ipam::Pool,
        network::LocalNetwork,
        overlay::OverlayNetwork,
    },
};

/// A future a driver returns, boxed so that drivers are objects.
pub type DriverFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// What a kind of network does on this host.
pub trait NetworkDriver: Send + Sync {
    /// `network ls`'s DRIVER.
    fn kind(&self) -> &'static str;

    /// Where endpoints of the network attach on this host.
    fn attachment(&self) -> &BridgeNet;

    /// Where endpoints' addresses are leased from.
    fn pool(&self) -> Pool {
        let net = self.attachment();
        Pool::with(net.subnet, net.gateway, None)
    }

    /// Where endpoints' IPv6 addresses are leased from, on dual-stack
    /// networks.
    fn pool6(&self) -> Option<Pool<ipnet::Ipv6Net>> {
        let v6 = self.attachment().ipv6?;
        Some(Pool::with(v6.subnet, v6.gateway, None))
    }

    /// Makes the network on this host, or takes up what an earlier run
    /// left; returns its bridge.
    fn setup<'a>(&'a self, rtnl: &'a Rtnl) -> DriverFuture<'a, Link>;

    /// Removes what [`NetworkDriver::setup`] made: the bridge, and with it
    /// its address and routes.
    fn teardown<'a>(&'a self, rtnl: &'a Rtnl) -> DriverFuture<'a, ()> {
        Box::pin(async move { Ok(rtnl.delete_link(&self.attachment().bridge).await?) })
    }
}

/// The default bridge network: a Linux bridge with the gateway's address,
/// its subnet routed by that address, masqueraded out of the uplink. `up`
/// creates the bridge itself, so that a failed `up` removes it again.
#[derive(Clone, Debug)]
pub struct Bridge {
    /// The bridge, its subnet and gateway.
    pub net: BridgeNet,
}

/// An overlay network's part on this host: a bridge at the first address
/// of this host's lease, the whole overlay subnet routed to it, and the
/// data path carrying what leaves it to the other hosts over VXLAN.
#[derive(Clone, Debug)]
pub struct Overlay {
    /// The network, the same on every host.
    pub network: OverlayNetwork,
    /// Its bridge on this host.
    pub on_host: BridgeNet,
}

/// A network a user created on this host: a Linux bridge of its own,
/// with its gateway, masqueraded out of the uplink unless internal.
#[derive(Clone, Debug)]
pub struct LocalBridge {
    /// The network as recorded.
    pub network: LocalNetwork,
    /// Its bridge.
    pub on_host: BridgeNet,
}

/// Creates the bridge of `net` unless an earlier run left it, and
/// addresses it.
async fn ensure_bridge(rtnl: &Rtnl, net: &BridgeNet) -> Result<Link> {
    if rtnl.link(&net.bridge).await?.is_none() {
        rtnl.create_bridge(&net.bridge).await?;
    }
    address_bridge(rtnl, net).await
}

/// Gives the bridge of `net` its gateway address and a MAC of its own,
/// and brings it up. A bridge without a MAC set takes its ports' lowest,
/// which changes when that port goes: endpoints would keep sending to the
/// old one until their neighbour entry for the gateway expires.
async fn address_bridge(rtnl: &Rtnl, net: &BridgeNet) -> Result<Link> {
    let bridge = rtnl
        .link(&net.bridge)
        .await?
        .ok_or_else(|| kernel::Error::InterfaceNotFound(net.bridge.clone()))?;
    rtnl.set_mac(bridge.index, &net.bridge, mac_for(net.gateway))
        .await?;
    rtnl.add_address(
        bridge.index,
        &net.bridge,
        net.gateway.into(),
        net.subnet.prefix_len(),
    )
    .await?;
    if let Some(v6) = &net.ipv6 {
        rtnl.add_address(
            bridge.index,
            &net.bridge,
            v6.gateway.into(),
            v6.subnet.prefix_len(),
        )
        .await?;
    }
    rtnl.set_up(bridge.index, &net.bridge).await?;
    Ok(bridge)
}

impl NetworkDriver for Bridge {
    fn kind(&self) -> &'static str {
        "bridge"
    }

    fn attachment(&self) -> &BridgeNet {
        &self.net
    }

    fn setup<'a>(&'a self, rtnl: &'a Rtnl) -> DriverFuture<'a, Link> {
        Box::pin(address_bridge(rtnl, &self.net))
    }
}

impl NetworkDriver for Overlay {
    fn kind(&self) -> &'static str {
        "overlay"
    }

    fn attachment(&self) -> &BridgeNet {
        &self.on_host
    }

    fn setup<'a>(&'a self, rtnl: &'a Rtnl) -> DriverFuture<'a, Link> {
        Box::pin(async move {
            let on_host = &self.on_host;
            let bridge = ensure_bridge(rtnl, on_host).await?;
            // The data path hands a DF packet too big to encapsulate to the
            // stack, which answers "fragmentation needed" along this
            // route's MTU: endpoints created before the uplink's MTU shrank
            // still find the path MTU, where a drop would be a black hole.
            let mtu = on_host.mtu.expect("overlays have an MTU");
            rtnl.route_subnet(self.network.subnet, bridge.index, &on_host.bridge, mtu)
                .await?;
            Ok(bridge)
        })
    }
}

impl NetworkDriver for LocalBridge {
    fn kind(&self) -> &'static str {
        self.network.spec.driver.name()
    }

    fn attachment(&self) -> &BridgeNet {
        &self.on_host
    }

    fn pool(&self) -> Pool {
        let spec = &self.network.spec;
        Pool::with(spec.subnet, spec.gateway, spec.ip_range)
    }

    fn setup<'a>(&'a self, rtnl: &'a Rtnl) -> DriverFuture<'a, Link> {
        Box::pin(async move {
            match self.network.spec.parent() {
                // Endpoints hang off the parent, which is not netplane's.
                Some(parent) => Ok(rtnl
                    .link(parent)
                    .await?
                    .ok_or_else(|| kernel::Error::InterfaceNotFound(parent.to_string()))?),
                None => ensure_bridge(rtnl, &self.on_host).await,
            }
        })
    }

    fn teardown<'a>(&'a self, rtnl: &'a Rtnl) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            match self.network.spec.parent() {
                Some(_) => Ok(()),
                None => Ok(rtnl.delete_link(&self.on_host.bridge).await?),
            }
        })
    }
}
