//! Packet arithmetic of translation: incremental Internet checksums and the
//! pair of connection tracking entries that describes a translated flow.
//!
//! Checksum functions take 16- and 32-bit words exactly as they sit in the
//! packet (loaded with native byte order from network-ordered bytes): the
//! ones' complement sum is byte-order independent as long as every word is
//! read the same way.

use crate::abi::{
    CT_REPLY, CT_SEEN_ACK, CT_SEEN_FIN, CT_SEEN_RST, CT_SEEN_SYN, CtEntry, CtTimeouts, FlowKey,
    proto,
};

/// Folds a 32-bit ones' complement accumulator into 16 bits.
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum field after one 16-bit word it covers changed from `old` to
/// `new` (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u32 + !old as u32 + new as u32)
}

/// As [`replace16`] for a 32-bit word (an address).
pub const fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let check = replace16(check, old as u16, new as u16);
    replace16(check, (old >> 16) as u16, (new >> 16) as u16)
}

/// As [`replace32`] for a UDP checksum, where 0 means "no checksum" and a
/// computed 0 is sent as 0xffff (RFC 768).
pub const fn replace32_udp(check: u16, old: u32, new: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace32(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// As [`replace16`] for a UDP checksum; see [`replace32_udp`].
pub const fn replace16_udp(check: u16, old: u16, new: u16) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace16(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// The 32-bit ones' complement accumulator (the kernel's `__wsum`) that
/// turns a checksum over `old` into one over `new`: ~old + new, for
/// `bpf_l4_csum_replace`'s diff mode (no field size), which applies it the
/// right way for both complete checksums and ones left to offload.
pub const fn diff32(old: u32, new: u32) -> u32 {
    add32(!old, new)
}

/// As [`diff32`] for a 16-bit word.
pub const fn diff16(old: u16, new: u16) -> u32 {
    add32(!old as u32 & 0xffff, new as u32)
}

/// Ones' complement addition of two accumulators.
pub const fn add32(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    sum.wrapping_add(carry as u32)
}

/// A checksum field after applying a [`diff32`]-style accumulator, as the
/// kernel does for a complete checksum.
pub const fn apply_diff(check: u16, diff: u32) -> u16 {
    let sum = add32(diff, !check as u32 & 0xffff);
    !fold(sum)
}

/// As [`apply_diff`] for a UDP checksum: 0 ("no checksum") stays 0, and
/// a computed 0 is sent as 0xffff (RFC 768). The XDP path updates
/// checksums itself, without the kernel's helper that knows this.
pub const fn apply_diff_udp(check: u16, diff: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    match apply_diff(check, diff) {
        0 => 0xffff,
        c => c,
    }
}

/// An address of either family as keys and entries hold it.
pub trait Addr: Copy + PartialEq {
    /// The [`diff32`]-style accumulator for this address changing from
    /// `old` to `new`, as a pseudo-header covers it.
    fn csum_diff(old: &Self, new: &Self) -> u32;
}

impl Addr for u32 {
    #[inline(always)]
    fn csum_diff(old: &u32, new: &u32) -> u32 {
        diff32(*old, *new)
    }
}

impl Addr for [u8; 16] {
    #[inline(always)]
    fn csum_diff(old: &[u8; 16], new: &[u8; 16]) -> u32 {
        let word =
            |a: &[u8; 16], i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        let mut sum = 0;
        let mut i = 0;
        while i < 16 {
            sum = add32(sum, diff32(word(old, i), word(new, i)));
            i += 4;
        }
        sum
    }
}

impl<A: Copy> FlowKey<A> {
    /// The same flow seen from the other end: what its replies look like.
    pub const fn reversed(&self) -> FlowKey<A> {
        FlowKey {
            saddr_be: self.daddr_be,
            daddr_be: self.saddr_be,
            sport_be: self.dport_be,
            dport_be: self.sport_be,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// The two entries of a flow, as written to [`crate::abi::maps::CONNTRACK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowPair<A = u32> {
    /// Key of the originator's direction: its packets as they arrive.
    pub fwd_key: FlowKey<A>,
    /// How they leave.
    pub fwd: CtEntry<A>,
    /// Key of the reply direction: replies to the translated packet.
    pub reply_key: FlowKey<A>,
    /// How replies leave: back to the originator's own addresses.
    pub reply: CtEntry<A>,
}

/// What the entries of a new flow record of the packet that opened it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirstPacket {
    /// Its length, counted in the forward direction.
    pub len: u32,
    /// `CT_SEEN_*` bits of its TCP flags; 0 for other protocols.
    pub seen: u32,
}

/// Fills `out` with the entries of a flow whose first packet `original`
/// leaves the data path as `translated`, at time `now_ns`, counted in NAT
/// rule `slot`. (An out-parameter, so the eBPF side can build it in a map
/// value instead of its small stack.)
///
/// The reply entry is keyed by the reply to the translated packet and turns
/// it back into the reply the originator expects. Its key doubles as the
/// reservation of the translated source port: two flows can never share it.
pub fn flow_entries<A: Copy>(
    original: &FlowKey<A>,
    translated: &FlowKey<A>,
    slot: u32,
    now_ns: u64,
    first: FirstPacket,
    out: &mut FlowPair<A>,
) {
    let entry = |to: &FlowKey<A>, flags: u32, packets: u64, bytes: u64| CtEntry {
        saddr_be: to.saddr_be,
        daddr_be: to.daddr_be,
        sport_be: to.sport_be,
        dport_be: to.dport_be,
        slot,
        flags,
        _pad: 0,
        last_seen_ns: now_ns,
        created_ns: now_ns,
        packets,
        bytes,
    };
    out.fwd_key = *original;
    // The forward direction has seen the packet that created the flow.
    out.fwd = entry(translated, first.seen, 1, u64::from(first.len));
    out.reply_key = translated.reversed();
    out.reply = entry(&original.reversed(), CT_REPLY, 0, 0);
}

/// TCP header flags (the byte at offset 13).
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Whether a TCP packet with flags byte `tcp_flags` may open a flow: a
/// SYN alone (ECN and PSH bits aside). Anything else belongs to a flow
/// already tracked; opening flows for stray ACKs and RSTs from outside
/// would let anyone fill the table with them.
pub const fn tcp_opens_flow(tcp_flags: u8) -> bool {
    tcp_flags & (tcp::FIN | tcp::SYN | tcp::RST | tcp::ACK) == tcp::SYN
}

/// The flags a direction's entry holds after a TCP packet with flags byte
/// `tcp_flags` went its way, when they change (`None` otherwise, so the
/// hot path writes nothing). A SYN opening a flow in the original
/// direction of one that saw FIN or RST is a new connection reusing the
/// tuple: the entry starts again from that SYN, and the caller resets the
/// reply entry with [`reopened_reply_flags`].
pub const fn tcp_entry_flags(entry_flags: u32, tcp_flags: u8) -> Option<u32> {
    let seen = tcp_seen_flags(tcp_flags);
    if entry_flags & CT_REPLY == 0
        && entry_flags & (CT_SEEN_FIN | CT_SEEN_RST) != 0
        && tcp_opens_flow(tcp_flags)
    {
        return Some(seen);
    }
    if entry_flags & seen == seen {
        None
    } else {
        Some(entry_flags | seen)
    }
}

/// The reply entry's flags once its flow was reopened by a SYN: nothing
/// seen yet.
pub const fn reopened_reply_flags() -> u32 {
    CT_REPLY
}

/// The key of the other direction of the flow whose entry `entry` is keyed
/// by `key`: entries are written in pairs, each one's translation being
/// the reverse of the other's key.
pub const fn other_direction<A: Copy>(key: &FlowKey<A>, entry: &CtEntry<A>) -> FlowKey<A> {
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

/// Where a TCP flow is, from the `CT_SEEN_*` flags of its two entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    SynSent,
    SynRecv,
    Established,
    /// One direction sent FIN.
    FinWait,
    /// Both did: what is left is the last ACK and stray retransmissions.
    TimeWait,
    /// RST.
    Close,
}

/// The state of a TCP flow whose forward entry saw `fwd` and reply entry
/// `reply` (0 while it has none).
pub const fn tcp_state(fwd: u32, reply: u32) -> TcpState {
    if (fwd | reply) & CT_SEEN_RST != 0 {
        TcpState::Close
    } else if fwd & reply & CT_SEEN_FIN != 0 {
        TcpState::TimeWait
    } else if (fwd | reply) & CT_SEEN_FIN != 0 {
        TcpState::FinWait
    } else if fwd & reply & CT_SEEN_ACK != 0 {
        // The originator's first packet carries no ACK: it sent something
        // after its SYN, so the handshake got through, not only a SYN-ACK
        // to an address that may have been spoofed.
        TcpState::Established
    } else if reply & CT_SEEN_SYN != 0 {
        TcpState::SynRecv
    } else {
        TcpState::SynSent
    }
}

/// How long a flow of `protocol` lives after its last packet, in
/// nanoseconds, given its entries' flags (as [`tcp_state`]).
pub const fn lifetime_ns(protocol: u8, fwd: u32, reply: u32, t: &CtTimeouts) -> u64 {
    match protocol {
        proto::TCP => match tcp_state(fwd, reply) {
            TcpState::SynSent | TcpState::SynRecv => t.tcp_syn_ns,
            TcpState::Established => t.tcp_established_ns,
            TcpState::FinWait => t.tcp_fin_wait_ns,
            TcpState::TimeWait | TcpState::Close => t.tcp_closing_ns,
        },
        proto::ICMP | proto::ICMPV6 => t.icmp_ns,
        _ => t.udp_ns,
    }
}

/// The `CT_SEEN_*` bits for a TCP header's flags byte (offset 13).
pub const fn tcp_seen_flags(tcp_flags: u8) -> u32 {
    use tcp::{ACK, FIN, RST, SYN};
    let mut seen = 0;
    if tcp_flags & FIN != 0 {
        seen |= CT_SEEN_FIN;
    }
    if tcp_flags & SYN != 0 {
        seen |= CT_SEEN_SYN;
    }
    if tcp_flags & RST != 0 {
        seen |= CT_SEEN_RST;
    }
    if tcp_flags & ACK != 0 {
        seen |= CT_SEEN_ACK;
    }
    seen
}

/// The source port masquerade tries after `attempt` failed ones: first the
/// flow's own if it lies in `min..=max` (host byte order), then a fresh
/// pseudo-random one of that range each time (RFC 6056's simple port
/// randomization). A port below the range, a privileged one among them,
/// is never kept: it could take over the tuple of a host service.
pub const fn candidate_port(own: u16, attempt: u32, random: u32, min: u16, max: u16) -> u16 {
    if max < min || (attempt == 0 && min <= own && own <= max) {
        return own;
    }
    let span = (max - min) as u32 + 1;
    min + (random % span) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full ones' complement checksum over `bytes`, as the words sit in memory.
    fn full(bytes: &[u8]) -> u16 {
        let mut sum = 0u32;
        for w in bytes.chunks(2) {
            let word = if w.len() == 2 {
                [w[0], w[1]]
            } else {
                [w[0], 0]
            };
            sum += u32::from(u16::from_ne_bytes(word));
        }
        !fold(sum)
    }

    fn word16(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    fn word32(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// An IPv4 header with a known checksum (0xb861), from the usual worked
    /// example: 192.168.0.1 -> 192.168.0.199, UDP, 115 bytes.
    const GOLDEN: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn golden_header_checks() {
        let mut h = GOLDEN;
        assert_eq!(full(&h), 0, "a valid header sums to zero");
        h[10] = 0;
        h[11] = 0;
        assert_eq!(full(&h).to_ne_bytes(), [0xb8, 0x61]);
    }

    #[test]
    fn address_rewrite_matches_full_recompute() {
        let mut h = GOLDEN;
        let old = word32(&h, 12);
        let new = u32::from_ne_bytes([198, 18, 0, 2]);
        h[12..16].copy_from_slice(&new.to_ne_bytes());
        let check = replace32(word16(&GOLDEN, 10), old, new);
        h[10..12].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(full(&h), 0);
        // Golden: 198.18.0.2 -> 192.168.0.199 has checksum 0xb2f6.
        assert_eq!(h[10..12], [0xb2, 0xf6]);
    }

    #[test]
    fn diffs_agree_with_word_replacement() {
        let check = word16(&GOLDEN, 10);
        let old = word32(&GOLDEN, 12);
        let new = u32::from_ne_bytes([198, 18, 0, 2]);
        assert_eq!(
            apply_diff(check, diff32(old, new)),
            replace32(check, old, new)
        );
        // Several changes combine into one accumulator.
        let old_d = word32(&GOLDEN, 16);
        let new_d = u32::from_ne_bytes([10, 0, 0, 7]);
        let both = add32(diff32(old, new), diff32(old_d, new_d));
        assert_eq!(
            apply_diff(check, both),
            replace32(replace32(check, old, new), old_d, new_d)
        );
        assert_eq!(
            apply_diff(check, diff16(0x1234, 0x4321)),
            replace16(check, 0x1234, 0x4321)
        );
        // A no-op diff changes nothing.
        assert_eq!(apply_diff(check, diff32(old, old)), check);
        // UDP: no checksum stays none; a computed 0 is sent as 0xffff.
        assert_eq!(apply_diff_udp(0, diff32(old, new)), 0);
        assert_eq!(
            apply_diff_udp(check, diff32(old, new)),
            replace32_udp(check, old, new)
        );
        let to_zero = diff16(!check, 0xffff);
        assert_eq!(apply_diff(check, to_zero), 0);
        assert_eq!(apply_diff_udp(check, to_zero), 0xffff);
    }

    #[test]
    fn ipv6_address_diff_matches_full_recompute() {
        // A pseudo-header (two addresses, length, next header) and a UDP
        // header with its checksum computed over both.
        let mut b = [0u8; 48];
        b[0..16].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
        b[16..32].copy_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        b[34..36].copy_from_slice(&8u16.to_be_bytes());
        b[39] = 17;
        b[40..42].copy_from_slice(&40000u16.to_be_bytes());
        b[42..44].copy_from_slice(&53u16.to_be_bytes());
        b[44..46].copy_from_slice(&8u16.to_be_bytes());
        let check = full(&b);
        b[46..48].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(full(&b), 0);
        let old: [u8; 16] = b[0..16].try_into().unwrap();
        let new = [
            0x20, 1, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0xab, 0xcd, 0, 9,
        ];
        b[0..16].copy_from_slice(&new);
        let check = apply_diff(check, <[u8; 16]>::csum_diff(&old, &new));
        b[46..48].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(full(&b), 0, "the updated checksum verifies");
    }

    #[test]
    fn ttl_decrement_matches_full_recompute() {
        let mut h = GOLDEN;
        let old = word16(&h, 8);
        h[8] -= 1;
        let check = replace16(word16(&GOLDEN, 10), old, word16(&h, 8));
        h[10..12].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(full(&h), 0);
        assert_eq!(h[10..12], [0xb9, 0x61]);
    }

    #[test]
    fn udp_zero_checksum_stays_zero_and_computed_zero_is_sent_as_ffff() {
        assert_eq!(replace32_udp(0, 1, 2), 0);
        assert_eq!(replace16_udp(0, 1, 2), 0);
        // A checksum that the update brings to 0 must go out as 0xffff.
        let old = 0x1234u16;
        let new = 0x1235u16;
        let check = !fold(u32::from(!old) + u32::from(new));
        assert_ne!(check, 0);
        let wraps = replace16(0xffff, old, new);
        assert_eq!(
            replace16_udp(0xffff, old, new),
            if wraps == 0 { 0xffff } else { wraps }
        );
        // Search a pair whose update is exactly 0 and check the mapping.
        let (o, n) = (1u16..)
            .map(|o| (o, o.wrapping_add(1)))
            .find(|&(o, n)| replace16(0x0001, o, n) == 0)
            .unwrap();
        assert_eq!(replace16_udp(0x0001, o, n), 0xffff);
    }

    #[test]
    fn masquerade_entries_reverse_each_other() {
        let be = |a: [u8; 4]| u32::from_ne_bytes(a);
        let original = FlowKey {
            saddr_be: be([172, 17, 0, 2]),
            daddr_be: be([198, 18, 0, 1]),
            sport_be: 40000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: proto::TCP,
            _pad: [0; 3],
        };
        let translated = FlowKey {
            saddr_be: be([198, 18, 0, 2]),
            sport_be: 40001u16.to_be(),
            ..original
        };
        let mut pair = FlowPair::default();
        flow_entries(
            &original,
            &translated,
            0,
            7,
            FirstPacket {
                len: 60,
                seen: CT_SEEN_SYN,
            },
            &mut pair,
        );
        let FlowPair {
            fwd_key: fk,
            fwd: fe,
            reply_key: rk,
            reply: re,
        } = pair;
        assert_eq!(fk, original);
        assert_eq!(
            (fe.saddr_be, fe.sport_be),
            (translated.saddr_be, translated.sport_be)
        );
        assert_eq!(fe.flags, CT_SEEN_SYN, "the opening SYN is recorded");
        assert_eq!((fe.created_ns, fe.packets, fe.bytes), (7, 1, 60));
        assert_eq!((re.created_ns, re.packets, re.bytes), (7, 0, 0));
        // The server answers the translated source...
        assert_eq!(
            rk,
            FlowKey {
                saddr_be: be([198, 18, 0, 1]),
                daddr_be: be([198, 18, 0, 2]),
                sport_be: 80u16.to_be(),
                dport_be: 40001u16.to_be(),
                proto: proto::TCP,
                _pad: [0; 3],
            }
        );
        // ...and the reply goes back to the endpoint's own address and port.
        assert_eq!(
            (re.daddr_be, re.dport_be),
            (original.saddr_be, original.sport_be)
        );
        assert_eq!(
            (re.saddr_be, re.sport_be),
            (original.daddr_be, original.dport_be)
        );
        assert_eq!(re.flags & CT_REPLY, CT_REPLY);
        assert_eq!(re.last_seen_ns, 7);
    }

    #[test]
    fn tcp_flags_map_to_seen_bits() {
        assert_eq!(tcp_seen_flags(0x02), CT_SEEN_SYN);
        assert_eq!(tcp_seen_flags(0x12), CT_SEEN_SYN | CT_SEEN_ACK);
        assert_eq!(tcp_seen_flags(0x11), CT_SEEN_FIN | CT_SEEN_ACK);
        assert_eq!(tcp_seen_flags(0x04), CT_SEEN_RST);
    }

    #[test]
    fn port_candidates_keep_the_own_port_first_then_stay_in_range() {
        assert_eq!(candidate_port(40000, 0, 12345, 1024, 65535), 40000);
        for (attempt, random) in [(1, 0), (2, u32::MAX), (3, 64511), (4, 64512)] {
            let p = candidate_port(40000, attempt, random, 1024, 65535);
            assert!((1024..=65535).contains(&p));
        }
        assert_eq!(candidate_port(5, 1, 7, 10, 10), 10);
        // Outside the range, not even the first try keeps it.
        for own in [22, 1023, 32767, 61000] {
            for random in [0, 1, 28231, u32::MAX] {
                let p = candidate_port(own, 0, random, 32768, 60999);
                assert!((32768..=60999).contains(&p), "{own} -> {p}");
            }
        }
    }

    #[test]
    fn only_a_plain_syn_opens_a_tcp_flow() {
        use tcp::{ACK, FIN, RST, SYN};
        const ECE_CWR: u8 = 0xc0;
        const PSH: u8 = 0x08;
        assert!(tcp_opens_flow(SYN));
        assert!(tcp_opens_flow(SYN | ECE_CWR | PSH));
        for not in [
            0,
            ACK,
            RST,
            FIN,
            SYN | ACK,
            SYN | RST,
            SYN | FIN,
            RST | ACK,
            FIN | ACK,
        ] {
            assert!(!tcp_opens_flow(not), "{not:#04x}");
        }
    }

    #[test]
    fn entries_gather_flags_and_a_syn_reopens_a_closed_flow() {
        use tcp::{ACK, RST, SYN};
        // Nothing to write when nothing new was seen.
        assert_eq!(tcp_entry_flags(CT_SEEN_SYN | CT_SEEN_ACK, ACK), None);
        assert_eq!(
            tcp_entry_flags(CT_SEEN_SYN, ACK),
            Some(CT_SEEN_SYN | CT_SEEN_ACK)
        );
        let closed = CT_SEEN_SYN | CT_SEEN_ACK | CT_SEEN_FIN;
        assert_eq!(tcp_entry_flags(closed, SYN), Some(CT_SEEN_SYN));
        assert_eq!(
            tcp_entry_flags(CT_SEEN_ACK | CT_SEEN_RST, SYN),
            Some(CT_SEEN_SYN)
        );
        // Only in the original direction, and only a plain SYN.
        let reply_closed = CT_REPLY | CT_SEEN_ACK | CT_SEEN_FIN;
        assert_eq!(
            tcp_entry_flags(reply_closed, SYN),
            Some(reply_closed | CT_SEEN_SYN)
        );
        assert_eq!(tcp_entry_flags(closed, SYN | ACK), None);
        assert_eq!(tcp_entry_flags(closed, RST), Some(closed | CT_SEEN_RST));
        assert_eq!(reopened_reply_flags(), CT_REPLY);
    }
}
