//! `cargo xtask bench agent`: the node agent's figures, measured by the
//! `agent_bench` example (release build, as root) against a real
//! containerd, a loopback registry and the real kernel.

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
            "--example",
            "agent_bench",
        ],
    )?;
    let release = paths.target.join("release");
    let execs = std::env::var("IMAGEGATE_BENCH_EXECS").unwrap_or_else(|_| "2000".into());
    println!(
        "\n==> agent: exec overhead, events, start -> verdict, memory ({execs} execs per loop)"
    );
    let mut bench = Command::new(release.join("examples").join("agent_bench"));
    bench.arg(release.join("imagegate-agent")).arg(&execs);
    // Another build of the agent to compare start -> verdict with, in the
    // same run (e.g. main's, built in a worktree).
    if let Ok(baseline) = std::env::var("IMAGEGATE_BENCH_BASELINE_AGENT") {
        println!("baseline agent: {baseline}");
        bench.arg(baseline);
    }
    let out = cmd::output(&mut bench)?;
    let f: Value = serde_json::from_str(out.trim()).context("parsing agent_bench output")?;
    println!("{}", serde_json::to_string_pretty(&f)?);

    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let how_overhead = "CPU time (user+system, getrusage of the reaped loop) per exec, median of \
                        8 rounds in ABBA order of a /bin/sh loop of /bin/true, without and with the \
                        agent running (audit mode), same run";
    report.figure(
        "exec overhead, host cgroup (filtered in the kernel): per exec without / with",
        format!(
            "{:.1} us / {:.1} us",
            num(&f["host_exec_us"]["without"]),
            num(&f["host_exec_us"]["with"])
        ),
        how_overhead,
    );
    report.figure(
        "noise floor: the same loop twice without the agent (A/A), CPU ratio",
        format!("{:.3}", num(&f["control_ratio"])),
        "the A/A pair of each round; differences below this are noise",
    );
    report.figure(
        "exec overhead, watched container cgroup (every exec to user space): per exec without / with",
        format!(
            "{:.1} us / {:.1} us",
            num(&f["watched_exec_us"]["without"]),
            num(&f["watched_exec_us"]["with"])
        ),
        how_overhead,
    );
    let flood = &f["flood"];
    report.figure(
        "events sustained (2 exec loops at once in a watched cgroup)",
        format!(
            "{:.0} execs/s, {} events received of {} execs, {} lost",
            num(&flood["execs_per_second"]),
            flood["events_received"],
            flood["execs"],
            flood["events_lost"]
        ),
        "agent's own counters (imagegate_agent_events_total, imagegate_agent_lost_events)",
    );
    report.figure(
        "agent CPU per 10k exec events",
        format!("{:.3} s", num(&f["agent_cpu_seconds_per_10k_events"])),
        "/proc/PID/stat utime+stime of the agent across a watched loop, median of 8",
    );
    let latency = &f["start_to_verdict_ms"];
    for (arm, label) in [("this", "this build"), ("baseline", "baseline")] {
        let arm = &latency[arm];
        if arm.is_null() {
            continue;
        }
        for (kind, how) in [
            (
                "cri",
                "a pod through CRI (RunPodSandbox, CreateContainer, StartContainer)",
            ),
            ("ctr", "`ctr run -d`"),
        ] {
            report.figure(
                &format!("container start -> verdict, {kind}, {label}: p50 / p99 / max (agent; wall clock p50)"),
                format!(
                    "{:.2} / {:.2} / {:.2} ms ({:.0} ms)",
                    num(&arm[kind]["p50"]),
                    num(&arm[kind]["p99"]),
                    num(&arm[kind]["max"]),
                    num(&arm[&format!("{kind}_external")]["p50"]),
                ),
                &format!(
                    "agent's latency_ms on its verdict line, from the container's first kernel \
                     event to the verdict, approval present; {how}, one at a time, {} \
                     containers in 3 rounds alternating with the other binary; wall clock: \
                     from the start request to the verdict seen, including the runtime",
                    arm["containers"]
                ),
            );
        }
        report.figure(
            &format!("agent CPU per identified container, {label}"),
            format!("{:.2} ms", num(&arm["agent_cpu_ms_per_container"])),
            "/proc/PID/stat utime+stime of the agent over its rounds, divided by containers",
        );
    }
    report.figure(
        "agent peak RSS with 100,000 approvals",
        format!("{:.1} MiB", num(&f["rss_mib_with_100k_approvals"])),
        "VmHWM from /proc after loading 100,000 approvals from a file",
    );

    report.check(
        "agent exec overhead ratio, host cgroup",
        num(&f["host_overhead_ratio"]),
        "<=",
        1.03,
    );
    report.check(
        "agent exec overhead ratio, watched cgroup",
        num(&f["watched_overhead_ratio"]),
        "<=",
        1.03,
    );
    report.check(
        "agent events lost at max exec rate",
        num(&flood["events_lost"]),
        "<=",
        0.0,
    );
    for kind in ["cri", "ctr"] {
        report.check(
            &format!("agent start -> verdict p99 ms ({kind})"),
            num(&latency["this"][kind]["p99"]),
            "<",
            100.0,
        );
    }
    report.check(
        "agent peak RSS MiB with 100k approvals",
        num(&f["rss_mib_with_100k_approvals"]),
        "<",
        50.0,
    );
    report.raw.insert("agent".into(), f);
    Ok(())
}
