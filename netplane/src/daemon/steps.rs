//! Applying and undoing endpoint plans: the order and the rollback, once,
//! over a [`StepRunner`] that is the kernel in the daemon and a recording
//! fake in the unit tests.

use std::{
    future::Future,
    net::{Ipv4Addr, Ipv6Addr},
};

use nix::net::if_::if_nametoindex;
use tracing::warn;

use crate::{
    kernel::{
        self,
        datapath::{Datapath, Role},
        host,
        netlink::{self, Rtnl},
        netns,
    },
    logic::endpoint::Step,
};

/// What carries out single steps.
pub trait StepRunner: Send {
    /// Makes `step` so.
    fn apply(&mut self, step: &Step) -> impl Future<Output = kernel::Result<()>> + Send;
    /// Takes `step` back; harmless when it was never (or half) applied.
    fn undo(&mut self, step: &Step) -> impl Future<Output = kernel::Result<()>> + Send;
}

/// Applies `steps` in order. When one fails, undoes exactly what was
/// applied, last first (the failed step too where half of it may stand),
/// and returns that failure.
pub async fn apply_all(
    runner: &mut impl StepRunner,
    steps: &[Step],
    endpoint: &str,
) -> kernel::Result<()> {
    for (done, step) in steps.iter().enumerate() {
        if let Err(e) = runner.apply(step).await {
            let half_done = step.undone_after_failure().then_some(step);
            for applied in steps[..done].iter().chain(half_done).rev() {
                if let Err(u) = runner.undo(applied).await {
                    warn!("rolling back {endpoint}: {u}");
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Undoes every one of `steps`, last first, going on past failures; the
/// first failure, if any.
pub async fn undo_all(
    runner: &mut impl StepRunner,
    steps: &[Step],
    endpoint: &str,
) -> kernel::Result<()> {
    let mut first = None;
    for step in steps.iter().rev() {
        if let Err(e) = runner.undo(step).await {
            warn!("removing {endpoint}: {e}");
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// The kernel as the daemon's [`StepRunner`].
#[derive(Debug)]
pub struct KernelSteps<'a> {
    /// Netlink in the host's namespace.
    pub rtnl: &'a Rtnl,
    /// The loaded data path; none under `--userland-proxy` where eBPF
    /// cannot load, when the bridge alone carries endpoints' frames.
    pub dp: Option<&'a mut Datapath>,
    /// Whether the uplink's XDP program runs: endpoints' veths then take
    /// the frames it redirects.
    pub xdp: bool,
}

impl KernelSteps<'_> {
    /// Hangs the endpoint program on `ifname` and tells the data path the
    /// endpoint behind it.
    pub fn attach_endpoint(
        &mut self,
        ifname: &str,
        ip: Ipv4Addr,
        ip6: Option<Ipv6Addr>,
        mac: [u8; 6],
        vni: u32,
    ) -> kernel::Result<()> {
        let Some(dp) = self.dp.as_deref_mut() else {
            return Ok(());
        };
        let ifindex =
            if_nametoindex(ifname).map_err(|e| kernel::Error::io("look up", ifname, e))?;
        dp.attach(ifname, Role::Endpoint)?;
        dp.add_endpoint(ifindex, ip, mac, vni, self.xdp)?;
        match ip6 {
            Some(ip6) => dp.add_endpoint6(ifindex, ip6, mac, vni),
            None => Ok(()),
        }
    }
}

impl StepRunner for KernelSteps<'_> {
    async fn apply(&mut self, step: &Step) -> kernel::Result<()> {
        match step {
            Step::Netns { name } => {
                let path = netns::create(name)?;
                Rtnl::in_netns(&netns::open(&path)?)?.loopback_up().await
            }
            Step::ShareNetns { name, from } => netns::share(name, &netns::path(from)).map(drop),
            Step::Veth {
                host,
                netns: ns,
                ifname,
                ip,
                prefix_len,
                gateway,
                ip6,
                bridge,
                mtu,
                mac,
            } => {
                let ns_file = netns::open(ns)?;
                self.rtnl
                    .create_veth(host, bridge, ifname, *mac, *mtu, &ns_file)
                    .await?;
                configure_inside(&ns_file, ifname, (*ip, *prefix_len, *gateway), ip6.as_ref())
                    .await?;
                if self.xdp {
                    // Once both ends are up: the veth starts NAPI then.
                    netns::enable_gro(&ns_file, ifname)?;
                }
                Ok(())
            }
            Step::Macvlan {
                parent,
                netns: ns,
                ifname,
                ip,
                prefix_len,
                gateway,
                ip6,
                mtu,
                mac,
            } => {
                let ns_file = netns::open(ns)?;
                self.rtnl
                    .create_macvlan(parent, ifname, *mac, *mtu, &ns_file)
                    .await?;
                configure_inside(&ns_file, ifname, (*ip, *prefix_len, *gateway), ip6.as_ref()).await
            }
            Step::AttachDatapath {
                ifname,
                ip,
                ip6,
                mac,
                vni,
            } => self.attach_endpoint(ifname, *ip, *ip6, *mac, *vni),
            Step::EtcFiles {
                name,
                hosts,
                resolv,
            } => host::write_etc_files(name, hosts, resolv),
        }
    }

    async fn undo(&mut self, step: &Step) -> kernel::Result<()> {
        match step {
            Step::Netns { name } | Step::ShareNetns { name, .. } => netns::delete(name),
            Step::Veth { host, .. } => self.rtnl.delete_link(host).await,
            // Its namespace gone, so is the interface.
            Step::Macvlan {
                netns: ns, ifname, ..
            } => match netns::open(ns) {
                Ok(ns_file) => Rtnl::in_netns(&ns_file)?.delete_link(ifname).await,
                Err(_) => Ok(()),
            },
            Step::AttachDatapath {
                ifname,
                ip,
                ip6,
                mac,
                ..
            } => {
                let Some(dp) = self.dp.as_deref_mut() else {
                    return Ok(());
                };
                let ifindex = if_nametoindex(ifname.as_str()).unwrap_or(0);
                dp.remove_endpoint(ifindex, *ip)?;
                if let Some(ip6) = ip6 {
                    dp.remove_endpoint6(ifindex, *ip6, *mac)?;
                }
                dp.detach(ifname)
            }
            Step::EtcFiles { name, .. } => host::remove_etc_files(name),
        }
    }
}

/// Inside the endpoint's namespace `ns`: IPv6 on `ifname` only when it
/// has an IPv6 address, then its addresses, link state and routes.
async fn configure_inside(
    ns: &std::fs::File,
    ifname: &str,
    (ip, prefix_len, gateway): (Ipv4Addr, u8, Option<Ipv4Addr>),
    ip6: Option<&netlink::V6Address>,
) -> kernel::Result<()> {
    netns::set_ipv6(ns, ifname, ip6.is_some())?;
    Rtnl::in_netns(ns)?
        .configure_endpoint(ifname, ip, prefix_len, gateway, ip6)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it is asked to do, and fails the application of the
    /// step at `fail_at`.
    #[derive(Default)]
    struct Fake {
        calls: Vec<String>,
        fail_at: Option<usize>,
        applied: usize,
    }

    fn name(step: &Step) -> String {
        match step {
            Step::Netns { .. } => "netns",
            Step::ShareNetns { .. } => "share",
            Step::Veth { .. } => "veth",
            Step::Macvlan { .. } => "macvlan",
            Step::AttachDatapath { .. } => "attach",
            Step::EtcFiles { .. } => "etc",
        }
        .into()
    }

    impl StepRunner for Fake {
        async fn apply(&mut self, step: &Step) -> kernel::Result<()> {
            self.calls.push(format!("apply {}", name(step)));
            let this = self.applied;
            self.applied += 1;
            if self.fail_at == Some(this) {
                return Err(kernel::Error::Foreign(name(step)));
            }
            Ok(())
        }

        async fn undo(&mut self, step: &Step) -> kernel::Result<()> {
            self.calls.push(format!("undo {}", name(step)));
            // Undoing what is not there fails, and the rest still goes.
            if matches!(step, Step::Veth { .. }) {
                return Err(kernel::Error::InterfaceNotFound("npv1".into()));
            }
            Ok(())
        }
    }

    fn bridge_plan() -> Vec<Step> {
        let ip: Ipv4Addr = "172.17.0.2".parse().unwrap();
        vec![
            Step::Netns { name: "web".into() },
            Step::Veth {
                host: "npv1".into(),
                netns: "/run/netns/web".into(),
                ifname: "eth0".into(),
                ip,
                prefix_len: 16,
                gateway: Some("172.17.0.1".parse().unwrap()),
                ip6: None,
                bridge: "np0".into(),
                mtu: None,
                mac: [2, 0x42, 172, 17, 0, 2],
            },
            Step::AttachDatapath {
                ifname: "npv1".into(),
                ip,
                ip6: None,
                mac: [2, 0x42, 172, 17, 0, 2],
                vni: 0,
            },
            Step::EtcFiles {
                name: "web".into(),
                hosts: String::new(),
                resolv: String::new(),
            },
        ]
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_failed_step_rolls_back_exactly_the_steps_applied() {
        // The datapath step fails: the veth and the namespace go, the
        // half-attached program too, last first; the hosts files were
        // never written and are not touched.
        let mut fake = Fake {
            fail_at: Some(2),
            ..Fake::default()
        };
        let err = run(apply_all(&mut fake, &bridge_plan(), "web")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "attach already exists and is not managed by this netplane"
        );
        assert_eq!(
            fake.calls,
            [
                "apply netns",
                "apply veth",
                "apply attach",
                "undo attach",
                "undo veth",
                "undo netns"
            ]
        );
    }

    #[test]
    fn a_namespace_that_could_not_be_named_is_not_deleted() {
        // The name was taken: the namespace there is someone else's.
        let mut fake = Fake {
            fail_at: Some(0),
            ..Fake::default()
        };
        assert!(run(apply_all(&mut fake, &bridge_plan(), "web")).is_err());
        assert_eq!(fake.calls, ["apply netns"]);
    }

    #[test]
    fn a_plan_applied_whole_is_not_undone() {
        let mut fake = Fake::default();
        run(apply_all(&mut fake, &bridge_plan(), "web")).unwrap();
        assert!(fake.calls.iter().all(|c| c.starts_with("apply")));
        assert_eq!(fake.calls.len(), 4);
    }

    #[test]
    fn teardown_undoes_every_step_past_failures_and_reports_the_first() {
        // An interrupted creation that never made its veth: reconcile
        // tears down the whole plan, and a step that is missing does not
        // stop the rest.
        let mut fake = Fake::default();
        let err = run(undo_all(&mut fake, &bridge_plan(), "web")).unwrap_err();
        assert_eq!(err.to_string(), "interface npv1 not found");
        assert_eq!(
            fake.calls,
            ["undo etc", "undo attach", "undo veth", "undo netns"]
        );
    }
}
