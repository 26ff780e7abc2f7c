//! `cargo xtask bench hostile`: the release webhook under hostile clients
//! (slow bodies, half-sent heads, HTTP/2 stream floods) in a 256 MiB memory
//! cgroup, measured by the `hostile_bench` example (as root): peak memory,
//! and the latency of a well-behaved client during each attack against a
//! quiet baseline of the same run. Then the release agent under bursts of
//! cgroups named like containers in a 128 MiB cgroup (`burst_bench`): its
//! memory, what it dropped, and how soon a real container started in the
//! middle of a burst was judged.

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
    agent_bursts(paths, report)
}

fn agent_bursts(paths: &Paths, report: &mut Report) -> Result<()> {
    super::build_release(
        paths,
        &[
            "--package",
            "imagegate-agent",
            "--bin",
            "imagegate-agent",
            "--example",
            "burst_bench",
        ],
    )?;
    let release = paths.target.join("release");
    println!("\n==> hostile: the agent under bursts of container-like cgroups (128 MiB cgroup)");
    let out = cmd::output(
        Command::new(release.join("examples").join("burst_bench"))
            .arg(release.join("imagegate-agent")),
    )?;
    let f: Value = serde_json::from_str(out.trim()).context("parsing burst_bench output")?;
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9}",
        "cgroups",
        "burst s",
        "rss MiB",
        "peak",
        "cg peak",
        "kernel",
        "dropped",
        "lost",
        "rescans",
        "judged s"
    );
    let rounds = f["rounds"].as_array().cloned().unwrap_or_default();
    for r in &rounds {
        println!(
            "{:>8} {:>9.2} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>8} {:>8} {:>9.2}",
            r["cgroups"],
            num(&r["create_s"]) + num(&r["remove_s"]),
            num(&r["rss_before_mib"]),
            num(&r["rss_peak_mib"]),
            num(&r["cgroup_peak_mib"]),
            num(&r["kernel_peak_mib"]),
            r["identifications_dropped"],
            num(&r["exec_events_lost"]) + num(&r["cgroup_events_lost"]),
            r["rescans"],
            num(&r["real_container_judged_s"]),
        );
        let what = format!("agent under a burst of {} cgroups", r["cgroups"]);
        report.figure(
            &what,
            format!(
                "RSS {:.1} -> peak {:.1} MiB (memory cgroup peak {:.1} MiB, of it kernel {:.1} \
                 MiB); {} lookups dropped, {} exec and {} cgroup events lost in the kernel, {} \
                 re-scans; a never-admitted container started 0.1 s in judged {:.2} s after \
                 `ctr run` (grace 2 s); {} OOM kills",
                num(&r["rss_before_mib"]),
                num(&r["rss_peak_mib"]),
                num(&r["cgroup_peak_mib"]),
                num(&r["kernel_peak_mib"]),
                r["identifications_dropped"],
                r["exec_events_lost"],
                r["cgroup_events_lost"],
                r["rescans"],
                num(&r["real_container_judged_s"]),
                r["oom_kills"],
            ),
            "release agent in a 128 MiB memory cgroup, grace 2 s; the cgroups created then \
             removed under the unified hierarchy by one thread (a third each: \
             cri-containerd-<id>.scope, kubepods/.../<id>, containerd's /default/<name>); RSS \
             from /proc every 10 ms; counts from the agent's /metrics",
        );
        report.check(
            &format!("{what}: OOM kills"),
            num(&r["oom_kills"]),
            "<",
            1.0,
        );
        report.check(
            &format!("{what}: peak RSS MiB"),
            num(&r["rss_peak_mib"]),
            "<",
            64.0,
        );
        report.check(
            &format!("{what}: real container judged, s after `ctr run`"),
            num(&r["real_container_judged_s"]),
            "<",
            5.0,
        );
    }
    report.raw.insert("agent_bursts".into(), f);
    Ok(())
}
