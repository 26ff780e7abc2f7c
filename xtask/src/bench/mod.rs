//! `cargo xtask bench [NAME]`: benchmarks that print figures and write a
//! report (Markdown and JSON) under target/bench/, so runs can be compared.
//! This machine is shared and noisy: compare ratios within one run.

mod agent;
mod cpu_limit;
mod hostile;
mod instructions;
mod procfs;
mod push;
mod report;
mod webhook;

use anyhow::{Result, bail};

use crate::{build, cmd, paths::Paths, setup};

/// Builds the eBPF object, then `cargo build --release` with `args`
/// (packages, binaries, examples) as the benchmarks run them.
fn build_release(paths: &Paths, args: &[&str]) -> Result<()> {
    setup::check_toolchain(paths)?;
    let object = build::ebpf(paths)?;
    cmd::run(
        build::host_cargo(&object)
            .current_dir(&paths.root)
            .args(["build", "--release"])
            .args(args),
    )
}

/// What `bench push` scales over.
pub struct PushScale {
    pub agents: Vec<usize>,
    pub designs: Vec<String>,
}

pub fn run(paths: &Paths, which: Option<&str>, scale: &PushScale) -> Result<()> {
    let mut report = report::Report::new();
    match which {
        None => {
            webhook::run(paths, &mut report)?;
            agent::run(paths, &mut report)?;
            push::run(paths, scale, &mut report)?;
            hostile::run(paths, &mut report)?;
        }
        Some("webhook") => webhook::run(paths, &mut report)?,
        Some("agent") => agent::run(paths, &mut report)?,
        Some("push") => push::run(paths, scale, &mut report)?,
        Some("hostile") => hostile::run(paths, &mut report)?,
        Some(other) => bail!("no benchmark named {other:?}; known: webhook, agent, push, hostile"),
    }
    report.write(&paths.target.join("bench"))
}
