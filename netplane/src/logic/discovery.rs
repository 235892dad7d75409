//! Names across hosts: what each host publishes of its overlay endpoints
//! in the cluster store, and which endpoint a name shared by several
//! hosts' endpoints answers. Every host decides the same from the same
//! store, so a name means one endpoint across the cluster.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

pub use crate::types::NameClash;

/// One endpoint of an overlay network, as its host publishes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PublishedName {
    /// The endpoint's name, lower case: names are matched in any case.
    pub name: String,
    pub address: Ipv4Addr,
    /// Its `--network-alias` names, lower case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl PublishedName {
    /// An endpoint named `name` at `address` with `aliases`, in lower case.
    pub fn new(name: &str, address: Ipv4Addr, aliases: &[String]) -> Self {
        PublishedName {
            name: name.to_ascii_lowercase(),
            address,
            aliases: aliases.iter().map(|a| a.to_ascii_lowercase()).collect(),
        }
    }
}

/// The endpoints a host publishes, by overlay network.
pub type HostNames = BTreeMap<String, Vec<PublishedName>>;

/// One endpoint of a network, on the host with VTEP `vtep`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub vtep: Ipv4Addr,
    pub endpoint: PublishedName,
    /// Whether its name answers with its address: false when an endpoint
    /// of the same name on another host won (see [`settle`]).
    pub answers_name: bool,
}

fn placed(c: &Claim) -> String {
    format!("{} on {}", c.endpoint.address, c.vtep)
}

/// Every endpoint of one network across the hosts (`(VTEP, endpoints)`,
/// this host's among them), each marked whether its name answers: of
/// endpoints sharing a name, the one on the host with the lowest VTEP
/// (then the lowest address), the same choice on every host. Aliases are
/// meant to be shared and answer every endpoint that has them.
pub fn settle(hosts: &BTreeMap<Ipv4Addr, Vec<PublishedName>>) -> (Vec<Claim>, Vec<NameClash>) {
    let mut claims: Vec<Claim> = hosts
        .iter()
        .flat_map(|(vtep, endpoints)| {
            endpoints.iter().map(|e| Claim {
                vtep: *vtep,
                endpoint: e.clone(),
                answers_name: false,
            })
        })
        .collect();
    claims.sort_by(|a, b| {
        (&a.endpoint.name, a.vtep, a.endpoint.address).cmp(&(
            &b.endpoint.name,
            b.vtep,
            b.endpoint.address,
        ))
    });
    let mut clashes = Vec::new();
    let mut i = 0;
    while i < claims.len() {
        let same = claims[i..]
            .iter()
            .take_while(|c| c.endpoint.name == claims[i].endpoint.name)
            .count();
        claims[i].answers_name = true;
        if same > 1 {
            clashes.push(NameClash {
                name: claims[i].endpoint.name.clone(),
                answers: placed(&claims[i]),
                shadowed: claims[i + 1..i + same].iter().map(placed).collect(),
            });
        }
        i += same;
    }
    (claims, clashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn names_are_published_in_lower_case() {
        let p = PublishedName::new("Web", ip("10.201.0.2"), &["API".into()]);
        assert_eq!((p.name.as_str(), p.aliases), ("web", vec!["api".into()]));
        let json = serde_json::to_string(&PublishedName::new("db", ip("10.201.0.3"), &[])).unwrap();
        assert_eq!(json, r#"{"Name":"db","Address":"10.201.0.3"}"#);
    }

    #[test]
    fn a_clash_goes_to_the_lowest_vtep_on_every_host() {
        let web = |a: &str| PublishedName::new("web", ip(a), &["api".into()]);
        let mut hosts = BTreeMap::new();
        hosts.insert(ip("192.0.2.12"), vec![web("10.201.1.2")]);
        hosts.insert(
            ip("192.0.2.11"),
            vec![
                web("10.201.0.2"),
                PublishedName::new("db", ip("10.201.0.3"), &[]),
            ],
        );
        hosts.insert(ip("192.0.2.13"), vec![web("10.201.2.2")]);
        let (claims, clashes) = settle(&hosts);
        let answering: Vec<(&str, Ipv4Addr)> = claims
            .iter()
            .filter(|c| c.answers_name)
            .map(|c| (c.endpoint.name.as_str(), c.endpoint.address))
            .collect();
        assert_eq!(
            answering,
            [("db", ip("10.201.0.3")), ("web", ip("10.201.0.2"))]
        );
        assert_eq!(claims.len(), 4, "the shadowed keep their aliases");
        assert_eq!(
            clashes,
            [NameClash {
                name: "web".into(),
                answers: "10.201.0.2 on 192.0.2.11".into(),
                shadowed: vec![
                    "10.201.1.2 on 192.0.2.12".into(),
                    "10.201.2.2 on 192.0.2.13".into()
                ],
            }]
        );
        // Whichever host reads it, in whichever order the store listed it.
        let reversed: BTreeMap<_, _> = hosts
            .into_iter()
            .map(|(v, mut e)| {
                e.reverse();
                (v, e)
            })
            .collect();
        assert_eq!(settle(&reversed).1, clashes);
    }
}
