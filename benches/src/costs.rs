//! Each eBPF program's own cost under real traffic, as the kernel counts
//! it (run time over run count) while statistics are on. They are turned
//! on with BPF_ENABLE_STATS, which lasts as long as its descriptor: the
//! machine's `kernel.bpf_stats_enabled` is never written.

use std::{collections::BTreeMap, os::fd::OwnedFd};

use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};

/// What netplane's programs are named with (the kernel keeps 15 bytes).
const PREFIX: &str = "np_";

/// Run time and count of one program over a measurement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramCost {
    pub runs: u64,
    pub run_time_ns: u64,
}

impl ProgramCost {
    pub fn ns_per_run(&self) -> f64 {
        self.run_time_ns as f64 / self.runs.max(1) as f64
    }
}

#[derive(Debug)]
/// Statistics on, and the counts netplane's programs had when they went on.
pub struct Measurement {
    _on: OwnedFd,
    before: BTreeMap<u32, (String, ProgramCost)>,
}

impl Measurement {
    pub fn start() -> Measurement {
        let on = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS");
        Measurement {
            _on: on,
            before: programs(),
        }
    }

    /// The cost of each of netplane's programs that ran since
    /// [`Measurement::start`], by name, summed over programs of one name.
    pub fn finish(self) -> BTreeMap<String, ProgramCost> {
        let mut costs: BTreeMap<String, ProgramCost> = BTreeMap::new();
        for (id, (name, now)) in programs() {
            let before = self
                .before
                .get(&id)
                .map(|(_, c)| c.clone())
                .unwrap_or_default();
            let runs = now.runs.saturating_sub(before.runs);
            if runs == 0 {
                continue;
            }
            let cost = costs.entry(name).or_default();
            cost.runs += runs;
            cost.run_time_ns += now.run_time_ns.saturating_sub(before.run_time_ns);
        }
        costs
    }
}

/// netplane's loaded programs by id, with their counts so far.
fn programs() -> BTreeMap<u32, (String, ProgramCost)> {
    loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let name = p.name_as_str()?.to_string();
            name.starts_with(PREFIX).then(|| {
                let cost = ProgramCost {
                    runs: p.run_count(),
                    run_time_ns: p.run_time().as_nanos() as u64,
                };
                (p.id(), (name, cost))
            })
        })
        .collect()
}
