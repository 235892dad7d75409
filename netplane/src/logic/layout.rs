//! Versions of the pinned maps' layout, and how the entries of an older
//! one carry over to this one. Pure: the kernel side is in
//! [`crate::kernel::datapath`].

use netplane_common::abi::{CtEntry, LAYOUT_VERSION, maps};

/// What `up` does with maps pinned by an earlier run, given the layout
/// version they carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Their layout is this netplane's: use them as they are.
    Reuse,
    /// Their layout is older: these maps are made anew and the old
    /// entries converted into them; the others are reused.
    Migrate {
        /// The version they carry.
        from: u32,
        /// The maps whose entries changed shape since.
        maps: &'static [&'static str],
    },
    /// No way from their layout to this one.
    Refuse,
}

/// The plan for maps pinned with layout version `found`.
pub fn plan(found: u32) -> Plan {
    match found {
        LAYOUT_VERSION => Plan::Reuse,
        1 => Plan::Migrate {
            from: 1,
            maps: &[maps::CONNTRACK],
        },
        _ => Plan::Refuse,
    }
}

/// The pin name an old map is kept under while its entries are carried
/// over: bpffs names take no dots.
pub fn old_pin_name(map: &str, from: u32) -> String {
    format!("{map}@v{from}")
}

/// The map and version of a pin named by [`old_pin_name`].
pub fn parse_old_pin_name(pin: &str) -> Option<(&str, u32)> {
    let (map, version) = pin.rsplit_once("@v")?;
    Some((map, version.parse().ok()?))
}

/// [`CtEntry`] as layout version 1 had it: no creation time, no counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntryV1 {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub slot: u32,
    pub flags: u32,
    pub _pad: u32,
    pub last_seen_ns: u64,
}

/// A version 1 entry in today's shape. When the flow began is not known:
/// its last packet is the best guess; counting starts now.
pub fn ct_entry_from_v1(old: &CtEntryV1) -> CtEntry {
    CtEntry {
        saddr_be: old.saddr_be,
        daddr_be: old.daddr_be,
        sport_be: old.sport_be,
        dport_be: old.dport_be,
        slot: old.slot,
        flags: old.flags,
        _pad: 0,
        last_seen_ns: old.last_seen_ns,
        created_ns: old.last_seen_ns,
        packets: 0,
        bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_version_is_reused_version_1_migrated_and_any_other_refused() {
        assert_eq!(plan(LAYOUT_VERSION), Plan::Reuse);
        assert_eq!(
            plan(1),
            Plan::Migrate {
                from: 1,
                maps: &[maps::CONNTRACK]
            }
        );
        assert_eq!(plan(LAYOUT_VERSION + 1), Plan::Refuse);
        assert_eq!(plan(0), Plan::Refuse);
    }

    #[test]
    fn old_pins_are_named_apart_and_read_back() {
        let name = old_pin_name(maps::CONNTRACK, 1);
        assert!(!name.contains('.'));
        assert_eq!(parse_old_pin_name(&name), Some((maps::CONNTRACK, 1)));
        assert_eq!(parse_old_pin_name(maps::CONNTRACK), None);
        assert_eq!(parse_old_pin_name("eth0@ingress"), None);
    }

    #[test]
    fn a_version_1_entry_keeps_its_translation_and_state() {
        let old = CtEntryV1 {
            saddr_be: 0x0a58_0002,
            daddr_be: 0xc612_0001,
            sport_be: 4000,
            dport_be: 80,
            slot: 3,
            flags: 0b110,
            _pad: 0,
            last_seen_ns: 12_345,
        };
        let new = ct_entry_from_v1(&old);
        assert_eq!(
            (new.saddr_be, new.daddr_be, new.sport_be, new.dport_be),
            (old.saddr_be, old.daddr_be, old.sport_be, old.dport_be)
        );
        assert_eq!((new.slot, new.flags), (3, 0b110));
        assert_eq!((new.last_seen_ns, new.created_ns), (12_345, 12_345));
        assert_eq!((new.packets, new.bytes), (0, 0));
        assert_eq!(size_of::<CtEntryV1>(), 32);
    }
}
