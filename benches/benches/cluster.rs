//! Clusters of 5, 10 and 20 simulated hosts through a three-member etcd
//! (see `netplane_test_support::cluster`): join time per host, time for
//! the mesh to converge, pings between every pair, daemon memory, keys in
//! the store, and how fast a killed host drops out; once per size, written
//! beside criterion's results for the report. `tests/cluster.rs` runs the
//! same with 5 hosts in the test suite, so `cargo test` skips it here.

use netplane_benches::write_measured_once;
use netplane_test_support::cluster::Cluster;

/// Where in `target/criterion` the runs are written; the report reads
/// them from there.
const CLUSTER_FILE: &str = "cluster.json";

/// The cluster sizes measured.
const SIZES: [usize; 3] = [5, 10, 20];

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("cluster: measured by `cargo bench` only; tests/cluster.rs runs 5 hosts");
        return;
    }
    let runs: Vec<_> = SIZES
        .into_iter()
        .map(|size| {
            let run = Cluster::run(size);
            println!("cluster of {size}: {run:?}");
            run
        })
        .collect();
    write_measured_once(CLUSTER_FILE, &runs);
}
