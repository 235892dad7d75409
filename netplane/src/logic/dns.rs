//! The embedded DNS server's decisions: names and aliases of the asking
//! endpoint's network answered from the daemon's records, reverse lookups
//! of their addresses, everything else forwarded upstream through a cache
//! that honours TTLs. Wire format by hickory-proto; the sockets are in
//! [`crate::daemon::resolver`].

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType, rdata},
};

/// TTL of answers about endpoints: none, so that a client asks again and
/// sees an endpoint recreated with another address at once.
const LOCAL_TTL: u32 = 0;

/// Upstream answers kept at most.
const CACHE_ENTRIES: usize = 4096;

/// The resolvers `nameserver` lines of a resolv.conf name, on port 53.
pub fn upstream_servers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            let addr: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(addr, 53))
        })
        .collect()
}

/// Names of one network: every endpoint's name and aliases, lowercase.
/// A name is one endpoint's; an alias may be shared by several, and never
/// answers for a name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Zone {
    /// Each endpoint's addresses by its name: IPv4, and IPv6 on
    /// dual-stack networks.
    names: BTreeMap<String, Vec<IpAddr>>,
    aliases: BTreeMap<String, Vec<IpAddr>>,
    reverse: BTreeMap<IpAddr, String>,
    /// Endpoints' own resolvers (`--dns`), by their addresses.
    upstreams: BTreeMap<IpAddr, Vec<SocketAddr>>,
    /// What endpoints on several networks are answered from, by their
    /// addresses here: the names of all their networks.
    views: BTreeMap<IpAddr, Zone>,
}

impl Zone {
    /// Adds an endpoint by `name` (what reverse lookups answer) and
    /// `aliases` at `addr` (A records) and `addr6` (AAAA).
    pub fn insert(
        &mut self,
        name: &str,
        aliases: &[String],
        addr: Ipv4Addr,
        addr6: Option<Ipv6Addr>,
    ) {
        let name = name.to_ascii_lowercase();
        let addrs: Vec<IpAddr> = std::iter::once(addr.into())
            .chain(addr6.map(IpAddr::from))
            .collect();
        self.add_aliases(aliases, &addrs);
        for a in &addrs {
            self.reverse.insert(*a, name.clone());
        }
        self.names.insert(name, addrs);
    }

    /// Adds `addrs` to the addresses each of `aliases` answers: of an
    /// endpoint whose own name answers another endpoint elsewhere too.
    pub fn add_aliases(&mut self, aliases: &[String], addrs: &[IpAddr]) {
        for alias in aliases {
            let sharing = self.aliases.entry(alias.to_ascii_lowercase()).or_default();
            for a in addrs {
                if !sharing.contains(a) {
                    sharing.push(*a);
                }
            }
        }
    }

    /// Sends what the network does not know from the endpoint at `addr` to
    /// `resolvers` on port 53 instead of the daemon's.
    pub fn set_upstream(&mut self, addr: IpAddr, resolvers: &[Ipv4Addr]) {
        if !resolvers.is_empty() {
            let servers = resolvers
                .iter()
                .map(|r| SocketAddr::from((*r, 53)))
                .collect();
            self.upstreams.insert(addr, servers);
        }
    }

    /// Adds the names of `other` that this zone lacks: names here win.
    pub fn absorb(&mut self, other: &Zone) {
        for (name, addrs) in &other.names {
            self.names
                .entry(name.clone())
                .or_insert_with(|| addrs.clone());
        }
        for (alias, addrs) in &other.aliases {
            let sharing = self.aliases.entry(alias.clone()).or_default();
            for addr in addrs {
                if !sharing.contains(addr) {
                    sharing.push(*addr);
                }
            }
        }
        for (addr, name) in &other.reverse {
            self.reverse.entry(*addr).or_insert_with(|| name.clone());
        }
    }

    /// Answers the endpoint at `addr` from `view` (the names of every
    /// network it is on) instead of this zone.
    pub fn set_view(&mut self, addr: IpAddr, view: Zone) {
        self.views.insert(addr, view);
    }

    /// The zone the endpoint at `addr` is answered from.
    pub fn view_for(&self, addr: IpAddr) -> &Zone {
        self.views.get(&addr).unwrap_or(self)
    }

    /// The resolvers of the endpoint at `addr`, if it has its own.
    pub fn upstream_of(&self, addr: IpAddr) -> Option<&[SocketAddr]> {
        self.upstreams.get(&addr).map(Vec::as_slice)
    }

    /// The addresses of `name`, of both families: the endpoint's of that
    /// name, or else those of every endpoint with that alias.
    fn addrs(&self, name: &Name) -> &[IpAddr] {
        let name = name.to_lowercase().to_utf8();
        let name = name.strip_suffix('.').unwrap_or(&name);
        match self.names.get(name) {
            Some(addrs) => addrs,
            None => self.aliases.get(name).map_or(&[], Vec::as_slice),
        }
    }

    fn name_of(&self, arpa: &Name) -> Option<&str> {
        let net = arpa.parse_arpa_name().ok()?;
        (net.prefix_len() == net.max_prefix_len())
            .then(|| self.reverse.get(&net.addr()).map(String::as_str))
            .flatten()
    }
}

/// What to do with a datagram or TCP message a client sent.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not ours to answer: ask upstream.
    Forward(Message),
    /// Not even a header to answer to.
    Ignore,
}

fn reply_to(query: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::error_msg(query.id(), query.op_code(), code);
    reply
        .add_queries(query.queries().iter().cloned())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true);
    reply
}

fn bytes(message: &Message) -> Outcome {
    match message.to_vec() {
        Ok(b) => Outcome::Reply(b),
        Err(_) => Outcome::Ignore,
    }
}

/// Decides about `packet` from an endpoint of `zone`.
pub fn decide(packet: &[u8], zone: &Zone) -> Outcome {
    let query = match Message::from_vec(packet) {
        Ok(q) => q,
        // The ID is the first two bytes of any message: a client that sent
        // a whole header hears that its message was malformed.
        Err(_) if packet.len() >= 12 => {
            let id = u16::from_be_bytes([packet[0], packet[1]]);
            return bytes(&Message::error_msg(
                id,
                OpCode::Query,
                ResponseCode::FormErr,
            ));
        }
        Err(_) => return Outcome::Ignore,
    };
    if query.message_type() != MessageType::Query {
        return Outcome::Ignore;
    }
    if query.op_code() != OpCode::Query {
        return bytes(&reply_to(&query, ResponseCode::NotImp));
    }
    let [q] = query.queries() else {
        return bytes(&reply_to(&query, ResponseCode::FormErr));
    };
    if q.query_class() != DNSClass::IN {
        return Outcome::Forward(query);
    }
    let name = q.name();
    let known = zone.addrs(name);
    let of_type: Vec<RData> = known
        .iter()
        .filter_map(|a| match (q.query_type(), a) {
            (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(rdata::A(*v4))),
            (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(rdata::AAAA(*v6))),
            _ => None,
        })
        .collect();
    let answers: Vec<RData> = match (of_type.is_empty(), known.is_empty()) {
        // Endpoints sharing an alias are all answered, starting at a
        // different one from query to query (the ID varies), so that
        // clients taking the first spread over them: Docker's round-robin.
        (false, _) => {
            let start = usize::from(query.id()) % of_type.len();
            of_type[start..]
                .iter()
                .chain(&of_type[..start])
                .cloned()
                .collect()
        }
        // The name is ours but has no such record: "no data", not a
        // question for upstream, which would deny the name exists.
        (true, false) => Vec::new(),
        (true, true) if q.query_type() == RecordType::PTR => match zone.name_of(name) {
            Some(n) => vec![RData::PTR(rdata::PTR(
                Name::from_ascii(format!("{n}.")).unwrap_or_else(|_| Name::root()),
            ))],
            None => return Outcome::Forward(query),
        },
        (true, true) => return Outcome::Forward(query),
    };
    let mut reply = reply_to(&query, ResponseCode::NoError);
    reply.set_authoritative(true);
    for data in answers {
        reply.add_answer(Record::from_rdata(name.clone(), LOCAL_TTL, data));
    }
    bytes(&reply)
}

/// Upstream answers by question, each until its smallest TTL runs out.
#[derive(Debug, Default)]
pub struct Cache {
    entries: HashMap<Query, (Message, Instant, Duration)>,
}

fn cache_key(query: &Message) -> Option<Query> {
    let q = query.query()?;
    let mut key = q.clone();
    key.set_name(q.name().to_lowercase());
    Some(key)
}

impl Cache {
    /// The cached answer to `query` at `now`, its ID the query's and its
    /// TTLs counted down.
    pub fn get(&mut self, query: &Message, now: Instant) -> Option<Vec<u8>> {
        let key = cache_key(query)?;
        let (answer, stored, ttl) = self.entries.get(&key)?;
        let age = now.saturating_duration_since(*stored);
        if age >= *ttl {
            self.entries.remove(&key);
            return None;
        }
        let mut answer = answer.clone();
        answer.set_id(query.id());
        let spent = age.as_secs() as u32;
        let count_down = |records: Vec<Record>| -> Vec<Record> {
            records
                .into_iter()
                .map(|mut r| {
                    let ttl = r.ttl().saturating_sub(spent);
                    r.set_ttl(ttl);
                    r
                })
                .collect()
        };
        let answers = count_down(answer.take_answers());
        let authority = count_down(answer.take_name_servers());
        answer.insert_answers(answers);
        answer.insert_name_servers(authority);
        answer.to_vec().ok()
    }

    /// Keeps upstream's `answer` to `query`, if it says something lasting:
    /// successful or "no such name", not truncated, with a TTL.
    pub fn put(&mut self, query: &Message, answer: &[u8], now: Instant) {
        let (Some(key), Ok(answer)) = (cache_key(query), Message::from_vec(answer)) else {
            return;
        };
        if answer.truncated()
            || !matches!(
                answer.response_code(),
                ResponseCode::NoError | ResponseCode::NXDomain
            )
        {
            return;
        }
        // A denial lasts as long as the zone's SOA says; an answer as long
        // as its shortest record.
        let ttl = answer
            .answers()
            .iter()
            .chain(answer.name_servers())
            .map(Record::ttl)
            .min()
            .unwrap_or(0);
        if ttl == 0 {
            return;
        }
        if self.entries.len() >= CACHE_ENTRIES {
            self.entries
                .retain(|_, (_, stored, ttl)| now < *stored + *ttl);
            if self.entries.len() >= CACHE_ENTRIES {
                return;
            }
        }
        self.entries
            .insert(key, (answer, now, Duration::from_secs(ttl.into())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        let mut z = Zone::default();
        z.insert(
            "web",
            &["Www".into(), "front".into()],
            Ipv4Addr::new(10, 88, 0, 2),
            Some("fd00:88::2".parse().unwrap()),
        );
        z.insert("db", &[], Ipv4Addr::new(10, 88, 0, 3), None);
        z
    }

    fn query(name: &str, kind: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(4242)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        m
    }

    fn reply(outcome: Outcome) -> Message {
        match outcome {
            Outcome::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn upstream_resolvers_come_from_nameserver_lines() {
        assert_eq!(
            upstream_servers(
                "# c\nsearch x\nnameserver 127.0.0.53\nnameserver  2001:db8::1 \nnameserver bad\n"
            ),
            [
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn names_and_aliases_of_the_network_are_answered_any_case() {
        for name in ["web.", "WWW.", "front", "db."] {
            let r = reply(decide(
                &query(name, RecordType::A).to_vec().unwrap(),
                &zone(),
            ));
            assert_eq!(r.id(), 4242);
            assert_eq!(r.message_type(), MessageType::Response);
            assert_eq!(r.response_code(), ResponseCode::NoError);
            assert_eq!(r.queries().len(), 1, "the question is echoed");
            let [answer] = r.answers() else {
                panic!("{name}: {r:?}")
            };
            let want = if name == "db." {
                [10, 88, 0, 3]
            } else {
                [10, 88, 0, 2]
            };
            assert_eq!(answer.data(), &RData::A(rdata::A(want.into())), "{name}");
        }
    }

    #[test]
    fn dual_stack_names_answer_aaaa_and_ip6_arpa() {
        let answers = |name: &str, kind| {
            let r = reply(decide(&query(name, kind).to_vec().unwrap(), &zone()));
            assert_eq!(r.response_code(), ResponseCode::NoError, "{name} {kind}");
            r.answers()
                .iter()
                .map(|a| a.data().clone())
                .collect::<Vec<_>>()
        };
        let v6 = RData::AAAA(rdata::AAAA("fd00:88::2".parse().unwrap()));
        assert_eq!(answers("web.", RecordType::AAAA), std::slice::from_ref(&v6));
        assert_eq!(answers("front.", RecordType::AAAA), [v6]);
        assert_eq!(
            answers("db.", RecordType::AAAA),
            [],
            "an IPv4-only endpoint's name: no data, not forwarded"
        );
        let arpa = "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.8.0.0.0.0.d.f.ip6.arpa.";
        assert_eq!(
            answers(arpa, RecordType::PTR),
            [RData::PTR(rdata::PTR(Name::from_ascii("web.").unwrap()))]
        );
    }

    #[test]
    fn an_alias_never_answers_for_a_name_and_a_shared_one_answers_all() {
        let mut z = zone();
        // An alias that is another endpoint's name, and one shared by two.
        z.insert(
            "imposter",
            &["db".into(), "pool".into()],
            [10, 88, 0, 9].into(),
            None,
        );
        z.insert("worker", &["pool".into()], [10, 88, 0, 10].into(), None);
        let a = |name: &str, id: u16| -> Vec<RData> {
            let mut q = query(name, RecordType::A);
            q.set_id(id);
            let r = reply(decide(&q.to_vec().unwrap(), &z));
            r.answers().iter().map(|a| a.data().clone()).collect()
        };
        let addr = |last: u8| RData::A(rdata::A([10, 88, 0, last].into()));
        assert_eq!(a("db.", 1), [addr(3)]);
        assert_eq!(a("pool.", 0), [addr(9), addr(10)]);
        assert_eq!(a("pool.", 1), [addr(10), addr(9)]);
    }

    #[test]
    fn an_endpoint_on_two_networks_is_answered_the_names_of_both() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let mut first = Zone::default();
        first.insert("web", &[], ip("172.18.0.2"), None);
        first.insert("db", &[], ip("172.18.0.3"), None);
        let mut second = Zone::default();
        second.insert("web", &[], ip("10.9.0.2"), None);
        second.insert("cache", &["kv".into()], ip("10.9.0.3"), None);
        let mut view = first.clone();
        view.absorb(&second);
        first.set_view(ip("172.18.0.2").into(), view);
        let both = first.view_for(ip("172.18.0.2").into());
        let name = |n: &str| Name::from_ascii(n).unwrap();
        let any = |s: &str| IpAddr::from(ip(s));
        assert_eq!(both.addrs(&name("cache")), [any("10.9.0.3")]);
        assert_eq!(both.addrs(&name("kv")), [any("10.9.0.3")]);
        // Its own network's answer wins for a name on both.
        assert_eq!(both.addrs(&name("web")), [any("172.18.0.2")]);
        // Every other endpoint of the first network sees only its names.
        let others = first.view_for(ip("172.18.0.3").into());
        assert!(others.addrs(&name("cache")).is_empty());
    }

    #[test]
    fn reverse_lookups_give_the_endpoint_name() {
        let q = query("3.0.88.10.in-addr.arpa.", RecordType::PTR);
        let r = reply(decide(&q.to_vec().unwrap(), &zone()));
        assert_eq!(
            r.answers()[0].data(),
            &RData::PTR(rdata::PTR(Name::from_ascii("db.").unwrap()))
        );
        // An address that is no endpoint here is upstream's to answer.
        let q = query("9.0.88.10.in-addr.arpa.", RecordType::PTR);
        assert!(matches!(
            decide(&q.to_vec().unwrap(), &zone()),
            Outcome::Forward(_)
        ));
    }

    #[test]
    fn other_records_of_our_names_are_no_data_and_other_names_go_upstream() {
        let r = reply(decide(
            &query("web.", RecordType::MX).to_vec().unwrap(),
            &zone(),
        ));
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert!(r.answers().is_empty());
        for name in ["example.com.", "web.example.com.", "other."] {
            let q = query(name, RecordType::A);
            assert!(
                matches!(decide(&q.to_vec().unwrap(), &zone()),
                    Outcome::Forward(m) if m.queries() == q.queries()),
                "{name}"
            );
        }
    }

    #[test]
    fn malformed_messages_get_formerr_or_nothing() {
        assert_eq!(decide(&[], &zone()), Outcome::Ignore);
        assert_eq!(decide(&[1, 2, 3], &zone()), Outcome::Ignore);
        // A header claiming a question that is not there.
        let mut truncated = query("web.", RecordType::A).to_vec().unwrap();
        truncated.truncate(14);
        let r = reply(decide(&truncated, &zone()));
        assert_eq!((r.id(), r.response_code()), (4242, ResponseCode::FormErr));
        // A name compressed into a loop: a pointer to itself.
        let mut looped = truncated[..12].to_vec();
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        let r = reply(decide(&looped, &zone()));
        assert_eq!(r.response_code(), ResponseCode::FormErr);
        // Two questions.
        let mut two = query("web.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("db.").unwrap(),
            RecordType::A,
        ));
        let r = reply(decide(&two.to_vec().unwrap(), &zone()));
        assert_eq!(r.response_code(), ResponseCode::FormErr);
        // Responses are not questions.
        let mut response = query("web.", RecordType::A);
        response.set_message_type(MessageType::Response);
        assert_eq!(
            decide(&response.to_vec().unwrap(), &zone()),
            Outcome::Ignore
        );
    }

    #[test]
    fn mutated_queries_never_panic_and_replies_are_well_formed() {
        let seeds = [
            query("web.", RecordType::A).to_vec().unwrap(),
            query("3.0.88.10.in-addr.arpa.", RecordType::PTR)
                .to_vec()
                .unwrap(),
        ];
        // xorshift: the same inputs on every run.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let zone = zone();
        for round in 0..20_000 {
            let mut packet = seeds[round % seeds.len()].clone();
            for _ in 0..=(next() % 4) {
                let at = (next() as usize) % packet.len().max(1);
                match next() % 4 {
                    0 if !packet.is_empty() => packet[at] ^= 1 << (next() % 8),
                    1 => packet.truncate(at),
                    2 => packet.insert(at.min(packet.len()), next() as u8),
                    _ if !packet.is_empty() => packet[at] = next() as u8,
                    _ => {}
                }
            }
            if let Outcome::Reply(reply) = decide(&packet, &zone) {
                let reply = Message::from_vec(&reply).expect("replies parse");
                assert_eq!(reply.message_type(), MessageType::Response);
                assert_eq!(reply.id(), u16::from_be_bytes([packet[0], packet[1]]));
            }
        }
    }

    #[test]
    fn the_cache_counts_ttls_down_and_forgets_expired_answers() {
        let q = query("example.com.", RecordType::A);
        let mut answer = reply_to(&q, ResponseCode::NoError);
        answer.add_answer(Record::from_rdata(
            Name::from_ascii("example.com.").unwrap(),
            30,
            RData::A(rdata::A(Ipv4Addr::new(192, 0, 2, 1))),
        ));
        let mut cache = Cache::default();
        let t0 = Instant::now();
        cache.put(&q, &answer.to_vec().unwrap(), t0);
        let mut again = query("EXAMPLE.com.", RecordType::A);
        again.set_id(7);
        let hit =
            Message::from_vec(&cache.get(&again, t0 + Duration::from_secs(10)).unwrap()).unwrap();
        assert_eq!(hit.id(), 7);
        assert_eq!(hit.answers()[0].ttl(), 20);
        assert_eq!(cache.get(&again, t0 + Duration::from_secs(30)), None);
        // Failures and TTL-less answers are not kept.
        let servfail = reply_to(&q, ResponseCode::ServFail).to_vec().unwrap();
        cache.put(&q, &servfail, t0);
        assert_eq!(cache.get(&q, t0), None);
    }
}
