//! User-space instructions per review, counted by callgrind: the one
//! webhook figure this shared, noisy machine cannot blur. Two builds that
//! differ by a few percent of CPU time are indistinguishable in time-boxed
//! runs here (the same build varies by 10-25% from run to run), while
//! callgrind counts the same instructions for the same binary, inputs and
//! environment, whatever else the machine is doing. It leaves out the
//! kernel (the TLS record's send and receive), which both builds pay alike.
//!
//! <https://valgrind.org/docs/manual/cl-manual.html> (`callgrind_control
//! -z` zeroes the counters, `-d` dumps them, so start-up and warm-up are
//! left out).

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cmd, paths::Paths};

/// Reviews sent before counting (connections, caches and allocator arenas
/// warm), and the two loads counted: each opens its own connections, so
/// the difference of their counts over the difference of their reviews is
/// what a review costs on a connection already open (a load of 2,000 on
/// 8 new connections alone carried 8 TLS handshakes, about 10% of an
/// ImageReview's count).
const WARM_UP: u64 = 500;
const SHORT: u64 = 500;
const COUNTED: u64 = 2_500;
/// Connections of the load: few, since under valgrind the server runs one
/// thread at a time.
const CONNECTIONS: u64 = 8;

/// Whether callgrind is installed (setup installs valgrind).
pub fn available() -> bool {
    cmd::probe(Command::new("callgrind_control").arg("--version")).is_some()
}

/// A command that runs `bin` under callgrind, its dumps in `dumps`, pinned
/// to one CPU as the chart's limit gives it one runtime worker. The caller
/// adds the server's arguments and starts it.
pub fn under_callgrind(bin: &Path, dumps: &Path) -> Result<Command> {
    std::fs::create_dir_all(dumps)?;
    let mut command = Command::new("taskset");
    command
        .args(["-c", "0", "valgrind", "-q", "--tool=callgrind"])
        .arg(format!(
            "--callgrind-out-file={}/callgrind.%p",
            dumps.display()
        ))
        .arg(bin);
    Ok(command)
}

/// The instructions the webhook started by [`under_callgrind`] (process
/// `pid`, listening on `port`) runs per review of `body` on `path`.
pub fn per_review(
    paths: &Paths,
    pid: u32,
    port: u16,
    dumps: &Path,
    path: &str,
    body: &Path,
) -> Result<f64> {
    let load = |n: u64| -> Result<u64> {
        let out = cmd::output(
            Command::new(paths.tools_bin().join("oha"))
                .args(["--no-tui", "--output-format", "json", "--insecure"])
                .args(["-n", &n.to_string(), "-c", &CONNECTIONS.to_string()])
                .args(["-m", "POST", "-H", "content-type: application/json", "-D"])
                .arg(body)
                .arg(format!("https://127.0.0.1:{port}{path}")),
        )?;
        let oha: Value = serde_json::from_str(&out).context("parsing oha's JSON output")?;
        Ok(oha["statusCodeDistribution"]["200"].as_u64().unwrap_or(0))
    };
    load(WARM_UP)?;
    // The instructions of a load of `n` reviews: `-z` zeroes the counts,
    // `-d` writes those since into dump number `dump`.
    let count = |n: u64, dump: u32| -> Result<f64> {
        control("-z", pid)?;
        let answered = load(n)?;
        control("-d", pid)?;
        if answered != n {
            bail!("{answered} of {n} reviews answered 200 under callgrind");
        }
        let dump = dumps.join(format!("callgrind.{pid}.{dump}"));
        let text = std::fs::read_to_string(&dump)
            .with_context(|| format!("reading callgrind's dump {}", dump.display()))?;
        text.lines()
            .find_map(|l| l.strip_prefix("summary:"))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no summary line in {}", dump.display()))
    };
    let short = count(SHORT, 1)?;
    let long = count(COUNTED, 2)?;
    Ok((long - short) / (COUNTED - SHORT) as f64)
}

fn control(what: &str, pid: u32) -> Result<()> {
    cmd::output(Command::new("callgrind_control").args([what, &pid.to_string()]))?;
    Ok(())
}
