//! The daemon's background tasks, each driving the shared daemon until it
//! goes down: housekeeping, cluster membership, and naming the endpoints of
//! monitor events.

use std::{net::IpAddr, time::Duration};

use tracing::{debug, info, warn};

use crate::{
    daemon::{
        Shared,
        cluster::{ClusterError, Session, StoreUrl},
        metrics::Reconcile,
        relay::NameEndpoints,
    },
    logic::monitor::MonitorEvent,
};

/// How long to wait before opening a new session after losing the store.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Expires tracked flows and keeps the data path's view of the host's
/// addresses current, until the daemon goes down.
pub async fn housekeeping(state: Shared, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if state.daemon.lock().await.is_none() {
            return;
        }
        // The table is read and pruned without the daemon: `create` and
        // the API do not wait for a dump of many thousand entries.
        let handles = state.clone();
        let expired = tokio::task::spawn_blocking(move || handles.readers.collect_garbage()).await;
        match expired {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => debug!(entries = n, "expired tracked flows"),
            Ok(Err(e)) => warn!("conntrack garbage collection: {e}"),
            Err(e) => warn!("conntrack garbage collection: {e}"),
        }
        let synced = state
            .with_daemon(async |daemon| {
                if let Err(e) = daemon.sync_host_addrs().await {
                    warn!("refreshing host addresses: {e}");
                }
                if let Err(e) = daemon.sync_uplink_mtu().await {
                    warn!("following the uplink's MTU: {e}");
                }
            })
            .await;
        if synced.is_none() {
            return;
        }
    }
}

/// Keeps this host a member of the cluster for as long as the daemon runs:
/// opens a session, follows every change with a resynchronisation, and
/// when the store is lost, keeps the data path as it is and tries again.
pub async fn keep_membership(state: Shared, url: StoreUrl, ttl: Duration) {
    let mut next_member = 0;
    loop {
        match follow(&state, &url, ttl, &mut next_member).await {
            Ok(()) => return,
            Err(e) => warn!("{e}; trying again"),
        }
        match state.daemon.lock().await.as_mut() {
            Some(daemon) => daemon.set_session(None),
            None => return,
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// One session's worth of membership: returns `Ok` when the daemon stops.
/// When it fails, the next one starts with the member after this one's.
async fn follow(
    state: &Shared,
    url: &StoreUrl,
    ttl: Duration,
    next_member: &mut usize,
) -> super::error::Result<()> {
    let session = Session::open(url, ttl, *next_member).await?;
    *next_member = session.member + 1;
    let (mut keeper, mut renewals) = session.keep_alive().await?;
    let (vtep, mut names) = match state.daemon.lock().await.as_mut() {
        Some(daemon) => {
            daemon.set_session(Some(session.clone()));
            daemon.names_to_publish()?
        }
        None => return Ok(()),
    };
    // A new session publishes afresh: the last one's keys went with it.
    names.mark_changed();
    let Some(revision) = resync(state).await? else {
        return Ok(());
    };
    info!(
        store = %url,
        member = %url.members[session.member],
        session = format!("{:x}", session.id),
        "cluster store joined"
    );
    let mut changes = session.watch(revision + 1).await?;
    let mut beat = tokio::time::interval(ttl / 3);
    loop {
        tokio::select! {
            _ = beat.tick() => session.renew(&mut keeper, &mut renewals).await?,
            changed = names.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let current = names.borrow_and_update().clone();
                session.publish_names(vtep, &current).await?;
            }
            change = changes.message() => {
                let change = change
                    .map_err(session.fail("watch the cluster"))?
                    .ok_or_else(|| ClusterError::WatchEnded(url.to_string()))?;
                if change.canceled() {
                    return Err(ClusterError::WatchEnded(url.to_string()).into());
                }
                if !change.events().is_empty() && resync(state).await?.is_none() {
                    return Ok(());
                }
            }
        }
    }
}

/// [`Daemon::resync`](super::Daemon::resync) holding the daemon only to
/// read what it needs and to follow the store's answer, not across the
/// round trips to the store: `create` does not wait for those. `None` once
/// the daemon went down.
async fn resync(state: &Shared) -> super::error::Result<Option<i64>> {
    let started = std::time::Instant::now();
    let (claim, durations) = match state.daemon.lock().await.as_ref() {
        Some(daemon) => (daemon.lease_claim()?, daemon.reconcile_durations()),
        None => return Ok(None),
    };
    let resynced = match claim.run().await {
        Ok((view, revision)) => match state.daemon.lock().await.as_mut() {
            Some(daemon) => daemon
                .follow_view(view, revision)
                .await
                .map(|()| Some(revision)),
            None => Ok(None),
        },
        Err(e) => Err(e),
    };
    durations.observe(Reconcile::Cluster, started.elapsed());
    resynced
}

impl NameEndpoints for Shared {
    async fn name_endpoints(
        &self,
        mut events: Vec<(MonitorEvent, Vec<IpAddr>)>,
    ) -> Vec<(MonitorEvent, Vec<IpAddr>)> {
        // Read on a blocking thread, without the daemon.
        let handles = self.clone();
        let named = tokio::task::spawn_blocking(move || {
            if let Err(e) = handles.readers.name_endpoints(&mut events) {
                warn!("monitor: naming endpoints: {e}");
            }
            events
        })
        .await;
        named.unwrap_or_else(|e| {
            warn!("monitor: naming endpoints: {e}");
            Vec::new()
        })
    }
}
