//! The agent under a burst of cgroups named like containers (20,000, then
//! 40,000, created and removed in one to three seconds each, as anyone with
//! a writable cgroup subtree on a node can), in the memory the chart gives
//! its pod (a 128 MiB cgroup). Found before: 20,000 got the agent
//! OOM-killed (one identification task per cgroup, all at once), and a
//! container started meanwhile was never judged. The agent must stay
//! bounded, keep judging a real container started in the middle of the
//! burst, and count what it dropped.
//!
//! Needs root (eBPF, cgroups, containerd): `sudo -E cargo xtask test`.

use std::{path::Path, time::Duration};

use imagegate_testkit::cgroup_burst::{Stand, round};

const GRACE: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_container_like_cgroups_leaves_the_agent_bounded_and_judging() {
    imagegate_testkit::require_root("the agent loads eBPF programs and runs in a memory cgroup");
    let grace = format!("{}ms", GRACE.as_millis());
    let mut stand = Stand::start(
        Path::new(env!("CARGO_BIN_EXE_imagegate-agent")),
        "agent-burst",
        &["--grace", &grace],
    )
    .await;

    let mut rounds = Vec::new();
    for (n, count) in [20_000, 40_000].into_iter().enumerate() {
        let figures = round(&mut stand, count, &format!("t{n}"));
        let said = serde_json::to_string(&figures).unwrap();
        eprintln!("burst: {said}");
        assert!(figures.alive, "the agent died: {said}");
        assert_eq!(figures.oom_kills, 0, "OOM-killed: {said}");
        assert_eq!(figures.created, count, "the burst was not made: {said}");
        // Resident memory does not follow the burst (a few MiB of noise).
        assert!(
            figures.rss_peak_mib < figures.rss_before_mib + 16.0 && figures.rss_peak_mib < 100.0,
            "memory grew with the burst: {said}"
        );
        // The real container is judged once its grace window ends, as on a
        // quiet node, give or take a loaded machine.
        let judged = figures
            .real_container_judged_s
            .unwrap_or_else(|| panic!("the real container was never judged: {said}"));
        assert!(
            judged < figures.real_container_started_s + GRACE.as_secs_f64() + 4.0,
            "the real container waited for the burst: {said}"
        );
        assert_eq!(figures.waiting_after, 0.0, "lookups left waiting: {said}");
        rounds.push(figures);
    }
    eprintln!("{}", serde_json::to_string_pretty(&rounds).unwrap());
    drop(stand);
}
