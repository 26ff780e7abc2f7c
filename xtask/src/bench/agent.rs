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
    let out = cmd::output(
        Command::new(release.join("examples").join("agent_bench"))
            .arg(release.join("imagegate-agent"))
            .arg(&execs),
    )?;
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
    report.figure(
        "container start -> verdict (approval present), p50 / p99 / max",
        format!(
            "{:.2} / {:.2} / {:.2} ms over {} containers",
            num(&latency["p50"]),
            num(&latency["p99"]),
            num(&latency["max"]),
            latency["containers"]
        ),
        "agent's latency_ms on its verdict line: from the container's first kernel event \
         (cgroup_mkdir) to the verdict; `ctr run -d` one at a time",
    );
    report.figure(
        "`ctr run -d` invoked -> verdict seen, p50 / p99",
        format!(
            "{:.1} / {:.1} ms",
            num(&latency["ctr_run_to_verdict_p50"]),
            num(&latency["ctr_run_to_verdict_p99"])
        ),
        "wall clock in the bench; includes ctr, containerd and runc creating the container",
    );
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
    report.check(
        "agent start -> verdict p99 ms",
        num(&latency["p99"]),
        "<",
        100.0,
    );
    report.check(
        "agent peak RSS MiB with 100k approvals",
        num(&f["rss_mib_with_100k_approvals"]),
        "<",
        50.0,
    );
    report.raw.insert("agent".into(), f);
    Ok(())
}
