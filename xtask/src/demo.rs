//! `sudo -E cargo xtask demo [--enforce]`: installs what is missing, builds,
//! then runs `imagegate-demo` (e2e/src/bin/imagegate-demo.rs): a registry
//! with TLS and auth, containerd, the agent and the webhook on this
//! machine, and testkit's stand-in kube-apiserver; a signature requirement
//! (signed images admitted with their signer, an unsigned one denied);
//! admissions as a kube-apiserver sends them; an admitted container through
//! CRI, the unsigned image as a pod admission never saw and with `ctr`; the
//! verdicts, the signer on the node, the violation's Event and report
//! results, and the grpcurl commands with their real output. It stops
//! everything it started, also on Ctrl-C.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{build, paths::Paths, setup};

pub fn run(paths: &Paths, enforce: bool) -> Result<()> {
    setup::run(paths)?;
    build::all(paths, false)?;
    let demo = paths.target.join("debug").join("imagegate-demo");
    let mut command = Command::new(&demo);
    if enforce {
        command.arg("--enforce");
    }
    // grpcurl from the project's venv is what the demo calls.
    let status = command.status()?;
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}
