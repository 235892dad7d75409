//! netplane as a CNI plugin: driven directly with the spec's environment
//! (every verb, the awkward orders a runtime may call them in), and by
//! Podman 4.3 with its CNI backend, a runtime netplane did not write.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use netplane_test_support as support;

use serde_json::{Value, json};
use support::{HOST_IP, Host, WORLD_IP, netplane_bin, podman::Podman, sh_ok, stdout_if_ok};

/// Runs the plugin as a runtime does: `CNI_COMMAND=verb` and the other
/// variables, `conf` on stdin. Its exit status, and stdout as JSON (null
/// when empty).
fn call(
    verb: &str,
    conf: &Value,
    container: &str,
    netns: &str,
    ifname: &str,
    args: &str,
) -> (bool, Value) {
    let mut child = Command::new(netplane_bin())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_ARGS", args)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A plugin may answer VERSION without reading its config, and be
    // gone before it is written.
    let written = child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes());
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let out: Output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };
    (out.status.success(), value)
}

/// The configuration of CNI network `name` for netplane network `network`
/// of `subnet`, on the daemon of `h`.
fn conf(h: &Host, name: &str, network: &str, subnet: &str, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": name,
        "type": "netplane",
        "network": network,
        "subnet": subnet,
        "runDir": h.run_dir(),
    })
}

/// A namespace as a runtime makes one: /run/netns/NAME, nothing in it.
fn runtime_netns(h: &Host, short: &str) -> String {
    let name = h.name(short);
    sh_ok(&format!("ip netns add {name}"));
    format!("/run/netns/{name}")
}

fn ns_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap()
}

#[test]
fn every_verb_of_the_spec_driven_directly() {
    let h = Host::new();
    h.up(&["--dns", WORLD_IP]);
    let net = h.name("np");
    let c = conf(&h, "cninet", &net, "10.89.0.0/24", "1.0.0");
    let ns1 = runtime_netns(&h, "c1");
    let id1 = "0123456789abcdef0123456789abcdef";
    let name1 = h.name("web");
    let args1 = format!("IgnoreUnknown=1;K8S_POD_NAME={name1}");
    // VERSION: what the plugin speaks.
    let (ok, v) = call("VERSION", &json!({"cniVersion": "1.1.0"}), "", "", "", "");
    assert!(ok, "{v}");
    let versions: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for wanted in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.contains(&wanted), "{v}");
    }

    // ADD: the network is made from the configuration's subnet; the
    // result is the spec's, and true of the namespace.
    let (ok, r) = call("ADD", &c, id1, &ns1, "eth0", &args1);
    assert!(ok, "{r}\n{}", h.log());
    assert_eq!(r["cniVersion"], "1.0.0");
    let ifaces = r["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 2, "{r}");
    assert!(
        ifaces[0]["name"].as_str().unwrap().starts_with("npv"),
        "{r}"
    );
    assert_eq!(ifaces[1]["name"], "eth0");
    assert_eq!(ifaces[1]["sandbox"], ns1.as_str());
    assert_eq!(r["ips"][0]["interface"], 1);
    assert_eq!(r["ips"][0]["address"], "10.89.0.2/24");
    assert_eq!(r["ips"][0]["gateway"], "10.89.0.1");
    assert_eq!(
        r["routes"][0],
        json!({"dst": "0.0.0.0/0", "gw": "10.89.0.1"})
    );
    assert_eq!(r["dns"]["nameservers"], json!(["10.89.0.1"]));
    let in1 = |cmd: &str| stdout_if_ok(h.in_endpoint(ns_name(&ns1), cmd)).unwrap_or_default();
    let link = in1("ip -j link show eth0");
    assert!(link.contains(ifaces[1]["mac"].as_str().unwrap()), "{link}");
    assert!(in1("ip -4 addr show eth0").contains("10.89.0.2/24"));
    assert!(in1("ip route").contains("default via 10.89.0.1 dev eth0"));
    // The runtime's namespace has IPv6 on; its interface on this IPv4
    // network does not, so it sends nothing the data path must drop.
    assert_eq!(in1("ip -6 addr show dev eth0"), "");
    assert_eq!(h.drops("unknown_l3"), 0);
    assert!(
        h.in_endpoint(ns_name(&ns1), "ping -c1 -W2 10.89.0.1")
            .status
            .success(),
        "the gateway answers through the data path"
    );

    // Seen by netplane with the container id, and not netplane's to remove.
    let inspect: Value = serde_json::from_str(&h.np_ok(&["inspect", &name1])).unwrap();
    assert_eq!(inspect[0]["ContainerId"], id1, "{inspect}");
    assert_eq!(inspect[0]["NetworkSettings"]["SandboxKey"], ns1.as_str());
    assert!(h.np_ok(&["ls"]).contains(&name1));
    let refused = h.np_err(&["rm", "-f", &name1]);
    assert!(
        refused.contains(id1) && refused.contains("container runtime"),
        "{refused}"
    );

    // ADD again for the same container and interface: the same answer.
    let (ok, again) = call("ADD", &c, id1, &ns1, "eth0", &args1);
    assert!(ok, "{again}");
    assert_eq!(again["ips"], r["ips"]);

    // CHECK, with the result the runtime kept.
    let mut with_prev = c.clone();
    with_prev["prevResult"] = r.clone();
    let (ok, e) = call("CHECK", &with_prev, id1, &ns1, "eth0", &args1);
    assert!(ok, "{e}");

    // A second container, asking for its address with IP=.
    let ns2 = runtime_netns(&h, "c2");
    let id2 = "fedcba9876543210";
    let (ok, r2) = call(
        "ADD",
        &c,
        id2,
        &ns2,
        "eth0",
        &format!("K8S_POD_NAME={};IP=10.89.0.50", h.name("db")),
    );
    assert!(ok, "{r2}");
    assert_eq!(r2["ips"][0]["address"], "10.89.0.50/24");
    assert!(
        h.in_endpoint(ns_name(&ns2), "ping -c1 -W2 10.89.0.2")
            .status
            .success(),
        "containers of one network reach each other"
    );
    let answer = stdout_if_ok(h.in_endpoint(
        ns_name(&ns2),
        &format!("dig +short +tries=1 +time=2 @10.89.0.1 {name1}"),
    ))
    .unwrap_or_default();
    assert_eq!(answer.trim(), "10.89.0.2", "the embedded DNS names it");

    // CHECK after someone deleted the veth: an error saying what differs.
    let veth = ifaces[0]["name"].as_str().unwrap();
    h.in_host(&format!("ip link del {veth}"));
    let (ok, e) = call("CHECK", &with_prev, id1, &ns1, "eth0", &args1);
    assert!(!ok);
    let details = e["details"].as_str().unwrap();
    assert!(
        details.contains(&format!("host interface {veth} is missing"))
            && details.contains("interface eth0 is missing"),
        "{e}"
    );
    assert!(
        e["code"].as_u64().unwrap() > 0 && e["msg"].is_string(),
        "{e}"
    );

    // DEL: then again, and without ADD, and for a namespace gone: success.
    let (ok, e) = call("DEL", &c, id1, &ns1, "eth0", &args1);
    assert!(ok, "{e}");
    let (ok, e) = call("DEL", &c, id1, &ns1, "eth0", &args1);
    assert!(ok, "DEL twice: {e}");
    let (ok, e) = call("DEL", &c, "never-added", "/run/netns/nonesuch", "eth0", "");
    assert!(ok, "DEL without ADD: {e}");
    assert!(!h.np_ok(&["ls"]).contains(&name1));

    // GC with a partial list: only what it names stays.
    let ns3 = runtime_netns(&h, "c3");
    let (ok, r3) = call("ADD", &c, "third", &ns3, "eth0", "");
    assert!(ok, "{r3}");
    let mut gc = c.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": id2, "ifname": "eth0"}]);
    let (ok, e) = call("GC", &gc, "", "", "", "");
    assert!(ok, "{e}");
    let ls = h.np_ok(&["ls"]);
    assert!(ls.contains(&h.name("db")), "{ls}");
    assert!(!ls.contains("cni-third"), "{ls}");
    assert!(
        !sh_ok(&format!("ip -n {} link", ns_name(&ns3))).contains("eth0"),
        "GC took its interface"
    );

    // STATUS: ready while the daemon runs; 50 once it is gone, and ADD
    // says to try again later.
    let mut status = c.clone();
    status["cniVersion"] = json!("1.1.0");
    let (ok, e) = call("STATUS", &status, "", "", "", "");
    assert!(ok, "{e}");
    h.kill_daemon();
    let (ok, e) = call("STATUS", &status, "", "", "", "");
    assert!(!ok);
    assert_eq!(e["code"], 50, "{e}");
    let ns4 = runtime_netns(&h, "c4");
    let (ok, e) = call("ADD", &c, "fourth", &ns4, "eth0", "");
    assert!(!ok);
    assert_eq!(e["code"], 11, "{e}");
    assert!(
        e["details"].as_str().unwrap().contains("netplane up"),
        "{e}"
    );
    assert_eq!(
        sh_ok(&format!("ip -n {} -o link", ns_name(&ns4)))
            .lines()
            .count(),
        1
    );
}

#[test]
fn a_dual_stack_network_gives_containers_an_address_of_each_family() {
    let h = Host::new();
    h.up(&["--dns", WORLD_IP]);
    let net = h.name("ds");
    h.np_ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.91.0.0/24",
        "--subnet",
        "fd00:91::/64",
        &net,
    ]);
    let c = conf(&h, "dual", &net, "10.91.0.0/24", "1.0.0");
    let ns = runtime_netns(&h, "c1");
    let (ok, r) = call("ADD", &c, "dualstack1", &ns, "eth0", "");
    assert!(ok, "{r}");
    assert_eq!(
        r["ips"][1],
        json!({"interface": 1, "address": "fd00:91::2/64", "gateway": "fd00:91::1"}),
        "{r}"
    );
    assert_eq!(r["routes"][1], json!({"dst": "::/0", "gw": "fd00:91::1"}));
    let inside = |cmd: &str| stdout_if_ok(h.in_endpoint(ns_name(&ns), cmd)).unwrap_or_default();
    assert!(inside("ip -6 addr show dev eth0").contains("fd00:91::2/64"));
    assert!(
        h.in_endpoint(ns_name(&ns), "ping -6 -c1 -W2 fd00:91::1")
            .status
            .success(),
        "the IPv6 gateway, through the data path's IPv6 checks"
    );
    let (ok, e) = call("DEL", &c, "dualstack1", &ns, "eth0", "");
    assert!(ok, "{e}");
}

/// Where the hosts of the Podman tests serve metrics, in their namespaces.
const METRICS: &str = "127.0.0.1:9464";

/// A host with netplane up, and Podman there with CNI network `np`
/// (netplane network of the same name, 10.89.0.0/24).
fn podman_host() -> (Host, Podman) {
    let h = Host::new();
    h.up(&["--dns", WORLD_IP, "--metrics", METRICS]);
    let p = Podman::new(&h);
    p.add_netplane_network(&h, "np", "np", "10.89.0.0/24");
    (h, p)
}

#[test]
fn podman_publishes_a_port_through_netplane() {
    let (h, p) = podman_host();
    let id = p.httpd("web", "np", &["-p", "8080:80"]);
    let page = support::retry(|| {
        stdout_if_ok(h.in_world(&format!("curl -s --max-time 2 http://{HOST_IP}:8080/")))
            .filter(|s| s.contains("hello from podman"))
    });
    assert!(
        page.is_some(),
        "the outside reaches the container\n{}",
        h.log()
    );
    let log = p.logs("web");
    assert!(
        log.contains(WORLD_IP),
        "httpd sees the client's own address: {log}"
    );
    let local = h.in_host("curl -s --max-time 2 http://127.0.0.1:8080/");
    assert!(
        local.contains("hello from podman"),
        "the host on loopback: {local}"
    );

    // netplane shows it with the container's id, its rule, flows and
    // counters.
    let ls = h.np_ok(&["ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("web ") && l.contains(&id[..12])),
        "{ls}"
    );
    let nat = h.np_ok(&["nat", "ls"]);
    assert!(
        nat.lines()
            .any(|l| l.contains("dpt:8080") && l.contains("to:10.89.0.2:80")),
        "{nat}"
    );
    let flows = h.np_ok(&["ct", "ls", "--endpoint", "web"]);
    assert!(flows.contains(WORLD_IP), "{flows}");
    let samples = h.scrape(METRICS);
    let received = support::sample(
        &samples,
        "netplane_endpoint_packets_total",
        &[("endpoint", "web"), ("direction", "rx")],
    );
    assert!(received > 0.0, "{samples:?}");
    let inspect: Value = serde_json::from_str(&h.np_ok(&["inspect", "web"])).unwrap();
    assert_eq!(inspect[0]["ContainerId"], id.as_str(), "{inspect}");
    assert!(h.np_ok(&["port", "ls", "web"]).contains("8080"));
    let refused = h.np_err(&["rm", "-f", "web"]);
    assert!(refused.contains(&id), "{refused}");
}

/// `curl` of the published port 8080 from the world, until it answers.
fn world_page(h: &Host) -> Option<String> {
    support::retry(|| {
        stdout_if_ok(h.in_world(&format!("curl -s --max-time 2 http://{HOST_IP}:8080/")))
            .filter(|s| s.contains("hello from podman"))
    })
}

/// What netplane and the host show of containers: endpoints, published
/// ports, tracked flows, the host's links.
fn footprint(h: &Host) -> (String, String, String, usize) {
    (
        h.np_ok(&["ls", "-q"]),
        h.np_ok(&["port", "ls"]),
        h.np_ok(&["ct", "ls"])
            .lines()
            .filter(|l| l.contains("10.89."))
            .collect::<Vec<_>>()
            .join("\n"),
        h.in_host("ip -o link").lines().count(),
    )
}

#[test]
fn podman_containers_find_each_other_by_name_and_other_networks_are_apart() {
    let (h, p) = podman_host();
    p.add_netplane_network(&h, "other", "other", "10.90.0.0/24");
    p.httpd("web", "np", &[]);
    // busybox-static's wget cannot resolve (static glibc without NSS):
    // its nslookup asks the container's resolver (podman's copy of the
    // result's `dns`), and nc fetches from the answer, giving up after 2 s.
    let fetch = |network: &str, target: &str| {
        let script = format!(
            "a=$(nslookup {target} | awk '/^Address: /{{print $2}}' | tail -1); \
             echo resolved ${{a:-nothing}}; \
             printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 ${{a:-{target}}} 80"
        );
        let out = p.run_once(network, &["/bin/sh", "-c", &script]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let page = support::retry(|| Some(fetch("np", "web")).filter(|p| p.contains("hello")));
    assert!(
        page.is_some(),
        "by name, through netplane's DNS\n{}",
        h.log()
    );
    assert!(page.unwrap().contains("resolved 10.89.0.2"));
    let apart = fetch("other", "10.89.0.2");
    assert!(
        !apart.contains("hello"),
        "a container of another network cannot reach it: {apart}"
    );
    let apart = fetch("other", "web");
    assert!(!apart.contains("hello"), "nor find it: {apart}");
    assert!(
        h.np_ok(&["network", "ls"]).contains("other"),
        "made from its subnet"
    );
}

#[test]
fn podman_stop_start_and_rm_leave_nothing_behind() {
    let (h, p) = podman_host();
    h.np_ok(&["network", "create", "--subnet", "10.89.0.0/24", "np"]);
    let before = footprint(&h);
    let netns_before = support::podman::podman_namespaces();
    p.httpd("web", "np", &["-p", "8080:80"]);
    assert!(world_page(&h).is_some(), "{}", h.log());
    assert_ne!(footprint(&h), before);

    p.ok(&["stop", "-t", "0", "web"]);
    assert_eq!(
        footprint(&h),
        before,
        "stop: no endpoint, port, flow or link"
    );
    p.ok(&["start", "web"]);
    assert!(world_page(&h).is_some(), "start: published again");
    p.ok(&["rm", "-f", "web"]);
    assert_eq!(footprint(&h), before, "rm -f");

    let out = p.run_once(
        "np",
        &["/bin/wget", "-qO-", "-T", "2", "http://10.89.0.1:1/"],
    );
    assert!(!out.status.success(), "nothing listens there");
    assert_eq!(footprint(&h), before, "run --rm");
    assert_eq!(support::podman::podman_namespaces(), netns_before);
}

#[test]
fn podman_traffic_outlives_a_killed_daemon_and_rm_cleans_up_after_up() {
    let (h, p) = podman_host();
    h.np_ok(&["network", "create", "--subnet", "10.89.0.0/24", "np"]);
    let before = footprint(&h);
    p.httpd("web", "np", &["-p", "8080:80"]);
    assert!(world_page(&h).is_some());
    h.kill_daemon();
    assert!(world_page(&h).is_some(), "the data path serves on");
    h.up(&["--dns", WORLD_IP]);
    assert!(world_page(&h).is_some(), "and after up");
    p.ok(&["rm", "-f", "web"]);
    assert_eq!(footprint(&h), before);
}

#[test]
fn podman_run_without_the_daemon_fails_with_the_plugins_message() {
    let h = Host::new();
    let p = Podman::new(&h);
    p.add_netplane_network(&h, "np", "np", "10.89.0.0/24");
    let links = h.in_host("ip -o link");
    let netns_before = support::podman::podman_namespaces();
    let rootfs = p.rootfs();
    let mut args = vec!["run", "-d", "--name", "web", "--network", "np"];
    args.extend(support::podman::ULIMITS);
    args.extend(["--rootfs", rootfs.to_str().unwrap(), "/bin/httpd", "-f"]);
    let out = p.run(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no netplane daemon answers") && err.contains("netplane up"),
        "{err}"
    );
    assert_eq!(h.in_host("ip -o link"), links, "no link half made");
    // The container stays created, as after any failed start; its
    // namespace goes with it.
    p.ok(&["rm", "-f", "web"]);
    assert_eq!(support::podman::podman_namespaces(), netns_before);
    h.up(&["--dns", WORLD_IP]);
    assert_eq!(h.np_ok(&["ls", "-q"]), "", "no endpoint half made");
}
