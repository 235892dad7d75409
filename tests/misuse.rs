//! Careless and hostile requests to the control plane: each is refused
//! with a client error naming the object, and none destroys what netplane
//! does not own.

mod support;

use support::{HOST_IP, Host, sh_ok};

/// The HTTP status of `METHOD path` with a JSON `body` on `h`'s API.
fn status(h: &Host, method: &str, path: &str, body: &str) -> u16 {
    let code = sh_ok(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --unix-socket {} -X {method} \
         -H 'content-type: application/json' -d '{body}' http://netplane{path}",
        h.run_dir().join("netplane.sock").display()
    ));
    code.trim().parse().unwrap()
}

fn routes(h: &Host) -> String {
    h.in_host("ip route show table all")
}

#[test]
fn overlay_subnets_never_take_the_hosts_routes_and_bad_ones_are_4xx() {
    let h = Host::new();
    h.up(&[]);
    let info: serde_json::Value = serde_json::from_str(&h.np_ok(&["info"])).unwrap();
    let bridge: ipnet::Ipv4Net = info["Subnet"].as_str().unwrap().parse().unwrap();
    let web = h.name("web");
    h.np_ok(&["create", &web]);
    let before = routes(&h);
    let uplink = format!("{}/24", HOST_IP);
    for (subnet, says) in [
        (bridge.trunc().to_string(), bridge.trunc().to_string()),
        ("0.0.0.0/0".to_string(), "0.0.0.0/8".to_string()),
        (uplink.clone(), "198.18.0.0/24".to_string()),
        ("198.18.0.0/16".to_string(), "198.18.0.0/24".to_string()),
        ("127.0.0.0/24".to_string(), "loopback".to_string()),
    ] {
        let body = format!(r#"{{"name":"ovx","driver":"overlay","subnet":"{subnet}"}}"#);
        assert_eq!(status(&h, "POST", "/v1/networks", &body), 400, "{subnet}");
        let err = h.np_err(&[
            "network", "create", "--driver", "overlay", "--subnet", &subnet, "ovx",
        ]);
        assert!(
            err.contains("overlaps") && err.contains(&says),
            "{subnet}: {err}"
        );
    }
    assert_eq!(routes(&h), before, "the host's routes are as they were");

    // Too narrow, or a VNI past 24 bits: the request's fault.
    for body in [
        r#"{"name":"ovx","driver":"overlay","subnet":"10.207.0.0/25"}"#,
        r#"{"name":"ovx","driver":"overlay","subnet":"10.207.0.0/16","vni":16777216}"#,
    ] {
        assert_eq!(status(&h, "POST", "/v1/networks", body), 400, "{body}");
    }

    // One overlay is fine; a second over it, or by its name in another
    // case, is not.
    h.create_overlay("ov", "10.207.0.0/16");
    let err = h.np_err(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--subnet",
        "10.207.128.0/17",
        "ov2",
    ]);
    assert!(err.contains("overlaps 10.207.0.0/16"), "{err}");
    let err = h.np_err(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--subnet",
        "10.208.0.0/16",
        "OV",
    ]);
    assert!(err.contains("already has that name"), "{err}");
    h.np_ok(&["network", "rm", "ov"]);
    assert_eq!(routes(&h), before, "removing the overlay took only its own");
    assert!(h.pings(&web, &bridge.hosts().next().unwrap().to_string()));

    // An address already leased is a conflict, not the store's error.
    let ip = h.ip_of(&web);
    let body = format!(r#"{{"name":"second","net":"bridge","ip":"{ip}","publish":[],"links":[]}}"#);
    assert_eq!(status(&h, "POST", "/v1/endpoints", &body), 400);
    let err = h.np_err(&["create", &h.name("second"), "--ip", &ip]);
    assert!(err.contains(&ip) && err.contains("already leased"), "{err}");
}
