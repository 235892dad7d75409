//! Five hosts, each its own netplane daemon, on one switch with a
//! three-member etcd: they join one by one, every pair of endpoints pings
//! and names resolve across hosts; an etcd member killed changes nothing;
//! a host killed leaves every other host's routes and names within its
//! session's TTL and gets its lease back when it returns. `cargo xtask
//! bench` runs the same with 5, 10 and 20 hosts.

use netplane_test_support::{cluster::Cluster, figure};

#[test]
fn five_hosts_join_converge_lose_a_member_and_a_host() {
    let f = Cluster::run(5);
    figure("cluster5.join_ms_max", f.join_ms.iter().max().unwrap());
    figure("cluster5.converge_ms", f.converge_ms);
    figure("cluster5.ping_all_pairs_ms", f.ping_all_pairs_ms);
    figure("cluster5.store_keys", f.store_keys);
    figure("cluster5.host_gone_ms", f.host_gone_ms);
    // A killed host drops out once its session expires: within its TTL,
    // with room for the resyncs of a loaded machine.
    let ttl_ms = u128::from(netplane_test_support::cluster::TTL) * 1000;
    assert!(f.host_gone_ms < ttl_ms + 5000, "{f:?}");
}
