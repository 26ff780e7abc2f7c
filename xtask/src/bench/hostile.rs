//! `cargo xtask bench hostile`: the release webhook under hostile clients
//! (slow bodies, half-sent heads, HTTP/2 stream floods) in a 256 MiB memory
//! cgroup, measured by the `hostile_bench` example (as root): peak memory,
//! and the latency of a well-behaved client during each attack against a
//! quiet baseline of the same run.

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
            "imagegate-webhook",
            "--bin",
            "imagegate-webhook",
            "--example",
            "hostile_bench",
        ],
    )?;
    let release = paths.target.join("release");
    println!(
        "\n==> hostile: the webhook under slow, half-sent and multiplexed clients (256 MiB cgroup)"
    );
    let out = cmd::output(
        Command::new(release.join("examples").join("hostile_bench"))
            .arg(release.join("imagegate-webhook")),
    )?;
    let f: Value = serde_json::from_str(out.trim()).context("parsing hostile_bench output")?;
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let phases = f["phases"].as_array().cloned().unwrap_or_default();
    let baseline_p99 = phases
        .first()
        .map_or(f64::NAN, |p| num(&p["well_behaved_p99_ms"]));
    println!(
        "{:<68} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7}",
        "phase", "rss MiB", "peak", "after", "p50 ms", "p99 ms", "errors"
    );
    for phase in &phases {
        let errors = phase["well_behaved_errors"].as_array().map_or(0, Vec::len);
        println!(
            "{:<68} {:>8.1} {:>8.1} {:>8.1} {:>9.2} {:>9.2} {:>7}",
            phase["attack"].as_str().unwrap_or(""),
            num(&phase["rss_before_mib"]),
            num(&phase["rss_peak_mib"]),
            num(&phase["rss_after_mib"]),
            num(&phase["well_behaved_p50_ms"]),
            num(&phase["well_behaved_p99_ms"]),
            errors
        );
        report.figure(
            &format!("webhook under {}", phase["attack"].as_str().unwrap_or("")),
            format!(
                "RSS {:.0} -> peak {:.0} -> {:.0} MiB; well-behaved p50 / p99 {:.1} / {:.1} ms \
                 ({:.1}x the baseline p99), {} errors of {} requests",
                num(&phase["rss_before_mib"]),
                num(&phase["rss_peak_mib"]),
                num(&phase["rss_after_mib"]),
                num(&phase["well_behaved_p50_ms"]),
                num(&phase["well_behaved_p99_ms"]),
                num(&phase["well_behaved_p99_ms"]) / baseline_p99,
                errors,
                phase["well_behaved_requests"]
            ),
            "release webhook in a 256 MiB memory cgroup; RSS from /proc/PID/status every 20 ms; \
             a well-behaved client sends the apiserver's review from 127.0.0.1, one per new \
             connection, while the attack runs from another loopback address",
        );
        report.check(
            &format!("peak RSS MiB, {}", phase["attack"].as_str().unwrap_or("")),
            num(&phase["rss_peak_mib"]),
            "<",
            200.0,
        );
    }
    report.check(
        "OOM kills of the webhook during the attacks",
        num(&f["oom_kills"]),
        "<",
        1.0,
    );
    report.raw.insert("hostile".into(), f);
    Ok(())
}
