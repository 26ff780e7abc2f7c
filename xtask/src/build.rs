//! `cargo xtask build`: the eBPF object first, then the host binaries that
//! embed it.

use std::{ffi::OsString, path::PathBuf, process::Command};

use anyhow::{Result, ensure};

use crate::{
    cmd,
    paths::Paths,
    setup::{DEBIAN_CARGO, DEBIAN_RUSTC},
};

/// The variable agent/build.rs reads to find the object it embeds.
pub const EBPF_OBJECT_ENV: &str = "IMAGEGATE_EBPF_OBJECT";

const EBPF_PACKAGE: &str = "imagegate-ebpf";
const EBPF_TARGET: &str = "bpfel-unknown-none";

/// Builds the eBPF object and the host binaries; returns the object's path.
pub fn all(paths: &Paths, release: bool) -> Result<PathBuf> {
    let object = ebpf(paths)?;
    let mut build = host_cargo(&object);
    build.current_dir(&paths.root).args(["build", "--bins"]);
    if release {
        build.arg("--release");
    }
    cmd::run(&mut build)?;
    Ok(object)
}

/// Builds `agent-ebpf` with Debian's rustc and cargo, release only (debug
/// builds of eBPF do not pass the verifier).
pub fn ebpf(paths: &Paths) -> Result<PathBuf> {
    // A folder of its own: the two toolchains must not share fingerprints.
    let target_dir = paths.target.join("bpf");
    let rustflags = [
        r#"--cfg=bpf_target_arch="x86_64""#,
        "-Cdebuginfo=2",
        // BTF in the object lets the kernel and tools show the types.
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let mut path = OsString::from(paths.tools_bin());
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    cmd::run(
        Command::new(DEBIAN_CARGO)
            .current_dir(&paths.root)
            .env("RUSTC", DEBIAN_RUSTC)
            // aya-ebpf uses `asm_experimental_arch`, a nightly feature.
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .env("CARGO_TARGET_DIR", &target_dir)
            // bpf-linker from the tools folder.
            .env("PATH", path)
            // Set by the outer (rustup) cargo; would confuse Debian's.
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .args([
                "build",
                "--package",
                EBPF_PACKAGE,
                "--release",
                "--target",
                EBPF_TARGET,
            ]),
    )?;
    let object = target_dir
        .join(EBPF_TARGET)
        .join("release")
        .join(EBPF_PACKAGE);
    ensure!(
        object.is_file(),
        "the eBPF build produced no object at {}",
        object.display()
    );
    Ok(object)
}

/// rustup's cargo, told where the eBPF object is.
pub fn host_cargo(object: &std::path::Path) -> Command {
    let mut cargo = cmd::cargo();
    cargo.env(EBPF_OBJECT_ENV, object);
    cargo
}
