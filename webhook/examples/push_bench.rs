//! Push figures for `cargo xtask bench push` (run as root: agents load
//! eBPF). Prints one JSON object.
//!
//! For 1 and 10 agents (release binaries on loopback, mTLS; the agents
//! follow the webhook's approval feed, as the chart runs them):
//! - sync throughput: a ledger of 20,000 approvals, the webhook serving,
//!   empty agents started together: the time from their start (their own
//!   start-up included) until every agent holds them all;
//! - admission -> visible: 100 pods admitted one at a time through
//!   `/validate`; from the answer's arrival to the digest being listed by
//!   every agent (each polled through its plaintext gRPC listener).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::synthetic;
use imagegate_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use imagegate_testkit::{
    ca::Ca,
    https,
    process::{Process, free_port},
    registry::Registry,
};
use imagegate_webhook::ledger::{Approval, Ledger};
use serde_json::json;
use tonic::transport::Channel;

#[path = "common/mod.rs"]
mod common;

const PREFILL: usize = 20_000;
const ADMISSIONS: usize = 100;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Agent {
    _process: Process,
    client: AgentServiceClient<Channel>,
}

/// Starts an agent process; [`ready`] waits for it.
fn start_agent(
    bin: &Path,
    dir: &Path,
    name: &str,
    tls_port: u16,
    feed_port: u16,
) -> (Process, u16) {
    let plain_port = free_port();
    let state = dir.join(format!("{name}-state"));
    let path = |f: &str| dir.join(f).display().to_string();
    let process = Process::start(
        name,
        bin,
        [
            "--runtime-socket",
            // containerd is not needed here: its folder is there, the socket is not.
            "/tmp/imagegate-no-containerd.sock",
            "--state-dir",
            state.to_str().unwrap(),
            "--metrics-address",
            "off",
            "--grpc-address",
            &format!("127.0.0.1:{tls_port}"),
            "--grpc-tls-cert",
            &path("imagegate-agent.crt"),
            "--grpc-tls-key",
            &path("imagegate-agent.key"),
            "--grpc-client-ca",
            &path("ca.pem"),
            "--grpc-plaintext-address",
            &format!("127.0.0.1:{plain_port}"),
            "--webhook-feed",
            &format!("127.0.0.1:{feed_port}"),
        ],
    );
    (process, plain_port)
}

async fn ready((mut process, plain_port): (Process, u16)) -> Agent {
    process.wait_message("ready: watching container starts", Duration::from_secs(60));
    let client = AgentServiceClient::connect(format!("http://127.0.0.1:{plain_port}"))
        .await
        .expect("connect to the agent");
    Agent {
        _process: process,
        client,
    }
}

async fn approvals_held(agent: &mut Agent) -> u64 {
    agent
        .client
        .get_status(pb::GetStatusRequest {})
        .await
        .map(|r| r.into_inner().counters.map_or(0, |c| c.approvals))
        .unwrap_or(0)
}

async fn holds(agent: &mut Agent, digest: &str) -> bool {
    agent
        .client
        .list_approvals(pb::ListApprovalsRequest {
            digest: digest.to_string(),
            ..Default::default()
        })
        .await
        .map(|r| !r.into_inner().approvals.is_empty())
        .unwrap_or(false)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let webhook_bin = PathBuf::from(args.next().expect("usage: push_bench WEBHOOK AGENT"));
    let agent_bin = PathBuf::from(args.next().expect("usage: push_bench WEBHOOK AGENT"));
    let _ = rustls::crypto::ring::default_provider().install_default();

    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("imagegate push bench CA");
    for name in ["imagegate-agent", "imagegate-webhook"] {
        ca.write(dir.path(), name, &ca.identity(name));
    }
    let serving = ca.server("webhook");
    std::fs::write(dir.path().join("tls.crt"), &serving.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &serving.key_pem).unwrap();

    let registry = Registry::plain();
    let mut images = Vec::new();
    for i in 0..ADMISSIONS {
        let digest = registry
            .push_image("bench/app", &format!("v{i}"), &format!("push-bench-{i}"))
            .await;
        images.push((format!("{}/bench/app:v{i}", registry.host), digest));
    }
    std::fs::write(
        dir.path().join("policy.yaml"),
        format!(
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: local\n    registries: ['{}']\n",
            registry.host
        ),
    )
    .unwrap();

    let mut results = Vec::new();
    for agents_n in [1usize, 10] {
        let run = dir.path().join(format!("run-{agents_n}"));
        std::fs::create_dir_all(&run).unwrap();
        for f in [
            "ca.pem",
            "imagegate-agent.crt",
            "imagegate-agent.key",
            "imagegate-webhook.crt",
            "imagegate-webhook.key",
        ] {
            std::fs::copy(dir.path().join(f), run.join(f)).unwrap();
        }
        // The prefilled ledger.
        let ledger_path = run.join("ledger.redb");
        {
            let ledger =
                Ledger::open(&ledger_path, Duration::from_secs(86_400), 1_000_000).unwrap();
            let all: Vec<Approval> = (0..PREFILL).map(synthetic).collect();
            for chunk in all.chunks(5_000) {
                ledger.record(chunk).unwrap();
            }
        }
        let feed_port = free_port();

        // Sync throughput.
        let path = |f: &str| run.join(f).display().to_string();
        let mut webhook_args = vec![
            "serve".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--cert".into(),
            dir.path().join("tls.crt").display().to_string(),
            "--key".into(),
            dir.path().join("tls.key").display().to_string(),
            "--policy".into(),
            dir.path().join("policy.yaml").display().to_string(),
            "--plain-http-registry".into(),
            registry.host.clone(),
            "--ledger".into(),
            ledger_path.display().to_string(),
            "--agent-ca".into(),
            path("ca.pem"),
            "--agent-client-cert".into(),
            path("imagegate-webhook.crt"),
            "--agent-client-key".into(),
            path("imagegate-webhook.key"),
        ];
        webhook_args.push("--feed-listen".into());
        webhook_args.push(format!("127.0.0.1:{feed_port}"));
        let mut webhook = Process::start("webhook", &webhook_bin, &webhook_args);
        let serving = webhook.wait_message(
            "serving /image_policy, /validate, /, /healthz, /readyz, /metrics over HTTPS",
            Duration::from_secs(30),
        );
        let port: u16 = serving["fields"]["listen"]
            .as_str()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        // The webhook serves; the agents start at once, each following its
        // feed as soon as it is up.
        let started = Instant::now();
        let starting: Vec<(Process, u16)> = (0..agents_n)
            .map(|i| {
                start_agent(
                    &agent_bin,
                    &run,
                    &format!("agent-{i}"),
                    free_port(),
                    feed_port,
                )
            })
            .collect();
        let mut agents = Vec::new();
        for agent in starting {
            agents.push(ready(agent).await);
        }
        loop {
            let mut all = true;
            for agent in agents.iter_mut() {
                if approvals_held(agent).await < PREFILL as u64 {
                    all = false;
                    break;
                }
            }
            if all {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "sync did not finish"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sync_seconds = started.elapsed().as_secs_f64();

        // Admission -> visible on every agent.
        let mut latencies = Vec::new();
        for (image, digest) in &images {
            let review = json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "bench", "operation": "CREATE", "namespace": "bench",
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "userInfo": {"username": "bench"},
                    "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                        "spec": {"containers": [{"name": "app", "image": image}]}}}
            });
            let (status, _) = https::post(
                port,
                "/validate",
                &ca.pem(),
                &serde_json::to_vec(&review).unwrap(),
            )
            .await;
            assert_eq!(status, 200);
            let answered = Instant::now();
            let mut pending: Vec<usize> = (0..agents.len()).collect();
            while !pending.is_empty() {
                let mut still = Vec::new();
                for i in pending {
                    if !holds(&mut agents[i], digest).await {
                        still.push(i);
                    }
                }
                pending = still;
                assert!(
                    answered.elapsed() < Duration::from_secs(30),
                    "{digest} never arrived"
                );
            }
            latencies.push(answered.elapsed().as_secs_f64() * 1000.0);
        }
        latencies.sort_by(f64::total_cmp);
        results.push(json!({
            "agents": agents_n,
            "sync": {
                "approvals_per_agent": PREFILL,
                "seconds": sync_seconds,
                "approvals_per_second_per_agent": PREFILL as f64 / sync_seconds,
                "approvals_per_second_total": (PREFILL * agents_n) as f64 / sync_seconds,
            },
            "admission_to_visible_ms": {
                "admissions": ADMISSIONS,
                "p50": percentile(&latencies, 50.0),
                "p99": percentile(&latencies, 99.0),
                "max": latencies.last().copied().unwrap_or(0.0),
            },
        }));
        drop(webhook);
        drop(agents);
    }
    println!("{}", json!({ "runs": results }));
}
