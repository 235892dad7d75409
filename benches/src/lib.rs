//! Benchmarks of netplane against iptables NAT, and the lab they share with
//! the data path's BPF_PROG_TEST_RUN tests.

pub mod costs;
pub mod lab;
pub mod load;
pub mod overlay;
pub mod topo;

use std::{fs::File, path::PathBuf, process::Command};

use nix::sched::{CloneFlags, setns};

/// Runs a shell command that must succeed; its stdout.
pub(crate) fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("running sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Undoes a simulated host's setup when dropped, whichever step failed:
/// created first, before anything it removes exists.
#[derive(Debug, Default)]
pub struct Cleanup {
    /// Named network namespaces, deleted in order.
    pub netns: Vec<String>,
    /// Mount points, unmounted.
    pub mounts: Vec<PathBuf>,
    /// Directories, removed with their contents.
    pub dirs: Vec<PathBuf>,
    /// The calling thread's own namespace, returned to first.
    pub home: Option<File>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            let _ = setns(home, CloneFlags::CLONE_NEWNET);
        }
        let quiet = |c: &mut Command| {
            let _ = c
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        for m in &self.mounts {
            quiet(Command::new("umount").arg(m));
        }
        for ns in &self.netns {
            quiet(Command::new("ip").args(["netns", "del", ns]));
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `target/criterion`, where the report reads results from: benchmarks
/// run from `target/<profile>/deps/`.
fn criterion_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the benchmark's path");
    exe.ancestors().nth(3).expect("target/").join("criterion")
}

/// Writes `figures` a benchmark measured once (outside criterion's
/// sampling) as JSON to `file` in `target/criterion`, for the report.
pub fn write_measured_once(file: &str, figures: &impl serde::Serialize) {
    let dir = criterion_dir();
    std::fs::create_dir_all(&dir).expect("target/criterion");
    let json = serde_json::to_string(figures).expect("figures as JSON");
    std::fs::write(dir.join(file), json).unwrap_or_else(|e| panic!("writing {file}: {e}"));
}
