//! Running a command inside an endpoint, as `ip netns exec` does: its
//! network namespace, /sys showing that namespace, /etc/netns/NAME files
//! over /etc, and optionally its own hostname.

use std::{
    ffi::OsString,
    fs::File,
    os::{fd::AsFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Command, ExitStatus},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
    unistd::sethostname,
};

use super::{host, netns};

/// Where and how to run.
#[derive(Debug)]
pub struct Target {
    /// Network namespace file.
    pub netns: PathBuf,
    /// Name under /etc/netns whose files go over /etc.
    pub etc_name: Option<String>,
    /// Hostname in a UTS namespace of its own.
    pub hostname: Option<String>,
}

/// Runs `argv` in `target` and waits for it.
pub fn run(target: &Target, argv: &[String]) -> anyhow::Result<ExitStatus> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("no command given"))?;
    let ns = netns::open(&target.netns)?;
    let overlays: Vec<(PathBuf, PathBuf)> = match &target.etc_name {
        Some(name) => std::fs::read_dir(host::etc_dir(name))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| (e.path(), PathBuf::from("/etc").join(e.file_name())))
                    .filter(|(_, dst)| dst.exists())
                    .collect()
            })
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let hostname: Option<OsString> = target.hostname.clone().map(Into::into);
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes system calls on data prepared above.
    unsafe {
        cmd.pre_exec(move || {
            enter(&ns, &overlays, hostname.as_ref()).map_err(std::io::Error::from)
        });
    }
    cmd.status()
        .map_err(|e| anyhow::anyhow!("running {program}: {e}"))
}

fn enter(
    ns: &File,
    overlays: &[(PathBuf, PathBuf)],
    hostname: Option<&OsString>,
) -> nix::Result<()> {
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)?;
    unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )?;
    umount2("/sys", MntFlags::MNT_DETACH)?;
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    for (src, dst) in overlays {
        mount(
            Some(src.as_path()),
            dst.as_path(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
    }
    if let Some(h) = hostname {
        unshare(CloneFlags::CLONE_NEWUTS)?;
        sethostname(h)?;
    }
    Ok(())
}
