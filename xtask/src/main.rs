//! Project tasks: `cargo xtask setup | build-ebpf | up | test | bench | report`.

mod figures;
mod plot;
mod report;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

/// Debian packages: the eBPF linker's LLVM, and the tools the daemon and the
/// tests run.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "iptables",
    "nftables",
    "iputils-ping",
    "util-linux",
    "procps",
    "curl",
    "socat",
    "bpftool",
    "python3-scapy",
    "tcpdump",
    "iperf3",
    "ncat",
    "dnsutils",
    "ethtool",
    "containernetworking-plugins",
    // The plot's lettering.
    "fonts-dejavu-core",
    // The etcd client crate's build (protoc and the well-known types), and
    // etcd itself for the membership tests.
    "protobuf-compiler",
    "libprotobuf-dev",
    "etcd-server",
    // An upstream resolver for the embedded DNS server's tests.
    "dnsmasq-base",
    // The OpenMetrics parser the metrics test checks /metrics with.
    "python3-prometheus-client",
    // The container runtime the CNI plugin is tested with, its OCI
    // runtime (crun refuses this machine's hybrid cgroups) and the
    // containers' root file system.
    "podman",
    "runc",
    "busybox-static",
];
/// Where setup unpacks Debian's `docker.io` package, for the benchmark's
/// `docker-proxy` (`usr/sbin/docker-proxy` under it). Unpacked, not
/// installed: installing would also set up dockerd and containerd, and a
/// started dockerd rewrites the machine's firewall.
const DOCKER_IO_DIR: &str = "/var/cache/netplane/docker.io";
const BPF_LINKER_VERSION: &str = "0.13.0";
const EBPF_TOOLCHAIN: &str = "nightly";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The fuzz targets, by their cargo-fuzz directory: netplane-common's
/// parsers and rewriters, and the embedded DNS server's query path; and how
/// long `cargo xtask test` runs each.
const FUZZ_TARGETS: &[(&str, &str)] = &[
    ("netplane-common/fuzz", "checksum_rewrite"),
    ("netplane-common/fuzz", "vxlan_outer"),
    ("netplane-common/fuzz", "ipv4_parse"),
    ("netplane-common/fuzz", "ipv6_parse"),
    ("fuzz", "dns_query"),
];
const FUZZ_SECONDS: u32 = 30;

/// The netplane the upgrade test starts from: the last commit before the
/// maps carried a layout version, so the test upgrades unstamped pins.
const UPGRADE_FROM: &str = "38d88a008ba0abbb131f2ed9e0e2232172fee4f9";

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install everything building and testing needs (idempotent, fast when done).
    Setup,
    /// Build the eBPF object and the netplane binary that embeds it.
    BuildEbpf {
        /// Build in release mode.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, and run `netplane up` in the foreground (extra arguments go to `up`).
    Up {
        /// Arguments for `netplane up`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run every test (needs root).
    Test,
    /// Set up, run the benchmarks (needs root), and write benches/RESULTS.md
    /// and benches/results.png.
    Bench {
        /// Criterion's quick mode: fewer samples, a few minutes in all.
        #[arg(long)]
        quick: bool,
        /// Only write the report and the plot again from criterion's last
        /// results in target/criterion.
        #[arg(long, conflicts_with = "quick")]
        report_only: bool,
    },
    /// Set up, run the reliability tests (needs root) and write their
    /// figures into README.md.
    Report,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::BuildEbpf { release } => build_ebpf(release).map(|bin| println!("{}", bin.display())),
        Task::Up { args } => {
            setup()?;
            let bin = build_ebpf(true)?;
            let status = Command::new(&bin).arg("up").args(args).status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test => {
            if !is_root() {
                bail!("the test suite builds network namespaces and must run as root");
            }
            setup()?;
            build_ebpf(false)?;
            let previous = build_previous()?;
            // --all-targets: the benchmarks run once each in criterion's
            // test mode, so they keep compiling and stay correct.
            run(cargo()
                .args(["test", "--workspace", "--all-targets"])
                .env("NETPLANE_REQUIRE_EBPF", "1")
                .env("NETPLANE_UPGRADE_FROM", &previous))?;
            // The NAT and reliability tests again with the programs on
            // clsact filters, as on a kernel without tcx (this one has it).
            // Not the upgrade test: the earlier netplane has tcx only.
            run(cargo()
                .args([
                    "test",
                    "-p",
                    "netplane",
                    "--test",
                    "nat",
                    "--test",
                    "reliability",
                ])
                .args(["--", "--skip", "an_upgrade"])
                .env("NETPLANE_REQUIRE_EBPF", "1")
                .env("NETPLANE_TC_HOOK", "clsact"))?;
            // The NAT, overlay and hostile-packet tests again with the
            // uplink's XDP program taking established flows and VXLAN
            // first: what can be seen from outside must not change.
            run(cargo()
                .args(["test", "-p", "netplane"])
                .args(["--test", "nat", "--test", "overlay", "--test", "security"])
                .env("NETPLANE_REQUIRE_EBPF", "1")
                .env("NETPLANE_XDP", "native"))?;
            for (dir, target) in FUZZ_TARGETS {
                // rustup's cargo, which takes a +toolchain.
                run(Command::new("cargo")
                    .current_dir(root())
                    .arg(format!("+{}", unstable_toolchain()))
                    .args(["fuzz", "run", "--fuzz-dir", dir, target, "--"])
                    .arg(format!("-max_total_time={FUZZ_SECONDS}"))
                    // cargo-fuzz needs unstable flags, which stable grants
                    // with this when nightly is missing.
                    .env("RUSTC_BOOTSTRAP", "1"))?;
            }
            Ok(())
        }
        Task::Report => {
            if !is_root() {
                bail!("the reliability tests build network namespaces and must run as root");
            }
            setup()?;
            build_ebpf(false)?;
            let previous = build_previous()?;
            let out = cargo()
                .args(["test", "--package", "netplane", "--test", "reliability"])
                .args(["--", "--nocapture", "--test-threads=1"])
                .env("NETPLANE_REQUIRE_EBPF", "1")
                .env("NETPLANE_UPGRADE_FROM", previous)
                .stderr(std::process::Stdio::inherit())
                .output()
                .context("running the reliability tests")?;
            if !out.status.success() {
                bail!("the reliability tests failed: {}", out.status);
            }
            let figures = figures::collect(&String::from_utf8_lossy(&out.stdout));
            let path = root().join("README.md");
            let readme = std::fs::read_to_string(&path)?;
            std::fs::write(&path, figures::splice(&readme, &figures, &machine())?)?;
            eprintln!(
                "report: wrote {} figures into {}",
                figures.len(),
                path.display()
            );
            Ok(())
        }
        Task::Bench { quick, report_only } => {
            if !report_only {
                if !is_root() {
                    bail!("the benchmarks build network namespaces and must run as root");
                }
                setup()?;
                // The Podman benchmark's CNI plugin is the netplane binary
                // of the benchmarks' profile.
                run(cargo().args([
                    "build",
                    "--release",
                    "--package",
                    "netplane",
                    "--bin",
                    "netplane",
                ]))?;
                let mut cmd = cargo();
                cmd.args(["bench", "--package", "netplane-benches", "--benches"])
                    .env("NETPLANE_REQUIRE_EBPF", "1");
                if quick {
                    cmd.args(["--", "--quick"]);
                }
                run(&mut cmd)?;
            }
            let criterion = root().join("target").join("criterion");
            let rows = report::read(&criterion)?;
            let once = report::read_measured_once(&criterion)?;
            let out = root().join("benches").join("RESULTS.md");
            std::fs::write(&out, report::render(&rows, &once, &machine()))?;
            eprintln!("bench: wrote {}", out.display());
            let png = root().join("benches").join("results.png");
            plot::draw(&rows, &png)?;
            eprintln!("bench: drew {}", png.display());
            Ok(())
        }
    }
}

/// Builds netplane as of [`UPGRADE_FROM`] in its own target directory
/// (sharing this one's would let cargo put it in place of this build's
/// binary), and returns its binary. The sources go outside this tree:
/// cargo would take the eBPF crate for a member of this workspace. The
/// binary is kept in the user's cache, like cargo's registry, so that
/// fresh clones on one machine build it once.
fn build_previous() -> anyhow::Result<PathBuf> {
    let dir = root().join("target").join("upgrade-from");
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?
        .join("netplane");
    let bin = cache.join(format!("netplane-{}", &UPGRADE_FROM[..12]));
    if bin.exists() {
        return Ok(bin);
    }
    let git = || {
        let mut c = Command::new("git");
        c.current_dir(root());
        c
    };
    let commit = format!("{UPGRADE_FROM}^{{commit}}");
    if !succeeds(git().args(["cat-file", "-e", &commit])) {
        // A shallow clone: its origin has the history.
        run(git().args(["fetch", "--quiet", "origin", UPGRADE_FROM]))?;
    }
    let src = std::env::temp_dir().join(format!("netplane-{}-src", &UPGRADE_FROM[..12]));
    if src.exists() {
        std::fs::remove_dir_all(&src)?;
    }
    std::fs::create_dir_all(&src)?;
    let archive = git()
        .args(["archive", UPGRADE_FROM])
        .output()
        .context("git archive")?;
    if !archive.status.success() {
        bail!(
            "git archive {UPGRADE_FROM}: {}",
            String::from_utf8_lossy(&archive.stderr)
        );
    }
    let mut tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(&src)
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    tar.stdin.take().unwrap().write_all(&archive.stdout)?;
    if !tar.wait()?.success() {
        bail!("unpacking {UPGRADE_FROM} into {}", src.display());
    }
    eprintln!(
        "test: building netplane {} for the upgrade test",
        &UPGRADE_FROM[..12]
    );
    run(cargo()
        .current_dir(&src)
        .args(["build", "--package", "netplane", "--bin", "netplane"])
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("NETPLANE_REQUIRE_EBPF", "1"))?;
    // Copied whole, then renamed: an interrupted copy is never taken for
    // the binary.
    std::fs::create_dir_all(&cache)?;
    let partial = bin.with_extension("partial");
    std::fs::copy(dir.join("target/debug/netplane"), &partial)?;
    std::fs::rename(&partial, &bin)?;
    std::fs::remove_dir_all(&src)?;
    Ok(bin)
}

/// The CPU, core count and kernel the benchmarks ran on.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// The toolchain for unstable builds (the eBPF object's `build-std`,
/// cargo-fuzz's sanitizer): nightly when installed, else stable.
fn unstable_toolchain() -> &'static str {
    if succeeds(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "--version"])) {
        EBPF_TOOLCHAIN
    } else {
        "stable"
    }
}

fn setup() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("setup: installing {}", missing.join(" "));
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let docker_io = Path::new(DOCKER_IO_DIR);
    if !docker_io.join("usr/sbin/docker-proxy").exists() {
        eprintln!("setup: unpacking docker.io's docker-proxy into {DOCKER_IO_DIR}");
        let download = docker_io.with_file_name("download");
        std::fs::create_dir_all(&download)?;
        run(Command::new("apt-get")
            .args(["download", "-q", "docker.io"])
            .current_dir(&download))?;
        let deb = std::fs::read_dir(&download)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download docker.io left no .deb")?;
        std::fs::create_dir_all(docker_io)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(docker_io))?;
        std::fs::remove_dir_all(&download)?;
    }
    let toolchain = unstable_toolchain();
    let components = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()?;
    if !String::from_utf8_lossy(&components.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            toolchain,
        ]))?;
    }
    let fuzz = Command::new("cargo").args(["fuzz", "--version"]).output();
    if !fuzz.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION)) {
        eprintln!("setup: building cargo-fuzz {CARGO_FUZZ_VERSION}");
        run(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))?;
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !linker.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)) {
        eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22");
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    Ok(())
}

fn build_ebpf(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "netplane"])
        .env("NETPLANE_REQUIRE_EBPF", "1");
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("netplane"))
}
