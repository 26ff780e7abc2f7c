//! `cargo xtask test`: setup, then format, lints, unit tests and the root
//! integration tests, ending with one summary line.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{build, cmd, images, paths::Paths, setup};

/// Where the integration tests find the images (e2e/src/cluster.rs).
const IMAGES_ENV: &str = "IMAGEGATE_IMAGES_DIR";

pub fn run(paths: &Paths) -> Result<()> {
    setup::run(paths)?;
    let object = build::ebpf(paths)?;
    let cargo = || {
        let mut c = build::host_cargo(&object);
        c.current_dir(&paths.root);
        c
    };

    step("format");
    cmd::run(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("code is not formatted: run `cargo fmt --all`")?;

    // Host crates only: the default members leave out the eBPF crate.
    step("lints (host crates)");
    cmd::run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;

    let mut totals = Totals::default();
    step("unit tests");
    totals.add(run_tests(cargo().args(["test", "--lib", "--bins"]))?);
    // The pod-shaped tests run imagegate's real images, built from this
    // build's binaries as `cargo xtask images --debug` builds them.
    step("container images (cargo xtask images --debug)");
    cmd::run(cargo().args(["build", "--bins"]))?;
    let images = images::build_all(paths, "debug")?;
    for image in &images {
        println!("image {} {}", image.spec.name, image.manifest_digest);
    }
    step("integration tests (root: eBPF, real components, the chart's pods)");
    totals.add(run_tests(
        cargo()
            .env(IMAGES_ENV, images::out_dir(paths, "debug"))
            .args(["test", "--no-fail-fast", "--test", "*"]),
    )?);

    // The one line CI reads.
    println!(
        "summary: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if totals.failed > 0 || totals.broken {
        bail!("tests failed");
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

fn step(name: &str) {
    println!("\n==> {name}");
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// A test binary failed without a result line (did not build, crashed).
    broken: bool,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.broken |= other.broken;
    }
}

/// Runs `cargo test`, echoing its output and adding up its result lines.
fn run_tests(cmd: &mut Command) -> Result<Totals> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::display(cmd)))?;
    let stdout = child.stdout.take().context("cargo test has no stdout")?;
    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(result) = line.trim().strip_prefix("test result: ") {
            totals.add(parse_result(result));
        }
    }
    let status = child.wait()?;
    if !status.success() && totals.failed == 0 {
        totals.broken = true;
        println!("`{}` failed: {status}", cmd::display(cmd));
    }
    Ok(totals)
}

/// `ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s`
fn parse_result(result: &str) -> Totals {
    let mut totals = Totals::default();
    for part in result.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(what), Some(count)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        match what {
            "passed" => totals.passed += count,
            "failed" => totals.failed += count,
            "ignored" => totals.ignored += count,
            _ => {}
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cargo_result_lines() {
        let t = parse_result(
            "ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        );
        assert_eq!((t.passed, t.failed, t.ignored), (5, 0, 1));
        let t = parse_result(
            "FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s",
        );
        assert_eq!((t.passed, t.failed, t.ignored), (3, 2, 0));
    }
}
