//! Lifetimes of tracked flows: which entries the daemon's garbage collector
//! removes. The data path records flags and timestamps; deciding what has
//! expired is done here, as a pure function of them.

use std::{collections::HashMap, time::Duration};

use netplane_common::abi::{
    CT_REPLY, CT_SEEN_ACK, CT_SEEN_FIN, CT_SEEN_RST, CtEntry, FlowKey, proto,
};

/// How long a flow lives after its last packet, by what was seen of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP before the handshake completes.
    pub tcp_syn: Duration,
    /// TCP after it, until FIN or RST.
    pub tcp_established: Duration,
    /// TCP after FIN or RST.
    pub tcp_closing: Duration,
    /// UDP and protocols without ports.
    pub udp: Duration,
    /// ICMP echo.
    pub icmp: Duration,
}

impl Default for Timeouts {
    /// Close to Linux conntrack's and Cilium's defaults.
    fn default() -> Self {
        Timeouts {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(6 * 3600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(60),
            icmp: Duration::from_secs(30),
        }
    }
}

/// The key of the other direction of the flow `key` (with entry `entry`)
/// belongs to: entries are written in pairs, each one's translation being
/// the reverse of the other's key.
pub fn other_direction(key: &FlowKey, entry: &CtEntry) -> FlowKey {
    FlowKey {
        saddr_be: entry.saddr_be,
        daddr_be: entry.daddr_be,
        sport_be: entry.sport_be,
        dport_be: entry.dport_be,
        proto: key.proto,
        _pad: [0; 3],
    }
    .reversed()
}

/// The lifetime of a flow given its two entries (`reply` may be missing).
pub fn lifetime(proto: u8, forward: &CtEntry, reply: Option<&CtEntry>, t: &Timeouts) -> Duration {
    let seen = forward.flags | reply.map_or(0, |r| r.flags);
    match proto {
        proto::TCP if seen & (CT_SEEN_FIN | CT_SEEN_RST) != 0 => t.tcp_closing,
        // The reply direction acknowledged: the handshake got through.
        proto::TCP if reply.is_some_and(|r| r.flags & CT_SEEN_ACK != 0) => t.tcp_established,
        proto::TCP => t.tcp_syn,
        proto::ICMP => t.icmp,
        _ => t.udp,
    }
}

/// Keys of the entries to delete at `now_ns` (CLOCK_MONOTONIC, as the data
/// path stamps), both directions of a flow together. A reply entry without
/// its forward entry (a creation in progress, or a forward entry lost) goes
/// only once its own lifetime has passed.
pub fn expired(flows: &[(FlowKey, CtEntry)], now_ns: u64, t: &Timeouts) -> Vec<FlowKey> {
    let by_key: HashMap<FlowKey, &CtEntry> = flows.iter().map(|(k, e)| (*k, e)).collect();
    let old = |last: u64, life: Duration| {
        now_ns.saturating_sub(last) > u64::try_from(life.as_nanos()).unwrap_or(u64::MAX)
    };
    let mut doomed = Vec::new();
    for (key, entry) in flows {
        let other_key = other_direction(key, entry);
        let other = by_key.get(&other_key).copied();
        if entry.flags & CT_REPLY != 0 {
            if other.is_none() && old(entry.last_seen_ns, lifetime(key.proto, entry, None, t)) {
                doomed.push(*key);
            }
            continue;
        }
        let last = entry.last_seen_ns.max(other.map_or(0, |o| o.last_seen_ns));
        if old(last, lifetime(key.proto, entry, other, t)) {
            doomed.push(*key);
            if other.is_some() {
                doomed.push(other_key);
            }
        }
    }
    doomed
}

#[cfg(test)]
mod tests {
    use netplane_common::{
        abi::{CT_SEEN_SYN, CtEntry},
        nat::{FlowPair, flow_entries},
    };

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn tcp_flow(fwd_flags: u32, reply_flags: u32, last: u64) -> Vec<(FlowKey, CtEntry)> {
        let original = FlowKey {
            saddr_be: 0x0200_11ac,
            daddr_be: 0x0100_12c6,
            sport_be: 40000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: proto::TCP,
            _pad: [0; 3],
        };
        let translated = FlowKey {
            saddr_be: 0x0200_12c6,
            ..original
        };
        let mut pair = FlowPair::default();
        flow_entries(&original, &translated, 0, last, &mut pair);
        pair.fwd.flags |= fwd_flags;
        pair.reply.flags |= reply_flags;
        vec![(pair.fwd_key, pair.fwd), (pair.reply_key, pair.reply)]
    }

    #[test]
    fn each_entry_names_the_other() {
        let flows = tcp_flow(0, 0, 0);
        assert_eq!(other_direction(&flows[0].0, &flows[0].1), flows[1].0);
        assert_eq!(other_direction(&flows[1].0, &flows[1].1), flows[0].0);
    }

    #[test]
    fn tcp_lifetimes_follow_the_handshake_and_the_close() {
        let t = Timeouts::default();
        let syn = tcp_flow(CT_SEEN_SYN, 0, 0);
        assert_eq!(
            lifetime(proto::TCP, &syn[0].1, Some(&syn[1].1), &t),
            t.tcp_syn
        );
        let est = tcp_flow(CT_SEEN_SYN | CT_SEEN_ACK, CT_SEEN_SYN | CT_SEEN_ACK, 0);
        assert_eq!(
            lifetime(proto::TCP, &est[0].1, Some(&est[1].1), &t),
            t.tcp_established
        );
        let fin = tcp_flow(CT_SEEN_ACK, CT_SEEN_ACK | CT_SEEN_FIN, 0);
        assert_eq!(
            lifetime(proto::TCP, &fin[0].1, Some(&fin[1].1), &t),
            t.tcp_closing
        );
    }

    #[test]
    fn expired_flows_go_in_pairs_and_live_ones_stay() {
        let t = Timeouts::default();
        let flows = tcp_flow(CT_SEEN_SYN, 0, 100 * SEC);
        assert!(expired(&flows, 150 * SEC, &t).is_empty());
        let gone = expired(&flows, 161 * SEC, &t);
        assert_eq!(gone.len(), 2);
        assert!(gone.contains(&flows[0].0) && gone.contains(&flows[1].0));
    }

    #[test]
    fn a_recent_reply_keeps_the_flow() {
        let t = Timeouts::default();
        let mut flows = tcp_flow(CT_SEEN_ACK, CT_SEEN_ACK, 0);
        flows[1].1.last_seen_ns = 7 * 3600 * SEC;
        assert!(expired(&flows, 7 * 3600 * SEC + 1, &t).is_empty());
    }

    #[test]
    fn lone_reply_entries_wait_out_their_lifetime() {
        let t = Timeouts::default();
        let flows = tcp_flow(0, 0, 10 * SEC);
        let lone = &flows[1..];
        assert!(
            expired(lone, 11 * SEC, &t).is_empty(),
            "creation may be in progress"
        );
        assert_eq!(expired(lone, 100 * SEC, &t), vec![lone[0].0]);
    }
}
