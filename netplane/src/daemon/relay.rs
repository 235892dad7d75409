//! The monitor's relay: reads the data path's event ring, names the
//! endpoints, and hands the events to every `netplane monitor` watching.
//! The programs emit events only while someone watches.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use netplane_common::abi::Event;
use tokio::sync::{Notify, broadcast, watch};
use tracing::warn;

use crate::{
    kernel::datapath::{EventMaps, EventRing},
    logic::monitor::{self, MonitorEvent, MonitorFilter, MonitorRecord},
};

/// Events a watcher may fall behind by before it loses some.
const BACKLOG: usize = 4096;
/// How often the relay looks whether anyone still watches, and at the
/// ring's lost count.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Where watchers subscribe.
#[derive(Debug)]
pub struct Hub {
    events: broadcast::Sender<MonitorEvent>,
    /// Events that found the ring full, since the daemon started: every
    /// watcher counts those while it watched as lost.
    ring_lost: AtomicU64,
    /// Wakes the relay when someone starts watching.
    wake: Notify,
    /// Whether the programs emit events now.
    emitting: watch::Sender<bool>,
    /// Set when the daemon stops: every watcher's stream ends.
    stopped: watch::Sender<bool>,
}

/// One watcher's place in the stream.
struct Watcher {
    feed: broadcast::Receiver<MonitorEvent>,
    stopped: watch::Receiver<bool>,
    filter: MonitorFilter,
    /// The hub's `ring_lost` this watcher has accounted for.
    ring_lost_seen: u64,
    check: tokio::time::Interval,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub {
            events: broadcast::channel(BACKLOG).0,
            ring_lost: AtomicU64::new(0),
            wake: Notify::new(),
            emitting: watch::channel(false).0,
            stopped: watch::channel(false).0,
        })
    }

    /// Ends every watcher's stream.
    pub fn stop(&self) {
        self.stopped.send_replace(true);
    }

    /// `GET /v1/monitor`: NDJSON [`MonitorRecord`]s, `started` first, until
    /// the watcher goes away or the daemon stops. Every event emitted while
    /// it watches is either in the stream or counted in a `lost` record.
    pub async fn stream(hub: Arc<Hub>, filter: MonitorFilter) -> axum::body::Body {
        let feed = hub.watch().await;
        let watcher = Watcher {
            feed,
            stopped: hub.stopped.subscribe(),
            filter,
            ring_lost_seen: hub.ring_lost.load(Ordering::Relaxed),
            check: tokio::time::interval(CHECK_EVERY),
        };
        let started = futures::stream::once(async { ndjson(&MonitorRecord::Started) });
        let records = futures::stream::unfold((hub, watcher), |(hub, mut w)| async move {
            loop {
                let received = tokio::select! {
                    r = w.feed.recv() => Some(r),
                    _ = w.stopped.wait_for(|s| *s) => return None,
                    _ = w.check.tick() => None,
                };
                let lagged = match received {
                    Some(Ok(e)) if w.filter.admits(&e) => {
                        return Some((ndjson(&MonitorRecord::Event(e)), (hub, w)));
                    }
                    Some(Ok(_)) | None => 0,
                    Some(Err(broadcast::error::RecvError::Lagged(n))) => n,
                    Some(Err(broadcast::error::RecvError::Closed)) => return None,
                };
                let ring_lost = hub.ring_lost.load(Ordering::Relaxed);
                let lost = lagged + ring_lost.saturating_sub(w.ring_lost_seen);
                w.ring_lost_seen = ring_lost;
                if lost > 0 {
                    return Some((ndjson(&MonitorRecord::Lost { events: lost }), (hub, w)));
                }
            }
        });
        axum::body::Body::from_stream(futures::StreamExt::chain(started, records))
    }

    /// A watcher's feed, once the programs emit events.
    async fn watch(&self) -> broadcast::Receiver<MonitorEvent> {
        let feed = self.events.subscribe();
        self.wake.notify_one();
        let mut emitting = self.emitting.subscribe();
        // The relay turns events on as soon as it wakes; it only stops
        // (and `wait_for` fails) with the daemon.
        let _ = emitting.wait_for(|on| *on).await;
        feed
    }
}

/// Who names the endpoints that events are about.
pub trait NameEndpoints: Send + Sync + 'static {
    /// Fills in the endpoint of each event, by its interface or by the
    /// addresses it carries.
    fn name_endpoints(
        &self,
        events: Vec<(MonitorEvent, Vec<IpAddr>)>,
    ) -> impl std::future::Future<Output = Vec<(MonitorEvent, Vec<IpAddr>)>> + Send;
}

/// Relays events from `maps` to the watchers of `hub` until the daemon
/// stops. `names` names the endpoints.
pub async fn run(maps: EventMaps, hub: Arc<Hub>, names: impl NameEndpoints) {
    let EventMaps { ring, mut control } = maps;
    let mut ring = match EventRing::new(ring) {
        Ok(ring) => ring,
        Err(e) => {
            warn!("monitor: {e}");
            return;
        }
    };
    let mut check = tokio::time::interval(CHECK_EVERY);
    loop {
        // The lost count is read on the check's tick, not on every wake
        // (with a full ring, that is every batch): watchers look at it no
        // more often than that.
        let checking = tokio::select! {
            batch = ring.next_batch() => {
                let Ok(batch) = batch else { return };
                relay(&batch, &hub, &names).await;
                false
            }
            () = hub.wake.notified() => false,
            _ = check.tick() => true,
        };
        let watched = hub.events.receiver_count() > 0;
        if *hub.emitting.borrow() != watched {
            match control.set_on(watched) {
                Ok(()) => {
                    hub.emitting.send_replace(watched);
                }
                Err(e) => warn!("monitor: {e}"),
            }
        }
        if checking {
            match control.lost() {
                Ok(lost) => hub.ring_lost.store(lost, Ordering::Relaxed),
                Err(e) => warn!("monitor: {e}"),
            }
        }
    }
}

fn ndjson(record: &MonitorRecord) -> Result<String, std::convert::Infallible> {
    let mut line = serde_json::to_string(record).expect("records serialize");
    line.push('\n');
    Ok(line)
}

async fn relay(batch: &[Event], hub: &Hub, names: &impl NameEndpoints) {
    if batch.is_empty() || hub.events.receiver_count() == 0 {
        return;
    }
    let named: Vec<(MonitorEvent, Vec<IpAddr>)> = batch
        .iter()
        .map(|e| {
            let interface = nix::net::if_::if_indextoname(e.ifindex)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|_| format!("if{}", e.ifindex));
            monitor::decode(e, interface)
        })
        .collect();
    for (event, _) in names.name_endpoints(named).await {
        let _ = hub.events.send(event);
    }
}
