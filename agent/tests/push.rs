//! End to end: real webhook processes push what they admit to real agent
//! processes over mTLS. One agent is restarted mid-way (a crash, SIGKILL),
//! the other is down for a while then back; two webhook replicas with
//! their own ledgers push to both. Every agent converges to the union.
//! Root: the agents load eBPF.

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use imagegate_proto::v1::{
    self as pb,
    approval_feed_server::{ApprovalFeed, ApprovalFeedServer},
};
use imagegate_testkit::{
    ca::Ca,
    grpcurl::{self, Target},
    https,
    process::{Process, free_port, sibling_binary},
    registry::Registry,
};
use serde_json::json;

const AGENT: &str = env!("CARGO_BIN_EXE_imagegate-agent");
const CONVERGE: Duration = Duration::from_secs(30);

fn require_root() {
    imagegate_testkit::require_root("these tests load eBPF programs");
}

struct Files {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("imagegate push test CA");
        for name in ["imagegate-agent", "imagegate-webhook"] {
            ca.write(dir.path(), name, &ca.identity(name));
        }
        let serving = ca.server("webhook");
        std::fs::write(dir.path().join("webhook-tls.crt"), &serving.cert_pem).unwrap();
        std::fs::write(dir.path().join("webhook-tls.key"), &serving.key_pem).unwrap();
        Self { dir, ca }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// An agent on fixed ports, so a restart comes back where the webhooks
/// look for it.
struct AgentSlot {
    name: &'static str,
    tls_port: u16,
    plain_port: u16,
    state: tempfile::TempDir,
}

impl AgentSlot {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            tls_port: free_port(),
            plain_port: free_port(),
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn start(&self, files: &Files) -> Process {
        self.start_with(files, &[])
    }

    /// With these flags too.
    fn start_with(&self, files: &Files, extra: &[&str]) -> Process {
        let mut process = Process::start(
            self.name,
            Path::new(AGENT),
            [
                "--runtime-socket",
                // containerd not running: its folder is there, the socket is not.
                "/tmp/imagegate-no-containerd.sock",
                "--state-dir",
                self.state.path().to_str().unwrap(),
                "--metrics-address",
                "off",
                "--grpc-address",
                &format!("127.0.0.1:{}", self.tls_port),
                "--grpc-tls-cert",
                &files.path("imagegate-agent.crt"),
                "--grpc-tls-key",
                &files.path("imagegate-agent.key"),
                "--grpc-client-ca",
                &files.path("ca.pem"),
                "--grpc-plaintext-address",
                &format!("127.0.0.1:{}", self.plain_port),
            ]
            .iter()
            .chain(extra),
        );
        process.wait_message("ready: watching container starts", Duration::from_secs(30));
        process
    }

    fn plain(&self) -> Target {
        Target::Plaintext(format!("127.0.0.1:{}", self.plain_port))
    }

    fn digests(&self) -> BTreeSet<String> {
        let page = grpcurl::call(
            &self.plain(),
            "imagegate.v1.AgentService/ListApprovals",
            r#"{"pageSize": 1000}"#,
        );
        page["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["digest"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits until the agent holds exactly `expected`.
    fn converges_to(&self, expected: &BTreeSet<String>) {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let held = self.digests();
            if &held == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} holds {held:?}, expected {expected:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

struct Webhook {
    // Kept for its drop: the webhook stops with the test.
    _process: Process,
    port: u16,
}

impl Webhook {
    fn start(files: &Files, registry: &Registry, ledger: &Path, agents: &[&AgentSlot]) -> Self {
        let mut args = Vec::new();
        for agent in agents {
            args.push("--agent".to_string());
            args.push(format!("127.0.0.1:{}", agent.tls_port));
        }
        Self::start_with(files, registry, ledger, args)
    }

    /// With these agent discovery flags.
    fn start_with(
        files: &Files,
        registry: &Registry,
        ledger: &Path,
        discovery: Vec<String>,
    ) -> Self {
        let webhook = sibling_binary(AGENT, "imagegate-webhook");
        let policy = files.dir.path().join("policy.yaml");
        std::fs::write(
            &policy,
            format!(
                "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: local\n    registries: ['{}']\n",
                registry.host
            ),
        )
        .unwrap();
        let mut args: Vec<String> = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &files.path("webhook-tls.crt"),
            "--key",
            &files.path("webhook-tls.key"),
            "--policy",
            policy.to_str().unwrap(),
            "--plain-http-registry",
            &registry.host,
            "--ledger",
            ledger.to_str().unwrap(),
            "--agent-ca",
            &files.path("ca.pem"),
            "--agent-client-cert",
            &files.path("imagegate-webhook.crt"),
            "--agent-client-key",
            &files.path("imagegate-webhook.key"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(discovery);
        let mut process = Process::start("webhook", &webhook, &args);
        let serving = process.wait_message(
            "serving /image_policy, /validate, /, /healthz, /readyz, /metrics over HTTPS",
            Duration::from_secs(20),
        );
        let port = serving["fields"]["listen"]
            .as_str()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .expect("the webhook logs its port");
        Self {
            _process: process,
            port,
        }
    }

    /// Admits a pod running `image`, as the apiserver would ask.
    async fn admit(&self, files: &Files, image: &str) {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "e2e", "operation": "CREATE", "namespace": "shop",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "userInfo": {"username": "e2e"},
                "object": {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "app", "namespace": "shop"},
                    "spec": {"containers": [{"name": "app", "image": image}]}}
            }
        });
        let (status, body) = https::post(
            self.port,
            "/validate",
            &files.ca.pem(),
            &serde_json::to_vec(&review).unwrap(),
        )
        .await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("\"allowed\":true"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_agents_converge_through_a_crash_and_an_outage() {
    require_root();
    let registry = Registry::plain();
    let mut digests = Vec::new();
    for n in 0..7 {
        digests.push(
            registry
                .push_image("team/app", &format!("v{n}"), &format!("push-{n}"))
                .await,
        );
    }
    let image = |n: usize| format!("{}/team/app:v{n}", registry.host);
    let files = Files::new();
    let (a, b) = (AgentSlot::new("agent-a"), AgentSlot::new("agent-b"));
    let mut agent_a = a.start(&files);
    let agent_b = b.start(&files);
    let ledgers = tempfile::tempdir().unwrap();
    let webhook = Webhook::start(
        &files,
        &registry,
        &ledgers.path().join("one.redb"),
        &[&a, &b],
    );

    let expected = |n: usize| digests[..n].iter().cloned().collect::<BTreeSet<_>>();
    webhook.admit(&files, &image(0)).await;
    a.converges_to(&expected(1));
    b.converges_to(&expected(1));

    // B goes down; admissions go on.
    agent_b.stop();
    webhook.admit(&files, &image(1)).await;
    webhook.admit(&files, &image(2)).await;
    a.converges_to(&expected(3));

    // A crashes, misses an admission, comes back with its store.
    let _ = agent_a.child.kill();
    let _ = agent_a.child.wait();
    drop(agent_a);
    webhook.admit(&files, &image(3)).await;
    let _agent_a = a.start(&files);
    a.converges_to(&expected(4));

    // B comes back and catches up; a new admission reaches both.
    let _agent_b = b.start(&files);
    webhook.admit(&files, &image(4)).await;
    a.converges_to(&expected(5));
    b.converges_to(&expected(5));

    // A second replica with its own ledger: the agents keep the union.
    let second = Webhook::start(
        &files,
        &registry,
        &ledgers.path().join("two.redb"),
        &[&a, &b],
    );
    second.admit(&files, &image(5)).await;
    second.admit(&files, &image(0)).await;
    a.converges_to(&expected(6));
    b.converges_to(&expected(6));
    let status = grpcurl::call(&b.plain(), "imagegate.v1.AgentService/GetStatus", "{}");
    let sources = status["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2, "one generation per ledger: {status}");
    assert!(
        sources.iter().all(|s| s["source"]
            .as_str()
            .unwrap()
            .starts_with("imagegate-webhook/")),
        "{status}"
    );

    // Nobody else may push: not over plaintext, not with a certificate
    // from another CA (the handshake fails).
    let push = format!(
        r#"{{"ledger": "x", "approvals": [{{"digest": "sha256:{}"}}]}}"#,
        "ee".repeat(32)
    );
    let (code, _) = grpcurl::error(&a.plain(), "imagegate.v1.AgentService/PushApprovals", &push);
    assert_eq!(code, "Unauthenticated");
    let stranger = Ca::new("another CA");
    let strange_dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = stranger.write(
        strange_dir.path(),
        "imagegate-webhook",
        &stranger.identity("imagegate-webhook"),
    );
    let out = grpcurl::run_data(
        &Target::Tls {
            address: format!("127.0.0.1:{}", a.tls_port),
            ca: files.dir.path().join("ca.pem"),
            cert,
            key,
            server_name: "imagegate-agent".into(),
        },
        &[],
        "imagegate.v1.AgentService/PushApprovals",
        &push,
    );
    assert!(
        !out.status.success(),
        "a stranger's certificate was accepted"
    );
    a.converges_to(&expected(6));

    // Discovery by DNS, as through a headless Service: `localhost` has
    // A and AAAA records; each record is an agent (the ::1 one is refused
    // and retried, the 127.0.0.1 one gets the approval).
    let third = Webhook::start_with(
        &files,
        &registry,
        &ledgers.path().join("three.redb"),
        vec![
            "--agent-service".into(),
            format!("localhost:{}", a.tls_port),
            "--agent-resolve-interval".into(),
            "1s".into(),
        ],
    );
    third.admit(&files, &image(6)).await;
    a.converges_to(&expected(7));
    drop(webhook);
    drop(second);
    drop(third);
}

/// Found with 3,500 admissions of 16-platform indexes: a new agent failed
/// every sync (`decoded message length too large`), forever. A fresh agent
/// joins a ledger of 100,000 such admissions: it syncs all of it, keeping
/// of each index only what its node can run.
#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_agent_joins_a_ledger_of_100000_multi_arch_admissions() {
    use imagegate_proto::{
        digest::Digest,
        platform::{Child, Platform, node_architecture},
    };
    use imagegate_webhook::ledger::{Approval, Ledger, Origin};
    require_root();
    const ADMISSIONS: u64 = 100_000;
    const ARCHITECTURES: [&str; 16] = [
        "amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "mips64le", "mips64",
        "mipsle", "mips", "loong64", "wasm", "sparc64", "arm64be", "armbe",
    ];
    let digest = |n: u64| Digest::parse(&format!("sha256:{n:064x}")).unwrap();
    let ledgers = tempfile::tempdir().unwrap();
    let path = ledgers.path().join("big.redb");
    let started_fill = Instant::now();
    {
        let ledger = Ledger::open(&path, Duration::from_secs(86_400), ADMISSIONS).unwrap();
        let mut chunk = Vec::new();
        for n in 0..ADMISSIONS {
            chunk.push(Approval {
                digest: digest(n * 100),
                verified: true,
                break_glass: false,
                expires_at_ms: None,
                children: ARCHITECTURES
                    .iter()
                    .enumerate()
                    .map(|(i, arch)| Child {
                        digest: digest(n * 100 + 1 + i as u64),
                        platform: Some(Platform {
                            os: "linux".into(),
                            architecture: arch.to_string(),
                            variant: String::new(),
                        }),
                    })
                    .collect(),
                reference: format!("registry.example/team/app-{n}:1.0"),
                namespace: "shop".into(),
                kind: Some("Deployment".into()),
                name: Some(format!("app-{n}")),
                user: Some("ci".into()),
                rule: "team".into(),
                api: imagegate_webhook::review::Api::AdmissionReview,
                origin: Origin::Admission,
                admitted_at_ms: imagegate_plumbing::clock::now_ms(),
                generation: 0,
                signers: Vec::new(),
            });
            if chunk.len() == 5_000 {
                ledger.record(&chunk).unwrap();
                chunk.clear();
            }
        }
        assert_eq!(ledger.generation().unwrap(), ADMISSIONS);
    }
    eprintln!(
        "ledger of {ADMISSIONS} written in {:.1?}",
        started_fill.elapsed()
    );
    let registry = Registry::plain();
    let files = Files::new();
    let slot = AgentSlot::new("agent");
    let _agent = slot.start(&files);
    let started = Instant::now();
    let _webhook = Webhook::start(&files, &registry, &path, &[&slot]);
    let deadline = started + Duration::from_secs(300);
    let status = loop {
        let status = grpcurl::call(&slot.plain(), "imagegate.v1.AgentService/GetStatus", "{}");
        let held = status["sources"][0]["generation"]
            .as_str()
            .and_then(|g| g.parse::<u64>().ok())
            .unwrap_or(0);
        if held == ADMISSIONS {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "after {:?} the agent holds generation {held} of {ADMISSIONS}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "a fresh agent synced {ADMISSIONS} 16-platform admissions in {:.1?}",
        started.elapsed()
    );
    // The index and this node's platform manifest of each: 2 of 17 digests.
    let approvals: u64 = status["counters"]["approvals"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let own = ARCHITECTURES
        .iter()
        .position(|a| *a == node_architecture())
        .expect("this node's architecture is among them") as u64;
    assert_eq!(approvals, 2 * ADMISSIONS, "{status}");
    let last = ADMISSIONS - 1;
    for wanted in [digest(last * 100), digest(last * 100 + 1 + own)] {
        let found = grpcurl::call(
            &slot.plain(),
            "imagegate.v1.AgentService/ListApprovals",
            &format!(r#"{{"digest": "{wanted}"}}"#),
        );
        assert_eq!(grpcurl::count(&found, "approvals"), 1, "{wanted}: {found}");
    }
}

/// A stand-in for a webhook replica's approval feed: it answers one Follow
/// and sends what the test hands it, saying or not that it marks the end
/// of its catch-up (replicas of earlier releases do not).
struct StandInFeed {
    marks: bool,
    batches: std::sync::Mutex<
        Option<tokio::sync::mpsc::Receiver<Result<pb::ApprovalBatch, tonic::Status>>>,
    >,
}

#[tonic::async_trait]
impl ApprovalFeed for StandInFeed {
    type FollowStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::ApprovalBatch, tonic::Status>>;

    async fn follow(
        &self,
        _: tonic::Request<pb::FollowRequest>,
    ) -> Result<tonic::Response<Self::FollowStream>, tonic::Status> {
        let batches = self
            .batches
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| tonic::Status::unavailable("one stream only"))?;
        let mut response =
            tonic::Response::new(tokio_stream::wrappers::ReceiverStream::new(batches));
        if self.marks {
            response.metadata_mut().insert(
                imagegate_proto::MARKS_CAUGHT_UP_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        Ok(response)
    }
}

/// Serves a stand-in feed with the webhook's push identity; returns its
/// port and the sender of its one stream's batches.
async fn stand_in_feed(
    files: &Files,
    marks: bool,
) -> (
    u16,
    tokio::sync::mpsc::Sender<Result<pb::ApprovalBatch, tonic::Status>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let read = |name: &str| std::fs::read(files.path(name)).unwrap();
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            read("imagegate-webhook.crt"),
            read("imagegate-webhook.key"),
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(read("ca.pem")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(ApprovalFeedServer::new(StandInFeed {
            marks,
            batches: std::sync::Mutex::new(Some(rx)),
        }));
    tokio::spawn(
        server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (port, tx)
}

/// The agent's `feeds` in GetStatus: (replicas found, streams open).
fn feed_counts(agent: &AgentSlot) -> (u64, u64) {
    let status = grpcurl::call(&agent.plain(), "imagegate.v1.AgentService/GetStatus", "{}");
    let feeds = &status["feeds"];
    (
        feeds["replicasFound"].as_u64().unwrap_or(0),
        feeds["streamsOpen"].as_u64().unwrap_or(0),
    )
}

fn wait_feed_counts(agent: &AgentSlot, expected: (u64, u64)) {
    let deadline = Instant::now() + CONVERGE;
    while feed_counts(agent) != expected {
        assert!(
            Instant::now() < deadline,
            "{}: feeds {:?}, expected {expected:?}",
            agent.name,
            feed_counts(agent)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A stream counts as open (stops no longer wait for it) once the replica
/// has caught the agent up, when it marks that; at once for a replica that
/// does not.
#[tokio::test(flavor = "multi_thread")]
async fn a_feed_stream_counts_as_open_from_the_end_of_its_catch_up() {
    require_root();
    let files = Files::new();
    let batch = |caught_up: bool| pb::ApprovalBatch {
        ledger: "stand-in".into(),
        since_generation: 0,
        generation: 0,
        caught_up,
        ..Default::default()
    };

    let (port, batches) = stand_in_feed(&files, true).await;
    let slot = AgentSlot::new("agent-marked");
    let feed = format!("127.0.0.1:{port}");
    let _agent = slot.start_with(&files, &["--webhook-feed", &feed]);
    // The stream is open, but a batch without the mark is not the end of
    // the catch-up.
    batches.send(Ok(batch(false))).await.unwrap();
    wait_feed_counts(&slot, (1, 0));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(feed_counts(&slot), (1, 0), "open before the catch-up ended");
    batches.send(Ok(batch(true))).await.unwrap();
    wait_feed_counts(&slot, (1, 1));

    let (port, _batches) = stand_in_feed(&files, false).await;
    let slot = AgentSlot::new("agent-unmarked");
    let feed = format!("127.0.0.1:{port}");
    let _agent = slot.start_with(&files, &["--webhook-feed", &feed]);
    // An earlier release's replica: open once it answers, no batch needed.
    wait_feed_counts(&slot, (1, 1));
}
