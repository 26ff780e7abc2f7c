//! `cargo xtask bench [NAME]`: benchmarks that print figures and write a
//! report (Markdown and JSON) under target/bench/, so runs can be compared.
//! This machine is shared and noisy: compare ratios within one run.

mod procfs;
mod report;
mod webhook;

use anyhow::{Result, bail};

use crate::paths::Paths;

pub fn run(paths: &Paths, which: Option<&str>) -> Result<()> {
    let mut report = report::Report::new();
    match which {
        None | Some("webhook") => webhook::run(paths, &mut report)?,
        Some(other) => bail!("no benchmark named {other:?}; known: webhook"),
    }
    report.write(&paths.target.join("bench"))
}
