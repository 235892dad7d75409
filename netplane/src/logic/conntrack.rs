//! Lifetimes of tracked flows: which entries the daemon's garbage collector
//! removes. The data path records flags and timestamps; deciding what has
//! expired is done here, as a pure function of them.

use netplane_common::abi::addr_from_be;
use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

pub use netplane_common::nat::other_direction;
use netplane_common::{
    abi::{CT_REPLY, CtEntry, CtTimeouts, FlowKey, proto},
    nat::{self, TcpState},
};

use crate::types::{FlowInfo, FlowTuple};

/// An address as flow tables hold it, of either family.
pub trait FlowAddr: nat::Addr + Eq + Hash + std::fmt::Debug + 'static {
    fn ip(&self) -> IpAddr;
}

impl FlowAddr for u32 {
    fn ip(&self) -> IpAddr {
        IpAddr::V4(addr_from_be(*self))
    }
}

impl FlowAddr for [u8; 16] {
    fn ip(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(*self))
    }
}

/// How long a flow lives after its last packet, by what was seen of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP until both directions have acknowledged: a SYN that was
    /// answered but never followed (one spoofed SYN) stays here.
    pub tcp_syn: Duration,
    /// TCP after the handshake, until FIN or RST.
    pub tcp_established: Duration,
    /// TCP after one direction's FIN.
    pub tcp_fin_wait: Duration,
    /// TCP after FIN from both directions, or RST.
    pub tcp_closing: Duration,
    /// UDP and protocols without ports.
    pub udp: Duration,
    /// ICMP echo.
    pub icmp: Duration,
}

impl Default for Timeouts {
    /// At or above the minimums of RFC 5382 (established 2 h 4 min, and 4
    /// min for a closing connection), RFC 4787 (UDP 2 min) and RFC 5508
    /// (ICMP query 60 s). Not yet established TCP keeps Linux's and
    /// Cilium's 60 s instead of RFC 5382's 4 min: spoofed SYNs to a
    /// published port live that long.
    fn default() -> Self {
        Timeouts {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(6 * 3600),
            tcp_fin_wait: Duration::from_secs(240),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(120),
            icmp: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    /// As the data path reads them from `NP_CT_TIMEOUTS`.
    pub fn to_abi(&self) -> CtTimeouts {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        CtTimeouts {
            tcp_syn_ns: ns(self.tcp_syn),
            tcp_established_ns: ns(self.tcp_established),
            tcp_fin_wait_ns: ns(self.tcp_fin_wait),
            tcp_closing_ns: ns(self.tcp_closing),
            udp_ns: ns(self.udp),
            icmp_ns: ns(self.icmp),
        }
    }
}

/// The lifetime of a flow given its two entries (`reply` may be missing),
/// by the rule the data path also follows when it reclaims flows.
pub fn lifetime<A>(
    proto: u8,
    forward: &CtEntry<A>,
    reply: Option<&CtEntry<A>>,
    t: &Timeouts,
) -> Duration {
    Duration::from_nanos(nat::lifetime_ns(
        proto,
        forward.flags,
        reply.map_or(0, |r| r.flags),
        &t.to_abi(),
    ))
}

/// A tracked flow: its forward entry, keyed by the first packet as it
/// arrived, and its reply entry, keyed by what replies arrive as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow<A = u32> {
    pub key: FlowKey<A>,
    pub entry: CtEntry<A>,
    pub reply_key: FlowKey<A>,
    /// Missing while the flow is being created.
    pub reply: Option<CtEntry<A>>,
}

/// The flows among the table's `entries`, one per forward entry.
pub fn flows<A: FlowAddr>(entries: &[(FlowKey<A>, CtEntry<A>)]) -> Vec<Flow<A>> {
    let by_key: HashMap<FlowKey<A>, &CtEntry<A>> = entries.iter().map(|(k, e)| (*k, e)).collect();
    entries
        .iter()
        .filter(|(_, e)| e.flags & CT_REPLY == 0)
        .map(|(key, entry)| {
            let reply_key = other_direction(key, entry);
            Flow {
                key: *key,
                entry: *entry,
                reply_key,
                reply: by_key.get(&reply_key).map(|r| **r),
            }
        })
        .collect()
}

/// What was seen of a flow, in the words of Linux's `conntrack -L`.
pub fn state<A>(proto: u8, forward: &CtEntry<A>, reply: Option<&CtEntry<A>>) -> &'static str {
    match proto {
        proto::TCP => match nat::tcp_state(forward.flags, reply.map_or(0, |r| r.flags)) {
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
        },
        _ if reply.is_some_and(|r| r.packets > 0) => "REPLIED",
        _ => "UNREPLIED",
    }
}

/// `flow` as `ct ls` shows it at `now_ns` (CLOCK_MONOTONIC).
pub fn describe<A: FlowAddr>(flow: &Flow<A>, now_ns: u64, t: &Timeouts) -> FlowInfo {
    let tuple = |key: &FlowKey<A>, entry: Option<&CtEntry<A>>| FlowTuple {
        src: key.saddr_be.ip(),
        dst: key.daddr_be.ip(),
        sport: u16::from_be(key.sport_be),
        dport: u16::from_be(key.dport_be),
        packets: entry.map_or(0, |e| e.packets),
        bytes: entry.map_or(0, |e| e.bytes),
    };
    let reply = flow.reply.as_ref();
    let last = flow
        .entry
        .last_seen_ns
        .max(reply.map_or(0, |r| r.last_seen_ns));
    let secs = |ns: u64| ns / 1_000_000_000;
    let idle = now_ns.saturating_sub(last);
    let life = lifetime(flow.key.proto, &flow.entry, reply, t);
    FlowInfo {
        proto: match flow.key.proto {
            proto::TCP => "tcp".into(),
            proto::UDP => "udp".into(),
            proto::ICMP => "icmp".into(),
            proto::ICMPV6 => "icmpv6".into(),
            other => other.to_string(),
        },
        state: state(flow.key.proto, &flow.entry, reply).into(),
        original: tuple(&flow.key, Some(&flow.entry)),
        reply: tuple(&flow.reply_key, reply),
        age_secs: secs(now_ns.saturating_sub(flow.entry.created_ns)),
        idle_secs: secs(idle),
        expires_secs: secs(
            u64::try_from(life.as_nanos())
                .unwrap_or(u64::MAX)
                .saturating_sub(idle),
        ),
        endpoint: None,
    }
}

/// Keys of the entries to delete at `now_ns` (CLOCK_MONOTONIC, as the data
/// path stamps), both directions of a flow together. A reply entry without
/// its forward entry (a creation in progress, or a forward entry lost) goes
/// only once its own lifetime has passed.
pub fn expired<A: FlowAddr>(
    flows: &[(FlowKey<A>, CtEntry<A>)],
    now_ns: u64,
    t: &Timeouts,
) -> Vec<FlowKey<A>> {
    let by_key: HashMap<FlowKey<A>, &CtEntry<A>> = flows.iter().map(|(k, e)| (*k, e)).collect();
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
        abi::{CT_SEEN_ACK, CT_SEEN_FIN, CT_SEEN_RST, CT_SEEN_SYN, CtEntry},
        nat::{FirstPacket, FlowPair, flow_entries},
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
        flow_entries(
            &original,
            &translated,
            0,
            last,
            FirstPacket::default(),
            &mut pair,
        );
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
        let life = |fwd, reply| {
            let f = tcp_flow(fwd, reply, 0);
            lifetime(proto::TCP, &f[0].1, Some(&f[1].1), &t)
        };
        // One spoofed SYN: the server answered, the "client" never did.
        assert_eq!(life(CT_SEEN_SYN, CT_SEEN_SYN | CT_SEEN_ACK), t.tcp_syn);
        // A lone ACK in the reply direction proves nothing either.
        assert_eq!(life(0, CT_SEEN_ACK), t.tcp_syn);
        assert_eq!(life(CT_SEEN_ACK, CT_SEEN_ACK | CT_SEEN_FIN), t.tcp_fin_wait);
        assert_eq!(life(CT_SEEN_ACK | CT_SEEN_FIN, CT_SEEN_ACK), t.tcp_fin_wait);
        assert_eq!(
            life(CT_SEEN_ACK | CT_SEEN_FIN, CT_SEEN_ACK | CT_SEEN_FIN),
            t.tcp_closing
        );
        assert_eq!(life(CT_SEEN_ACK | CT_SEEN_RST, CT_SEEN_ACK), t.tcp_closing);
    }

    #[test]
    fn default_lifetimes_meet_the_nat_rfcs() {
        let t = Timeouts::default();
        // RFC 5382 REQ-5: 2 h 4 min established, 4 min transitory.
        assert!(t.tcp_established >= Duration::from_secs(2 * 3600 + 4 * 60));
        assert!(t.tcp_fin_wait >= Duration::from_secs(4 * 60));
        // RFC 4787 REQ-5, RFC 5508 REQ-1.
        assert!(t.udp >= Duration::from_secs(120));
        assert!(t.icmp >= Duration::from_secs(60));
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

    #[test]
    fn a_flow_shows_both_directions_with_their_counters_and_times() {
        let t = Timeouts::default();
        let mut entries = tcp_flow(
            CT_SEEN_SYN | CT_SEEN_ACK,
            CT_SEEN_SYN | CT_SEEN_ACK,
            10 * SEC,
        );
        entries[0].1.packets = 5;
        entries[0].1.bytes = 400;
        entries[1].1.packets = 4;
        entries[1].1.bytes = 300;
        entries[1].1.last_seen_ns = 20 * SEC;
        let listed = flows(&entries);
        assert_eq!(listed.len(), 1, "one flow for its two entries");
        let info = describe(&listed[0], 25 * SEC, &t);
        assert_eq!(
            (info.proto.as_str(), info.state.as_str()),
            ("tcp", "ESTABLISHED")
        );
        let o = &info.original;
        assert_eq!(
            (o.src.to_string(), o.sport, o.dst.to_string(), o.dport),
            ("172.17.0.2".into(), 40000, "198.18.0.1".into(), 80)
        );
        assert_eq!((o.packets, o.bytes), (5, 400));
        // Replies come from the server to the translated source.
        let r = &info.reply;
        assert_eq!(
            (r.src.to_string(), r.sport, r.dst.to_string(), r.dport),
            ("198.18.0.1".into(), 80, "198.18.0.2".into(), 40000)
        );
        assert_eq!((r.packets, r.bytes), (4, 300));
        assert_eq!((info.age_secs, info.idle_secs), (15, 5));
        assert_eq!(info.expires_secs, 6 * 3600 - 5);
    }

    #[test]
    fn states_follow_what_was_seen() {
        let flow = |fwd, reply| tcp_flow(fwd, reply, 0);
        let state_of = |entries: Vec<(FlowKey, CtEntry)>| {
            state(proto::TCP, &entries[0].1, Some(&entries[1].1))
        };
        assert_eq!(state_of(flow(CT_SEEN_SYN, 0)), "SYN_SENT");
        assert_eq!(state_of(flow(CT_SEEN_SYN, CT_SEEN_SYN)), "SYN_RECV");
        assert_eq!(
            state_of(flow(CT_SEEN_SYN, CT_SEEN_SYN | CT_SEEN_ACK)),
            "SYN_RECV",
            "answered, not yet acknowledged by the originator"
        );
        assert_eq!(
            state_of(flow(CT_SEEN_SYN | CT_SEEN_ACK, CT_SEEN_SYN | CT_SEEN_ACK)),
            "ESTABLISHED"
        );
        assert_eq!(state_of(flow(CT_SEEN_FIN, CT_SEEN_ACK)), "FIN_WAIT");
        assert_eq!(
            state_of(flow(CT_SEEN_FIN | CT_SEEN_ACK, CT_SEEN_FIN | CT_SEEN_ACK)),
            "TIME_WAIT"
        );
        assert_eq!(state_of(flow(0, CT_SEEN_RST)), "CLOSE");
        let mut udp = flow(0, 0);
        assert_eq!(state(proto::UDP, &udp[0].1, Some(&udp[1].1)), "UNREPLIED");
        udp[1].1.packets = 1;
        assert_eq!(state(proto::UDP, &udp[0].1, Some(&udp[1].1)), "REPLIED");
        assert_eq!(state(proto::UDP, &udp[0].1, None), "UNREPLIED");
    }
}
