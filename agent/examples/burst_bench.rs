//! The agent under bursts of cgroups named like containers, for `cargo
//! xtask bench hostile` (which builds it in release mode and runs it as
//! root with the agent binary's path). The release agent runs in a 128 MiB
//! memory cgroup (the chart's limit) with the chart's 2 s grace window;
//! 20,000, 40,000 and 100,000 cgroups are created and removed, each round
//! with a real never-admitted container started in its middle. Prints one
//! JSON object on stdout: a `rounds` array of `cgroup_burst::Round`.

use std::path::PathBuf;

use imagegate_testkit::{
    cgroup_burst::{Stand, round},
    process::quiet,
};

const ROUNDS: [usize; 3] = [20_000, 40_000, 100_000];

#[tokio::main]
async fn main() {
    imagegate_testkit::require_root("the agent loads eBPF programs and runs in a memory cgroup");
    quiet();
    let binary: PathBuf = std::env::args()
        .nth(1)
        .expect("usage: burst_bench <imagegate-agent binary>")
        .into();
    let mut stand = Stand::start(&binary, "agent-burst-bench", &[]).await;
    let mut rounds = Vec::new();
    for (n, count) in ROUNDS.into_iter().enumerate() {
        let figures = round(&mut stand, count, &format!("b{n}"));
        let alive = figures.alive;
        rounds.push(figures);
        if !alive {
            break;
        }
    }
    println!("{}", serde_json::json!({ "rounds": rounds }));
    drop(stand);
}
