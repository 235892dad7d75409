//! Connecting a running endpoint to more networks and disconnecting it
//! (`network connect`/`disconnect`): one more interface per network, an
//! address, names and routes there, the data path's guarantees on each.

use super::{endpoints::not_runtime_owned, *};
use crate::{logic::endpoint::Attachment, types::ConnectRequest};

impl Daemon {
    /// The network `name` names for a connection, by its recorded name:
    /// the bridge network or a local network.
    fn connectable(&self, name: &str) -> Result<(String, Mode)> {
        if name == endpoint::BRIDGE_NETWORK {
            return Ok((name.to_string(), Mode::Bridge));
        }
        if let Some(net) = self.store.local_network(name)? {
            return Ok((net.name.clone(), Mode::Network(net.name)));
        }
        match self.store.network(name) {
            Ok(_) => Err(Error::NotApplicable {
                flag: "network connect",
                mode: format!("overlay network {name}"),
            }),
            Err(e) => Err(e),
        }
    }

    /// Connects endpoint `req.endpoint` to network `network`: `eth1`,
    /// `eth2`, ... in order of joining, with an address of that network
    /// (`req.ip`, or the lowest free) and its names there.
    pub async fn connect(&mut self, network: &str, req: ConnectRequest) -> Result<EndpointInfo> {
        let rec = self.store.endpoint(&req.endpoint)?;
        not_runtime_owned(&rec.ep)?;
        if rec.state != State::Ready || !rec.ep.mode.has_veth() {
            return Err(Error::NotApplicable {
                flag: "network connect",
                mode: rec.ep.mode.to_string(),
            });
        }
        let (network, mode) = self.connectable(network)?;
        if rec.ep.mode == mode || rec.attachments.iter().any(|a| a.mode() == mode) {
            return Err(Error::AlreadyConnected {
                endpoint: rec.ep.name,
                network,
            });
        }
        for alias in &req.aliases {
            endpoint::validate_name(alias)?;
        }
        let driver = self.driver_of(&mode)?;
        let pool6 = driver.pool6();
        if req.ip6.is_some() && pool6.is_none() {
            return Err(Error::NotApplicable {
                flag: "--ip6",
                mode: format!("{network}, a network without IPv6"),
            });
        }
        let att = self.store.insert_attachment(
            &rec.ep.name,
            &network,
            (req.ip, req.ip6),
            &req.aliases,
            (&driver.pool(), pool6.as_ref()),
        )?;
        let steps = endpoint::plan_attachment(&rec.ep, &att, driver.attachment());
        if let Err(e) = steps::apply_all(&mut self.kernel_steps(), &steps, &rec.ep.name).await {
            self.store.delete_attachment(&rec.ep.name, &network)?;
            return Err(e.into());
        }
        self.endpoints_changed()?;
        info!(endpoint = %rec.ep.name, network, ip = %att.ip, interface = att.seq, "connected");
        self.inspect(&rec.ep.name)
    }

    /// Disconnects endpoint `name` from `network`, one it was connected to
    /// after its first.
    pub async fn disconnect(&mut self, network: &str, name: &str) -> Result<EndpointInfo> {
        let rec = self.store.endpoint(name)?;
        not_runtime_owned(&rec.ep)?;
        let (network, mode) = self.connectable(network)?;
        if rec.ep.mode == mode {
            return self.disconnect_first(rec, network).await;
        }
        let Some(att) = rec.attachments.iter().find(|a| a.mode() == mode) else {
            return Err(Error::NotConnected {
                endpoint: rec.ep.name,
                network,
            });
        };
        let steps = self.attachment_steps(&rec.ep, att)?;
        steps::undo_all(&mut self.kernel_steps(), &steps, &rec.ep.name).await?;
        self.store.delete_attachment(&rec.ep.name, &att.network)?;
        self.endpoints_changed()?;
        info!(endpoint = %rec.ep.name, network, "disconnected");
        self.inspect(&rec.ep.name)
    }

    /// Disconnects endpoint `rec` from its first network: the network it
    /// joined next becomes its first, with the default route, the resolver
    /// it asks and its published ports, as Docker moves its gateway.
    async fn disconnect_first(
        &mut self,
        rec: StoredEndpoint,
        network: String,
    ) -> Result<EndpointInfo> {
        let name = rec.ep.name.clone();
        let Some(next) = rec.attachments.first().cloned() else {
            return Err(Error::OnlyNetwork {
                endpoint: name,
                network,
            });
        };
        if !rec.ports.is_empty() {
            self.check_publishing(&name, &next.mode())?;
        }
        self.unpublish(&rec.ep, &rec.ports)?;
        let old = endpoint::first_interface(&rec.ep, &self.bridge_net_of(&rec.ep.mode)?);
        steps::undo_all(&mut self.kernel_steps(), &old, &name).await?;
        let next_net = self.bridge_net_of(&next.mode())?;
        let ns = rec
            .ep
            .netns()
            .expect("endpoints with a veth have a namespace");
        let inside = Rtnl::in_netns(&netns::open(&ns)?)?;
        let ifname = endpoint::interface_name(next.seq);
        inside
            .add_default_route(&ifname, next_net.gateway.into())
            .await?;
        if let (Some(_), Some(v6)) = (next.ip6, next_net.ipv6) {
            inside.add_default_route(&ifname, v6.gateway.into()).await?;
        }
        self.store.promote(&name, &next)?;
        let promoted = self.store.endpoint(&name)?;
        // Its resolv.conf and hosts file follow its new first network.
        let etc: Vec<Step> = self
            .plan(&promoted.ep)?
            .into_iter()
            .filter(|s| matches!(s, Step::EtcFiles { .. }))
            .collect();
        steps::apply_all(&mut self.kernel_steps(), &etc, &name).await?;
        self.reserved.reserve(
            &promoted.ports,
            promoted.ep.sandbox.is_some(),
            promoted.ep.ip6.is_some(),
        )?;
        self.publish(&promoted.ep, &promoted.ports)?;
        self.sync_linked()?;
        self.endpoints_changed()?;
        info!(endpoint = %name, network, first = %next.network, "disconnected from its first network");
        self.inspect(&name)
    }

    /// The steps of `ep`'s attachment `att`.
    pub(super) fn attachment_steps(
        &self,
        ep: &endpoint::Endpoint,
        att: &Attachment,
    ) -> Result<Vec<Step>> {
        let driver = self.driver_of(&att.mode())?;
        Ok(endpoint::plan_attachment(ep, att, driver.attachment()))
    }
}
