//! `netplane monitor`: data path events decoded for people. Pure: the
//! daemon reads the ring buffer ([`crate::api::server`]) and names interfaces.

use std::net::IpAddr;

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use netplane_common::abi::{
    DropReason, EVENT_DROP, EVENT_NEW_FLOW, EVENT_NEW_FLOW6, Event, FlowKey, FlowKey6, proto,
};

use super::conntrack::FlowAddr;
use serde::{Deserialize, Serialize};

/// One data path event, as the monitor stream carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MonitorEvent {
    /// `drop` or `flow` (a new flow and its translation).
    pub kind: String,
    /// Why a packet was dropped.
    pub reason: Option<String>,
    /// The interface the packet arrived on.
    pub interface: String,
    /// The endpoint behind that interface, or whose flow it is.
    pub endpoint: Option<String>,
    /// The packet's length, Ethernet header included.
    pub len: u32,
    /// What the packet was, in tcpdump's manner; for a flow, also what it
    /// was translated to.
    pub summary: String,
}

/// One line of `GET /v1/monitor`'s stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "Type",
    rename_all = "snake_case",
    rename_all_fields = "PascalCase"
)]
pub enum MonitorRecord {
    /// Events are being emitted: what happens from now on shows.
    Started,
    Event(MonitorEvent),
    /// Events that were lost: the ring buffer was full, or this reader
    /// fell behind.
    Lost {
        events: u64,
    },
}

/// `GET /v1/monitor`: which events to stream.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MonitorFilter {
    /// Drops only.
    #[serde(default)]
    pub drops: bool,
    /// Only the events of this endpoint.
    pub endpoint: Option<String>,
}

impl MonitorFilter {
    /// Whether `e` passes.
    pub fn admits(&self, e: &MonitorEvent) -> bool {
        (!self.drops || e.kind == "drop")
            && self
                .endpoint
                .as_ref()
                .is_none_or(|name| e.endpoint.as_ref() == Some(name))
    }
}

/// `event`, which arrived on `interface`, and the addresses it is about,
/// which may name its endpoint later: a flow's, before and after
/// translation, or a dropped packet's.
pub fn decode(event: &Event, interface: String) -> (MonitorEvent, Vec<IpAddr>) {
    let (kind, reason, summary, addresses) = match event.kind {
        EVENT_DROP => {
            let captured = (event.captured as usize).min(event.header.len());
            let (summary, addresses) = summarize(&event.header[..captured]);
            let reason = DropReason::ALL
                .iter()
                .find(|r| **r as u32 == event.reason)
                .map_or_else(
                    || format!("reason {}", event.reason),
                    |r| r.name().to_string(),
                );
            ("drop", Some(reason), summary, addresses)
        }
        EVENT_NEW_FLOW => {
            let (summary, addresses) = new_flow(&event.original, &event.translated);
            ("flow", None, summary, addresses)
        }
        EVENT_NEW_FLOW6 => {
            let size = size_of::<FlowKey6>();
            let key = |at: usize| flow_key6(&event.header[at..at + size]);
            let (summary, addresses) = new_flow(&key(0), &key(size));
            ("flow", None, summary, addresses)
        }
        other => ("unknown", None, format!("event kind {other}"), Vec::new()),
    };
    let event = MonitorEvent {
        kind: kind.to_string(),
        reason,
        interface,
        endpoint: None,
        len: event.len,
        summary,
    };
    (event, addresses)
}

/// The [`FlowKey6`] in `b`, as the programs lay it out (`#[repr(C)]`:
/// two addresses, the ports as in packets, the protocol).
fn flow_key6(b: &[u8]) -> FlowKey6 {
    let addr = |at: usize| -> [u8; 16] { b[at..at + 16].try_into().expect("16 bytes") };
    FlowKey6 {
        saddr_be: addr(0),
        daddr_be: addr(16),
        sport_be: u16::from_ne_bytes([b[32], b[33]]),
        dport_be: u16::from_ne_bytes([b[34], b[35]]),
        proto: b[36],
        _pad: [0; 3],
    }
}

/// A new flow's summary and addresses: its first packet's, as it
/// arrived and as it left.
fn new_flow<A: FlowAddr>(o: &FlowKey<A>, t: &FlowKey<A>) -> (String, Vec<IpAddr>) {
    let summary = format!("{} as {}", flow_tuple(o), flow_tuple(t));
    let addresses = vec![o.saddr_be.ip(), t.daddr_be.ip(), o.daddr_be.ip()];
    (summary, addresses)
}

fn flow_tuple<A: FlowAddr>(k: &FlowKey<A>) -> String {
    let name = match k.proto {
        proto::TCP => "tcp".to_string(),
        proto::UDP => "udp".to_string(),
        proto::ICMP => "icmp".to_string(),
        proto::ICMPV6 => "icmp6".to_string(),
        other => format!("proto {other}"),
    };
    format!(
        "{name} {}.{} > {}.{}",
        k.saddr_be.ip(),
        u16::from_be(k.sport_be),
        k.daddr_be.ip(),
        u16::from_be(k.dport_be)
    )
}

/// The first bytes of a frame, as tcpdump would print them, and its IP
/// addresses.
fn summarize(frame: &[u8]) -> (String, Vec<IpAddr>) {
    let Ok(packet) = LaxSlicedPacket::from_ethernet(frame) else {
        return (
            format!("{} bytes: truncated Ethernet header", frame.len()),
            Vec::new(),
        );
    };
    let (family, src, dst, fragment, protocol): (&str, IpAddr, IpAddr, bool, u8) = match &packet.net
    {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let h = ip.header();
            let fragmenting = h.is_fragmenting_payload();
            let p = h.protocol().0;
            (
                "IP",
                h.source_addr().into(),
                h.destination_addr().into(),
                fragmenting,
                p,
            )
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let h = ip.header();
            let fragmenting = ip.is_payload_fragmented();
            let p = ip.payload().ip_number.0;
            (
                "IP6",
                h.source_addr().into(),
                h.destination_addr().into(),
                fragmenting,
                p,
            )
        }
        Some(LaxNetSlice::Arp(_)) => return ("ARP".into(), Vec::new()),
        None => {
            let ether_type = packet
                .link
                .as_ref()
                .and_then(|l| l.to_header())
                .map(|h| match h {
                    etherparse::LinkHeader::Ethernet2(e) => e.ether_type.0,
                    etherparse::LinkHeader::LinuxSll(s) => s.protocol_type.into(),
                });
            let summary = match ether_type {
                Some(t) => format!("ethertype 0x{t:04x}, truncated or not IP"),
                None => "no link header".into(),
            };
            return (summary, Vec::new());
        }
    };
    let fragment = if fragment { ", fragment" } else { "" };
    let summary = match &packet.transport {
        Some(TransportSlice::Tcp(t)) => {
            let flags: String = [
                (t.syn(), 'S'),
                (t.fin(), 'F'),
                (t.rst(), 'R'),
                (t.psh(), 'P'),
                (t.ack(), '.'),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, c)| *c)
            .collect();
            format!(
                "{family} {src}.{} > {dst}.{}: Flags [{flags}]{fragment}",
                t.source_port(),
                t.destination_port()
            )
        }
        Some(TransportSlice::Udp(u)) => format!(
            "{family} {src}.{} > {dst}.{}: UDP{fragment}",
            u.source_port(),
            u.destination_port()
        ),
        Some(TransportSlice::Icmpv4(i)) => {
            format!("IP {src} > {dst}: ICMP type {}{fragment}", i.type_u8())
        }
        Some(TransportSlice::Icmpv6(i)) => {
            format!("IP6 {src} > {dst}: ICMP6 type {}{fragment}", i.type_u8())
        }
        _ => format!("{family} {src} > {dst}: proto {protocol}{fragment}"),
    };
    (summary, vec![src, dst])
}

/// A monitor line: the event, its reason and endpoint.
pub fn line(e: &MonitorEvent) -> String {
    let what = match &e.reason {
        Some(reason) => format!("{} {reason}", e.kind),
        None => e.kind.clone(),
    };
    format!(
        "{what:<28} {:<10} endpoint={} {} length {}",
        e.interface,
        e.endpoint.as_deref().unwrap_or("-"),
        e.summary,
        e.len
    )
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;
    use netplane_common::abi::EVENT_HEADER_BYTES;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn event(kind: u32, reason: u32, frame: &[u8]) -> Event {
        let mut header = [0u8; EVENT_HEADER_BYTES];
        let captured = frame.len().min(EVENT_HEADER_BYTES);
        header[..captured].copy_from_slice(&frame[..captured]);
        Event {
            kind,
            reason,
            ifindex: 7,
            len: frame.len() as u32,
            captured: captured as u32,
            _pad: 0,
            original: FlowKey::default(),
            translated: FlowKey::default(),
            header,
        }
    }

    #[test]
    fn a_dropped_syn_reads_like_tcpdump_with_its_reason() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 99, 0, 5], [198, 18, 0, 1], 64)
            .tcp(40000, 80, 1, 1024)
            .syn()
            .write(&mut frame, &[])
            .unwrap();
        let (e, addresses) = decode(
            &event(EVENT_DROP, DropReason::Spoofed as u32, &frame),
            "npv1".into(),
        );
        assert_eq!(e.kind, "drop");
        assert_eq!(e.reason.as_deref(), Some("spoofed"));
        assert_eq!(e.summary, "IP 10.99.0.5.40000 > 198.18.0.1.80: Flags [S]");
        assert_eq!(e.len, 54);
        assert_eq!(addresses, [ip("10.99.0.5"), ip("198.18.0.1")]);
    }

    #[test]
    fn a_truncated_frame_still_says_what_it_can() {
        let (e, addresses) = decode(
            &event(EVENT_DROP, DropReason::Truncated as u32, &[1, 2, 3]),
            "x".into(),
        );
        assert_eq!(e.summary, "3 bytes: truncated Ethernet header");
        assert!(addresses.is_empty());
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 88, 0, 2], [198, 18, 0, 1], 64)
            .udp(5000, 53)
            .write(&mut frame, &[0; 400])
            .unwrap();
        // Only the first bytes travel; the headers are in them.
        let (e, _) = decode(
            &event(EVENT_DROP, DropReason::IccDenied as u32, &frame),
            "x".into(),
        );
        assert_eq!(e.summary, "IP 10.88.0.2.5000 > 198.18.0.1.53: UDP");
        assert_eq!(e.len as usize, frame.len());
    }

    #[test]
    fn a_new_flow_shows_its_translation() {
        let key = |s: [u8; 4], sp: u16, d: [u8; 4], dp: u16| FlowKey {
            saddr_be: u32::from_ne_bytes(s),
            daddr_be: u32::from_ne_bytes(d),
            sport_be: sp.to_be(),
            dport_be: dp.to_be(),
            proto: proto::TCP,
            _pad: [0; 3],
        };
        let mut ev = event(EVENT_NEW_FLOW, 0, &[]);
        ev.original = key([198, 18, 0, 1], 40000, [198, 18, 0, 2], 8080);
        ev.translated = key([198, 18, 0, 1], 40000, [10, 88, 0, 2], 80);
        let (e, addresses) = decode(&ev, "pru".into());
        assert_eq!(
            e.summary,
            "tcp 198.18.0.1.40000 > 198.18.0.2.8080 as tcp 198.18.0.1.40000 > 10.88.0.2.80"
        );
        assert_eq!(
            addresses,
            [ip("198.18.0.1"), ip("10.88.0.2"), ip("198.18.0.2")]
        );
    }

    #[test]
    fn an_ipv6_flow_and_drop_read_the_same_way() {
        let key = |s: &str, sp: u16, d: &str, dp: u16| {
            let v6 = |a: &str| a.parse::<std::net::Ipv6Addr>().unwrap().octets();
            FlowKey6 {
                saddr_be: v6(s),
                daddr_be: v6(d),
                sport_be: sp.to_be(),
                dport_be: dp.to_be(),
                proto: proto::TCP,
                _pad: [0; 3],
            }
        };
        // As the programs write them: the two keys in the header bytes.
        let as_bytes = |k: &FlowKey6| {
            let mut b = Vec::new();
            b.extend_from_slice(&k.saddr_be);
            b.extend_from_slice(&k.daddr_be);
            b.extend_from_slice(&k.sport_be.to_ne_bytes());
            b.extend_from_slice(&k.dport_be.to_ne_bytes());
            b.extend_from_slice(&[k.proto, 0, 0, 0]);
            b
        };
        let original = key("2001:db8::1", 40000, "2001:db8::2", 8080);
        let translated = key("2001:db8::1", 40000, "fd00::2", 80);
        let mut ev = event(EVENT_NEW_FLOW6, 0, &[]);
        let bytes = [as_bytes(&original), as_bytes(&translated)].concat();
        ev.header[..bytes.len()].copy_from_slice(&bytes);
        let (e, addresses) = decode(&ev, "pru".into());
        assert_eq!(e.kind, "flow");
        assert_eq!(
            e.summary,
            "tcp 2001:db8::1.40000 > 2001:db8::2.8080 as tcp 2001:db8::1.40000 > fd00::2.80"
        );
        assert_eq!(
            addresses,
            [ip("2001:db8::1"), ip("fd00::2"), ip("2001:db8::2")]
        );

        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv6(ip6("fd00::5"), ip6("2001:db8::1"), 64)
            .udp(5000, 53)
            .write(&mut frame, &[1, 2])
            .unwrap();
        let (e, addresses) = decode(
            &event(EVENT_DROP, DropReason::Spoofed as u32, &frame),
            "x".into(),
        );
        assert_eq!(e.summary, "IP6 fd00::5.5000 > 2001:db8::1.53: UDP");
        assert_eq!(addresses, [ip("fd00::5"), ip("2001:db8::1")]);
    }

    fn ip6(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn the_filter_keeps_drops_and_one_endpoint() {
        let e = |kind: &str, endpoint: Option<&str>| MonitorEvent {
            kind: kind.into(),
            reason: None,
            interface: "x".into(),
            endpoint: endpoint.map(str::to_string),
            len: 0,
            summary: String::new(),
        };
        let drops = MonitorFilter {
            drops: true,
            endpoint: Some("web".into()),
        };
        assert!(drops.admits(&e("drop", Some("web"))));
        assert!(!drops.admits(&e("flow", Some("web"))));
        assert!(!drops.admits(&e("drop", Some("db"))));
        assert!(MonitorFilter::default().admits(&e("flow", None)));
    }
}
