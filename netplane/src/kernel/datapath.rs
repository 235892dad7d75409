//! Loading netplane's eBPF object, attaching it with tcx links pinned in
//! bpffs, and reading its maps.
//!
//! Maps and links are pinned, so the data path keeps running while the
//! daemon is down; a restarted daemon loads the programs again and swaps
//! them into the pinned links atomically (BPF_LINK_UPDATE).

use netplane_common::{abi::addr_be, packet::link_local_of};
use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, TestRun,
        TestRunOptions, Xdp,
        links::{FdLink, Link, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle, qdisc_add_clsact},
        xdp::{XdpLink, XdpMode},
    },
};
use aya_log::EbpfLogger;
use aya_obj::generated::{BPF_NOEXIST, bpf_cmd};
use ipnet::Ipv4Net;
use netplane_common::abi::{
    AddrPair, CtEntry, CtEntry6, CtTimeouts, Direction, DropReason, EndpointIdentity, EndpointPort,
    FlowKey, FlowKey6, HOST_ADDR, HOST_ADDR_GATEWAY, IfCounters, IfDrops, IfStatsKey,
    LAYOUT_VERSION, MacKey, MacvlanSource, NetConfig, NetworkPolicy, OverlayPeer, PortKey,
    PortKey6, PortTarget, PortTarget6, PublishFromKey, RuleDropKey, Uplink6, maps, programs,
};
use nix::net::if_::if_nametoindex;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::info;

use super::{
    bpf,
    pins::{self, OldPin},
    tables::Counters,
    wildcard::WildcardPorts,
};
use crate::{
    kernel::{Error, Result},
    logic::conntrack as ct,
    logic::layout::{self, CtEntryV1},
};

/// The object built from netplane-ebpf by build.rs.
pub(super) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netplane.bpf.o"));

/// What an interface is to the data path, which decides the programs on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Host side of an endpoint's veth: its traffic is checked one way
    /// and counted both.
    Endpoint,
    /// The bridge: counted both ways.
    Counted,
    /// The uplink: replies to masquerade and published ports come in here;
    /// macvlan endpoints on it send out here.
    Uplink,
    /// A macvlan parent other than the uplink: counted, and its macvlan
    /// endpoints send out here.
    Parent,
}

impl Role {
    fn hooks(self) -> &'static [(&'static str, Direction)] {
        match self {
            Role::Endpoint => &[
                (programs::ENDPOINT_INGRESS, Direction::Ingress),
                (programs::COUNT_EGRESS, Direction::Egress),
            ],
            Role::Counted => &[
                (programs::COUNT_INGRESS, Direction::Ingress),
                (programs::COUNT_EGRESS, Direction::Egress),
            ],
            Role::Uplink => &[
                (programs::UPLINK_INGRESS, Direction::Ingress),
                (programs::PARENT_EGRESS, Direction::Egress),
            ],
            Role::Parent => &[
                (programs::COUNT_INGRESS, Direction::Ingress),
                (programs::PARENT_EGRESS, Direction::Egress),
            ],
        }
    }
}

/// Whether and how the uplink's XDP program runs (`up --xdp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpSetting {
    /// In the driver of a network card when it can take XDP programs,
    /// else not at all (see [`XdpSetting::for_uplink`]).
    #[default]
    Auto,
    /// In the driver, or `up` fails.
    Native,
    /// In the kernel's generic hook, after the skb exists (for testing:
    /// it saves no allocation).
    Generic,
    /// Not attached: tc does everything.
    Off,
}

impl std::str::FromStr for XdpSetting {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(XdpSetting::Auto),
            "native" => Ok(XdpSetting::Native),
            "generic" => Ok(XdpSetting::Generic),
            "off" => Ok(XdpSetting::Off),
            other => Err(format!(
                "--xdp takes auto, native, generic or off, not {other}"
            )),
        }
    }
}

impl XdpSetting {
    /// The setting to attach with on an uplink of device kind `kind`
    /// (none for a network card). `auto` leaves virtual devices to tc:
    /// their senders (a veth's peer, above all) may leave checksums to
    /// offload, partial in the frame, and XDP can neither see that nor
    /// finish them, so its rewrites would deliver wrong ones.
    pub fn for_uplink(self, kind: Option<&str>) -> XdpSetting {
        match (self, kind) {
            (XdpSetting::Auto, Some(_)) => XdpSetting::Off,
            (setting, _) => setting,
        }
    }
}

/// How the uplink's XDP program runs once attached: what `info` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttached {
    Native,
    Generic,
    Off,
}

impl XdpAttached {
    pub fn name(self) -> &'static str {
        match self {
            XdpAttached::Native => "native",
            XdpAttached::Generic => "generic",
            XdpAttached::Off => "off",
        }
    }
}

/// How the tc programs hang on interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcHook {
    /// tcx links (Linux 6.6 and later), pinned in bpffs.
    Tcx,
    /// Filters of the clsact qdisc, made over netlink: for older kernels.
    Clsact,
}

impl TcHook {
    /// `NETPLANE_TC_HOOK` (`tcx` or `clsact`) if set, else tcx where the
    /// running kernel has it.
    pub fn choose() -> Result<TcHook> {
        match std::env::var("NETPLANE_TC_HOOK").as_deref() {
            Ok("tcx") => Ok(TcHook::Tcx),
            Ok("clsact") => Ok(TcHook::Clsact),
            Ok(other) => Err(Error::io(
                "use the tc hook",
                other,
                std::io::Error::other("NETPLANE_TC_HOOK takes tcx or clsact"),
            )),
            Err(_) => {
                let uname = nix::sys::utsname::uname()
                    .map_err(|e| Error::io("read the kernel release", "uname", e))?;
                Ok(if kernel_has_tcx(&uname.release().to_string_lossy()) {
                    TcHook::Tcx
                } else {
                    TcHook::Clsact
                })
            }
        }
    }

    /// As `netplane info` shows it.
    pub fn name(self) -> &'static str {
        match self {
            TcHook::Tcx => "tcx",
            TcHook::Clsact => "clsact",
        }
    }
}

/// Whether a kernel of `release` (`uname -r`) has tcx links: 6.6 on.
pub fn kernel_has_tcx(release: &str) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (6, 6)
}

/// The clsact filters netplane makes: its own priority (the kernel's
/// first automatic one is 49152) and handle, so a restart finds and
/// replaces them.
const CLSACT_PRIORITY: u16 = 0x4e50;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 1);

fn tc_attach_type(d: Direction) -> TcAttachType {
    match d {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// What a program did with one packet under BPF_PROG_TEST_RUN.
#[derive(Clone, Debug)]
pub struct TestRunOutcome {
    /// The program's return value (`TC_ACT_*`).
    pub action: i32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
    /// Mean time per run, as the kernel measured it.
    pub duration: std::time::Duration,
}

// SAFETY: `#[repr(C)]` plain integers with explicit padding: every byte
// pattern is a valid value, and the kernel hands back bytes it was given.
unsafe impl aya::Pod for CtEntryV1 {}

/// The maps `netplane monitor` works with, taken out of the loaded
/// object: the daemon's event relay owns them.
pub struct EventMaps {
    /// The ring the programs put [`netplane_common::abi::Event`]s on.
    pub ring: aya::maps::RingBuf<MapData>,
    pub control: EventControl,
}

/// The event ring, read from async code.
pub struct EventRing(tokio::io::unix::AsyncFd<aya::maps::RingBuf<MapData>>);

impl EventRing {
    /// Registers `ring` with the async reactor.
    pub fn new(ring: aya::maps::RingBuf<MapData>) -> Result<Self> {
        // SAFETY: the ring owns its fd and never replaces it, and the
        // AsyncFd owns the ring.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
        }
        .map(EventRing)
        .map_err(|e| Error::io("poll", "the event ring", e.into_parts().1))
    }

    /// Waits for events and takes every one on the ring; an error once the
    /// ring can no longer be polled.
    pub async fn next_batch(&mut self) -> std::io::Result<Vec<netplane_common::abi::Event>> {
        let mut guard = self.0.readable_mut().await?;
        let mut batch = Vec::new();
        while let Some(item) = guard.get_inner_mut().next() {
            if item.len() >= size_of::<netplane_common::abi::Event>() {
                // SAFETY: the programs write whole Events, plain integers,
                // and the length was checked.
                batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
            }
        }
        guard.clear_ready();
        Ok(batch)
    }
}

/// Whether the programs emit events, and how many found the ring full.
pub struct EventControl {
    switch: Array<MapData, u32>,
    lost: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for EventRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRing").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EventMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventMaps").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EventControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventControl").finish_non_exhaustive()
    }
}

impl EventControl {
    /// Turns the programs' events on or off.
    pub fn set_on(&mut self, on: bool) -> Result<()> {
        self.switch
            .set(0, u32::from(on), 0)
            .map_err(|e| Error::ebpf("update", maps::MONITOR, e))
    }

    /// Events that found the ring full so far, summed over CPUs.
    pub fn lost(&self) -> Result<u64> {
        let lost = self
            .lost
            .get(&0, 0)
            .map_err(|e| Error::ebpf("read", maps::EVENTS_LOST, e))?;
        Ok(lost.iter().sum())
    }
}

/// The loaded data path.
#[derive(Debug)]
pub struct Datapath {
    ebpf: Ebpf,
    maps_dir: PathBuf,
    links_dir: PathBuf,
    hook: TcHook,
    log_drain: tokio::task::JoinHandle<()>,
    wildcard: WildcardPorts,
    /// Maps of an older layout whose entries are being carried over.
    old_pins: Vec<OldPin>,
    /// The hash maps read and written in batches, their types checked.
    conntrack: BatchTable<FlowKey, CtEntry>,
    conntrack6: BatchTable<FlowKey6, CtEntry6>,
    published: BatchTable<PortKey, PortTarget>,
    published6: BatchTable<PortKey6, PortTarget6>,
    rule_drops: BatchTable<RuleDropKey, u64>,
    counters: Counters,
}

/// A hash map read and written in batches by raw bpf(2) calls, which size
/// their buffers by `K` and `V`: opened once, at load, after checking that
/// the map's key and value sizes are theirs (as aya's typed maps do).
struct BatchTable<K, V> {
    name: &'static str,
    _types: std::marker::PhantomData<fn() -> (K, V)>,
}

impl<K, V> std::fmt::Debug for BatchTable<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BatchTable").field(&self.name).finish()
    }
}

impl<K: aya::Pod, V: aya::Pod> BatchTable<K, V> {
    fn open(ebpf: &Ebpf, name: &'static str) -> Result<Self> {
        let info = match ebpf.map(name) {
            Some(
                aya::maps::Map::HashMap(data)
                | aya::maps::Map::LruHashMap(data)
                | aya::maps::Map::PerCpuHashMap(data),
            ) => data.info().map_err(|e| Error::ebpf("read", name, e))?,
            _ => return Err(not_in_object("hash map", name)),
        };
        let sizes = (info.key_size() as usize, info.value_size() as usize);
        if sizes != (size_of::<K>(), size_of::<V>()) {
            return Err(Error::ebpf(
                "open",
                name,
                std::io::Error::other(format!(
                    "keys of {} and values of {} bytes, not {} and {}",
                    sizes.0,
                    sizes.1,
                    size_of::<K>(),
                    size_of::<V>()
                )),
            ));
        }
        Ok(BatchTable {
            name,
            _types: std::marker::PhantomData,
        })
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.log_drain.abort();
    }
}

/// The `aya_log_common::Level` value matching the daemon's log filter, so
/// the programs skip formatting records nobody would see.
fn ebpf_log_level() -> u8 {
    match tracing::level_filters::LevelFilter::current().into_level() {
        None => 0,
        Some(tracing::Level::ERROR) => 1,
        Some(tracing::Level::WARN) => 2,
        Some(tracing::Level::INFO) => 3,
        Some(tracing::Level::DEBUG) => 4,
        Some(tracing::Level::TRACE) => 5,
    }
}

/// Forwards the programs' aya-log records to the daemon's log. The logger
/// owns the ring buffer's only user-space fd and lives as long as the task.
fn spawn_log_drain(ebpf: &mut Ebpf) -> Result<tokio::task::JoinHandle<()>> {
    let logger = EbpfLogger::init(ebpf).map_err(|e| Error::ebpf("open", "AYA_LOGS", e))?;
    // SAFETY: the logger owns the ring buffer's fd and never replaces it,
    // and the AsyncFd owns the logger.
    let mut logger = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| Error::io("poll", "AYA_LOGS", e.into_parts().1))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

impl Datapath {
    /// Loads the programs, reusing maps pinned under `pin_dir` by an earlier
    /// run, and sets the network configuration.
    pub fn load(pin_dir: &Path, cfg: NetConfig, ct_max: u32) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(Error::NoEbpfObject);
        }
        let maps_dir = pin_dir.join("maps");
        let links_dir = pin_dir.join("links");
        for dir in [&maps_dir, &links_dir] {
            fs::create_dir_all(dir).map_err(|e| Error::io("create", dir.display(), e))?;
        }
        let loaded = Self::load_pinned(pin_dir, maps_dir.clone(), links_dir.clone(), cfg, ct_max);
        if loaded.is_err() {
            // A directory nothing was pinned into goes again; remove_dir
            // leaves one holding an earlier run's pins.
            for dir in [&maps_dir, &links_dir] {
                let _ = fs::remove_dir(dir);
            }
        }
        loaded
    }

    fn load_pinned(
        pin_dir: &Path,
        maps_dir: PathBuf,
        links_dir: PathBuf,
        cfg: NetConfig,
        ct_max: u32,
    ) -> Result<Self> {
        pins::prepare_pinned(&maps_dir)?;
        pins::check_pinned_layouts(&maps_dir)?;
        let old_pins = pins::old_pins(&maps_dir)?;
        // A table made anew for converted entries keeps the old one's size.
        let ct_max = match old_pins.iter().find(|o| o.map == maps::CONNTRACK) {
            Some(old) if !maps_dir.join(maps::CONNTRACK).exists() => {
                aya::maps::MapInfo::from_pin(&old.path)
                    .map_err(|e| Error::ebpf("read", old.path.display(), e))?
                    .max_entries()
            }
            _ => ct_max,
        };
        let log_level = ebpf_log_level();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .override_global("AYA_LOG_LEVEL", &log_level, true)
            .map_max_entries(maps::CONNTRACK, ct_max)
            .map_max_entries(maps::CONNTRACK6, ct_max)
            .load(OBJECT)
            .map_err(|e| Error::ebpf("load", "eBPF object", e))?;
        let log_drain = spawn_log_drain(&mut ebpf)?;
        for name in [
            programs::ENDPOINT_INGRESS,
            programs::UPLINK_INGRESS,
            programs::COUNT_INGRESS,
            programs::COUNT_EGRESS,
            programs::PARENT_EGRESS,
            programs::PASS,
        ] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|e| Error::ebpf("load program", name, e))?;
        }
        for name in SOCKET_PROGRAMS {
            socket_program(&mut ebpf, name)?
                .load()
                .map_err(|e| Error::ebpf("load program", name, e))?;
        }
        for name in [programs::UPLINK_XDP, programs::XDP_PASS] {
            xdp_program(&mut ebpf, name)?
                .load()
                .map_err(|e| Error::ebpf("load program", name, e))?;
        }
        let wildcard = WildcardPorts::map(map_fd(&ebpf, maps::PUBLISHED_ANY)?)?;
        let mut dp = Datapath {
            conntrack: BatchTable::open(&ebpf, maps::CONNTRACK)?,
            conntrack6: BatchTable::open(&ebpf, maps::CONNTRACK6)?,
            published: BatchTable::open(&ebpf, maps::PUBLISHED)?,
            published6: BatchTable::open(&ebpf, maps::PUBLISHED6)?,
            rule_drops: BatchTable::open(&ebpf, maps::RULE_DROPS)?,
            counters: Counters::open(pin_dir)?,
            ebpf,
            maps_dir,
            links_dir,
            hook: TcHook::Tcx,
            log_drain,
            wildcard,
            old_pins,
        };
        // Before any link runs the new programs, which read only the new maps.
        dp.carry_over()?;
        dp.set_config(cfg)?;
        let mut stamp: Array<_, u32> = dp.map_mut(maps::LAYOUT)?;
        stamp
            .set(0, LAYOUT_VERSION, 0)
            .map_err(|e| Error::ebpf("stamp", maps::LAYOUT, e))?;
        Ok(dp)
    }

    /// Converts the entries of the maps pinned aside by a migration into
    /// this layout's maps, where those do not have them already.
    fn carry_over(&mut self) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(maps::CONNTRACK)
            .ok_or_else(|| not_in_object("map", maps::CONNTRACK))?;
        let mut conntrack: HashMap<_, FlowKey, CtEntry> =
            HashMap::try_from(map).map_err(|e| Error::ebpf("open map", maps::CONNTRACK, e))?;
        for old in &self.old_pins {
            if (old.map.as_str(), old.version) != (maps::CONNTRACK, 1) {
                return Err(Error::ebpf(
                    "convert",
                    old.path.display(),
                    std::io::Error::other("no conversion from this layout version"),
                ));
            }
            let data = MapData::from_pin(&old.path)
                .map_err(|e| Error::ebpf("open", old.path.display(), e))?;
            let entries: HashMap<_, FlowKey, CtEntryV1> =
                HashMap::try_from(aya::maps::Map::HashMap(data))
                    .map_err(|e| Error::ebpf("open", old.path.display(), e))?;
            let mut carried = 0;
            for entry in entries.iter() {
                let (key, value) = entry.map_err(|e| Error::ebpf("read", old.path.display(), e))?;
                // Entries the new programs wrote meanwhile are newer.
                if conntrack
                    .insert(
                        key,
                        layout::ct_entry_from_v1(&value),
                        u64::from(BPF_NOEXIST),
                    )
                    .is_ok()
                {
                    carried += 1;
                }
            }
            info!(map = old.map, carried, "entries carried over");
        }
        Ok(())
    }

    /// Ends a migration once every link runs the new programs: carries
    /// over what the old ones recorded until they were swapped out, and
    /// removes the old maps' pins.
    pub fn finish_migration(&mut self) -> Result<()> {
        if self.old_pins.is_empty() {
            return Ok(());
        }
        self.carry_over()?;
        for old in std::mem::take(&mut self.old_pins) {
            fs::remove_file(&old.path)
                .map_err(|e| Error::io("remove pin", old.path.display(), e))?;
        }
        Ok(())
    }

    /// Hands the event maps over; once per load.
    pub fn take_event_maps(&mut self) -> Result<EventMaps> {
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .ok_or_else(|| not_in_object("map", name))
        };
        let (ring, switch, lost) = (
            take(maps::EVENTS)?,
            take(maps::MONITOR)?,
            take(maps::EVENTS_LOST)?,
        );
        Ok(EventMaps {
            ring: aya::maps::RingBuf::try_from(ring)
                .map_err(|e| Error::ebpf("open map", maps::EVENTS, e))?,
            control: EventControl {
                switch: Array::try_from(switch)
                    .map_err(|e| Error::ebpf("open map", maps::MONITOR, e))?,
                lost: PerCpuArray::try_from(lost)
                    .map_err(|e| Error::ebpf("open map", maps::EVENTS_LOST, e))?,
            },
        })
    }

    /// Replaces the network configuration the programs read.
    pub fn set_config(&mut self, cfg: NetConfig) -> Result<()> {
        let mut config: Array<_, NetConfig> = self.map_mut(maps::NET_CONFIG)?;
        config
            .set(0, cfg, 0)
            .map_err(|e| Error::ebpf("update", maps::NET_CONFIG, e))
    }

    /// Gives the programs the flow lifetimes, by which they reclaim expired
    /// flows when the table is full.
    pub fn set_ct_timeouts(&mut self, timeouts: CtTimeouts) -> Result<()> {
        let mut map: Array<_, CtTimeouts> = self.map_mut(maps::CT_TIMEOUTS)?;
        map.set(0, timeouts, 0)
            .map_err(|e| Error::ebpf("update", maps::CT_TIMEOUTS, e))
    }

    fn map_mut<'a, T: TryFrom<&'a mut aya::maps::Map, Error = MapError>>(
        &'a mut self,
        name: &str,
    ) -> Result<T> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| not_in_object("map", name))?;
        T::try_from(map).map_err(|e| Error::ebpf("open map", name, e))
    }

    fn map<'a, T: TryFrom<&'a aya::maps::Map, Error = MapError>>(
        &'a self,
        name: &str,
    ) -> Result<T> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| not_in_object("map", name))?;
        T::try_from(map).map_err(|e| Error::ebpf("open map", name, e))
    }

    fn link_pin(&self, ifname: &str, d: Direction) -> PathBuf {
        self.links_dir.join(pin_name(ifname, d))
    }

    /// How [`Datapath::attach`] hangs programs on interfaces from now on.
    pub fn use_hook(&mut self, hook: TcHook) {
        self.hook = hook;
    }

    /// Attaches the programs of `role` to `ifname` and gives it counters.
    /// What was attached before gets the freshly loaded program atomically:
    /// a pinned tcx link, or the clsact filter netplane put there. True when
    /// this added a clsact qdisc to the interface.
    pub fn attach(&mut self, ifname: &str, role: Role) -> Result<bool> {
        let ifindex = if_nametoindex(ifname).map_err(|e| Error::io("look up", ifname, e))?;
        let added_qdisc = match self.hook {
            TcHook::Tcx => {
                self.attach_tcx(ifname, role)?;
                false
            }
            TcHook::Clsact => self.attach_clsact(ifname, role)?,
        };
        for &(_, direction) in role.hooks() {
            self.ensure_counters(
                maps::IF_STATS,
                IfStatsKey {
                    ifindex,
                    direction: direction as u32,
                },
                IfCounters::default(),
            )?;
        }
        self.ensure_counters(maps::IF_DROPS, ifindex, IfDrops::default())?;
        Ok(added_qdisc)
    }

    /// The programs of `role` as filters of `ifname`'s clsact qdisc (added
    /// if missing; true then), at netplane's own priority and handle. A
    /// filter there gets the new program in place (a netlink replace); the
    /// filters hold the programs after the daemon is gone, as pinned links
    /// do with tcx.
    fn attach_clsact(&mut self, ifname: &str, role: Role) -> Result<bool> {
        let added_qdisc = qdisc_add_clsact(ifname).is_ok();
        for &(name, direction) in role.hooks() {
            let attach_type = tc_attach_type(direction);
            let prog = classifier(&mut self.ebpf, name)?;
            let present = SchedClassifierLink::attached(
                ifname,
                attach_type,
                CLSACT_PRIORITY,
                CLSACT_HANDLE,
                None,
            )
            .map_err(|e| Error::io("look up", ifname, e))?;
            let link_id = match prog.attach_to_link(present) {
                Ok(id) => id,
                Err(_) => prog
                    .attach_with_options(
                        ifname,
                        attach_type,
                        TcAttachOptions::Netlink(NlOptions {
                            priority: CLSACT_PRIORITY,
                            handle: CLSACT_HANDLE,
                            ..NlOptions::default()
                        }),
                    )
                    .map_err(|e| {
                        Error::ebpf(
                            "attach a clsact filter to",
                            format!("{ifname} {}", direction_name(direction)),
                            e,
                        )
                    })?,
            };
            let link = prog
                .take_link(link_id)
                .map_err(|e| Error::ebpf("take link", ifname, e))?;
            // Dropped, the link would delete the filter: it must outlive
            // this daemon, and `detach` finds it by priority and handle.
            std::mem::forget(link);
            // A tcx link an earlier run pinned would run the programs twice.
            if let Ok(old) = PinnedLink::from_pin(self.link_pin(ifname, direction)) {
                let _ = old.unpin();
            }
        }
        Ok(added_qdisc)
    }

    fn attach_tcx(&mut self, ifname: &str, role: Role) -> Result<()> {
        for &(name, direction) in role.hooks() {
            let pin = self.link_pin(ifname, direction);
            let prog = classifier(&mut self.ebpf, name)?;
            let replaced = PinnedLink::from_pin(&pin)
                .ok()
                .and_then(|old| SchedClassifierLink::try_from(FdLink::from(old)).ok())
                .and_then(|link| prog.attach_to_link(link).ok());
            let link_id = match replaced {
                Some(id) => id,
                None => {
                    // No pin, or a pin of a link whose interface is gone.
                    let _ = fs::remove_file(&pin);
                    prog.attach_with_options(
                        ifname,
                        tc_attach_type(direction),
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| {
                        Error::ebpf(
                            "attach to",
                            format!("{ifname} {}", direction_name(direction)),
                            e,
                        )
                    })?
                }
            };
            let link = prog
                .take_link(link_id)
                .map_err(|e| Error::ebpf("take link", ifname, e))?;
            pin_link(link, ifname, &pin)?;
        }
        Ok(())
    }

    /// Attaches the XDP fast path to the uplink `ifname` as `setting`
    /// says, through a pinned link, so that it outlives the daemon and a
    /// later run swaps the program in atomically; `Off` removes a link an
    /// earlier run left. Returns how it runs.
    pub fn attach_xdp(&mut self, ifname: &str, setting: XdpSetting) -> Result<XdpAttached> {
        let pin = self.links_dir.join(hook_pin_name(ifname, "xdp"));
        if setting == XdpSetting::Off {
            if let Ok(old) = PinnedLink::from_pin(&pin) {
                // Unpinned and dropped, the link detaches.
                let _ = old.unpin();
            }
            return Ok(XdpAttached::Off);
        }
        let prog = xdp_program(&mut self.ebpf, programs::UPLINK_XDP)?;
        let replaced = PinnedLink::from_pin(&pin)
            .ok()
            .and_then(|old| XdpLink::try_from(FdLink::from(old)).ok())
            .and_then(|link| prog.attach_to_link(link).ok());
        let wanted = match setting {
            XdpSetting::Generic => (XdpMode::Skb, XdpAttached::Generic),
            _ => (XdpMode::Driver, XdpAttached::Native),
        };
        // A replaced link keeps the mode it was made in: the one this
        // setting asks for, unless `--xdp` changed between runs.
        let (link_id, attached) = match replaced {
            Some(id) => (id, wanted.1),
            None => {
                let _ = fs::remove_file(&pin);
                let (mode, attached) = wanted;
                match prog.attach(ifname, mode) {
                    Ok(id) => (id, attached),
                    // The driver cannot run XDP: tc does everything.
                    Err(_) if setting == XdpSetting::Auto => return Ok(XdpAttached::Off),
                    Err(e) => return Err(Error::ebpf("attach XDP to", ifname, e)),
                }
            }
        };
        let link = prog
            .take_link(link_id)
            .map_err(|e| Error::ebpf("take link", ifname, e))?;
        pin_link(link, ifname, &pin)?;
        Ok(attached)
    }

    /// Gives `key` zeroed per-CPU counters in map `name` unless it has
    /// them: the programs count only into slots that exist.
    fn ensure_counters<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
        key: K,
        zero: V,
    ) -> Result<()> {
        let mut counters: PerCpuHashMap<_, K, V> = self.map_mut(name)?;
        match counters.get(&key, 0) {
            Ok(_) => Ok(()),
            Err(MapError::KeyNotFound) => {
                let cpus =
                    aya::util::nr_cpus().map_err(|(what, e)| Error::io("count CPUs", what, e))?;
                let zero = PerCpuValues::try_from(vec![zero; cpus])
                    .map_err(|e| Error::io("build per-CPU value", name, e))?;
                counters
                    .insert(key, zero, 0)
                    .map_err(|e| Error::ebpf("insert into", name, e))
            }
            Err(e) => Err(Error::ebpf("look up", name, e)),
        }
    }

    /// Detaches everything from `ifname` and drops its counters. Detaching
    /// an interface that has nothing attached is fine.
    pub fn detach(&mut self, ifname: &str) -> Result<()> {
        let ifindex = if_nametoindex(ifname).ok();
        for direction in [Direction::Ingress, Direction::Egress] {
            let pin = self.link_pin(ifname, direction);
            if let Ok(link) = PinnedLink::from_pin(&pin) {
                // Closing the last reference to the link detaches it.
                drop(
                    link.unpin()
                        .map_err(|e| Error::io("unpin", pin.display(), e))?,
                );
            }
            if self.hook == TcHook::Clsact
                && let Ok(filter) = SchedClassifierLink::attached(
                    ifname,
                    tc_attach_type(direction),
                    CLSACT_PRIORITY,
                    CLSACT_HANDLE,
                    None,
                )
            {
                // Gone already with its interface, or never there: fine.
                let _ = filter.detach();
            }
            if let Some(ifindex) = ifindex {
                let mut stats: PerCpuHashMap<_, IfStatsKey, IfCounters> =
                    self.map_mut(maps::IF_STATS)?;
                let _ = stats.remove(&IfStatsKey {
                    ifindex,
                    direction: direction as u32,
                });
            }
        }
        if let Some(ifindex) = ifindex {
            let mut drops: PerCpuHashMap<_, u32, IfDrops> = self.map_mut(maps::IF_DROPS)?;
            let _ = drops.remove(&ifindex);
        }
        Ok(())
    }

    /// Its counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Attaches the socket programs to the cgroup tree at `cgroup` (host
    /// processes reaching published ports), next to other programs there.
    /// Programs a previous run pinned are detached once the new ones are in,
    /// so no connect goes untranslated meanwhile.
    pub fn attach_sockets(&mut self, cgroup: &Path) -> Result<()> {
        let dir = fs::File::open(cgroup).map_err(|e| Error::io("open", cgroup.display(), e))?;
        for name in SOCKET_PROGRAMS {
            let pin = self.links_dir.join(format!("cgroup@{name}"));
            let prog = socket_program(&mut self.ebpf, name)?;
            let prog_fd = prog
                .fd()
                .map_err(|e| Error::ebpf("open program", name, e))?;
            if bpf::update_pinned_link(&pin, prog_fd.as_fd()).is_ok() {
                continue;
            }
            // No pin yet, or a pin of a link whose cgroup is gone.
            // A bpf_link attachment always sits next to the others; the
            // kernel refuses any attach flag on link creation, so no
            // AllowMultiple here.
            let id = prog
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|e| Error::ebpf("attach to", cgroup.display(), e))?;
            let link = FdLink::try_from(
                prog.take_link(id)
                    .map_err(|e| Error::ebpf("take link", name, e))?,
            )
            .map_err(|e| Error::ebpf("pin link", name, e))?;
            if let Ok(old) = PinnedLink::from_pin(&pin) {
                drop(
                    old.unpin()
                        .map_err(|e| Error::io("unpin", pin.display(), e))?,
                );
            }
            link.pin(&pin)
                .map_err(|e| Error::ebpf("pin link", pin.display(), e))?;
        }
        Ok(())
    }

    /// Lets the data path deliver to the endpoint behind the host-side veth
    /// `ifindex` and accept what it sends as `addr` from `mac`, keeping it
    /// to the endpoints of its network, `vni` (0 for the bridge network).
    /// With `xdp`, the uplink's XDP program may redirect to its veth too
    /// (whose peer must have GRO on).
    pub fn add_endpoint(
        &mut self,
        ifindex: u32,
        addr: Ipv4Addr,
        mac: [u8; 6],
        vni: u32,
        xdp: bool,
    ) -> Result<()> {
        let addr_be = addr_be(addr);
        let mut ids: HashMap<_, u32, EndpointIdentity> = self.map_mut(maps::ENDPOINT_IFACES)?;
        ids.insert(
            ifindex,
            EndpointIdentity {
                addr_be,
                mac,
                _pad: [0; 2],
                vni,
            },
            0,
        )
        .map_err(|e| Error::ebpf("insert into", maps::ENDPOINT_IFACES, e))?;
        let mut ports: HashMap<_, u32, EndpointPort> = self.map_mut(maps::ENDPOINTS)?;
        ports
            .insert(
                addr_be,
                EndpointPort {
                    ifindex,
                    mac,
                    _pad: [0; 2],
                    vni,
                },
                0,
            )
            .map_err(|e| Error::ebpf("insert into", maps::ENDPOINTS, e))?;
        let mut xdp_ports: DevMapHash<_> = self.map_mut(maps::XDP_PORTS)?;
        if xdp {
            xdp_ports
                .insert(ifindex, ifindex, None, 0)
                .map_err(|e| Error::ebpf("insert into", maps::XDP_PORTS, e))
        } else {
            let _ = xdp_ports.remove(ifindex);
            Ok(())
        }
    }

    /// What the data path knows of the endpoint behind host-side veth
    /// `ifindex` and of the one at `addr`: what CNI CHECK compares.
    pub fn endpoint_entries(
        &self,
        ifindex: u32,
        addr: Ipv4Addr,
    ) -> Result<(Option<EndpointIdentity>, Option<EndpointPort>)> {
        let ids: HashMap<_, u32, EndpointIdentity> = self.map(maps::ENDPOINT_IFACES)?;
        let ports: HashMap<_, u32, EndpointPort> = self.map(maps::ENDPOINTS)?;
        Ok((ids.get(&ifindex, 0).ok(), ports.get(&addr_be(addr), 0).ok()))
    }

    /// Lets the endpoint behind host-side veth `ifindex` send over IPv6 as
    /// `addr` and as the link-local address its `mac` gives, and tells the
    /// data path both are of network `vni`, delivered to that veth.
    pub fn add_endpoint6(
        &mut self,
        ifindex: u32,
        addr: Ipv6Addr,
        mac: [u8; 6],
        vni: u32,
    ) -> Result<()> {
        let mut own: HashMap<_, u32, [u8; 16]> = self.map_mut(maps::ENDPOINT6_IFACES)?;
        own.insert(ifindex, addr.octets(), 0)
            .map_err(|e| Error::ebpf("insert into", maps::ENDPOINT6_IFACES, e))?;
        let port = EndpointPort {
            ifindex,
            mac,
            _pad: [0; 2],
            vni,
        };
        let mut all: HashMap<_, [u8; 16], EndpointPort> = self.map_mut(maps::ENDPOINTS6)?;
        for a in [addr.octets(), link_local_of(mac)] {
            all.insert(a, port, 0)
                .map_err(|e| Error::ebpf("insert into", maps::ENDPOINTS6, e))?;
        }
        Ok(())
    }

    /// Forgets what [`Datapath::add_endpoint6`] told, and every IPv6 flow
    /// to or from the endpoint; forgetting what is not there is fine.
    pub fn remove_endpoint6(&mut self, ifindex: u32, addr: Ipv6Addr, mac: [u8; 6]) -> Result<()> {
        let mut own: HashMap<_, u32, [u8; 16]> = self.map_mut(maps::ENDPOINT6_IFACES)?;
        let _ = own.remove(&ifindex);
        let mut all: HashMap<_, [u8; 16], EndpointPort> = self.map_mut(maps::ENDPOINTS6)?;
        for a in [addr.octets(), link_local_of(mac)] {
            let _ = all.remove(&a);
        }
        let a = addr.octets();
        self.remove_flows6(|k, e| [k.saddr_be, k.daddr_be, e.saddr_be, e.daddr_be].contains(&a))
    }

    /// Replaces the set of the host's own IPv6 addresses, and the uplink's
    /// address that IPv6 flows are masqueraded to (none: not at all).
    pub fn set_host_addrs6(
        &mut self,
        addrs: &[Ipv6Addr],
        gateways: &[Ipv6Addr],
        uplink: Option<Ipv6Addr>,
    ) -> Result<()> {
        let entries = addrs
            .iter()
            .chain(gateways)
            .map(|a| {
                let bits = if gateways.contains(a) {
                    HOST_ADDR | HOST_ADDR_GATEWAY
                } else {
                    HOST_ADDR
                };
                (a.octets(), bits)
            })
            .collect();
        self.set_entries(maps::HOST_ADDRS6, entries)?;
        let mut up: Array<_, Uplink6> = self.map_mut(maps::UPLINK6)?;
        let addr = uplink.map_or([0; 16], |a| a.octets());
        up.set(0, Uplink6 { addr }, 0)
            .map_err(|e| Error::ebpf("update", maps::UPLINK6, e))
    }

    /// Publishes IPv6 ports (the unspecified address: every address).
    pub fn publish6(&mut self, entries: &[(PortKey6, PortTarget6)]) -> Result<()> {
        self.update_batch(&self.published6, entries)
    }

    /// Withdraws IPv6 published ports and the IPv6 flows of their rule.
    pub fn unpublish6(&mut self, keys: &[PortKey6], slot: u32) -> Result<()> {
        self.delete_batch(&self.published6, keys)?;
        self.remove_flows6(|_, e| e.slot == slot)
    }

    /// Every IPv6 connection tracking entry.
    pub fn flows6(&self) -> Result<Vec<(FlowKey6, CtEntry6)>> {
        self.dump(&self.conntrack6)
    }

    /// Removes both entries of every IPv6 flow one of whose entries
    /// matches.
    pub fn remove_flows6(&mut self, matches: impl Fn(&FlowKey6, &CtEntry6) -> bool) -> Result<()> {
        let doomed: Vec<FlowKey6> = self
            .flows6()?
            .iter()
            .filter(|(k, e)| matches(k, e))
            .flat_map(|(k, e)| [*k, ct::other_direction(k, e)])
            .collect();
        self.delete_batch(&self.conntrack6, &doomed)
    }

    /// Forgets an endpoint and every flow to or from it, so that a later
    /// endpoint with the same address starts clean. Forgetting one that is
    /// not there is fine.
    pub fn remove_endpoint(&mut self, ifindex: u32, addr: Ipv4Addr) -> Result<()> {
        let addr_be = addr_be(addr);
        let mut ids: HashMap<_, u32, EndpointIdentity> = self.map_mut(maps::ENDPOINT_IFACES)?;
        let _ = ids.remove(&ifindex);
        let mut ports: HashMap<_, u32, EndpointPort> = self.map_mut(maps::ENDPOINTS)?;
        let _ = ports.remove(&addr_be);
        let mut xdp_ports: DevMapHash<_> = self.map_mut(maps::XDP_PORTS)?;
        let _ = xdp_ports.remove(ifindex);
        self.remove_flows(|k, e| {
            [k.saddr_be, k.daddr_be, e.saddr_be, e.daddr_be].contains(&addr_be)
        })
    }

    /// Replaces the set of the host's own addresses.
    pub fn set_host_addrs(&mut self, addrs: &[Ipv4Addr], gateways: &[Ipv4Addr]) -> Result<()> {
        let entries = addrs
            .iter()
            .map(|a| {
                let gateway = if gateways.contains(a) {
                    HOST_ADDR_GATEWAY
                } else {
                    0
                };
                (addr_be(*a), HOST_ADDR | gateway)
            })
            .collect();
        self.set_entries(maps::HOST_ADDRS, entries)
    }

    /// Makes the set-like hash map `name` (values unused) hold exactly
    /// `want`, leaving the keys it keeps in place.
    fn set_keys<K: aya::Pod + PartialEq>(&mut self, name: &str, want: Vec<K>) -> Result<()> {
        self.set_entries(name, want.into_iter().map(|k| (k, 1u32)).collect())
    }

    /// Makes hash map `name` hold exactly `want`: keys not in it go, the
    /// others are written in place, so no lookup ever misses a kept key.
    fn set_entries<K: aya::Pod + PartialEq, V: aya::Pod>(
        &mut self,
        name: &str,
        want: Vec<(K, V)>,
    ) -> Result<()> {
        let mut map: HashMap<_, K, V> = self.map_mut(name)?;
        let stale: Vec<K> = map
            .keys()
            .flatten()
            .filter(|k| !want.iter().any(|(w, _)| w == k))
            .collect();
        for k in stale {
            let _ = map.remove(&k);
        }
        for (k, v) in want {
            map.insert(k, v, 0)
                .map_err(|e| Error::ebpf("insert into", name, e))?;
        }
        Ok(())
    }

    /// Replaces the other hosts' leases of overlay subnets: each /24
    /// network address with the host that holds it.
    pub fn set_overlay_routes(&mut self, leases: &[(Ipv4Addr, OverlayPeer)]) -> Result<()> {
        let want = leases
            .iter()
            .map(|(lease, peer)| (addr_be(*lease), *peer))
            .collect();
        self.set_entries(maps::OVERLAY_ROUTES, want)
    }

    /// Replaces the policies of the networks other than the bridge
    /// network, by network identifier.
    pub fn set_networks(&mut self, networks: &[(u32, NetworkPolicy)]) -> Result<()> {
        self.set_entries(maps::NETWORKS, networks.to_vec())
    }

    /// Replaces who may send out of macvlan parents: each MAC with its
    /// address and `MACVLAN_SOURCE_*` flags.
    pub fn set_macvlan_sources(&mut self, sources: &[([u8; 6], Ipv4Addr, u32)]) -> Result<()> {
        let want = sources
            .iter()
            .map(|(mac, addr, flags)| {
                (
                    MacKey {
                        mac: *mac,
                        _pad: [0; 2],
                    },
                    MacvlanSource {
                        addr_be: addr_be(*addr),
                        flags: *flags,
                    },
                )
            })
            .collect();
        self.set_entries(maps::MACVLAN_SOURCES, want)
    }

    /// Replaces the pairs of endpoints allowed to talk with `--icc=false`.
    pub fn set_linked(&mut self, pairs: &[(Ipv4Addr, Ipv4Addr)]) -> Result<()> {
        let want: Vec<AddrPair> = pairs
            .iter()
            .flat_map(|(a, b)| [(*a, *b), (*b, *a)])
            .map(|(src, dst)| AddrPair {
                src_be: addr_be(src),
                dst_be: addr_be(dst),
            })
            .collect();
        self.set_keys(maps::LINKED, want)
    }

    /// Publishes ports: one map entry per host port, in the array when
    /// published on every address of the host.
    pub fn publish(&mut self, entries: &[(PortKey, PortTarget)]) -> Result<()> {
        let (any, on_addr) = by_wildcard(entries.iter().copied());
        for (index, target) in any {
            self.wildcard.set(index, target);
        }
        self.update_batch(&self.published, &on_addr)
    }

    /// Makes `from` the whole allow-list of the published rule in `slot`
    /// (empty: none, every source may open flows).
    pub fn set_publish_from(&mut self, slot: u32, from: &[Ipv4Net]) -> Result<()> {
        let mut trie: LpmTrie<_, PublishFromKey, u32> = self.map_mut(maps::PUBLISH_FROM)?;
        let stale: Vec<Key<PublishFromKey>> = trie
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| u32::from_be(k.data().slot_be) == slot)
            .collect();
        for key in stale {
            match trie.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(Error::ebpf("delete from", maps::PUBLISH_FROM, e)),
            }
        }
        for net in from {
            let key = Key::new(
                32 + u32::from(net.prefix_len()),
                PublishFromKey {
                    slot_be: slot.to_be(),
                    addr_be: addr_be(net.network()),
                },
            );
            trie.insert(&key, 1, 0)
                .map_err(|e| Error::ebpf("insert into", maps::PUBLISH_FROM, e))?;
        }
        Ok(())
    }

    /// Withdraws published ports and the flows through them; withdrawing
    /// one that is not there is fine.
    pub fn unpublish(&mut self, keys: &[PortKey], slot: u32) -> Result<()> {
        let (any, on_addr) = by_wildcard(keys.iter().map(|k| (*k, PortTarget::default())));
        for (index, empty) in any {
            self.wildcard.set(index, empty);
        }
        let on_addr: Vec<PortKey> = on_addr.into_iter().map(|(k, _)| k).collect();
        self.delete_batch(&self.published, &on_addr)?;
        self.remove_flows(|_, e| e.slot == slot)
    }

    /// Writes `entries` into map `name` with BPF_MAP_UPDATE_BATCH: one
    /// system call for all of them, where one each made publishing 10,000
    /// ports cost milliseconds of system call overhead.
    fn update_batch<K: aya::Pod, V: aya::Pod>(
        &self,
        table: &BatchTable<K, V>,
        entries: &[(K, V)],
    ) -> Result<()> {
        let name = table.name;
        let (keys, values): (Vec<K>, Vec<V>) = entries.iter().copied().unzip();
        let fd = map_fd(&self.ebpf, name)?;
        let (_, result) = // SAFETY: the table was opened with K and V checked against the map's
        // key and value sizes.
        unsafe { bpf::map_batch(fd, bpf_cmd::BPF_MAP_UPDATE_BATCH, &keys, Some(&values)) };
        result.map_err(|e| Error::io("batch-insert into", name, e))
    }

    /// Deletes `keys` from hash map `name` with BPF_MAP_DELETE_BATCH; absent
    /// keys are fine. The kernel stops at the first absent key and says
    /// how many it did: carry on after it.
    fn delete_batch<K: aya::Pod, V: aya::Pod>(
        &self,
        table: &BatchTable<K, V>,
        keys: &[K],
    ) -> Result<()> {
        let name = table.name;
        let fd = map_fd(&self.ebpf, name)?;
        // SAFETY: the table was opened with K checked against the map's key
        // size.
        unsafe { bpf::delete_keys(fd, keys) }.map_err(|e| Error::io("batch-delete from", name, e))
    }

    /// Zeroes the counters of a NAT rule slot before it is given to a rule.
    pub fn reset_nat_counters(&mut self, slot: u32) -> Result<()> {
        let drops: Vec<RuleDropKey> = DropReason::ALL
            .iter()
            .map(|r| RuleDropKey {
                slot,
                reason: *r as u32,
            })
            .collect();
        self.delete_batch(&self.rule_drops, &drops)?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| Error::io("count CPUs", what, e))?;
        let zero = PerCpuValues::try_from(vec![IfCounters::default(); cpus])
            .map_err(|e| Error::io("build per-CPU value", maps::NAT_COUNTERS, e))?;
        let mut counters: PerCpuArray<_, IfCounters> = self.map_mut(maps::NAT_COUNTERS)?;
        counters
            .set(slot, zero, 0)
            .map_err(|e| Error::ebpf("update", maps::NAT_COUNTERS, e))
    }

    /// Every connection tracking entry.
    pub fn flows(&self) -> Result<Vec<(FlowKey, CtEntry)>> {
        self.dump(&self.conntrack)
    }

    /// Every entry of hash map `name` (not a per-CPU one), read with
    /// BPF_MAP_LOOKUP_BATCH: a system call per few thousand entries, where
    /// walking the keys takes two per entry.
    fn dump<K: aya::Pod, V: aya::Pod>(&self, table: &BatchTable<K, V>) -> Result<Vec<(K, V)>> {
        let name = table.name;
        let fd = map_fd(&self.ebpf, name)?;
        // SAFETY: the table was opened with K and V checked against the
        // map's key and value sizes.
        unsafe { bpf::lookup_all::<K, V>(fd) }.map_err(|e| Error::io("batch-read", name, e))
    }

    /// Removes both entries of every flow one of whose entries matches.
    pub fn remove_flows(&mut self, matches: impl Fn(&FlowKey, &CtEntry) -> bool) -> Result<()> {
        let doomed: Vec<FlowKey> = self
            .flows()?
            .iter()
            .filter(|(k, e)| matches(k, e))
            .flat_map(|(k, e)| [*k, ct::other_direction(k, e)])
            .collect();
        self.delete_flow_keys(&doomed)
    }

    /// Writes connection tracking entries as they are (benchmarks seed the
    /// table with them).
    pub fn insert_flows(&mut self, entries: &[(FlowKey, CtEntry)]) -> Result<()> {
        self.update_batch(&self.conntrack, entries)
    }

    /// The connection tracking entries of `keys` that are present, read
    /// one by one now.
    pub fn flows_of(&self, keys: &[FlowKey]) -> Result<Vec<(FlowKey, CtEntry)>> {
        let conntrack: HashMap<_, FlowKey, CtEntry> = self.map(maps::CONNTRACK)?;
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            match conntrack.get(key, 0) {
                Ok(entry) => found.push((*key, entry)),
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(Error::ebpf("look up", maps::CONNTRACK, e)),
            }
        }
        Ok(found)
    }

    /// Deletes connection tracking entries; absent ones are fine.
    pub fn delete_flow_keys(&mut self, keys: &[FlowKey]) -> Result<()> {
        self.delete_batch(&self.conntrack, keys)
    }

    /// Runs the classifier `program` on `packet` as if it had arrived on
    /// `ifindex` of the current thread's network namespace, `repeat` times
    /// (BPF_PROG_TEST_RUN): how the tests check programs byte by byte and
    /// the benchmarks time them. Maps are the real, pinned ones.
    pub fn test_run(
        &mut self,
        program: &str,
        ifindex: u32,
        packet: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome> {
        // Room for a packet that grows (none of ours does, yet).
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let result = if program == programs::UPLINK_XDP || program == programs::XDP_PASS {
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
            // rx_queue_index, egress_ifindex; the frame from offset 0.
            let md = [0, packet.len() as u32, 0, ifindex, 0, 0];
            let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
            opts.ctx_in = Some(&ctx);
            xdp_program(&mut self.ebpf, program)?.test_run(opts)
        } else {
            // The leading fields of struct __sk_buff, zero but for
            // `ifindex` (offset 40), which the kernel turns into the
            // packet's device.
            const SKB_IFINDEX: usize = 40;
            let mut ctx = [0u8; SKB_IFINDEX + 4];
            ctx[SKB_IFINDEX..].copy_from_slice(&ifindex.to_ne_bytes());
            opts.ctx_in = Some(&ctx);
            classifier(&mut self.ebpf, program)?.test_run(opts)
        }
        .map_err(|e| Error::ebpf("test run", program, e))?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutcome {
            action: result.return_value as i32,
            packet: out,
            duration: result.duration,
        })
    }

    /// Detaches every pinned link and removes every pin: the data path is
    /// gone once this and the daemon's own handles are dropped.
    pub fn remove_pins(self) -> Result<()> {
        for dir in [&self.links_dir, &self.maps_dir] {
            let entries = fs::read_dir(dir).map_err(|e| Error::io("list", dir.display(), e))?;
            for entry in entries.flatten() {
                let path = entry.path();
                fs::remove_file(&path).map_err(|e| Error::io("remove pin", path.display(), e))?;
            }
            fs::remove_dir(dir).map_err(|e| Error::io("remove", dir.display(), e))?;
        }
        Ok(())
    }
}

/// A map or program the embedded object should have and does not.
fn not_in_object(kind: &'static str, name: &str) -> Error {
    Error::ebpf(
        kind,
        name,
        std::io::Error::new(std::io::ErrorKind::NotFound, "not in the eBPF object"),
    )
}

/// bpffs refuses names containing '.', which interface names may contain
/// (VLAN devices): escape it, and the escape character, percent-style.
fn pin_name(ifname: &str, d: Direction) -> String {
    hook_pin_name(ifname, direction_name(d))
}

/// The pin of the link on `ifname`'s `hook`: its name with `%` and `.`
/// escaped (bpffs names take no dots), then `@hook`.
fn hook_pin_name(ifname: &str, hook: &str) -> String {
    let escaped = ifname.replace('%', "%25").replace('.', "%2e");
    format!("{escaped}@{hook}")
}

/// The cgroup programs, which see host sockets rather than packets.
const SOCKET_PROGRAMS: [&str; 8] = [
    programs::CONNECT4,
    programs::SENDMSG4,
    programs::RECVMSG4,
    programs::GETPEERNAME4,
    programs::CONNECT6,
    programs::SENDMSG6,
    programs::RECVMSG6,
    programs::GETPEERNAME6,
];

fn socket_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| not_in_object("program", name))?;
    prog.try_into()
        .map_err(|e| Error::ebpf("open program", name, e))
}

/// Pins `link`, on `ifname`, at `pin` in place of whatever was pinned
/// there: the link then outlives this daemon.
fn pin_link<L>(link: L, ifname: &str, pin: &Path) -> Result<()>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    let fd_link = FdLink::try_from(link).map_err(|e| Error::ebpf("pin link", ifname, e))?;
    let _ = fs::remove_file(pin);
    fd_link
        .pin(pin)
        .map_err(|e| Error::ebpf("pin link", pin.display(), e))?;
    Ok(())
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| not_in_object("program", name))?;
    prog.try_into()
        .map_err(|e| Error::ebpf("open program", name, e))
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| not_in_object("program", name))?;
    prog.try_into()
        .map_err(|e| Error::ebpf("open program", name, e))
}

/// The file descriptor of map `name`: a hash, or the wildcard port array.
fn map_fd<'a>(ebpf: &'a Ebpf, name: &str) -> Result<BorrowedFd<'a>> {
    use aya::maps::Map;
    match ebpf.map(name) {
        Some(
            Map::HashMap(data)
            | Map::LruHashMap(data)
            | Map::PerCpuHashMap(data)
            | Map::Array(data),
        ) => Ok(data.fd().as_fd()),
        _ => Err(not_in_object("hash or array map", name)),
    }
}

/// Published ports keyed one way or another.
type PortEntries<K> = Vec<(K, PortTarget)>;

/// Published port entries split by map: by array index for those on every
/// host address, by key for those on one.
fn by_wildcard(
    entries: impl Iterator<Item = (PortKey, PortTarget)>,
) -> (PortEntries<u32>, PortEntries<PortKey>) {
    let mut any = Vec::new();
    let mut on_addr = Vec::new();
    for (key, target) in entries {
        match key.wildcard_index() {
            Some(index) if key.addr_be == 0 => any.push((index, target)),
            _ => on_addr.push((key, target)),
        }
    }
    (any, on_addr)
}

#[cfg(test)]
mod tests {
    use netplane_common::abi::proto;

    use super::*;

    #[test]
    fn xdp_auto_leaves_virtual_uplinks_to_tc() {
        assert_eq!(XdpSetting::Auto.for_uplink(Some("veth")), XdpSetting::Off);
        assert_eq!(XdpSetting::Auto.for_uplink(None), XdpSetting::Auto);
        assert_eq!(
            XdpSetting::Native.for_uplink(Some("veth")),
            XdpSetting::Native
        );
        assert_eq!(
            XdpSetting::Generic.for_uplink(Some("bond")),
            XdpSetting::Generic
        );
    }

    #[test]
    fn pin_names_have_no_dots_and_stay_distinct() {
        assert_eq!(pin_name("np0", Direction::Ingress), "np0@ingress");
        assert_eq!(pin_name("eth0.100", Direction::Egress), "eth0%2e100@egress");
        assert_ne!(
            pin_name("a.b", Direction::Egress),
            pin_name("a%2eb", Direction::Egress)
        );
    }

    #[test]
    fn tcx_is_there_from_linux_6_6() {
        assert!(kernel_has_tcx("6.18.44-fc-v595"));
        assert!(kernel_has_tcx("6.6.0"));
        assert!(kernel_has_tcx("7.0.1"));
        assert!(!kernel_has_tcx("6.1.0-28-amd64"), "Debian bookworm's own");
        assert!(!kernel_has_tcx("5.15.0-125-generic"), "Ubuntu 22.04's");
        assert!(!kernel_has_tcx("garbage"));
    }

    #[test]
    fn wildcard_ports_go_to_the_array_and_the_rest_to_the_hash() {
        let key = |addr: Ipv4Addr, port: u16, proto| PortKey {
            addr_be: addr_be(addr),
            port_be: port.to_be(),
            proto,
            _pad: 0,
        };
        let target = PortTarget {
            addr_be: addr_be(Ipv4Addr::new(10, 88, 0, 2)),
            port_be: 80u16.to_be(),
            flags: 0,
            slot: 3,
        };
        let on_addr = key(Ipv4Addr::LOCALHOST, 8080, proto::TCP);
        let (any, hashed) = by_wildcard(
            [
                (key(Ipv4Addr::UNSPECIFIED, 8080, proto::TCP), target),
                (key(Ipv4Addr::UNSPECIFIED, 53, proto::UDP), target),
                (on_addr, target),
            ]
            .into_iter(),
        );
        assert_eq!(any, [(8080, target), (65536 + 53, target)]);
        assert_eq!(hashed, [(on_addr, target)]);
    }
}
