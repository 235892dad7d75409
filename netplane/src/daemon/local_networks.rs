//! Networks a user creates on this host (`network create`, Docker's local
//! scope): each with its own bridge, subnet, gateway and DNS server, kept
//! apart from every other network by the data path.

use netplane_common::abi::{
    BRIDGE_NETWORK_IDS, MACVLAN_SOURCE_HOST, NET_FLAG_ENCAP_GRE, NET_FLAG_INTERNAL,
    NET_FLAG_IPV6_ROUTED, NET_FLAG_MACVLAN, NET_FLAG_NETWORKS, NetworkPolicy,
};

use super::{
    drivers::{self, NetworkDriver},
    *,
};
use crate::{
    logic::network::{self, Ipv6Side, LocalDriver, LocalNetwork, LocalRequest},
    types::{Ipam, IpamConfig, NetworkMember, Pruned},
};

impl Daemon {
    /// The driver of local network `net`.
    pub(super) fn local_driver(&self, net: &LocalNetwork) -> drivers::LocalBridge {
        let spec = &net.spec;
        drivers::LocalBridge {
            network: net.clone(),
            on_host: BridgeNet {
                bridge: spec.parent().map_or_else(|| net.bridge(), str::to_string),
                subnet: Ipv4Net::new(spec.gateway, spec.subnet.prefix_len())
                    .expect("prefix of a valid net"),
                gateway: spec.gateway,
                mtu: spec
                    .mtu
                    .or_else(|| endpoint::bridge_endpoint_mtu(self.uplink_mtu)),
                vni: net.id,
                macvlan: spec.driver == LocalDriver::Macvlan,
                ipv6: spec.ipv6,
            },
        }
    }

    /// Creates a local network: checked against every address, route and
    /// network of the host, recorded, its bridge and DNS server up, its
    /// policy in the data path; undone if any of that fails.
    pub(super) async fn create_local_network(
        &mut self,
        req: CreateNetwork,
        driver: LocalDriver,
    ) -> Result<NetworkInfo> {
        for (given, flag) in [
            (req.vni.is_some(), "--vni"),
            (req.encap.is_some(), "--encap"),
        ] {
            if given {
                return Err(Error::NotApplicable {
                    flag,
                    mode: driver.name().into(),
                });
            }
        }
        if !req.icc && self.dp.is_none() {
            return Err(Error::NeedsDatapath {
                what: "--icc=false",
            });
        }
        let host = self.rtnl.networks_in_use(None).await?;
        let networks = self.subnets_besides(None)?;
        let mut options = req.options;
        if driver == LocalDriver::Macvlan
            && !options.contains_key(network::PARENT)
            && let Some(uplink) = &self.uplink
        {
            options.insert(network::PARENT.into(), uplink.clone());
        }
        let spec = network::plan_local(
            driver,
            LocalRequest {
                subnet: req.subnet,
                gateway: req.gateway,
                ip_range: req.ip_range,
                internal: req.internal,
                icc: req.icc,
                mtu: req.mtu,
                options,
                labels: req.labels,
                ipv6: req.ipv6,
                subnet6: req.subnet6,
                gateway6: req.gateway6,
                ipv6_masquerade: req.ipv6_masquerade,
            },
            &host,
            &networks,
            network::Ipv6Context {
                name: &req.name,
                in_use: &self.ipv6_subnets()?,
            },
        )?;
        let net = self
            .store
            .insert_local_network(&req.name, &spec, BRIDGE_NETWORK_IDS)?;
        let driver = self.local_driver(&net);
        if let Err(e) = self.bring_up_local(&driver).await {
            self.resolver.stop(&net.name);
            let _ = driver.teardown(&self.rtnl).await;
            self.store.delete_local_network(&net.name)?;
            let _ = self.sync_network_policies();
            return Err(e);
        }
        info!(network = %net.name, subnet = %spec.subnet, bridge = %driver.on_host.bridge, "network created");
        self.network(&net.name)
    }

    async fn bring_up_local(&mut self, driver: &drivers::LocalBridge) -> Result<()> {
        let link = driver.setup(&self.rtnl).await?;
        if let Some(parent) = driver.network.spec.parent() {
            // The host's own frames leave the parent with its MAC.
            let mac = link
                .mac
                .ok_or_else(|| Error::MacvlanParent(parent.to_string()))?;
            self.parent_macs.insert(parent.to_string(), mac);
            if self.uplink.as_deref() != Some(parent) {
                self.tell_datapath(|dp| dp.attach(parent, Role::Parent).map(drop))?;
            }
            self.sync_network_policies()?;
            return self.sync_macvlan_sources();
        }
        self.serve_dns(&driver.network.name, &driver.on_host).await;
        self.sync_network_policies()?;
        // Its gateway is closed to the uplink from now on.
        self.sync_host_addrs().await
    }

    /// Tells the data path who may send out of each macvlan parent: every
    /// macvlan endpoint from its MAC and address, the host from the
    /// parent's own MAC.
    /// The IPv6 subnets of the host's networks, the bridge network's
    /// among them.
    pub(super) fn ipv6_subnets(&self) -> Result<Vec<ipnet::Ipv6Net>> {
        let locals = self.store.local_networks()?;
        let local = locals.iter().filter_map(|n| n.spec.ipv6);
        Ok(self
            .net
            .ipv6
            .into_iter()
            .chain(local)
            .map(|v6| v6.subnet)
            .collect())
    }

    pub(super) fn sync_macvlan_sources(&mut self) -> Result<()> {
        let macvlans: Vec<LocalNetwork> = self
            .store
            .local_networks()?
            .into_iter()
            .filter(|n| n.spec.driver == LocalDriver::Macvlan)
            .collect();
        let mut sources: Vec<([u8; 6], Ipv4Addr, u32)> = self
            .parent_macs
            .values()
            .map(|mac| (*mac, Ipv4Addr::UNSPECIFIED, MACVLAN_SOURCE_HOST))
            .collect();
        let records = self.store.endpoints()?;
        for net in &macvlans {
            for (_, on) in members(&records, &Mode::Network(net.name.clone())) {
                if let Some((ip, mac)) = on {
                    sources.push((mac, ip, 0));
                }
            }
        }
        self.tell_datapath(|dp| dp.set_macvlan_sources(&sources))
    }

    /// Brings up every local network recorded here (after a restart,
    /// before their endpoints are reconciled).
    pub(super) async fn restore_local_networks(&mut self) -> Result<()> {
        for net in self.store.local_networks()? {
            let driver = self.local_driver(&net);
            self.bring_up_local(&driver).await?;
        }
        Ok(())
    }

    /// Removes local network `net`, which has no endpoints.
    pub(super) async fn remove_local_network(&mut self, net: &LocalNetwork) -> Result<()> {
        self.resolver.stop(&net.name);
        self.local_driver(net).teardown(&self.rtnl).await?;
        self.store.delete_local_network(&net.name)?;
        if let Some(parent) = net.spec.parent() {
            let still_used = self
                .store
                .local_networks()?
                .iter()
                .any(|n| n.spec.parent() == Some(parent));
            if !still_used {
                self.parent_macs.remove(parent);
                if self.uplink.as_deref() != Some(parent) {
                    self.tell_datapath(|dp| dp.detach(parent))?;
                }
            }
            self.sync_macvlan_sources()?;
        }
        self.sync_network_policies()?;
        self.sync_host_addrs().await?;
        info!(network = %net.name, "network removed");
        Ok(())
    }

    /// Removes every local network without endpoints: `network prune`.
    /// Overlays are the cluster's, and stay.
    pub async fn prune_networks(&mut self) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        for net in self.store.local_networks()? {
            if self.members_of(&net.name)?.is_empty() {
                self.remove_local_network(&net).await?;
                pruned.networks_deleted.push(net.name);
            }
        }
        Ok(pruned)
    }

    /// The endpoints attached to network `name`, first or later.
    pub(super) fn members_of(&self, name: &str) -> Result<Vec<String>> {
        let mode = Mode::Network(name.to_string());
        Ok(members(&self.store.endpoints()?, &mode)
            .into_iter()
            .map(|(rec, _)| rec.ep.name.clone())
            .collect())
    }

    /// Whether `endpoint`, attached in `mode`, may publish ports: on the
    /// bridge network and on local networks that are not internal.
    pub(super) fn check_publishing(&self, endpoint: &str, mode: &Mode) -> Result<()> {
        let local = match mode {
            Mode::Bridge => return Ok(()),
            Mode::Network(name) => self.store.local_network(name)?,
            _ => None,
        };
        match local {
            Some(net) if net.spec.internal => Err(Error::InternalNoPorts {
                endpoint: endpoint.to_string(),
                network: net.name,
            }),
            Some(net) if net.spec.driver == LocalDriver::Bridge => Ok(()),
            // Straight on the parent's network, with no NAT to publish by.
            Some(net) => Err(Error::NotApplicable {
                flag: "-p",
                mode: format!("macvlan network {}", net.name),
            }),
            None => Err(Error::NotApplicable {
                flag: "-p",
                mode: mode.to_string(),
            }),
        }
    }

    /// Tells the data path every network other than the bridge network
    /// (overlays with a lease here, local networks), and whether there
    /// are any.
    pub(super) fn sync_network_policies(&mut self) -> Result<()> {
        let overlays = self.store.networks()?;
        let locals = self.store.local_networks()?;
        let mut policies = Vec::new();
        for net in &overlays {
            // Without a lease here, no endpoint of it is here either.
            if let Ok(driver) = self.overlay_driver(net) {
                let flags = net.encap.policy_flags();
                policies.push((net.vni, policy(net.subnet, driver.on_host.gateway, flags)));
            }
        }
        for net in &locals {
            let spec = &net.spec;
            let flags = if spec.icc { 0 } else { NET_FLAG_ICC_DISABLED }
                | if spec.internal { NET_FLAG_INTERNAL } else { 0 }
                | if spec.ipv6.is_some_and(|v6| v6.routed) {
                    NET_FLAG_IPV6_ROUTED
                } else {
                    0
                };
            policies.push((net.id, policy(spec.subnet, spec.gateway, flags)));
        }
        if self.dp.is_none() {
            return self.sync_firewall();
        }
        self.tell_datapath(|dp| dp.set_networks(&policies))?;
        let mut flags = self.net_config.flags
            & !(NET_FLAG_OVERLAY | NET_FLAG_NETWORKS | NET_FLAG_MACVLAN | NET_FLAG_ENCAP_GRE);
        if locals.iter().any(|n| n.spec.driver == LocalDriver::Macvlan) {
            flags |= NET_FLAG_MACVLAN;
        }
        if !overlays.is_empty() {
            flags |= NET_FLAG_OVERLAY;
        }
        if overlays.iter().any(|n| n.encap == overlay::Encap::Gre) {
            flags |= NET_FLAG_ENCAP_GRE;
        }
        if !overlays.is_empty() || !locals.is_empty() {
            flags |= NET_FLAG_NETWORKS;
        }
        self.net_config.flags = flags;
        let cfg = self.net_config;
        self.tell_datapath(|dp| dp.set_config(cfg))
    }

    /// Without a data path: has nftables masquerade what leaves each
    /// bridge network, keep the networks apart and internal ones in.
    pub(super) fn sync_firewall(&mut self) -> Result<()> {
        let masqueraded6 = |v6: Option<Ipv6Side>| v6.filter(|v6| !v6.routed).map(|v6| v6.subnet);
        let mut networks = vec![firewall::BridgeRules {
            bridge: self.net.bridge.clone(),
            subnet: self.net.subnet,
            subnet6: masqueraded6(self.net.ipv6),
            internal: false,
        }];
        for net in self.store.local_networks()? {
            if net.spec.driver == LocalDriver::Bridge {
                networks.push(firewall::BridgeRules {
                    bridge: net.bridge(),
                    subnet: net.spec.subnet,
                    subnet6: masqueraded6(net.spec.ipv6),
                    internal: net.spec.internal,
                });
            }
        }
        let script = firewall::ruleset(&networks).map_err(crate::logic::Error::from)?;
        self.store.set_meta(meta::FIREWALL, firewall::TABLE)?;
        Ok(kernel::nft::apply(&script)?)
    }

    /// `network ls`/`inspect` of local network `net`.
    pub(super) fn local_network_info(
        &self,
        net: &LocalNetwork,
        records: &[StoredEndpoint],
    ) -> NetworkInfo {
        let spec = &net.spec;
        let driver = self.local_driver(net);
        let members = members(records, &Mode::Network(net.name.clone()));
        NetworkInfo {
            name: net.name.clone(),
            id: net.uid.clone(),
            driver: spec.driver.name().into(),
            scope: "local".into(),
            created: Some(net.created.clone()),
            bridge: Some(driver.on_host.bridge.clone()),
            subnet: Some(spec.subnet.to_string()),
            gateway: Some(spec.gateway.to_string()),
            icc: Some(spec.icc),
            internal: spec.internal,
            ipam: ipam_of(spec.subnet, spec.gateway, spec.ip_range, spec.ipv6),
            enable_ipv6: spec.ipv6.is_some(),
            options: spec.options.clone(),
            labels: spec.labels.clone(),
            endpoints: members.iter().map(|(r, _)| r.ep.name.clone()).collect(),
            containers: containers(&members, spec.subnet.prefix_len()),
            ..NetworkInfo::default()
        }
    }
}

/// What the data path decides an endpoint's traffic on a network by.
fn policy(subnet: Ipv4Net, gateway: Ipv4Addr, flags: u32) -> NetworkPolicy {
    NetworkPolicy {
        subnet_be: addr_be(subnet.network()),
        mask_be: addr_be(subnet.netmask()),
        gateway_be: addr_be(gateway),
        flags,
    }
}

/// Docker's `IPAM` of a network: its IPv4 subnet, and its IPv6 one on a
/// dual-stack network.
pub(super) fn ipam_of(
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    range: Option<Ipv4Net>,
    ipv6: Option<Ipv6Side>,
) -> Ipam {
    let v4 = IpamConfig {
        subnet: subnet.trunc().to_string(),
        gateway: gateway.to_string(),
        ip_range: range.map(|r| r.to_string()),
    };
    let v6 = ipv6.map(|v6| IpamConfig {
        subnet: v6.subnet.to_string(),
        gateway: v6.gateway.to_string(),
        ip_range: None,
    });
    Ipam {
        driver: "default".into(),
        config: std::iter::once(v4).chain(v6).collect(),
    }
}

/// Where an endpoint is on a network: its address and MAC there.
pub(super) type Member<'a> = (&'a StoredEndpoint, Option<(Ipv4Addr, [u8; 6])>);

/// The endpoints of `records` on the network of `mode`, first or
/// connected later.
pub(super) fn members<'a>(records: &'a [StoredEndpoint], mode: &Mode) -> Vec<Member<'a>> {
    records
        .iter()
        .filter_map(|r| {
            if r.ep.mode == *mode {
                return Some((r, r.ep.ip.zip(r.ep.mac())));
            }
            let att = r.attachments.iter().find(|a| a.mode() == *mode)?;
            Some((r, Some((att.ip, mac_for(att.ip)))))
        })
        .collect()
}

/// `network inspect`'s `Containers`: each endpoint with its address.
pub(super) fn containers(
    members: &[Member<'_>],
    prefix_len: u8,
) -> BTreeMap<String, NetworkMember> {
    members
        .iter()
        .filter_map(|(r, on)| {
            let (ip, mac) = (*on)?;
            Some((
                r.ep.name.clone(),
                NetworkMember {
                    name: r.ep.name.clone(),
                    ipv4_address: format!("{ip}/{prefix_len}"),
                    mac_address: format_mac(&mac),
                },
            ))
        })
        .collect()
}
