//! `cargo xtask bench push`: approvals from the webhook to node agents.
//! - `push_bench`: 1 and 10 real agents (release binaries, mTLS, loopback):
//!   sync throughput and admission -> visible;
//! - `push_scale`: 10 to thousands of lightweight agents in one process
//!   speaking the agent's side of the wire, against the real webhook
//!   binary, in both designs (`feed`: agents follow the webhook; `dial`:
//!   the webhook dials every agent), same run.

use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

use super::{PushScale, report::Report};
use crate::{cmd, paths::Paths};

pub fn run(paths: &Paths, scale: &PushScale, report: &mut Report) -> Result<()> {
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
            "--example",
            "push_scale",
        ],
    )?;
    real_agents(paths, report)?;
    at_scale(paths, scale, report)
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn real_agents(paths: &Paths, report: &mut Report) -> Result<()> {
    let release = paths.target.join("release");
    println!("\n==> push: webhook -> 1 and 10 real agents (mTLS, loopback)");
    let out = cmd::output(
        Command::new(release.join("examples").join("push_bench"))
            .arg(release.join("imagegate-webhook"))
            .arg(release.join("imagegate-agent")),
    )?;
    let f: Value = serde_json::from_str(out.trim()).context("parsing push_bench output")?;
    println!("{}", serde_json::to_string_pretty(&f)?);
    for run in f["runs"].as_array().cloned().unwrap_or_default() {
        let agents = run["agents"].as_u64().unwrap_or(0);
        let sync = &run["sync"];
        report.figure(
            &format!("sync of 20,000 approvals to {agents} real agent(s)"),
            format!(
                "{:.0} approvals/s per agent, {:.0}/s in all ({:.2} s)",
                num(&sync["approvals_per_second_per_agent"]),
                num(&sync["approvals_per_second_total"]),
                num(&sync["seconds"])
            ),
            "the webhook serving a prefilled ledger, empty agents started together (their start-up \
             included); until every \
             agent's GetStatus counts them all",
        );
        let latency = &run["admission_to_visible_ms"];
        report.figure(
            &format!(
                "admission answer -> approval visible on all {agents} real agent(s), p50 / p99 / max"
            ),
            format!(
                "{:.2} / {:.2} / {:.2} ms",
                num(&latency["p50"]),
                num(&latency["p99"]),
                num(&latency["max"])
            ),
            "300 pods admitted one at a time through /validate; every agent polled with \
             ListApprovals(digest) from the answer's arrival",
        );
        report.check(
            &format!("admission -> visible p99 ms, {agents} real agent(s)"),
            num(&latency["p99"]),
            "<",
            50.0,
        );
    }
    report.raw.insert("push".into(), f);
    Ok(())
}

fn at_scale(paths: &Paths, scale: &PushScale, report: &mut Report) -> Result<()> {
    let release = paths.target.join("release");
    let agents = scale
        .agents
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let designs = scale.designs.join(",");
    println!("\n==> push at scale: {agents} agents, designs {designs} (mTLS, loopback)");
    let out = cmd::output(
        Command::new(release.join("examples").join("push_scale"))
            .arg(release.join("imagegate-webhook"))
            .arg(&agents)
            .arg(&designs),
    )?;
    let f: Value = serde_json::from_str(out.trim()).context("parsing push_scale output")?;
    println!("{}", serde_json::to_string_pretty(&f)?);
    let runs = f["runs"].as_array().cloned().unwrap_or_default();
    let baseline_p99 = runs
        .iter()
        .find(|r| r["agents"] == 0)
        .map_or(f64::NAN, |r| num(&r["steady"]["admission_ms"]["p99"]));
    let baseline_server = runs
        .iter()
        .find(|r| r["agents"] == 0)
        .map_or(f64::NAN, |r| num(&r["steady"]["server_mean_ms"]));
    let baseline_registry = runs
        .iter()
        .find(|r| r["agents"] == 0)
        .map_or(f64::NAN, |r| num(&r["steady"]["registry_lookup_mean_ms"]));
    let largest = scale.agents.iter().copied().max().unwrap_or(0) as u64;
    for run in runs.iter().filter(|r| r["agents"].as_u64() != Some(0)) {
        let (design, n) = (
            run["design"].as_str().unwrap_or("?"),
            run["agents"].as_u64().unwrap_or(0),
        );
        let (steady, burst, new, impaired, restart) = (
            &run["steady"],
            &run["burst"],
            &run["new_agent"],
            &run["impaired"],
            &run["restart"],
        );
        let ms3 = |v: &Value| format!("{:.1} / {:.1}", num(&v["p50"]), num(&v["p99"]));
        let peak = [
            num(&steady["webhook_peak_rss_mib"]),
            num(&burst["webhook_peak_rss_mib"]),
            num(&new["webhook_peak_rss_mib"]),
            num(&impaired["webhook_peak_rss_mib"]),
            num(&restart["webhook_peak_rss_mib"]),
        ]
        .into_iter()
        .fold(0.0, f64::max);
        let label = format!("{design}, {n} agents");
        report.figure(
            &format!("{label}: admission -> visible on 99% / on all, p50 / p99 ms"),
            format!(
                "{} / {} (missing after 20 s: {})",
                ms3(&steady["visible_on_99pct_ms"]),
                ms3(&steady["visible_on_all_ms"]),
                steady["missing_after_timeout"]
            ),
            "1,000 pods admitted one at a time through /validate; each agent stamps the digest's \
             arrival; from the answer's arrival",
        );
        let added_p99 = num(&steady["admission_ms"]["p99"]) - baseline_p99;
        report.figure(
            &format!("{label}: admission p50 / p99 ms (no agents: p99 {baseline_p99:.2})"),
            format!(
                "{} (p99 added {added_p99:+.2})",
                ms3(&steady["admission_ms"])
            ),
            "the same 1,000 admissions; a run with no agent, minutes apart, gives the baseline",
        );
        let control = &steady["control"];
        report.figure(
            &format!(
                "{label}: paired with a control webhook without agents, admissions in turns: \
                 admission p50 / p99 ms; own mean ms"
            ),
            format!(
                "{} against {} (p99 added {:+.2}); {:.2} against {:.2} ({:+.2})",
                ms3(&steady["admission_ms"]),
                ms3(&control["admission_ms"]),
                num(&steady["admission_ms"]["p99"]) - num(&control["admission_ms"]["p99"]),
                num(&steady["server_mean_ms"]),
                num(&control["server_mean_ms"]),
                num(&steady["server_mean_ms"]) - num(&control["server_mean_ms"]),
            ),
            "each of the 1,000 images admitted by both, the control first every other time: the \
             same minutes of this machine, so the difference is the push's",
        );
        report.figure(
            &format!(
                "{label}: the webhook's own mean time per admission, ms (no agents: {baseline_server:.2})"
            ),
            format!(
                "{:.2} ({:+.2})",
                num(&steady["server_mean_ms"]),
                num(&steady["server_mean_ms"]) - baseline_server
            ),
            "from its request_duration_seconds (body read to answer ready) over the same \
             admissions: what the push adds inside the webhook, apart from the wire",
        );
        report.figure(
            &format!(
                "{label}: of which registry lookups, mean ms (no agents: {baseline_registry:.2})"
            ),
            format!(
                "{:.2} ({:+.2})",
                num(&steady["registry_lookup_mean_ms"]),
                num(&steady["registry_lookup_mean_ms"]) - baseline_registry
            ),
            "from its registry_lookup_duration_seconds over the same admissions: the \
             bench's registry runs on this machine, beside the agents; on a cluster it does not",
        );
        report.figure(
            &format!("{label}: webhook CPU per admission, RSS steady / peak"),
            format!(
                "{:.1} ms, {:.0} / {peak:.0} MiB",
                num(&steady["webhook_cpu_ms_per_admission"]),
                num(&steady["webhook_rss_mib"]),
            ),
            "/proc/PID/stat utime+stime over the 1,000 admissions; VmRSS, VmHWM over the run",
        );
        report.figure(
            &format!(
                "{label}: burst of {} pods by {} callers: admission p50 / p99 ms; all on 99% / on all agents",
                burst["admissions"], burst["callers"]
            ),
            format!(
                "{}; {:.2} / {:.2} s (all answered after {:.2} s); webhook CPU {:.1} ms per admission, \
                 {:.1} feed messages per agent, streams lagged {}, missing after 20 s {}",
                ms3(&burst["admission_ms"]),
                num(&burst["all_on_99pct_seconds"]),
                num(&burst["all_on_all_seconds"]),
                num(&burst["all_answered_seconds"]),
                num(&burst["webhook_cpu_ms_per_admission"]),
                num(&burst["feed_messages_per_agent"]),
                burst["streams_lagged"],
                burst["missing_after_timeout"]
            ),
            "a Deployment scaled up: admissions at once, from the first sent until every agent \
             holds all of them; lagged streams are caught up from the ledger",
        );
        report.figure(
            &format!(
                "{label}: a new agent's full sync of {} approvals",
                f["prefill"]
            ),
            format!("{:.2} s", num(&new["seconds"])),
            "one agent with nothing joins a fleet that holds the ledger; until it holds it all",
        );
        report.figure(
            &format!("{label}: 10% stalled + 10% slow (2 s/message): admission p99, visible on 99% / all healthy p99"),
            format!(
                "{:.1} ms, {:.1} / {:.1} ms; after recovery all hold everything in {:.0} ms, behind: {}",
                num(&impaired["admission_ms"]["p99"]),
                num(&impaired["visible_on_99pct_of_healthy_ms"]["p99"]),
                num(&impaired["visible_on_all_healthy_ms"]["p99"]),
                num(&impaired["after_recovery_all_hold_everything_ms"]),
                impaired["behind_after_recovery"]
            ),
            "50 admissions while they are impaired, then they recover",
        );
        report.figure(
            &format!("{label}: webhook killed and restarted: restart -> an admission on all agents"),
            format!(
                "{:.2} s (on 99%: {:.0} ms after the answer), webhook CPU {:.2} s, behind after 20 s: {}",
                num(&restart["from_restart_to_all_seconds"]),
                num(&restart["visible_on_99pct_ms"]),
                num(&restart["webhook_cpu_seconds"]),
                restart["behind_after_timeout"]
            ),
            "SIGKILL, start on the same ledger; the first admission once it serves",
        );
        let during = &restart["admission_during_reconnects_ms"];
        report.figure(
            &format!(
                "{label}: admissions while the agents reconnect after the restart: p50 / p99 / max ms (steady: {})",
                ms3(&steady["admission_ms"]),
            ),
            format!("{} / {:.1} ({} admissions)", ms3(during), num(&during["max"]), during["n"]),
            "one after another from the first answer until that admission is on every agent \
             (at least 50): what the apiserver waits while the storm takes the webhook's CPU",
        );
        if design == "feed" && n == largest {
            // Against the control that admitted the same pods in the same
            // minutes: a baseline run minutes apart differs by itself.
            report.check(
                &format!("feed, {n} agents: admission p99 added by the push (paired), ms"),
                num(&steady["admission_ms"]["p99"])
                    - num(&steady["control"]["admission_ms"]["p99"]),
                "<",
                1.0,
            );
            report.check(
                &format!("feed, {n} agents: visible on 99% of agents, p99 ms"),
                num(&steady["visible_on_99pct_ms"]["p99"]),
                "<",
                2000.0,
            );
            report.check(
                &format!(
                    "feed, {n} agents: a burst of {} pods on 99% of agents, s",
                    burst["admissions"]
                ),
                num(&burst["all_on_99pct_seconds"]),
                "<",
                2.0,
            );
            report.check(
                &format!("feed, {n} agents: webhook peak RSS MiB"),
                peak,
                "<",
                256.0,
            );
            report.check(
                &format!("feed, {n} agents: agents behind after recovery and restart"),
                num(&impaired["behind_after_recovery"]) + num(&restart["behind_after_timeout"]),
                "<=",
                0.0,
            );
        }
    }
    report.raw.insert("push_scale".into(), f);
    Ok(())
}
