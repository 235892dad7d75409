//! Debian's Podman 4.3 with its CNI backend inside a simulated host, set
//! up as this machine kind needs (runc, explicit rlimits, `nsenter` into
//! the host's namespace, private storage and configuration, a busybox
//! root file system instead of an image). Its containers are removed on
//! drop.

use std::{
    path::PathBuf,
    process::{Command, Output},
    sync::{Mutex, MutexGuard},
};

use crate::{Host, netplane_bin, sh};

/// Rlimits given explicitly: raising them needs CAP_SYS_RESOURCE, which
/// this sandbox lacks.
pub const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// One Podman at a time in a test binary: they all make their
/// namespaces in /run/netns, which the tests compare before and after.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A Podman whose containers live in `host`'s namespace, with CNI
/// networks from its own configuration directory.
#[derive(Debug)]
pub struct Podman {
    netns: String,
    dir: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

impl Podman {
    /// A Podman for `h`, with state under `h`'s directory, `netplane`
    /// among its CNI plugins and a busybox root file system at
    /// [`Podman::rootfs`] serving `index.html` from `/www`.
    pub fn new(h: &Host) -> Podman {
        let p = Podman {
            // A test that failed holding it leaves nothing behind either.
            _turn: ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()),
            netns: h.netns.clone(),
            dir: h.dir.join("podman"),
        };
        let d = p.dir.display();
        let rootfs = p.rootfs();
        let r = rootfs.display();
        crate::sh_ok(&format!(
            "set -e; mkdir -p {d}/net.d {d}/plugins {r}/bin {r}/www {r}/etc
             cp /bin/busybox {r}/bin/
             for a in sh httpd wget ping nslookup cat sleep nc; do ln -sf busybox {r}/bin/$a; done
             echo hello from podman > {r}/www/index.html
             ln -sf {np} {d}/plugins/netplane",
            np = netplane_bin().display()
        ));
        std::fs::write(
            p.dir.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend=\"cni\"\n\
                 cni_plugin_dirs=[\"{d}/plugins\",\"/usr/lib/cni\"]\n\
                 network_config_dir=\"{d}/net.d\"\n\
                 [engine]\ncgroup_manager=\"cgroupfs\"\nevents_logger=\"file\"\n\
                 events_logfile_path=\"{d}/events.log\"\nruntime=\"runc\"\n"
            ),
        )
        .unwrap();
        p
    }

    /// The containers' root file system.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Writes the CNI network list `name` of `plugins` (a JSON array).
    pub fn add_network(&self, name: &str, plugins: &str) {
        std::fs::write(
            self.dir.join("net.d").join(format!("{name}.conflist")),
            format!(r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":{plugins}}}"#),
        )
        .unwrap();
    }

    /// A network list of one netplane plugin for netplane network
    /// `network` of `subnet` on `h`'s daemon, publishing ports.
    pub fn add_netplane_network(&self, h: &Host, name: &str, network: &str, subnet: &str) {
        self.add_network(
            name,
            &format!(
                r#"[{{"type":"netplane","network":"{network}","subnet":"{subnet}",
                    "runDir":"{}","capabilities":{{"portMappings":true,"ips":true}}}}]"#,
                h.run_dir().display()
            ),
        );
    }

    /// The podman command line, in the host's namespace.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        c
    }

    /// `podman ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("running podman")
    }

    /// `podman ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman run -d --name NAME --network NETWORK EXTRA... --rootfs
    /// ROOTFS CMD...`: a container in the background.
    pub fn start(&self, name: &str, network: &str, extra: &[&str], cmd: &[&str]) -> String {
        let rootfs = self.rootfs();
        let mut args = vec!["run", "-d", "--name", name, "--network", network];
        args.extend(ULIMITS);
        args.extend(extra);
        args.extend(["--rootfs", rootfs.to_str().unwrap()]);
        args.extend(cmd);
        self.ok(&args).trim().to_string()
    }

    /// A container serving the root file system's `/www` over HTTP on
    /// port 80, logging each request.
    pub fn httpd(&self, name: &str, network: &str, extra: &[&str]) -> String {
        self.start(
            name,
            network,
            extra,
            &["/bin/httpd", "-f", "-vv", "-p", "80", "-h", "/www"],
        )
    }

    /// `podman run --rm` of `cmd` on `network`, waiting for it.
    pub fn run_once(&self, network: &str, cmd: &[&str]) -> Output {
        let rootfs = self.rootfs();
        let mut args = vec!["run", "--rm", "--network", network];
        args.extend(ULIMITS);
        args.extend(["--rootfs", rootfs.to_str().unwrap()]);
        args.extend(cmd);
        self.run(&args)
    }

    /// The network namespace of container `name`.
    pub fn sandbox_key(&self, name: &str) -> String {
        self.ok(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name])
            .trim()
            .to_string()
    }

    /// What container `name` wrote to its stdout and stderr.
    pub fn logs(&self, name: &str) -> String {
        let out = self.run(&["logs", name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// The names of the namespaces in /run/netns that Podman makes for its
/// containers.
pub fn podman_namespaces() -> Vec<String> {
    crate::sh_ok("ip netns list")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("netns-"))
        .map(str::to_string)
        .collect()
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-af", "-t", "0"]);
        let _ = sh(&format!(
            "grep -o ' {0}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
            self.dir.display()
        ));
        // The cgroups Podman made for its monitors, if no other Podman
        // uses them (rmdir fails on a cgroup in use).
        let _ = sh("for c in /sys/fs/cgroup/*/libpod_parent; do \
                    rmdir $c/conmon $c 2>/dev/null; done");
    }
}
