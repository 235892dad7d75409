//! Maps pinned by earlier runs: whether their layout is this build's, and
//! which were set aside by a migration to carry over.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::maps::{Array, MapData};
use netplane_common::abi::{LAYOUT_VERSION, maps};
use tracing::info;

use super::{Error, Result};
use crate::logic::layout::{self, Plan};

/// What a map is, as far as a program using it is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    /// `None`: any size will do (a table sized at `up`).
    pub max_entries: Option<u32>,
    pub flags: u32,
}

/// Flags the kernel gives maps of `map_type` by itself: device maps are
/// read-only to programs (a lookup returns the kernel's own device entry),
/// and creating one with that flag asked for fails.
fn kernel_added_flags(map_type: u32) -> u32 {
    use aya_obj::generated::{BPF_F_RDONLY_PROG, bpf_map_type};
    if map_type == bpf_map_type::BPF_MAP_TYPE_DEVMAP as u32
        || map_type == bpf_map_type::BPF_MAP_TYPE_DEVMAP_HASH as u32
    {
        BPF_F_RDONLY_PROG
    } else {
        0
    }
}

/// How `found`, a pinned map, differs from `want`, what the programs were
/// built for; `None` when they can share it.
pub fn layout_mismatch(want: &MapLayout, found: &MapLayout) -> Option<String> {
    let fields = [
        ("type", want.map_type, found.map_type),
        ("key size", want.key_size, found.key_size),
        ("value size", want.value_size, found.value_size),
        ("flags", want.flags, found.flags),
    ];
    let sized = want
        .max_entries
        .zip(found.max_entries)
        .map(|(w, f)| ("capacity", w, f));
    let differ: Vec<String> = fields
        .into_iter()
        .chain(sized)
        .filter(|(_, w, f)| w != f)
        .map(|(what, w, f)| format!("{what} {f} where this netplane needs {w}"))
        .collect();
    (!differ.is_empty()).then(|| differ.join(", "))
}

/// The layout version of the maps pinned under `maps_dir`; `None` when
/// nothing is pinned. Pins without the stamp map are a netplane's from
/// before stamps, version 1; a stamp of 0 is this netplane's own, killed
/// between creating the maps and stamping them.
fn pinned_layout_version(maps_dir: &Path) -> Result<Option<u32>> {
    let pin = maps_dir.join(maps::LAYOUT);
    if !pin.exists() {
        let mut pins =
            fs::read_dir(maps_dir).map_err(|e| Error::io("list", maps_dir.display(), e))?;
        return Ok(pins.next().is_some().then_some(1));
    }
    let stamp = MapData::from_pin(&pin).map_err(|e| Error::ebpf("open", pin.display(), e))?;
    let stamp: Array<_, u32> = Array::try_from(aya::maps::Map::Array(stamp))
        .map_err(|e| Error::ebpf("open", pin.display(), e))?;
    let version = stamp
        .get(&0, 0)
        .map_err(|e| Error::ebpf("read", pin.display(), e))?;
    Ok(Some(if version == 0 {
        LAYOUT_VERSION
    } else {
        version
    }))
}

/// Readies the maps pinned under `maps_dir` for this netplane's programs:
/// refuses a layout version it has no way from, and moves aside the pins
/// of maps whose entries changed shape, for [`Datapath::carry_over`].
pub(super) fn prepare_pinned(maps_dir: &Path) -> Result<()> {
    let Some(found) = pinned_layout_version(maps_dir)? else {
        return Ok(());
    };
    match layout::plan(found) {
        Plan::Reuse => Ok(()),
        Plan::Migrate { from, maps } => {
            for map in maps {
                let pin = maps_dir.join(map);
                let aside = maps_dir.join(layout::old_pin_name(map, from));
                if pin.exists() {
                    fs::rename(&pin, &aside)
                        .map_err(|e| Error::io("move aside", pin.display(), e))?;
                    info!(map, from, "layout version {from}: converting its entries");
                }
            }
            Ok(())
        }
        Plan::Refuse => Err(Error::PinnedLayoutVersion {
            dir: maps_dir.to_path_buf(),
            found,
            want: LAYOUT_VERSION,
            pinned_by: if found > LAYOUT_VERSION {
                "a newer"
            } else {
                "an older"
            },
        }),
    }
}

/// A map of an older layout, pinned aside until its entries are carried
/// over: by this `up`, or by one a kill interrupted.
#[derive(Debug)]
pub(super) struct OldPin {
    pub(super) path: PathBuf,
    pub(super) map: String,
    pub(super) version: u32,
}

pub(super) fn old_pins(maps_dir: &Path) -> Result<Vec<OldPin>> {
    let pins = fs::read_dir(maps_dir).map_err(|e| Error::io("list", maps_dir.display(), e))?;
    Ok(pins
        .flatten()
        .filter_map(|pin| {
            let name = pin.file_name().to_string_lossy().into_owned();
            let (map, version) = layout::parse_old_pin_name(&name)?;
            Some(OldPin {
                map: map.to_string(),
                version,
                path: pin.path(),
            })
        })
        .collect())
}

/// Refuses maps pinned under `maps_dir` whose layout is not the one the
/// programs in [`OBJECT`] were built for: aya reuses a pin by name
/// without looking at it.
pub(super) fn check_pinned_layouts(maps_dir: &Path) -> Result<()> {
    let object = aya_obj::Object::parse(super::datapath::OBJECT)
        .map_err(|e| Error::ebpf("parse", "eBPF object", e))?;
    for (name, map) in &object.maps {
        let pin = maps_dir.join(name);
        if !pin.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&pin)
            .map_err(|e| Error::ebpf("read", pin.display(), e))?;
        let map_type =
            info.map_type()
                .map_err(|e| Error::ebpf("read the type of", pin.display(), e))? as u32;
        let found = MapLayout {
            map_type,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: Some(info.max_entries()),
            flags: info.map_flags() & !kernel_added_flags(map_type),
        };
        let want = MapLayout {
            map_type: map.map_type(),
            key_size: map.key_size(),
            value_size: map.value_size(),
            // The table's size is `up --ct-max`'s, kept while it is pinned.
            max_entries: (name != maps::CONNTRACK).then(|| map.max_entries()),
            flags: map.map_flags(),
        };
        if let Some(mismatch) = layout_mismatch(&want, &found) {
            return Err(Error::PinnedMapLayout {
                map: name.clone(),
                dir: maps_dir.to_path_buf(),
                mismatch,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_maps_are_read_only_to_programs_by_the_kernels_hand() {
        use aya_obj::generated::{BPF_F_RDONLY_PROG, bpf_map_type};
        assert_eq!(
            kernel_added_flags(bpf_map_type::BPF_MAP_TYPE_DEVMAP_HASH as u32),
            BPF_F_RDONLY_PROG
        );
        assert_eq!(
            kernel_added_flags(bpf_map_type::BPF_MAP_TYPE_HASH as u32),
            0
        );
    }

    #[test]
    fn pinned_maps_of_another_layout_are_told_apart() {
        let want = MapLayout {
            map_type: 1,
            key_size: 4,
            value_size: 16,
            max_entries: Some(4096),
            flags: 0,
        };
        assert_eq!(layout_mismatch(&want, &want), None);
        let older = MapLayout {
            value_size: 12,
            max_entries: Some(1024),
            ..want
        };
        assert_eq!(
            layout_mismatch(&want, &older).as_deref(),
            Some(
                "value size 12 where this netplane needs 16, \
                 capacity 1024 where this netplane needs 4096"
            )
        );
        // A table sized at `up` may have any capacity.
        let any_size = MapLayout {
            max_entries: None,
            ..want
        };
        assert_eq!(
            layout_mismatch(
                &any_size,
                &MapLayout {
                    max_entries: Some(7),
                    ..want
                }
            ),
            None
        );
    }
}
