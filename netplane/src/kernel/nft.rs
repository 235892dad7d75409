//! nftables, through the `nft` program: the firewall a daemon without its
//! eBPF data path leaves forwarding to (see [`crate::logic::firewall`]).

use std::{
    io::Write,
    process::{Command, Stdio},
};

use super::{Error, Result};

/// Runs the `nft -f` script `script` as one transaction.
pub fn apply(script: &str) -> Result<()> {
    let io = |op, e| Error::io(op, "nft -f -", e);
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io("run", e))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes())
        .map_err(|e| io("write to", e))?;
    let out = child.wait_with_output().map_err(|e| io("wait for", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io(
            "run",
            std::io::Error::other(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        ))
    }
}
