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

    // CI shows the head and the tail of this output: the panics are
    // repeated here, at the end, so a failure is never only in the middle.
    if !totals.panics.is_empty() {
        println!("\n==> failures");
        for panic in &totals.panics {
            println!("{panic}");
        }
    }
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
    /// Each failed test's panic: where, and the first lines of its message.
    panics: Vec<String>,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.broken |= other.broken;
        self.panics.extend(other.panics);
    }
}

/// Lines of a panic message kept for the summary, and characters per line.
const PANIC_LINES: usize = 4;
const PANIC_LINE_CHARS: usize = 400;

/// Runs `cargo test`, echoing its output and adding up its result lines.
fn run_tests(cmd: &mut Command) -> Result<Totals> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::display(cmd)))?;
    let stdout = child.stdout.take().context("cargo test has no stdout")?;
    let mut totals = Totals::default();
    let mut panics = Panics::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(result) = line.trim().strip_prefix("test result: ") {
            totals.add(parse_result(result));
        }
        panics.read(&line);
    }
    totals.panics = panics.found;
    let status = child.wait()?;
    if !status.success() && totals.failed == 0 {
        totals.broken = true;
        println!("`{}` failed: {status}", cmd::display(cmd));
    }
    Ok(totals)
}

/// The panics in cargo test's output: each panic line and the first lines
/// of its message.
#[derive(Default)]
struct Panics {
    found: Vec<String>,
    /// Lines still to keep of the panic being read.
    keep: usize,
}

impl Panics {
    fn read(&mut self, line: &str) {
        // libtest's `thread 'name' (id) panicked at file:line:col:`.
        if line.starts_with("thread '") && line.contains(" panicked at ") {
            self.found.push(String::new());
            self.keep = PANIC_LINES;
        }
        if line.starts_with("note: ") || line.starts_with("stack backtrace:") {
            self.keep = 0;
        }
        if self.keep == 0 {
            return;
        }
        self.keep -= 1;
        if let Some(panic) = self.found.last_mut() {
            panic.extend(line.chars().take(PANIC_LINE_CHARS));
            panic.push('\n');
        }
    }
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
    fn keeps_each_panic_and_its_message() {
        let mut panics = Panics::default();
        for line in [
            "agent-a: {\"message\":\"thread 'x' started\"}",
            "thread 'every_write' (15003) panicked at webhook/tests/push_link.rs:233:13:",
            "write 6 of 300 did not reach the agent within 5s; it holds 5",
            "stack backtrace:",
            "   0: frames that are not kept",
            "thread 'other' panicked at src/lib.rs:1:1:",
            "assertion `left == right` failed",
            "  left: 1",
            " right: 2",
            "more than it keeps",
        ] {
            panics.read(line);
        }
        assert_eq!(
            panics.found,
            [
                "thread 'every_write' (15003) panicked at webhook/tests/push_link.rs:233:13:\n\
                 write 6 of 300 did not reach the agent within 5s; it holds 5\n",
                "thread 'other' panicked at src/lib.rs:1:1:\nassertion `left == right` failed\n  \
                 left: 1\n right: 2\n",
            ]
        );
    }

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
