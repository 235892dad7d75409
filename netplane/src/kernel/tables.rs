//! The data path's tables and counters opened from their pins, apart from
//! the loaded data path: housekeeping, `ct ls`, `stats`, `nat ls` and a
//! metrics scrape read them on blocking threads without holding the daemon.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap};
use netplane_common::abi::{
    CtEntry, Direction, DropReason, FlowKey, IfCounters, IfDrops, IfStatsKey, PortKey, PortTarget,
    RuleDropKey, maps,
};
use nix::net::if_::if_nametoindex;

use super::bpf;
use crate::{
    kernel::{Error, Result},
    types::{TableUse, Traffic},
};

/// A hash map opened from its pin under a data path's pin directory.
pub struct PinnedTable<K, V> {
    name: &'static str,
    /// aya's view, which checked the key and value sizes when it opened.
    map: HashMap<MapData, K, V>,
    /// Entries it holds at most.
    capacity: u32,
    /// The same map, for the batch calls aya does not make.
    fd: OwnedFd,
}

/// A connection tracking table: IPv4's (`A = u32`) or IPv6's.
pub type FlowTable<A = u32> = PinnedTable<FlowKey<A>, CtEntry<A>>;

impl<K, V> std::fmt::Debug for PinnedTable<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PinnedTable").field(&self.name).finish()
    }
}

impl<K: aya::Pod, V: aya::Pod> PinnedTable<K, V> {
    /// Opens map `name` pinned under `pin_dir` (as `Datapath::load` left it).
    pub fn open(pin_dir: &Path, name: &'static str) -> Result<Self> {
        let data = from_pin(pin_dir, name)?;
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("duplicate", name, e))?;
        let capacity = data
            .info()
            .map_err(|e| Error::ebpf("read", name, e))?
            .max_entries();
        let map =
            HashMap::try_from(Map::HashMap(data)).map_err(|e| Error::ebpf("open", name, e))?;
        Ok(PinnedTable {
            name,
            map,
            capacity,
            fd,
        })
    }

    /// How full the table is. The kernel keeps no count a reader can get:
    /// this reads every entry.
    pub fn table_use(&self) -> Result<TableUse> {
        Ok(TableUse {
            map: self.name.to_string(),
            entries: self.entries()?.len() as u64,
            capacity: u64::from(self.capacity),
        })
    }

    /// Every entry.
    pub fn entries(&self) -> Result<Vec<(K, V)>> {
        // SAFETY: aya checked the map's key and value sizes against K and
        // V when it opened `map`, the same map.
        unsafe { bpf::lookup_all(self.fd.as_fd()) }
            .map_err(|e| Error::io("batch-read", self.name, e))
    }

    /// The entries of `keys` that are present, read one by one now.
    pub fn entries_of(&self, keys: &[K]) -> Result<Vec<(K, V)>> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            match self.map.get(key, 0) {
                Ok(entry) => found.push((*key, entry)),
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(Error::ebpf("look up", self.name, e)),
            }
        }
        Ok(found)
    }

    /// Deletes entries; absent ones are fine.
    pub fn delete(&self, keys: &[K]) -> Result<()> {
        // SAFETY: as in `entries`.
        unsafe { bpf::delete_keys(self.fd.as_fd(), keys) }
            .map_err(|e| Error::io("batch-delete from", self.name, e))
    }
}

/// The data path's counters, each map opened once as a typed handle.
pub struct Counters {
    interfaces: PerCpuHashMap<MapData, IfStatsKey, IfCounters>,
    interface_drops: PerCpuHashMap<MapData, u32, IfDrops>,
    drops: PerCpuArray<MapData, u64>,
    nat: PerCpuArray<MapData, IfCounters>,
    rule_drops: PerCpuHashMap<MapData, RuleDropKey, u64>,
    published: PinnedTable<PortKey, PortTarget>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

impl Counters {
    /// Opens the counter maps pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Counters {
            interfaces: typed(pin_dir, maps::IF_STATS, Map::PerCpuHashMap)?,
            interface_drops: typed(pin_dir, maps::IF_DROPS, Map::PerCpuHashMap)?,
            drops: typed(pin_dir, maps::DROPS, Map::PerCpuArray)?,
            nat: typed(pin_dir, maps::NAT_COUNTERS, Map::PerCpuArray)?,
            rule_drops: typed(pin_dir, maps::RULE_DROPS, Map::PerCpuHashMap)?,
            published: PinnedTable::open(pin_dir, maps::PUBLISHED)?,
        })
    }

    /// Counters of `ifname`; zero for an interface without counters.
    pub fn traffic(&self, ifname: &str) -> Result<Traffic> {
        let Ok(ifindex) = if_nametoindex(ifname) else {
            return Ok(Traffic::default());
        };
        let sum = |direction: Direction| -> (u64, u64) {
            let key = IfStatsKey {
                ifindex,
                direction: direction as u32,
            };
            self.interfaces
                .get(&key, 0)
                .map(|v| {
                    v.iter()
                        .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes))
                })
                .unwrap_or_default()
        };
        let (rx_packets, rx_bytes) = sum(Direction::Ingress);
        let (tx_packets, tx_bytes) = sum(Direction::Egress);
        Ok(Traffic {
            rx_packets,
            rx_bytes,
            tx_packets,
            tx_bytes,
        })
    }

    /// Drops by reason among the packets that arrived on `ifname`, summed
    /// over CPUs; none for an interface the data path is not attached to.
    pub fn interface_drops(&self, ifname: &str) -> Result<BTreeMap<String, u64>> {
        let counted = if_nametoindex(ifname)
            .ok()
            .and_then(|ifindex| self.interface_drops.get(&ifindex, 0).ok());
        Ok(DropReason::ALL
            .iter()
            .map(|r| {
                let n = counted.as_ref().map_or(0, |per_cpu| {
                    per_cpu.iter().map(|d| d.by_reason[*r as usize]).sum()
                });
                (r.name().to_string(), n)
            })
            .collect())
    }

    /// Drops by reason, summed over CPUs.
    pub fn drops(&self) -> Result<BTreeMap<String, u64>> {
        DropReason::ALL
            .iter()
            .map(|r| {
                let v = self
                    .drops
                    .get(&(*r as u32), 0)
                    .map_err(|e| Error::ebpf("read", maps::DROPS, e))?;
                Ok((r.name().to_string(), v.iter().sum()))
            })
            .collect()
    }

    /// Packets and bytes translated under NAT rule `slot`, summed over CPUs.
    pub fn nat_counters(&self, slot: u32) -> Result<(u64, u64)> {
        let v = self
            .nat
            .get(&slot, 0)
            .map_err(|e| Error::ebpf("read", maps::NAT_COUNTERS, e))?;
        Ok(v.iter()
            .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes)))
    }

    /// Drops by reason under each NAT rule slot that dropped any, summed
    /// over CPUs.
    pub fn rule_drops(&self) -> Result<BTreeMap<u32, BTreeMap<String, u64>>> {
        let mut by_slot: BTreeMap<u32, BTreeMap<String, u64>> = BTreeMap::new();
        for entry in self.rule_drops.iter() {
            let (key, counts) = entry.map_err(|e| Error::ebpf("read", maps::RULE_DROPS, e))?;
            let Some(reason) = DropReason::ALL.get(key.reason as usize) else {
                continue;
            };
            by_slot
                .entry(key.slot)
                .or_default()
                .insert(reason.name().to_string(), counts.iter().sum());
        }
        Ok(by_slot)
    }

    /// How full the published-ports table is.
    pub fn published_use(&self) -> Result<TableUse> {
        self.published.table_use()
    }
}

/// Map `name` as pinned under `pin_dir`.
fn from_pin(pin_dir: &Path, name: &str) -> Result<MapData> {
    let pin = pin_dir.join("maps").join(name);
    MapData::from_pin(&pin).map_err(|e| Error::ebpf("open", pin.display(), e))
}

/// Map `name` as pinned under `pin_dir`, as aya's typed handle `T` of map
/// kind `kind`, which checks the key and value sizes.
fn typed<T: TryFrom<Map, Error = MapError>>(
    pin_dir: &Path,
    name: &str,
    kind: fn(MapData) -> Map,
) -> Result<T> {
    T::try_from(kind(from_pin(pin_dir, name)?)).map_err(|e| Error::ebpf("open", name, e))
}
