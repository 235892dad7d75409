//! Builds netplane-ebpf for `bpfel-unknown-none` and hands the object to the
//! `netplane` crate, so the binary always embeds the object built from the
//! sources next to it.
//!
//! Without bpf-linker (a `cargo check` or clippy on a machine that has not run
//! `cargo xtask setup`) an empty object is embedded instead and the daemon
//! refuses to start; `NETPLANE_REQUIRE_EBPF=1` turns that case into a build
//! error, which `cargo xtask build-ebpf` and the test suite rely on.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const EBPF_TARGET: &str = "bpfel-unknown-none";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let object = out_dir.join("netplane.bpf.o");

    for input in [
        "netplane-ebpf/src",
        "netplane-ebpf/Cargo.toml",
        "netplane-ebpf/Cargo.lock",
        "netplane-common/src",
        "netplane-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }
    println!("cargo:rerun-if-env-changed=NETPLANE_REQUIRE_EBPF");
    let required = env::var_os("NETPLANE_REQUIRE_EBPF").is_some_and(|v| v == "1");

    let Some(linker) = find_in_path("bpf-linker") else {
        if required {
            panic!("bpf-linker not found in PATH; run `cargo xtask setup`");
        }
        println!(
            "cargo:warning=bpf-linker not found: embedding an empty eBPF object; \
             run `cargo xtask setup` to build a netplane that can start"
        );
        std::fs::write(&object, []).unwrap();
        return;
    };
    println!("cargo:rerun-if-changed={}", linker.display());

    let target_dir = out_dir.join("ebpf-target");
    let mut cargo = Command::new("rustup");
    // Cargo exports its own toolchain and flags to build scripts; the nested
    // build must pick its toolchain and target afresh.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTFLAGS")
            || key == "RUSTUP_TOOLCHAIN"
            || key == "RUSTDOC"
        {
            cargo.env_remove(key.as_ref());
        }
    }
    let toolchain = if has_toolchain("nightly") {
        "nightly"
    } else {
        // Stable compiles no_std eBPF too once nightly-only flags are allowed.
        cargo.env("RUSTC_BOOTSTRAP", "1");
        "stable"
    };
    // BTF with function info: the kernel checks the callbacks a program
    // hands to bpf_loop against it.
    cargo.env(
        "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
        "-C link-arg=--btf",
    );
    cargo
        .args([
            "run",
            toolchain,
            "cargo",
            "build",
            "--release",
            "--target",
            EBPF_TARGET,
        ])
        .args(["-Z", "build-std=core", "--manifest-path"])
        .arg(root.join("netplane-ebpf/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    let linker_dir = linker.parent().unwrap();
    let path = env::join_paths(
        std::iter::once(linker_dir.to_path_buf())
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    cargo.env("PATH", path);
    let status = cargo.status().expect("running cargo for netplane-ebpf");
    assert!(status.success(), "building netplane-ebpf failed: {status}");
    let built = target_dir.join(EBPF_TARGET).join("release/netplane");
    std::fs::copy(&built, &object)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", built.display(), object.display()));
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    let home_bin = env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin"));
    env::split_paths(&path)
        .chain(home_bin)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn has_toolchain(name: &str) -> bool {
    Command::new("rustup")
        .args(["run", name, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}
