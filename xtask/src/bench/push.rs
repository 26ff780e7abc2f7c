//! `cargo xtask bench push`: the webhook pushing approvals to 1 and 10
//! node agents over mTLS on loopback, measured by the `push_bench` example
//! (release builds, as root).

use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

use super::report::Report;
use crate::{cmd, paths::Paths};

pub fn run(paths: &Paths, report: &mut Report) -> Result<()> {
    super::build_release(
        paths,
        &[
            "--package",
            "imagegate-agent",
            "--bin",
            "imagegate-agent",
            "--package",
            "imagegate-webhook",
            "--bin",
            "imagegate-webhook",
            "--example",
            "push_bench",
        ],
    )?;
    let release = paths.target.join("release");
    println!("\n==> push: webhook -> 1 and 10 agents (mTLS, loopback)");
    let out = cmd::output(
        Command::new(release.join("examples").join("push_bench"))
            .arg(release.join("imagegate-webhook"))
            .arg(release.join("imagegate-agent")),
    )?;
    let f: Value = serde_json::from_str(out.trim()).context("parsing push_bench output")?;
    println!("{}", serde_json::to_string_pretty(&f)?);
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    for run in f["runs"].as_array().cloned().unwrap_or_default() {
        let agents = run["agents"].as_u64().unwrap_or(0);
        let sync = &run["sync"];
        report.figure(
            &format!("sync of 20,000 approvals to {agents} agent(s)"),
            format!(
                "{:.0} approvals/s per agent, {:.0}/s in all ({:.2} s)",
                num(&sync["approvals_per_second_per_agent"]),
                num(&sync["approvals_per_second_total"]),
                num(&sync["seconds"])
            ),
            "webhook started with a prefilled ledger against empty agents; until every \
             agent's GetStatus counts them all",
        );
        let latency = &run["admission_to_visible_ms"];
        report.figure(
            &format!(
                "admission answer -> approval visible on all {agents} agent(s), p50 / p99 / max"
            ),
            format!(
                "{:.2} / {:.2} / {:.2} ms",
                num(&latency["p50"]),
                num(&latency["p99"]),
                num(&latency["max"])
            ),
            "100 pods admitted one at a time through /validate; every agent polled with \
             ListApprovals(digest) from the answer's arrival",
        );
        report.check(
            &format!("admission -> visible p99 ms, {agents} agent(s)"),
            num(&latency["p99"]),
            "<",
            50.0,
        );
    }
    report.raw.insert("push".into(), f);
    Ok(())
}
