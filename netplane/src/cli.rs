//! The `netplane` command line.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use hyper::Method;
use ipnet::{IpNet, Ipv4Net};
use netplane_common::abi::DEFAULT_CT_MAX;

use crate::{
    api::client::Client,
    api::server,
    daemon::cluster::{self, StoreUrl},
    daemon::forwarder,
    daemon::{Config, DEFAULT_BRIDGE, Daemon},
    kernel::datapath::XdpSetting,
    kernel::exec,
    logic::conntrack::Timeouts,
    logic::monitor::{self, MonitorFilter, MonitorRecord},
    logic::network,
    types::{
        ConnectRequest, CreateEndpoint, CreateNetwork, DaemonInfo, DisconnectRequest, EndpointInfo,
        EndpointStats, FlowFilter, FlowInfo, FlowTuple, Flushed, HostBinding, NatTable,
        NetworkInfo, PortInfo, PortRequest, Pruned, RemoveQuery, Removed, Stats,
    },
};

/// Container network data plane: namespaces, veths and a bridge, with NAT
/// and forwarding in eBPF.
#[derive(Debug, Parser)]
#[command(name = "netplane", version)]
pub struct Cli {
    /// Runtime directory of the daemon (API socket).
    #[arg(
        long,
        global = true,
        env = "NETPLANE_RUN_DIR",
        default_value = "/run/netplane"
    )]
    run_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the daemon for this network namespace.
    Up(UpArgs),
    /// Stop the daemon and remove everything it created, and what one that
    /// no longer runs left (after a kill -9, from its state and pins).
    Down(StateArgs),
    /// The running daemon: its process, namespace, bridge, uplink, subnet
    /// and how its programs hang on interfaces (tcx or clsact), as JSON.
    Info,
    /// Create an endpoint.
    Create(CreateArgs),
    /// Create an endpoint and run a command in it.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Remove the endpoint when the command exits.
        #[arg(long)]
        rm: bool,
        /// Command and arguments (a `--` before them is optional).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Run a command in an endpoint.
    Exec {
        /// Endpoint name.
        name: String,
        /// Command and arguments (a `--` before them is optional).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// List endpoints.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Print names only.
        #[arg(short, long, conflicts_with = "json")]
        quiet: bool,
    },
    /// Show endpoints as a JSON array, in `docker inspect`'s shape.
    Inspect {
        /// Print each through this Go template instead, as `docker
        /// inspect -f` does: `{{.NetworkSettings.IPAddress}}`,
        /// `{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}`,
        /// `{{json .NetworkSettings.Ports}}`.
        #[arg(short, long)]
        format: Option<String>,
        /// Endpoint names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// The client's and the daemon's versions.
    Version,
    /// Remove endpoints, killing the processes in their namespaces.
    Rm {
        /// Also remove the endpoints that share their namespaces
        /// (`--net container:NAME`).
        #[arg(short, long)]
        force: bool,
        /// Endpoint names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Data path counters: of every interface as JSON, or of one endpoint.
    Stats {
        /// Endpoint name.
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Published ports, at any time: `port NAME [CPORT[/PROTO]]` lists an
    /// endpoint's as `docker port` does.
    Port(PortArgs),
    /// NAT rules and their counters.
    #[command(subcommand)]
    Nat(NatCommand),
    /// Tracked flows (connection tracking).
    #[command(subcommand)]
    Ct(CtCommand),
    /// Stream data path events as they happen: drops with their reason,
    /// new flows with their translation.
    Monitor {
        /// Drops only.
        #[arg(long)]
        drops: bool,
        /// Only the events of this endpoint.
        #[arg(long)]
        endpoint: Option<String>,
        /// Print each record as a JSON line: `{"Type":"event",...}` or
        /// `{"Type":"lost","Events":N}`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CtCommand {
    /// List tracked flows, both directions, like `conntrack -L`.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Only the flows of this endpoint.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Forget tracked flows; their next packets start new ones.
    Flush {
        /// Only the flows of this endpoint.
        #[arg(long)]
        endpoint: Option<String>,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
struct PortArgs {
    #[command(subcommand)]
    command: Option<PortCommand>,
    /// Endpoint name.
    name: Option<String>,
    /// Only this endpoint port.
    #[arg(value_name = "CPORT[/PROTO]")]
    private: Option<String>,
}

#[derive(Debug, Subcommand)]
enum PortCommand {
    /// Publish a port of a running endpoint.
    Add {
        /// Endpoint name.
        name: String,
        /// `[IP:][HOSTPORT[-END]:]CPORT[-END][/tcp|/udp]`.
        spec: String,
        /// Accept new flows only from these networks (CIDR); from
        /// everywhere without it.
        #[arg(long, value_name = "CIDR", num_args = 1..)]
        from: Vec<String>,
        /// Relay its connections in the daemon, each starting with a PROXY
        /// protocol v2 header naming the client.
        #[arg(long)]
        proxy_protocol: bool,
    },
    /// Withdraw a published port.
    Rm {
        /// Endpoint name.
        name: String,
        /// The spec it was published with, or just `CPORT[/proto]`.
        spec: String,
    },
    /// List published ports.
    Ls {
        /// Only this endpoint's.
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum NatCommand {
    /// List NAT rules with packet and byte counters.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum NetworkCommand {
    /// Create a network: a bridge of this host (the default), or an
    /// overlay, the same on every host that creates it.
    Create {
        /// `bridge`: a Linux bridge of its own, NATed out of the uplink;
        /// `overlay`: VXLAN between the hosts of the cluster.
        #[arg(long, short = 'd', default_value = "bridge")]
        driver: String,
        /// Subnet (a bridge's default: the first free of Docker's pools);
        /// of an overlay, the whole subnet, a /24 of it per host. Once
        /// more for the IPv6 subnet, with --ipv6 (default: a unique
        /// local /64).
        #[arg(long = "subnet")]
        subnets: Vec<IpNet>,
        /// The bridge's address (default: the subnet's first); once per
        /// family.
        #[arg(long = "gateway")]
        gateways: Vec<IpAddr>,
        /// IPv6 too: endpoints get an address of each family.
        #[arg(long)]
        ipv6: bool,
        /// With --ipv6: masquerade IPv6 flows to the uplink's address
        /// (NAT66); false for a routed prefix, whose flows leave with the
        /// endpoints' own addresses.
        #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
        ipv6_masquerade: bool,
        /// Lease endpoints' addresses from this part of the subnet.
        #[arg(long)]
        ip_range: Option<Ipv4Net>,
        /// No masquerade and no published ports: endpoints reach only
        /// the network.
        #[arg(long)]
        internal: bool,
        /// Whether endpoints may talk to each other.
        #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
        icc: bool,
        /// MTU of the endpoints' interfaces.
        #[arg(long)]
        mtu: Option<u32>,
        /// Driver option KEY=VALUE.
        #[arg(long = "opt", short = 'o', value_parser = network::parse_key_value)]
        options: Vec<(String, String)>,
        /// Label KEY=VALUE.
        #[arg(long = "label", value_parser = network::parse_key_value)]
        labels: Vec<(String, String)>,
        /// VXLAN network identifier of an overlay (default: derived from
        /// the name); the GRE key with `--encap gre`.
        #[arg(long)]
        vni: Option<u32>,
        /// How an overlay's frames travel between hosts: vxlan (default),
        /// gre, or none (routed directly, hosts on one link).
        #[arg(long)]
        encap: Option<crate::types::Encap>,
        /// Network name.
        name: String,
    },
    /// Remove networks without endpoints.
    Rm {
        /// Network names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every network of this host without endpoints.
    Prune,
    /// Connect a running endpoint to one more network: one more interface
    /// (eth1, eth2, ...), an address and its names there.
    Connect {
        /// Its address on the network (default: the lowest free).
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// Its IPv6 address on a dual-stack network (default: the lowest
        /// free).
        #[arg(long)]
        ip6: Option<std::net::Ipv6Addr>,
        /// One more name for it on the network.
        #[arg(long = "alias")]
        aliases: Vec<String>,
        /// Network name.
        network: String,
        /// Endpoint name.
        endpoint: String,
    },
    /// Disconnect an endpoint from a network it was connected to.
    Disconnect {
        /// Network name.
        network: String,
        /// Endpoint name.
        endpoint: String,
    },
    /// List networks.
    Ls {
        /// Print only the names.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Show a network as JSON.
    Inspect {
        /// Network name.
        name: String,
    },
}

/// Where a daemon keeps what outlives it.
#[derive(Debug, Args)]
struct StateArgs {
    /// State directory.
    #[arg(long, default_value = "/var/lib/netplane")]
    state_dir: PathBuf,
    /// bpffs directory for pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/netplane")]
    bpffs: PathBuf,
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Bridge device.
    #[arg(long, default_value = DEFAULT_BRIDGE)]
    bridge: String,
    /// Bridge subnet (default: the first of Docker's pools that is free).
    #[arg(long)]
    subnet: Option<Ipv4Net>,
    /// IPv6 on the bridge network too: endpoints get an address of each
    /// family.
    #[arg(long)]
    ipv6: bool,
    /// The bridge network's IPv6 subnet, with --ipv6 (default: a unique
    /// local /64).
    #[arg(long, requires = "ipv6")]
    subnet6: Option<ipnet::Ipv6Net>,
    /// Uplink interface (default: the default route's).
    #[arg(long)]
    uplink: Option<String>,
    /// Whether endpoints may talk to each other.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    icc: bool,
    #[command(flatten)]
    state: StateArgs,
    /// Return once the API is ready, leaving the daemon running.
    #[arg(long)]
    detach: bool,
    /// VTEP (uplink) address of another host of the cluster, for overlay
    /// networks without a store; every host is given the same set.
    #[arg(long = "peer", value_name = "ADDRESS", conflicts_with = "store")]
    peers: Vec<Ipv4Addr>,
    /// Cluster store holding overlay membership:
    /// etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long)]
    store: Option<StoreUrl>,
    /// Seconds the store keeps this host's membership after last hearing
    /// from it: how long a stopped host stays in the other hosts' routes.
    #[arg(long, default_value_t = cluster::DEFAULT_TTL.as_secs(), value_parser = clap::value_parser!(u64).range(2..))]
    store_ttl: u64,
    /// Resolver the embedded DNS server forwards names it does not know
    /// to (repeatable); the host's resolv.conf's by default.
    #[arg(long = "dns", value_name = "ADDRESS")]
    dns: Vec<std::net::IpAddr>,
    /// Serve Prometheus metrics over HTTP at /metrics on this address
    /// (for example 127.0.0.1:9464); off by default.
    #[arg(long, value_name = "ADDRESS:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// Relay every published port in the daemon instead of translating it
    /// in the data path (Docker's --userland-proxy): endpoints see the host
    /// as the client unless the port has --proxy-protocol.
    #[arg(long)]
    userland_proxy: bool,
    /// TCP connections and UDP sessions the daemon relays at once, over
    /// every port; more are refused and counted.
    #[arg(long, default_value_t = forwarder::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    proxy_max_connections: usize,
    /// The uplink's XDP fast path for established flows and VXLAN: auto
    /// (in the driver of a network card that can take it, never on a
    /// virtual device such as a veth), native, generic or off.
    #[arg(long, env = "NETPLANE_XDP", default_value = "off")]
    xdp: XdpSetting,
    /// Connection tracking table size, in entries (two per flow); applies
    /// when the table is created, at the first `up` after a `down`.
    #[arg(long, default_value_t = DEFAULT_CT_MAX)]
    ct_max: u32,
    /// Lifetime of a TCP flow until both directions acknowledged, in
    /// seconds.
    #[arg(long, default_value_t = Timeouts::default().tcp_syn.as_secs())]
    ct_tcp_syn: u64,
    /// Lifetime of an established TCP flow after its last packet, in seconds.
    #[arg(long, default_value_t = Timeouts::default().tcp_established.as_secs())]
    ct_tcp_established: u64,
    /// Lifetime of a TCP flow after one direction's FIN, in seconds.
    #[arg(long, default_value_t = Timeouts::default().tcp_fin_wait.as_secs())]
    ct_tcp_fin_wait: u64,
    /// Lifetime of a TCP flow after FIN from both directions, or RST, in
    /// seconds.
    #[arg(long, default_value_t = Timeouts::default().tcp_closing.as_secs())]
    ct_tcp_closing: u64,
    /// Lifetime of a UDP flow after its last packet, in seconds.
    #[arg(long, default_value_t = Timeouts::default().udp.as_secs())]
    ct_udp: u64,
    /// Lifetime of an ICMP echo flow after its last packet, in seconds.
    #[arg(long, default_value_t = Timeouts::default().icmp.as_secs())]
    ct_icmp: u64,
}

impl UpArgs {
    fn timeouts(&self) -> Timeouts {
        Timeouts {
            tcp_syn: Duration::from_secs(self.ct_tcp_syn),
            tcp_established: Duration::from_secs(self.ct_tcp_established),
            tcp_fin_wait: Duration::from_secs(self.ct_tcp_fin_wait),
            tcp_closing: Duration::from_secs(self.ct_tcp_closing),
            udp: Duration::from_secs(self.ct_udp),
            icmp: Duration::from_secs(self.ct_icmp),
        }
    }
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// Endpoint name.
    name: String,
    /// bridge, host, none, container:OTHER or a network name.
    #[arg(long, visible_alias = "network", default_value = "bridge")]
    net: String,
    /// Address in the bridge subnet.
    #[arg(long)]
    ip: Option<Ipv4Addr>,
    /// IPv6 address, on a network with IPv6.
    #[arg(long)]
    ip6: Option<std::net::Ipv6Addr>,
    /// Hostname of processes run in the endpoint.
    #[arg(long)]
    hostname: Option<String>,
    /// Publish ports: [IP:][HOSTPORT[-END]:]CPORT[-END][/tcp|/udp].
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// OTHER:ALIAS.
    #[arg(long = "link")]
    links: Vec<String>,
    /// Another name of the endpoint in its network's DNS (repeatable).
    #[arg(long = "network-alias", value_name = "ALIAS")]
    network_aliases: Vec<String>,
    /// Accept new flows to the -p ports only from this network (CIDR,
    /// repeatable); from everywhere without it.
    #[arg(long = "publish-from", value_name = "CIDR")]
    publish_from: Vec<String>,
    /// Relay the -p ports' connections in the daemon, each starting with a
    /// PROXY protocol v2 header naming the client.
    #[arg(long)]
    proxy_protocol: bool,
    /// MAC of the endpoint's eth0 (bridge network only).
    #[arg(long)]
    mac_address: Option<String>,
    /// Resolver for names its network does not know (repeatable): the
    /// network's DNS forwards them there.
    #[arg(long = "dns", value_name = "ADDRESS")]
    dns: Vec<Ipv4Addr>,
    /// Search domain of its resolv.conf (repeatable).
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    dns_search: Vec<String>,
    /// One more line of its hosts file: NAME:IP, or NAME:host-gateway for
    /// the bridge's gateway (repeatable).
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_hosts: Vec<String>,
}

impl CreateArgs {
    fn request(&self) -> CreateEndpoint {
        CreateEndpoint {
            name: self.name.clone(),
            net: self.net.clone(),
            ip: self.ip,
            ip6: self.ip6,
            hostname: self.hostname.clone(),
            publish: self.publish.clone(),
            links: self.links.clone(),
            network_aliases: self.network_aliases.clone(),
            publish_from: self.publish_from.clone(),
            proxy_protocol: self.proxy_protocol,
            mac_address: self.mac_address.clone(),
            dns: self.dns.clone(),
            dns_search: self.dns_search.clone(),
            add_hosts: self.add_hosts.clone(),
        }
    }
}

/// Runs the command line; the exit code of `run`/`exec` is the command's.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// At most one IPv4 and one IPv6 value of `flag`, split by `family`
/// (`Ok` for IPv4, `Err` for IPv6).
fn one_of_each<T, V4, V6>(
    flag: &str,
    values: &[T],
    family: impl Fn(&T) -> Result<V4, V6>,
) -> anyhow::Result<(Option<V4>, Option<V6>)> {
    let (mut v4, mut v6) = (None, None);
    for value in values {
        let twice = match family(value) {
            Ok(a) => v4.replace(a).is_some(),
            Err(a) => v6.replace(a).is_some(),
        };
        if twice {
            anyhow::bail!("{flag} takes one IPv4 and one IPv6 value at most");
        }
    }
    Ok((v4, v6))
}

/// Does `f` for every name, as `docker rm` does: every one is tried, each
/// failure is printed, and any failure fails.
fn each(names: Vec<String>, mut f: impl FnMut(&str) -> anyhow::Result<()>) -> ExitCode {
    let mut failed = false;
    for name in names {
        if let Err(e) = f(&name) {
            eprintln!("netplane: {e:#}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Refuses, before anything is made, what only root can do.
fn need_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "netplane {what} needs root: it makes network namespaces, links, \
             routes and eBPF programs"
        );
    }
    Ok(())
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = Client::new(&cli.run_dir);
    let rt = runtime()?;
    if matches!(cli.command, Command::Up(_)) {
        need_root("up")?;
    }
    match cli.command {
        Command::Up(args) if args.detach => detach(&cli.run_dir, &client, &rt),
        Command::Up(args) => {
            init_tracing();
            let cfg = Config {
                timeouts: args.timeouts(),
                ct_max: args.ct_max,
                bridge: args.bridge,
                subnet: args.subnet,
                ipv6: args.ipv6,
                subnet6: args.subnet6,
                uplink: args.uplink,
                icc: args.icc,
                state_dir: args.state.state_dir,
                run_dir: cli.run_dir,
                bpffs: args.state.bpffs,
                peers: args.peers,
                store: args.store,
                store_ttl: Duration::from_secs(args.store_ttl),
                dns: args
                    .dns
                    .iter()
                    .map(|a| std::net::SocketAddr::new(*a, 53))
                    .collect(),
                metrics: args.metrics,
                userland_proxy: args.userland_proxy,
                proxy_max_connections: args.proxy_max_connections,
                xdp: args.xdp,
            };
            rt.block_on(async {
                let daemon = Daemon::start(cfg.clone()).await?;
                server::serve(daemon, &cfg).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Down(_) if client.daemon_listens() => {
            rt.block_on(client.act(Method::POST, "/v1/down"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Down(state) => {
            need_root("down")?;
            init_tracing();
            let cfg = Config::defaults(state.state_dir, cli.run_dir, state.bpffs);
            let dir = cfg.state_dir.display().to_string();
            if rt.block_on(Daemon::down_from_state(cfg))? {
                eprintln!(
                    "no netplane daemon was running; removed what the state in {dir} recorded"
                );
            } else {
                eprintln!(
                    "no netplane daemon is running, and {dir} holds no state: nothing to remove"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Info => {
            let info: DaemonInfo = rt.block_on(client.get("/v1/info"))?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Create(args) => {
            let info: EndpointInfo = rt.block_on(client.post("/v1/endpoints", &args.request()))?;
            println!("{}", info.name);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { create, rm, cmd } => {
            let info: EndpointInfo =
                rt.block_on(client.post("/v1/endpoints", &create.request()))?;
            let daemon: DaemonInfo = rt.block_on(client.get("/v1/info"))?;
            let status = exec::run(&target(&info, &daemon), &cmd);
            if rm {
                rt.block_on(client.delete::<Removed>(&format!("/v1/endpoints/{}", info.name)))?;
            }
            Ok(exit_code(status?))
        }
        Command::Exec { name, cmd } => {
            let info: EndpointInfo = rt.block_on(client.get(&format!("/v1/endpoints/{name}")))?;
            let daemon: DaemonInfo = rt.block_on(client.get("/v1/info"))?;
            Ok(exit_code(exec::run(&target(&info, &daemon), &cmd)?))
        }
        Command::Ls { json, quiet } => {
            let list: Vec<EndpointInfo> = rt.block_on(client.get("/v1/endpoints"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if quiet {
                for e in list {
                    println!("{}", e.name);
                }
            } else {
                println!(
                    "{:<20} {:<16} {:<16} {:<18} {:<13} PORTS",
                    "NAME", "MODE", "IP", "MAC", "CONTAINER"
                );
                for e in list {
                    let s = &e.network_settings;
                    // A container runtime's (CNI), by its short id.
                    let container: String = e
                        .container_id
                        .as_deref()
                        .map_or_else(|| "-".to_string(), |id| id.chars().take(12).collect());
                    println!(
                        "{:<20} {:<16} {:<16} {:<18} {:<13} {}",
                        e.name,
                        e.mode,
                        s.ip_address,
                        s.mac_address,
                        container,
                        compact_ports(&s.ports).join(", ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { format, names } => {
            // Like `docker inspect`: what was found is printed, what was not
            // is an error each, and any fails the command.
            let mut found = Vec::new();
            let mut failed = false;
            for name in &names {
                match rt.block_on(client.get::<EndpointInfo>(&format!("/v1/endpoints/{name}"))) {
                    Ok(info) => found.push(info),
                    Err(e) => {
                        eprintln!("netplane: {e:#}");
                        failed = true;
                    }
                }
            }
            match format {
                Some(template) => {
                    for info in &found {
                        println!("{}", render(&template, info)?);
                    }
                }
                None => println!("{}", serde_json::to_string_pretty(&found)?),
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Version => {
            println!("Client: netplane {}", env!("CARGO_PKG_VERSION"));
            match rt.block_on(client.get::<DaemonInfo>("/v1/info")) {
                Ok(daemon) => println!("Daemon: netplane {} (pid {})", daemon.version, daemon.pid),
                Err(e) => println!("Daemon: {e:#}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rm { force, names } => {
            let query = serde_urlencoded::to_string(RemoveQuery { force })?;
            Ok(each(names, |name| {
                let removed = rt
                    .block_on(client.delete::<Removed>(&format!("/v1/endpoints/{name}?{query}")))?;
                for process in &removed.killed {
                    eprintln!("killed {process}");
                }
                for endpoint in &removed.endpoints {
                    println!("{endpoint}");
                }
                Ok(())
            }))
        }
        Command::Network(NetworkCommand::Ls { quiet }) => {
            let nets: Vec<NetworkInfo> = rt.block_on(client.get("/v1/networks"))?;
            if quiet {
                nets.iter().for_each(|n| println!("{}", n.name));
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<16} {:<12} {:<8} {:<6} {:<18} ENDPOINTS",
                "NAME", "NETWORK ID", "DRIVER", "SCOPE", "SUBNET"
            );
            for n in nets {
                println!(
                    "{:<16} {:<12} {:<8} {:<6} {:<18} {}",
                    n.name,
                    &n.id[..12.min(n.id.len())],
                    n.driver,
                    n.scope,
                    n.subnet.unwrap_or_default(),
                    n.endpoints.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Network(NetworkCommand::Create {
            driver,
            subnets,
            gateways,
            ipv6,
            ipv6_masquerade,
            ip_range,
            internal,
            icc,
            mtu,
            options,
            labels,
            vni,
            encap,
            name,
        }) => {
            let (subnet, subnet6) = one_of_each("--subnet", &subnets, |n| match n {
                IpNet::V4(v4) => Ok(*v4),
                IpNet::V6(v6) => Err(*v6),
            })?;
            let (gateway, gateway6) = one_of_each("--gateway", &gateways, |a| match a {
                IpAddr::V4(v4) => Ok(*v4),
                IpAddr::V6(v6) => Err(*v6),
            })?;
            let net: NetworkInfo = rt.block_on(client.post(
                "/v1/networks",
                &CreateNetwork {
                    name,
                    driver,
                    subnet,
                    vni,
                    encap,
                    gateway,
                    ipv6,
                    subnet6,
                    gateway6,
                    ipv6_masquerade,
                    ip_range,
                    internal,
                    icc,
                    mtu,
                    options: options.into_iter().collect(),
                    labels: labels.into_iter().collect(),
                },
            ))?;
            println!("{}", net.id);
            Ok(ExitCode::SUCCESS)
        }
        Command::Network(NetworkCommand::Rm { names }) => Ok(each(names, |name| {
            rt.block_on(client.act(Method::DELETE, &format!("/v1/networks/{name}")))?;
            println!("{name}");
            Ok(())
        })),
        Command::Network(NetworkCommand::Prune) => {
            let pruned: Pruned = rt.block_on(client.post("/v1/networks/prune", &()))?;
            if !pruned.networks_deleted.is_empty() {
                println!("Deleted Networks:");
                pruned.networks_deleted.iter().for_each(|n| println!("{n}"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Network(NetworkCommand::Connect {
            ip,
            ip6,
            aliases,
            network,
            endpoint,
        }) => {
            let _: EndpointInfo = rt.block_on(client.post(
                &format!("/v1/networks/{network}/connect"),
                &ConnectRequest {
                    endpoint,
                    ip,
                    ip6,
                    aliases,
                },
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Network(NetworkCommand::Disconnect { network, endpoint }) => {
            let _: EndpointInfo = rt.block_on(client.post(
                &format!("/v1/networks/{network}/disconnect"),
                &DisconnectRequest { endpoint },
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Network(NetworkCommand::Inspect { name }) => {
            let net: NetworkInfo = rt.block_on(client.get(&format!("/v1/networks/{name}")))?;
            println!("{}", serde_json::to_string_pretty(&net)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Port(PortArgs {
            command:
                Some(PortCommand::Add {
                    name,
                    spec,
                    from,
                    proxy_protocol,
                }),
            ..
        }) => {
            let ports: Vec<PortInfo> = rt.block_on(client.post(
                &format!("/v1/endpoints/{name}/ports"),
                &PortRequest {
                    spec,
                    from,
                    proxy_protocol,
                },
            ))?;
            print_ports(&ports);
            Ok(ExitCode::SUCCESS)
        }
        Command::Port(PortArgs {
            command: Some(PortCommand::Rm { name, spec }),
            ..
        }) => {
            let ports: Vec<PortInfo> = rt.block_on(client.send(
                Method::DELETE,
                &format!("/v1/endpoints/{name}/ports"),
                &PortRequest {
                    spec,
                    from: Vec::new(),
                    proxy_protocol: false,
                },
            ))?;
            print_ports(&ports);
            Ok(ExitCode::SUCCESS)
        }
        Command::Port(PortArgs {
            command: None,
            name: Some(name),
            private,
        }) => {
            let ports: Vec<PortInfo> =
                rt.block_on(client.get(&format!("/v1/endpoints/{name}/ports")))?;
            let lines = docker_port_lines(&ports, private.as_deref());
            if lines.is_empty() && private.is_some() {
                bail!(
                    "no public port {} published for {name}",
                    private.unwrap_or_default()
                );
            }
            for line in lines {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Port(PortArgs {
            command: None,
            name: None,
            ..
        }) => {
            let ports: Vec<PortInfo> = rt.block_on(client.get("/v1/ports"))?;
            print_ports(&ports);
            Ok(ExitCode::SUCCESS)
        }
        Command::Port(PortArgs {
            command: Some(PortCommand::Ls { name, json }),
            ..
        }) => {
            let mut ports: Vec<PortInfo> = rt.block_on(client.get("/v1/ports"))?;
            if let Some(name) = &name {
                ports.retain(|p| &p.endpoint == name);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&ports)?);
            } else {
                print_ports(&ports);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Nat(NatCommand::Ls { json }) => {
            let table: NatTable = rt.block_on(client.get("/v1/nat"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&table)?);
            } else {
                print_nat(&table);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ct(CtCommand::Ls { json, endpoint }) => {
            let path = flows_path(endpoint)?;
            let flows: Vec<FlowInfo> = rt.block_on(client.get(&path))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&flows)?);
            } else {
                for flow in &flows {
                    println!("{}", conntrack_line(flow));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ct(CtCommand::Flush { endpoint }) => {
            let path = flows_path(endpoint)?;
            let flushed: Flushed = rt.block_on(client.delete(&path))?;
            eprintln!("{} flows removed", flushed.flows);
            Ok(ExitCode::SUCCESS)
        }
        Command::Monitor {
            drops,
            endpoint,
            json,
        } => {
            let query = serde_urlencoded::to_string(MonitorFilter { drops, endpoint })?;
            rt.block_on(
                client.stream_lines(&format!("/v1/monitor?{query}"), |line| {
                    let record: MonitorRecord = serde_json::from_str(line)?;
                    match record {
                        MonitorRecord::Started => {
                            eprintln!("monitoring data path events; interrupt to stop")
                        }
                        _ if json => println!("{line}"),
                        MonitorRecord::Event(e) => println!("{}", monitor::line(&e)),
                        MonitorRecord::Lost { events } => println!("lost {events} events"),
                    }
                    std::io::Write::flush(&mut std::io::stdout())?;
                    Ok(())
                }),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { name: None, .. } => {
            let stats: Stats = rt.block_on(client.get("/v1/stats"))?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats {
            name: Some(name),
            json,
        } => {
            let stats: EndpointStats = rt.block_on(client.get(&format!("/v1/stats/{name}")))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print_endpoint_stats(&stats);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn target(info: &EndpointInfo, daemon: &DaemonInfo) -> exec::Target {
    let host = info.mode == "host";
    exec::Target {
        netns: PathBuf::from(if host {
            &daemon.netns
        } else {
            &info.network_settings.sandbox_key
        }),
        etc_name: (!host).then(|| info.name.clone()),
        hostname: info.hostname.clone().filter(|_| !host),
    }
}

/// Ports `a` to `b`, as Docker writes them: `80`, or `8000-8010`.
fn port_range(a: u16, b: u16) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// `docker ps`'s PORTS column: runs of consecutive ports of one rule as
/// one range, `0.0.0.0:8000-8010->80-90/tcp`.
fn compact_ports(ports: &BTreeMap<String, Vec<HostBinding>>) -> Vec<String> {
    let mut bindings: Vec<(String, String, u16, u16)> = ports
        .iter()
        .flat_map(|(cport, hosts)| {
            let (port, proto) = cport.split_once('/').unwrap_or((cport, "tcp"));
            let port: u16 = port.parse().unwrap_or_default();
            hosts.iter().map(move |h| {
                let host_port = h.host_port.parse().unwrap_or_default();
                (h.host_ip.clone(), proto.to_string(), port, host_port)
            })
        })
        .collect();
    bindings.sort();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bindings.len() {
        let (ip, proto, cstart, hstart) = &bindings[i];
        let mut j = i;
        while let Some(next) = bindings.get(j + 1) {
            let cur = &bindings[j];
            if next.0 != cur.0 || next.1 != cur.1 || next.2 != cur.2 + 1 || next.3 != cur.3 + 1 {
                break;
            }
            j += 1;
        }
        let (_, _, cend, hend) = &bindings[j];
        out.push(format!(
            "{ip}:{}->{}/{proto}",
            port_range(*hstart, *hend),
            port_range(*cstart, *cend)
        ));
        i = j + 1;
    }
    out
}

/// `docker port NAME [CPORT[/PROTO]]`: `80/tcp -> 0.0.0.0:8080`, one line
/// per endpoint port and host binding.
fn docker_port_lines(ports: &[PortInfo], only: Option<&str>) -> Vec<String> {
    let only = only.map(|o| match o.split_once('/') {
        Some((port, proto)) => (port.to_string(), proto.to_string()),
        None => (o.to_string(), "tcp".to_string()),
    });
    let mut lines = Vec::new();
    for p in ports {
        for offset in 0..=(p.container_port_end - p.container_port) {
            let cport = p.container_port + offset;
            if only
                .as_ref()
                .is_some_and(|(port, proto)| *port != cport.to_string() || *proto != p.proto)
            {
                continue;
            }
            let binding = std::net::SocketAddr::new(p.host_ip, p.host_port + offset).to_string();
            lines.push(if only.is_some() {
                binding
            } else {
                format!("{cport}/{} -> {binding}", p.proto)
            });
        }
    }
    lines
}

/// `value` through the Go template `template`, with Docker's `json`
/// function besides Go's own.
fn render(template: &str, value: &impl serde::Serialize) -> anyhow::Result<String> {
    fn to_json(v: &gotmpl::Value) -> serde_json::Value {
        use gotmpl::Value;
        match v {
            Value::Nil | Value::Function(_) => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::Uint(u) => (*u).into(),
            Value::Float(f) => (*f).into(),
            Value::String(s) => s.as_ref().into(),
            Value::List(l) => l.iter().map(to_json).collect(),
            Value::Map(m) => m.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect(),
        }
    }
    let data = gotmpl::to_value(value).context("preparing the template's data")?;
    let parsed = gotmpl::Template::new("format")
        .func("json", |args| {
            let json = args.first().map(to_json).unwrap_or_default();
            Ok(gotmpl::Value::String(json.to_string().into()))
        })
        .parse(template)
        .with_context(|| format!("template {template:?}"))?;
    parsed
        .execute_to_string(&data)
        .with_context(|| format!("template {template:?}"))
}

/// `docker port`'s shape: `80/tcp -> 0.0.0.0:8080`, one line per rule.
fn print_ports(ports: &[PortInfo]) {
    for p in ports {
        let from = if p.from.is_empty() {
            String::new()
        } else {
            format!(" from {}", p.from.join(","))
        };
        let host_ip = match p.host_ip {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        println!(
            "{:<20} {}/{} -> {host_ip}:{}{from}",
            p.endpoint,
            port_range(p.container_port, p.container_port_end),
            p.proto,
            port_range(p.host_port, p.host_port_end)
        );
    }
}

/// The drop reasons that counted any packet, each as `show` puts it.
fn counted(drops: &BTreeMap<String, u64>, show: impl Fn(&str, u64) -> String) -> Vec<String> {
    drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(reason, n)| show(reason, *n))
        .collect()
}

/// An endpoint's counters, and its drops that are not zero.
fn print_endpoint_stats(s: &EndpointStats) {
    println!("endpoint {} (host veth {})", s.endpoint, s.interface);
    println!("  rx {:>12} packets {:>16} bytes", s.rx_packets, s.rx_bytes);
    println!("  tx {:>12} packets {:>16} bytes", s.tx_packets, s.tx_bytes);
    let drops = counted(&s.drops, |reason, n| format!("{reason} {n}"));
    println!(
        "  dropped: {}",
        if drops.is_empty() {
            "none".to_string()
        } else {
            drops.join(", ")
        }
    );
}

/// `/v1/flows`, of one endpoint or all.
fn flows_path(endpoint: Option<String>) -> anyhow::Result<String> {
    let query = serde_urlencoded::to_string(FlowFilter { endpoint })?;
    Ok(format!("/v1/flows?{query}"))
}

/// The shape of `conntrack -L`: each direction's tuple and counters, then
/// the times and the endpoint.
fn conntrack_line(flow: &FlowInfo) -> String {
    let tuple = |t: &FlowTuple| {
        format!(
            "src={} dst={} sport={} dport={} packets={} bytes={}",
            t.src, t.dst, t.sport, t.dport, t.packets, t.bytes
        )
    };
    format!(
        "{:<5} {:<11} {} {} age={}s idle={}s expires={}s endpoint={}",
        flow.proto,
        flow.state,
        tuple(&flow.original),
        tuple(&flow.reply),
        flow.age_secs,
        flow.idle_secs,
        flow.expires_secs,
        flow.endpoint.as_deref().unwrap_or("-")
    )
}

/// The shape of `iptables -t nat -nvL`.
fn print_nat(table: &NatTable) {
    println!(
        "{:>8} {:>10} {:<10} {:<5} {:<18} {:<18} ",
        "pkts", "bytes", "target", "prot", "source", "destination"
    );
    for r in &table.rules {
        // After the rule, like a comment match in iptables' listing.
        let dropped = counted(&r.drops, |reason, n| format!("{reason}={n}"));
        let dropped = if dropped.is_empty() {
            String::new()
        } else {
            format!(" /* dropped: {} */", dropped.join(" "))
        };
        // Once the forwarder relayed or refused anything under the rule.
        let relayed = r
            .proxied
            .as_ref()
            .filter(|p| p.connections > 0 || !p.refused.is_empty());
        let proxied = relayed.map_or(String::new(), |p| {
            let refused = counted(&p.refused, |reason, n| format!(" {reason}={n}"));
            format!(
                " /* proxied: connections={} active={} bytes_in={} bytes_out={}{} */",
                p.connections,
                p.active,
                p.bytes_in,
                p.bytes_out,
                refused.concat()
            )
        });
        println!(
            "{:>8} {:>10} {:<10} {:<5} {:<18} {:<18} {}{dropped}{proxied}",
            r.packets, r.bytes, r.target, r.prot, r.source, r.destination, r.detail
        );
    }
    println!("\ntracked flows: {}", table.tracked_flows);
    let drops = counted(&table.drops, |reason, n| format!("{reason}={n}"));
    if !drops.is_empty() {
        println!("drops: {}", drops.join(" "));
    }
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// `up --detach`: starts `up` in the background with its log in the run
/// directory and returns once its API answers.
fn detach(
    run_dir: &Path,
    client: &Client,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    // A running daemon's log and socket are left as they are. One that
    // was just killed may still hold its socket for a moment, without
    // answering: the new one waits for it to be gone.
    if client.daemon_listens() {
        let answer = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(2), client.get::<DaemonInfo>("/v1/info")).await
        });
        if let Ok(Ok(running)) = answer {
            bail!(
                "a netplane daemon already runs here (pid {}, API in {}); `netplane down` stops it",
                running.pid,
                run_dir.display()
            );
        }
    }
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let log_path = run_dir.join("netplane.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(&args)
        .env("NETPLANE_RUN_DIR", run_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the daemon")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the daemon exited ({status}):\n{}", log.trim_end());
        }
        if rt.block_on(client.get::<DaemonInfo>("/v1/info")).is_ok() {
            println!(
                "netplane daemon {} running; log in {}",
                child.id(),
                log_path.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "the daemon did not answer within 60 s; see {}",
        log_path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(ip: &str, port: u16) -> HostBinding {
        HostBinding {
            host_ip: ip.into(),
            host_port: port.to_string(),
            allowed_from: Vec::new(),
        }
    }

    #[test]
    fn consecutive_ports_are_listed_as_ranges() {
        let mut ports = BTreeMap::new();
        for (i, c) in (80..=90).enumerate() {
            ports.insert(
                format!("{c}/tcp"),
                vec![binding("0.0.0.0", 8000 + i as u16)],
            );
        }
        ports.insert("53/udp".into(), vec![binding("127.0.0.1", 5353)]);
        // 100 and 101 map to ports that are not consecutive: two entries.
        ports.insert("100/tcp".into(), vec![binding("0.0.0.0", 9000)]);
        ports.insert("101/tcp".into(), vec![binding("0.0.0.0", 9005)]);
        assert_eq!(
            compact_ports(&ports),
            [
                "0.0.0.0:8000-8010->80-90/tcp",
                "0.0.0.0:9000->100/tcp",
                "0.0.0.0:9005->101/tcp",
                "127.0.0.1:5353->53/udp",
            ]
        );
    }

    #[test]
    fn docker_port_lists_each_port_and_one_on_its_own() {
        let rule = PortInfo {
            endpoint: "web".into(),
            endpoint_ip: "172.17.0.2".parse().unwrap(),
            host_ip: "0.0.0.0".parse().unwrap(),
            host_port: 8000,
            host_port_end: 8001,
            container_port: 80,
            container_port_end: 81,
            proto: "tcp".into(),
            from: Vec::new(),
        };
        assert_eq!(
            docker_port_lines(std::slice::from_ref(&rule), None),
            ["80/tcp -> 0.0.0.0:8000", "81/tcp -> 0.0.0.0:8001"]
        );
        assert_eq!(
            docker_port_lines(std::slice::from_ref(&rule), Some("81")),
            ["0.0.0.0:8001"]
        );
        assert!(docker_port_lines(&[rule], Some("81/udp")).is_empty());
    }

    #[test]
    fn templates_reach_fields_ranges_and_json() {
        let value = serde_json::json!({
            "Name": "web",
            "NetworkSettings": {
                "IPAddress": "172.17.0.2",
                "Networks": {"bridge": {"IPAddress": "172.17.0.2"}},
                "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}
            }
        });
        assert_eq!(
            render("{{.Name}} {{.NetworkSettings.IPAddress}}", &value).unwrap(),
            "web 172.17.0.2"
        );
        assert_eq!(
            render(
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &value
            )
            .unwrap(),
            "172.17.0.2"
        );
        assert_eq!(
            render("{{json .NetworkSettings.Ports}}", &value).unwrap(),
            r#"{"80/tcp":[{"HostIp":"0.0.0.0","HostPort":"8080"}]}"#
        );
        assert!(render("{{.Name", &value).is_err());
    }
}
