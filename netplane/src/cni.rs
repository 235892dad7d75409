//! The CNI plugin: `netplane` run by a container runtime (`CNI_COMMAND` in
//! its environment) as the plugin of `"type": "netplane"`. It reads the
//! network configuration and the `CNI_*` variables, asks the daemon to do
//! the work through its API, and writes the spec's result or error.
//! rscni does the protocol (versions 0.3.0 to 1.1.0).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::ExitCode,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rscni_plugin::{
    cni::{Cni, Plugin},
    error::Error,
    types::{Args, CNIResult, Dns, Interface, IpConfig, NetConf, PortMapping, Protocol, Route},
};
use serde_json::Value;

use crate::{
    api::client::{Client, Refused},
    types::{CniAdd, CniAttachment, CniAttachmentKey, CniGc, DaemonInfo},
};

/// The environment variable every runtime sets when it runs a plugin.
pub const CNI_COMMAND: &str = "CNI_COMMAND";
/// The daemon's run directory when the configuration names none.
pub const DEFAULT_RUN_DIR: &str = "/run/netplane";

/// Runs as the CNI plugin; the exit code is the spec's: 0 on success, 1
/// with the error on stdout otherwise.
pub fn main() -> ExitCode {
    match Plugin::default().run(&Netplane) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// The plugin: every verb is one call to the daemon.
struct Netplane;

impl Cni for Netplane {
    fn add(&self, args: Args) -> Result<CNIResult, Error> {
        let conf = PluginConf::of(args.config())?;
        let key = attachment_key(&args)?;
        let netns = args
            .netns()
            .cloned()
            .ok_or_else(|| Error::missing_env(&["CNI_NETNS"]))?;
        let cni_args = parse_cni_args(args.args().unwrap_or_default());
        let runtime = args.config().runtime_config.as_ref();
        let (ip, ip6) = requested(&cni_args, runtime.and_then(|r| r.custom.get("ips")))?;
        let req = CniAdd {
            name: endpoint_name(&cni_args, &key.container_id),
            ip,
            ip6,
            mac: cni_args
                .get("MAC")
                .cloned()
                .or_else(|| custom_str(runtime.and_then(|r| r.custom.get("mac")))),
            publish: runtime
                .map(|r| r.port_mappings.iter().map(publish_spec).collect())
                .transpose()?
                .unwrap_or_default(),
            key,
            netns,
            network: conf.network.clone(),
            subnet: conf.subnet,
        };
        let att: CniAttachment = conf.call(async |c| c.post("/v1/cni/add", &req).await)?;
        Ok(result_of(&att))
    }

    fn del(&self, args: Args) -> Result<(), Error> {
        let conf = PluginConf::of(args.config())?;
        let key = attachment_key(&args)?;
        // The daemon gone (`down`) took its endpoints with it: nothing left.
        if !conf.client().daemon_listens() {
            return Ok(());
        }
        conf.call(async |c| c.post::<_, ()>("/v1/cni/del", &key).await)
    }

    fn check(&self, args: Args) -> Result<(), Error> {
        let conf = PluginConf::of(args.config())?;
        let key = attachment_key(&args)?;
        let att: CniAttachment = conf.call(async |c| c.post("/v1/cni/check", &key).await)?;
        match &args.config().prev_result {
            Some(prev) if !same_addresses(prev, &result_of(&att)) => {
                Err(Error::InvalidNetworkConfig(format!(
                    "CHECK of container {}: prevResult's addresses are not {}/{}",
                    key.container_id, att.ip, att.prefix_len
                )))
            }
            _ => Ok(()),
        }
    }

    fn status(&self, args: Args) -> Result<(), Error> {
        let conf = PluginConf::of(args.config())?;
        if !conf.client().daemon_listens() {
            return Err(Error::PluginNotAvailable(conf.unreachable()));
        }
        conf.call(async |c| c.get::<DaemonInfo>("/v1/info").await)
            .map(drop)
            .map_err(|e| Error::PluginNotAvailable(e.details().to_string()))
    }

    fn gc(&self, args: Args) -> Result<(), Error> {
        let conf = PluginConf::of(args.config())?;
        let req = CniGc {
            config: args.config().name.clone(),
            valid: args
                .config()
                .valid_attachments
                .iter()
                .flatten()
                .map(|a| (a.container_id.clone(), a.ifname.clone()))
                .collect(),
        };
        conf.call(async |c| c.post::<_, Vec<String>>("/v1/cni/gc", &req).await)
            .map(drop)
    }
}

/// What netplane reads from its entry in the network configuration.
#[derive(Debug, PartialEq, Eq)]
struct PluginConf {
    /// `"network"`: the netplane network; the configuration's name if
    /// absent.
    network: String,
    /// `"subnet"`: the network's, to create it with when missing.
    subnet: Option<Ipv4Net>,
    /// `"runDir"`: the daemon's run directory (its API socket).
    run_dir: PathBuf,
}

impl PluginConf {
    fn of(conf: &NetConf) -> Result<Self, Error> {
        let text = |key: &str| match conf.custom.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(Error::InvalidNetworkConfig(format!(
                "network {}: {key:?} is {other}, not a string",
                conf.name
            ))),
        };
        let subnet = text("subnet")?
            .map(|s| {
                s.parse::<Ipv4Net>().map_err(|_| {
                    Error::InvalidNetworkConfig(format!(
                        "network {}: subnet {s:?} is not an IPv4 CIDR",
                        conf.name
                    ))
                })
            })
            .transpose()?;
        Ok(PluginConf {
            network: text("network")?.unwrap_or_else(|| conf.name.clone()),
            subnet,
            run_dir: text("runDir")?.map_or_else(|| DEFAULT_RUN_DIR.into(), PathBuf::from),
        })
    }

    fn client(&self) -> Client {
        Client::new(&self.run_dir)
    }

    fn unreachable(&self) -> String {
        format!(
            "no netplane daemon answers at {} (start it with `netplane up`)",
            crate::daemon::Config::socket(&self.run_dir).display()
        )
    }

    /// One call to the daemon, its failures as CNI errors: no daemon is
    /// "try again later"; a refused request is the configuration's fault,
    /// anything else the host's.
    fn call<T>(&self, f: impl AsyncFnOnce(&Client) -> anyhow::Result<T>) -> Result<T, Error> {
        let client = self.client();
        if !client.daemon_listens() {
            return Err(Error::TryAgainLater(self.unreachable()));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::IOFailure(e.to_string()))?;
        rt.block_on(f(&client))
            .map_err(|e| match e.downcast_ref::<Refused>() {
                Some(r) if r.status.is_client_error() => {
                    Error::InvalidNetworkConfig(r.message.clone())
                }
                _ => Error::IOFailure(format!("{e:#}")),
            })
    }
}

fn attachment_key(args: &Args) -> Result<CniAttachmentKey, Error> {
    Ok(CniAttachmentKey {
        config: args.config().name.clone(),
        container_id: args
            .container_id()
            .map(|id| id.as_ref().to_string())
            .ok_or_else(|| Error::missing_env(&["CNI_CONTAINERID"]))?,
        ifname: args
            .ifname()
            .map(|i| i.as_ref().to_string())
            .ok_or_else(|| Error::missing_env(&["CNI_IFNAME"]))?,
    })
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
fn parse_cni_args(args: &str) -> HashMap<String, String> {
    args.split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The endpoint's name, which its network's DNS answers: the container's
/// (`K8S_POD_NAME`; Podman passes its container name there), else
/// `cni-` and the container id's first 12 characters.
fn endpoint_name(cni_args: &HashMap<String, String>, container_id: &str) -> String {
    match cni_args.get("K8S_POD_NAME") {
        Some(name) if crate::logic::endpoint::validate_name(name).is_ok() => name.clone(),
        _ => format!(
            "cni-{}",
            container_id
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(12)
                .collect::<String>()
        ),
    }
}

/// The addresses asked for, the first of each family: `IP=`
/// (comma-separated) in `CNI_ARGS`, else the `ips` capability's (`ADDR` or
/// `ADDR/PREFIX`).
fn requested(
    cni_args: &HashMap<String, String>,
    ips: Option<&Value>,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), Error> {
    let parse = |s: &str| {
        let addr = s.split('/').next().unwrap_or(s);
        addr.parse::<IpAddr>().map_err(|_| {
            Error::InvalidNetworkConfig(format!("requested address {s:?} is not an address"))
        })
    };
    let asked: Vec<IpAddr> = match (cni_args.get("IP"), ips) {
        (Some(ip), _) => ip.split(',').map(parse).collect::<Result<_, _>>()?,
        (None, Some(Value::Array(ips))) => ips
            .iter()
            .filter_map(Value::as_str)
            .map(parse)
            .collect::<Result<_, _>>()?,
        (None, _) => Vec::new(),
    };
    let v4 = asked.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let v6 = asked.iter().find_map(|ip| match ip {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    Ok((v4, v6))
}

fn custom_str(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).map(str::to_string)
}

/// A `portMappings` entry as a `-p` spec: `[HOSTIP:]HOSTPORT:PORT/PROTO`.
fn publish_spec(mapping: &PortMapping) -> Result<String, Error> {
    let proto = match mapping.protocol {
        None | Some(Protocol::Tcp) => "tcp",
        Some(Protocol::Udp) => "udp",
        Some(Protocol::Sctp) => {
            return Err(Error::UnsupportedNetworkConfiguration(format!(
                "port mapping {}:{}: netplane publishes TCP and UDP, not SCTP",
                mapping.host_port, mapping.container_port
            )));
        }
    };
    let host_ip = custom_str(mapping.custom.get("hostIP")).filter(|ip| !ip.is_empty());
    Ok(match host_ip {
        Some(ip) => format!(
            "{ip}:{}:{}/{proto}",
            mapping.host_port, mapping.container_port
        ),
        None => format!("{}:{}/{proto}", mapping.host_port, mapping.container_port),
    })
}

/// The spec's result for what ADD made: the host-side veth (when there is
/// one) and the container's interface, its address on it, the default
/// route and the network's resolver.
fn result_of(att: &CniAttachment) -> CNIResult {
    let mut interfaces: Vec<Interface> = att
        .host
        .iter()
        .map(|(name, mac)| Interface {
            name: name.clone(),
            mac: mac.clone(),
            mtu: att.mtu,
            sandbox: None,
            socket_path: None,
            pci_id: None,
        })
        .collect();
    interfaces.push(Interface {
        name: att.ifname.clone(),
        mac: att.mac.clone(),
        mtu: att.mtu,
        sandbox: Some(att.sandbox.to_string_lossy().into_owned()),
        socket_path: None,
        pci_id: None,
    });
    let container_if = u32::try_from(interfaces.len() - 1).expect("two interfaces at most");
    let v4 = (
        IpNet::V4(Ipv4Net::new(att.ip, att.prefix_len).expect("a network's prefix length")),
        IpAddr::V4(att.gateway),
        IpNet::V4(Ipv4Net::default()),
    );
    let v6 = att.ip6.map(|(ip, prefix_len, gateway)| {
        (
            IpNet::V6(Ipv6Net::new(ip, prefix_len).expect("a network's prefix length")),
            IpAddr::V6(gateway),
            IpNet::V6(Ipv6Net::default()),
        )
    });
    let families: Vec<_> = std::iter::once(v4).chain(v6).collect();
    CNIResult {
        ips: families
            .iter()
            .map(|(address, gateway, _)| IpConfig {
                interface: Some(container_if),
                address: *address,
                gateway: Some(*gateway),
            })
            .collect(),
        routes: families
            .iter()
            .map(|(_, gateway, default)| Route {
                dst: *default,
                gw: Some(*gateway),
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            })
            .collect(),
        dns: att.dns.map(|server| Dns {
            nameservers: vec![server.to_string()],
            ..Dns::default()
        }),
        interfaces,
    }
}

/// Whether `prev` (the result the runtime kept) has the addresses of `now`.
fn same_addresses(prev: &CNIResult, now: &CNIResult) -> bool {
    let addrs = |r: &CNIResult| r.ips.iter().map(|ip| ip.address).collect::<Vec<_>>();
    addrs(prev) == addrs(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn conf(json: &str) -> NetConf {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_configuration_names_network_subnet_and_run_dir() {
        let c = PluginConf::of(&conf(
            r#"{"cniVersion":"1.0.0","name":"np","type":"netplane",
                "network":"web","subnet":"10.89.0.0/24","runDir":"/run/np2"}"#,
        ))
        .unwrap();
        assert_eq!(
            c,
            PluginConf {
                network: "web".into(),
                subnet: Some("10.89.0.0/24".parse().unwrap()),
                run_dir: "/run/np2".into(),
            }
        );
        let c = PluginConf::of(&conf(r#"{"name":"np","type":"netplane"}"#)).unwrap();
        assert_eq!(c.network, "np", "the configuration's name by default");
        assert_eq!(c.run_dir, Path::new(DEFAULT_RUN_DIR));
        let bad = PluginConf::of(&conf(r#"{"name":"np","type":"netplane","subnet":"x"}"#));
        assert!(
            matches!(&bad, Err(Error::InvalidNetworkConfig(m)) if m.contains("\"x\"")),
            "{bad:?}"
        );
    }

    #[test]
    fn the_endpoint_is_named_after_the_container() {
        let args = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.89.0.7");
        assert_eq!(endpoint_name(&args, "69b0383772647fc1f12f"), "web");
        assert_eq!(
            endpoint_name(&HashMap::new(), "69b0383772647fc1f12f"),
            "cni-69b038377264"
        );
        let bad = parse_cni_args("K8S_POD_NAME=../x");
        assert_eq!(endpoint_name(&bad, "abc"), "cni-abc");
    }

    #[test]
    fn the_address_asked_for_comes_from_ip_or_the_ips_capability() {
        let ips = serde_json::json!(["fd00::5/64", "10.89.0.9/24"]);
        assert_eq!(
            requested(&HashMap::new(), Some(&ips)).unwrap(),
            (
                Some("10.89.0.9".parse().unwrap()),
                Some("fd00::5".parse().unwrap())
            )
        );
        let args = parse_cni_args("IP=10.89.0.7");
        assert_eq!(
            requested(&args, Some(&ips)).unwrap(),
            (Some("10.89.0.7".parse().unwrap()), None),
            "IP= first"
        );
        assert_eq!(requested(&HashMap::new(), None).unwrap(), (None, None));
        assert!(requested(&parse_cni_args("IP=nope"), None).is_err());
    }

    #[test]
    fn port_mappings_become_publish_specs() {
        let m: PortMapping =
            serde_json::from_str(r#"{"hostPort":8080,"containerPort":80,"protocol":"tcp"}"#)
                .unwrap();
        assert_eq!(publish_spec(&m).unwrap(), "8080:80/tcp");
        let m: PortMapping = serde_json::from_str(
            r#"{"hostPort":53,"containerPort":5353,"protocol":"UDP","hostIP":"127.0.0.1"}"#,
        )
        .unwrap();
        assert_eq!(publish_spec(&m).unwrap(), "127.0.0.1:53:5353/udp");
        let m: PortMapping =
            serde_json::from_str(r#"{"hostPort":1,"containerPort":1,"protocol":"sctp"}"#).unwrap();
        assert!(matches!(
            publish_spec(&m),
            Err(Error::UnsupportedNetworkConfiguration(_))
        ));
    }

    #[test]
    fn the_result_indexes_the_container_interface() {
        let att = CniAttachment {
            endpoint: "web".into(),
            host: Some(("npv1a".into(), "aa:bb:cc:dd:ee:ff".into())),
            ifname: "eth0".into(),
            mac: "02:42:0a:59:00:02".into(),
            mtu: None,
            sandbox: "/run/netns/netns-1".into(),
            ip: "10.89.0.2".parse().unwrap(),
            prefix_len: 24,
            gateway: "10.89.0.1".parse().unwrap(),
            dns: Some("10.89.0.1".parse().unwrap()),
            ip6: None,
        };
        let json = serde_json::to_value(result_of(&att)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "interfaces": [
                    {"name": "npv1a", "mac": "aa:bb:cc:dd:ee:ff"},
                    {"name": "eth0", "mac": "02:42:0a:59:00:02", "sandbox": "/run/netns/netns-1"}
                ],
                "ips": [{"interface": 1, "address": "10.89.0.2/24", "gateway": "10.89.0.1"}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.89.0.1"}],
                "dns": {"nameservers": ["10.89.0.1"]}
            })
        );
        let macvlan = CniAttachment {
            host: None,
            dns: None,
            ..att
        };
        let json = serde_json::to_value(result_of(&macvlan)).unwrap();
        assert_eq!(json["ips"][0]["interface"], 0);
        assert!(json.get("dns").is_none());
    }
}
