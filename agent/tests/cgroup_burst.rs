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

use imagegate_testkit::{
    cgroup::MemoryCgroup,
    cgroup_burst::{Subject, round},
    containerd::TestContainerd,
    process::Process,
    registry::Registry,
};

const CHART_MEMORY_LIMIT: u64 = 128 * 1024 * 1024;
const GRACE: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_container_like_cgroups_leaves_the_agent_bounded_and_judging() {
    imagegate_testkit::require_root("the agent loads eBPF programs and runs in a memory cgroup");
    let registry = Registry::plain();
    registry.push_runnable_image("pause", "1", "pause").await;
    registry
        .push_runnable_image("team/burst-rogue", "1", "burst-rogue")
        .await;
    let image = format!("{}/team/burst-rogue:1", registry.host);
    let containerd = TestContainerd::start(&registry, &format!("{}/pause:1", registry.host));
    containerd.pull("default", &image);
    let state = tempfile::tempdir().unwrap();
    let cgroup = MemoryCgroup::new("agent-burst", CHART_MEMORY_LIMIT);
    let mut agent = Process::start_with(
        "agent",
        Path::new(env!("CARGO_BIN_EXE_imagegate-agent")),
        [
            "--runtime-socket",
            containerd.socket.to_str().unwrap(),
            "--state-dir",
            state.path().to_str().unwrap(),
            "--grace",
            &format!("{}ms", GRACE.as_millis()),
            "--metrics-address",
            "127.0.0.1:0",
        ]
        .map(String::from),
        |command| cgroup.run_inside(command),
    );
    agent.wait_message("ready: watching container starts", Duration::from_secs(30));
    let metrics = agent
        .find(|l| l["fields"]["message"] == "metrics: serving /metrics and /healthz")
        .expect("metrics address logged")["fields"]["address"]
        .as_str()
        .unwrap()
        .to_string();

    let mut rounds = Vec::new();
    for (n, count) in [20_000, 40_000].into_iter().enumerate() {
        let mut subject = Subject {
            agent: &mut agent,
            metrics: &metrics,
            cgroup: &cgroup,
        };
        let figures = round(&mut subject, &containerd, &image, count, &format!("t{n}"));
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
    drop(registry);
}
