//! The nftables ruleset a daemon without its eBPF data path
//! (`--userland-proxy` where eBPF cannot load) leaves the kernel's
//! forwarding to: what the data path would do for its bridge networks,
//! as netfilter rules. Masquerade for what leaves a network, networks
//! kept apart, internal networks kept in. Published ports need no rule:
//! the forwarder holds them as sockets.

use ipnet::{Ipv4Net, Ipv6Net};

/// The nftables table (family `inet`) holding every rule netplane adds.
pub const TABLE: &str = "netplane";

/// One bridge network, as the ruleset sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeRules {
    /// The bridge device.
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// Its IPv6 subnet, when masqueraded (neither absent nor routed).
    pub subnet6: Option<Ipv6Net>,
    /// Whether its endpoints reach nothing beyond it.
    pub internal: bool,
}

/// A bridge name nft could not take as a quoted string.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("bridge name {0:?} cannot go into an nftables rule: use [a-zA-Z0-9_.-]")]
pub struct UnquotableName(pub String);

fn quoted(name: &str) -> Result<String, UnquotableName> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        Ok(format!("\"{name}\""))
    } else {
        Err(UnquotableName(name.to_string()))
    }
}

/// An `nft -f` script replacing table [`TABLE`] with the rules for
/// `networks` in one transaction: the `add` makes the `delete` succeed
/// whether or not an earlier run left the table.
pub fn ruleset(networks: &[BridgeRules]) -> Result<String, UnquotableName> {
    let bridges: Vec<String> = networks
        .iter()
        .map(|n| quoted(&n.bridge))
        .collect::<Result<_, _>>()?;
    let mut forward = Vec::new();
    let mut postrouting = Vec::new();
    for (net, bridge) in networks.iter().zip(&bridges) {
        if net.internal {
            forward.push(format!("iifname {bridge} oifname != {bridge} drop"));
            forward.push(format!("oifname {bridge} iifname != {bridge} drop"));
            continue;
        }
        let others: Vec<&str> = bridges
            .iter()
            .filter(|b| *b != bridge)
            .map(String::as_str)
            .collect();
        if !others.is_empty() {
            forward.push(format!(
                "iifname {bridge} oifname {{ {} }} drop",
                others.join(", ")
            ));
        }
        postrouting.push(format!(
            "ip saddr {} oifname != {bridge} masquerade",
            net.subnet.trunc()
        ));
        if let Some(v6) = net.subnet6 {
            postrouting.push(format!(
                "ip6 saddr {} oifname != {bridge} masquerade",
                v6.trunc()
            ));
        }
    }
    let rules = |lines: &[String]| -> String {
        lines
            .iter()
            .map(|l| format!("\t\t{l}\n"))
            .collect::<String>()
    };
    Ok(format!(
        "add table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         {}\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {}\
         \t}}\n\
         }}\n",
        rules(&forward),
        rules(&postrouting)
    ))
}

/// An `nft -f` script removing table [`TABLE`], whether or not it exists.
pub fn removal() -> String {
    format!("add table inet {TABLE}\ndelete table inet {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(bridge: &str, subnet: &str) -> BridgeRules {
        BridgeRules {
            bridge: bridge.into(),
            subnet: subnet.parse().unwrap(),
            subnet6: None,
            internal: false,
        }
    }

    #[test]
    fn each_network_masquerades_what_leaves_it_and_is_kept_from_the_others() {
        let mut v6 = net("np0", "10.88.0.1/16");
        v6.subnet6 = Some("fd00:1::/64".parse().unwrap());
        let mut internal = net("npb2", "10.89.2.1/24");
        internal.internal = true;
        let script = ruleset(&[v6, net("npb1", "10.89.1.1/24"), internal]).unwrap();
        let lines: Vec<&str> = script.lines().map(str::trim).collect();
        for want in [
            "add table inet netplane",
            "delete table inet netplane",
            "iifname \"np0\" oifname { \"npb1\", \"npb2\" } drop",
            "iifname \"npb1\" oifname { \"np0\", \"npb2\" } drop",
            "iifname \"npb2\" oifname != \"npb2\" drop",
            "oifname \"npb2\" iifname != \"npb2\" drop",
            "ip saddr 10.88.0.0/16 oifname != \"np0\" masquerade",
            "ip6 saddr fd00:1::/64 oifname != \"np0\" masquerade",
            "ip saddr 10.89.1.0/24 oifname != \"npb1\" masquerade",
        ] {
            assert!(lines.contains(&want), "{want:?} missing from\n{script}");
        }
        assert!(
            !script.contains("10.89.2.0"),
            "an internal network is never masqueraded:\n{script}"
        );
        // The table goes before it is written again: one transaction.
        assert!(
            script.find("delete table").unwrap() < script.find("table inet netplane {").unwrap()
        );
    }

    #[test]
    fn one_network_alone_needs_no_isolation_rule() {
        let script = ruleset(&[net("np0", "10.88.0.1/16")]).unwrap();
        assert!(!script.contains("drop"), "{script}");
    }

    #[test]
    fn a_name_nft_cannot_quote_is_refused() {
        assert_eq!(
            ruleset(&[net("np\"0", "10.88.0.1/16")]),
            Err(UnquotableName("np\"0".into()))
        );
    }

    #[test]
    fn removal_succeeds_with_or_without_the_table() {
        assert_eq!(
            removal(),
            "add table inet netplane\ndelete table inet netplane\n"
        );
    }
}
