//! The agent under bursts of cgroups named like containers, for `cargo
//! xtask bench hostile` (which builds it in release mode and runs it as
//! root with the agent binary's path). The release agent runs in a 128 MiB
//! memory cgroup (the chart's limit) with the chart's 2 s grace window;
//! 20,000, 40,000 and 100,000 cgroups are created and removed, each round
//! with a real never-admitted container started in its middle. Prints one
//! JSON object on stdout: a `rounds` array of `cgroup_burst::Round`.

use std::{path::PathBuf, time::Duration};

use imagegate_testkit::{
    cgroup::MemoryCgroup,
    cgroup_burst::{Subject, round},
    containerd::TestContainerd,
    process::{Process, quiet},
    registry::Registry,
};

const CHART_MEMORY_LIMIT: u64 = 128 * 1024 * 1024;
const ROUNDS: [usize; 3] = [20_000, 40_000, 100_000];

#[tokio::main]
async fn main() {
    imagegate_testkit::require_root("the agent loads eBPF programs and runs in a memory cgroup");
    quiet();
    let binary: PathBuf = std::env::args()
        .nth(1)
        .expect("usage: burst_bench <imagegate-agent binary>")
        .into();
    let registry = Registry::plain();
    registry.push_runnable_image("pause", "1", "pause").await;
    registry
        .push_runnable_image("team/burst-rogue", "1", "burst-bench")
        .await;
    let image = format!("{}/team/burst-rogue:1", registry.host);
    let containerd = TestContainerd::start(&registry, &format!("{}/pause:1", registry.host));
    containerd.pull("default", &image);
    let state = tempfile::tempdir().unwrap();
    let cgroup = MemoryCgroup::new("agent-burst-bench", CHART_MEMORY_LIMIT);
    let mut agent = Process::start_with(
        "agent",
        &binary,
        [
            "--runtime-socket",
            containerd.socket.to_str().unwrap(),
            "--state-dir",
            state.path().to_str().unwrap(),
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
    for (n, count) in ROUNDS.into_iter().enumerate() {
        let mut subject = Subject {
            agent: &mut agent,
            metrics: &metrics,
            cgroup: &cgroup,
        };
        let figures = round(&mut subject, &containerd, &image, count, &format!("b{n}"));
        let alive = figures.alive;
        rounds.push(figures);
        if !alive {
            break;
        }
    }
    println!("{}", serde_json::json!({ "rounds": rounds }));
    drop(registry);
}
