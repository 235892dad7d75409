//! Endpoints a container runtime makes through CNI: an interface in the
//! runtime's namespace, added, checked and removed by the runtime, never by
//! `netplane rm`.

use super::*;
use crate::types::{CniAdd, CniAttachment, CniAttachmentKey, CniGc};

impl Daemon {
    /// The endpoint made by the CNI ADD of `key`, if any.
    fn cni_endpoint(&self, key: &CniAttachmentKey) -> Result<Option<StoredEndpoint>> {
        Ok(self.store.endpoints()?.into_iter().find(|r| {
            r.ep.sandbox.as_ref().is_some_and(|sb| {
                sb.config == key.config
                    && sb.container_id == key.container_id
                    && sb.ifname == key.ifname
            })
        }))
    }

    /// CNI ADD: an endpoint of network `req.network` (created with
    /// `req.subnet` when missing) whose interface is `req.key.ifname` in the
    /// runtime's namespace. The same ADD again answers what the first made.
    pub async fn cni_add(&mut self, req: CniAdd) -> Result<CniAttachment> {
        let conflict = |reason: String| Error::CniConflict {
            container_id: req.key.container_id.clone(),
            ifname: req.key.ifname.clone(),
            reason,
        };
        if let Some(rec) = self.cni_endpoint(&req.key)? {
            let sandbox = rec
                .ep
                .sandbox
                .as_ref()
                .expect("CNI endpoints have a sandbox");
            if sandbox.netns != req.netns || rec.state != State::Ready {
                return Err(conflict(format!(
                    "it is attached already, as endpoint {} in {}",
                    rec.ep.name,
                    sandbox.netns.display()
                )));
            }
            return self.cni_attachment(&rec).await;
        }
        let records = self.store.endpoints()?;
        if let Some((other, sandbox)) = records.iter().find_map(|r| {
            r.ep.sandbox
                .as_ref()
                .filter(|sb| sb.container_id == req.key.container_id)
                .map(|sb| (r, sb))
        }) {
            return Err(conflict(format!(
                "it has {} on network {} already, and netplane gives a container one interface",
                sandbox.ifname, other.ep.mode
            )));
        }
        if let Some(other) = records
            .iter()
            .find(|r| r.ep.name.eq_ignore_ascii_case(&req.name))
        {
            let owner = match &other.ep.sandbox {
                Some(sb) => format!("container {}", sb.container_id),
                None => "netplane".to_string(),
            };
            return Err(conflict(format!(
                "endpoint name {} is taken by {owner}",
                other.ep.name
            )));
        }
        let mode: Mode = req.network.parse()?;
        if !mode.has_veth() {
            return Err(Error::NotApplicable {
                flag: "a CNI network",
                mode: mode.to_string(),
            });
        }
        if let (Mode::Network(name), Some(subnet)) = (&mode, req.subnet)
            && self.store.local_network(name)?.is_none()
            && self.overlay_named(name).is_none()
        {
            self.create_network(CreateNetwork {
                subnet: Some(subnet),
                ..CreateNetwork::new(name, "bridge")
            })
            .await?;
        }
        let sandbox = Sandbox {
            config: req.key.config.clone(),
            container_id: req.key.container_id.clone(),
            netns: req.netns.clone(),
            ifname: req.key.ifname.clone(),
        };
        let create = CreateEndpoint {
            name: req.name.clone(),
            net: req.network.clone(),
            ip: req.ip,
            ip6: req.ip6,
            publish: req.publish.clone(),
            mac_address: req.mac.clone(),
            ..CreateEndpoint::default()
        };
        self.create_in(create, Some(sandbox)).await?;
        let rec = self.store.endpoint(&req.name)?;
        info!(endpoint = %req.name, container = %req.key.container_id, "CNI ADD");
        self.cni_attachment(&rec).await
    }

    /// What the CNI ADD of `rec` made, as its result names it.
    async fn cni_attachment(&self, rec: &StoredEndpoint) -> Result<CniAttachment> {
        let ep = &rec.ep;
        let sandbox = ep.sandbox.as_ref().expect("CNI endpoints have a sandbox");
        let net = self.bridge_net_of(&ep.mode)?;
        // None on a macvlan network, and when the veth is gone (which
        // CHECK reports).
        let host = match ep.host_veth().filter(|_| !net.macvlan) {
            Some(veth) => self.rtnl.link(&veth).await?.map(|link| {
                let mac = link.mac.as_ref().map(format_mac).unwrap_or_default();
                (veth, mac)
            }),
            None => None,
        };
        Ok(CniAttachment {
            endpoint: ep.name.clone(),
            host,
            ifname: sandbox.ifname.clone(),
            mac: format_mac(&ep.mac().expect("CNI endpoints have an address")),
            mtu: net.mtu,
            sandbox: sandbox.netns.clone(),
            ip: ep.ip.expect("CNI endpoints have an address"),
            prefix_len: net.subnet.prefix_len(),
            gateway: net.gateway,
            dns: zone_of(&ep.mode)
                .filter(|zone| self.resolver.serves(zone))
                .map(|_| net.gateway),
            ip6: ep
                .ip6
                .zip(net.ipv6)
                .map(|(ip, side)| (ip, side.subnet.prefix_len(), side.gateway)),
        })
    }

    /// CNI DEL: removes the endpoint of `key`, its published ports and its
    /// flows. Nothing to remove (a DEL repeated, or one without ADD) is
    /// success, as the spec asks.
    pub async fn cni_del(&mut self, key: &CniAttachmentKey) -> Result<()> {
        if let Some(rec) = self.cni_endpoint(key)? {
            self.remove_any(&rec.ep.name, true).await?;
            info!(endpoint = %rec.ep.name, container = %key.container_id, "CNI DEL");
        }
        Ok(())
    }

    /// CNI CHECK: the endpoint of `key` is as ADD made it: its interface in
    /// the runtime's namespace with its MAC, address and default route,
    /// its host-side veth, and the data path's entries for it.
    pub async fn cni_check(&self, key: &CniAttachmentKey) -> Result<CniAttachment> {
        let rec = self
            .cni_endpoint(key)?
            .ok_or_else(|| Error::EndpointNotFound(format!("of container {}", key.container_id)))?;
        let want = self.cni_attachment(&rec).await?;
        let differences = self.cni_differences(&rec, &want).await?;
        if differences.is_empty() {
            return Ok(want);
        }
        Err(Error::CniCheck {
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
            differences: differences.join("; "),
        })
    }

    async fn cni_differences(
        &self,
        rec: &StoredEndpoint,
        want: &CniAttachment,
    ) -> Result<Vec<String>> {
        let ep = &rec.ep;
        let mut found = Vec::new();
        let net = self.bridge_net_of(&ep.mode)?;
        let mut veth_index = None;
        if let Some(veth) = ep.host_veth().filter(|_| !net.macvlan) {
            match self.rtnl.link(&veth).await? {
                Some(link) => veth_index = Some(link.index),
                None => found.push(format!("host interface {veth} is missing")),
            }
        }
        if !netns::is_mounted(&want.sandbox) {
            found.push(format!("namespace {} is gone", want.sandbox.display()));
            return Ok(found);
        }
        let inside = Rtnl::in_netns(&netns::open(&want.sandbox)?)?;
        match inside.link(&want.ifname).await? {
            None => found.push(format!("interface {} is missing", want.ifname)),
            Some(link) => {
                let mac = link.mac.as_ref().map(format_mac).unwrap_or_default();
                if mac != want.mac {
                    found.push(format!("{} has MAC {mac}, not {}", want.ifname, want.mac));
                }
                let addr = Ipv4Net::new(want.ip, want.prefix_len).expect("prefix length of a net");
                if !inside.addresses().await?.contains(&(addr, link.index)) {
                    found.push(format!("{} lacks address {addr}", want.ifname));
                }
                if inside.default_gateway().await? != Some((want.gateway, link.index)) {
                    found.push(format!(
                        "no default route via {} on {}",
                        want.gateway, want.ifname
                    ));
                }
            }
        }
        if let (Some(ifindex), Some(dp)) = (veth_index, self.dp.as_ref()) {
            let (identity, port) = dp.endpoint_entries(ifindex, want.ip)?;
            let ip_be = addr_be(want.ip);
            if identity.is_none_or(|id| id.addr_be != ip_be) {
                found.push(format!(
                    "the data path does not take {} from its veth",
                    want.ip
                ));
            }
            if port.is_none_or(|p| p.ifindex != ifindex) {
                found.push(format!("the data path does not deliver {} to it", want.ip));
            }
        }
        Ok(found)
    }

    /// CNI GC: removes the endpoints of CNI network `req.config` whose
    /// container and interface are not in `req.valid`. The removed.
    pub async fn cni_gc(&mut self, req: &CniGc) -> Result<Vec<String>> {
        let stale: Vec<String> = self
            .store
            .endpoints()?
            .into_iter()
            .filter(|r| {
                r.ep.sandbox.as_ref().is_some_and(|sb| {
                    sb.config == req.config
                        && !req
                            .valid
                            .iter()
                            .any(|(id, ifname)| *id == sb.container_id && *ifname == sb.ifname)
                })
            })
            .map(|r| r.ep.name)
            .collect();
        for name in &stale {
            self.remove_any(name, true).await?;
            info!(endpoint = %name, "CNI GC");
        }
        Ok(stale)
    }
}
