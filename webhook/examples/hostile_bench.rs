//! Hostile-client figures for `cargo xtask bench hostile` (run as root: the
//! webhook runs in a memory cgroup of the chart's limit, 256 MiB). Prints
//! one JSON object: for a quiet baseline and each attack, the webhook's
//! resident memory before, at the peak and after, and the latency of a
//! well-behaved client sending the apiserver's review from 127.0.0.1 while
//! it runs. The same attacks as `webhook/tests/hostile.rs`, measured
//! rather than asserted.
//!
//! Usage: hostile_bench WEBHOOK-BINARY

use std::{net::IpAddr, path::PathBuf, time::Duration};

use imagegate_testkit::{
    ca::Ca,
    cgroup::MemoryCgroup,
    hostile::{self, AttackSummary, Target, Watched, webhook_attacks},
};
use serde_json::{Value, json};

const CHART_MEMORY_LIMIT: u64 = 256 * 1024 * 1024;
const POLICY: &str = include_str!("../../deploy/policy/example-policy.yaml");
const REVIEW: &str = include_str!("../tests/fixtures/apiserver-v1.28/admissionreview-3.json");

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let binary = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: hostile_bench WEBHOOK-BINARY"),
    );
    let ca = Ca::new("imagegate hostile bench CA");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let leaf = ca.server("webhook");
    for (name, contents) in [
        ("tls.crt", leaf.cert_pem.as_str()),
        ("tls.key", leaf.key_pem.as_str()),
        ("policy.yaml", POLICY),
    ] {
        std::fs::write(dir.path().join(name), contents).expect("writing the webhook's files");
    }
    let cgroup = MemoryCgroup::new("webhook-hostile-bench", CHART_MEMORY_LIMIT);
    let (mut webhook, address) = hostile::start_webhook(&binary, dir.path(), &cgroup, &[]);
    let target = Target::new(address, "localhost", &ca.pem());
    let fixture: Value = serde_json::from_str(REVIEW).expect("the fixture is JSON");
    let watched = Watched {
        pid: webhook.child.id(),
        cgroup: Some(&cgroup),
        target: target.clone(),
        path: "/validate".into(),
        body: serde_json::to_vec(&fixture["body"]).expect("the fixture's body is JSON"),
    };
    let attacker = |n: u8| IpAddr::from([127, 0, 0, n]);
    let mut phases = Vec::new();
    // Warm-up (not reported), then a quiet baseline as long as an attack.
    hostile::phase("warm-up", &watched, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        AttackSummary::default()
    })
    .await;
    phases.push(
        hostile::phase("baseline (no attack, 5 s)", &watched, async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            AttackSummary::default()
        })
        .await,
    );
    phases.push(webhook_attacks::slow_bodies(&watched, attacker(2)).await);
    phases.push(webhook_attacks::half_headers(&watched, attacker(3)).await);
    phases.push(webhook_attacks::h2_streams(&watched, attacker(4)).await);
    let alive = webhook.child.try_wait().ok().flatten().is_none();
    webhook.stop();
    println!(
        "{}",
        json!({
            "memory_limit_mib": CHART_MEMORY_LIMIT >> 20,
            "webhook_alive_after": alive,
            "oom_kills": cgroup.oom_kills(),
            "phases": phases,
        })
    );
}
