//! Approvals at cluster scale, for `cargo xtask bench push --agents N`:
//! the real webhook binary (a child process: its CPU and memory read from
//! /proc) and N lightweight agents in this process that speak the agent's
//! side of the wire over mTLS on loopback, in both designs:
//! - `dial`: each agent is an `AgentService` server; the webhook dials
//!   every one (`--agent` per agent) and pushes;
//! - `feed`: each agent opens one `ApprovalFeed.Follow` stream to the
//!   webhook (from its own loopback address, as nodes have theirs).
//!
//! Per design and N, one run:
//! 1. the ledger holds 100,000 approvals the agents already hold (a fleet
//!    in its steady state);
//! 2. 1,000 pods admitted one at a time through `/validate`: admission
//!    latency, and from each answer until the approval is held by 99% and
//!    by all agents; with agents, a control webhook without any admits
//!    each pod too, in turns, for what the push adds;
//!    then a burst: 200 pods admitted by 16 callers at once; how long
//!    until every agent holds all of them, and the webhook's CPU and feed
//!    messages per admission;
//! 3. one new agent with nothing: its full sync of the 100,000;
//! 4. 10% of agents stop answering and 10% take 2 s per message, 50
//!    admissions (latency, visible on the healthy ones), then they recover:
//!    how long until every agent holds everything again;
//! 5. the webhook killed and started again on its ledger: how long until
//!    an admission made once it serves is held by every agent, the
//!    latency of admissions made meanwhile, and the webhook's CPU over that
//!    reconnect storm.
//!
//! Usage: push_scale WEBHOOK_BIN AGENTS(comma list) DESIGNS(comma list).
//! Prints one JSON object.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use common::synthetic;
use imagegate_proto::v1::{
    self as pb,
    agent_service_server::{AgentService, AgentServiceServer},
    approval_feed_client::ApprovalFeedClient,
};
use imagegate_testkit::{
    ca::Ca,
    https,
    process::{Process, free_port},
    registry::Registry,
};
use imagegate_webhook::ledger::{Approval, Ledger};
use serde_json::{Value, json};
use tonic::{
    Request, Response, Status,
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig},
};

#[path = "common/mod.rs"]
mod common;

const PREFILL: usize = 100_000;
/// Enough for a p99 that is not the 3rd-slowest admission (it was 300:
/// p99 then moved by several ms between runs).
const STEADY: usize = 1_000;
const IMPAIRED: usize = 50;
/// Pods admitted at once by [`CALLERS`] callers (a Deployment scaled up):
/// writes then come faster than one fan-out reaches every agent.
const BURST: usize = 200;
const CALLERS: usize = 16;
const SLOW: Duration = Duration::from_secs(2);
/// Admissions made at least, one after another, while agents reconnect
/// after a restart.
const DURING_RESTART: usize = 50;
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(20);

/// `IMAGEGATE_PUSH_RESTART_NEW_IMAGES=N`: the admissions made while agents
/// reconnect are of N images never admitted before (each one a write every
/// agent must get), not the steady phase's again (which the ledger does not
/// write again). 0, the default, is the latter.
fn restart_new_images() -> usize {
    std::env::var("IMAGEGATE_PUSH_RESTART_NEW_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Where the images pushed at set-up sit in `images`.
const WARM_UP_IMAGE: usize = STEADY + IMPAIRED + 1 + BURST;
const FIRST_NEW_IMAGE: usize = WARM_UP_IMAGE + 1;

const HEALTHY: u8 = 0;
const SLOW_MODE: u8 = 1;
const STALLED: u8 = 2;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut values: Vec<f64>) -> Value {
    values.sort_by(f64::total_cmp);
    json!({
        "n": values.len(),
        "mean": values.iter().sum::<f64>() / values.len() as f64,
        "p50": percentile(&values, 50.0),
        "p90": percentile(&values, 90.0),
        "p99": percentile(&values, 99.0),
        "max": values.last().copied().unwrap_or(f64::NAN),
    })
}

/// What every agent of a run shares: which digests the bench waits for,
/// and when each agent received them.
struct Watch {
    index: HashMap<String, usize>,
    arrivals: Vec<Mutex<Vec<(usize, Instant)>>>,
    /// `feed` agents' attempts to open a stream that failed (connect, TLS,
    /// or the Follow call): work thrown away, then a backoff.
    failed_opens: std::sync::atomic::AtomicU64,
}

/// One lightweight agent: what it holds per ledger, how it behaves.
struct Fake {
    id: usize,
    held: Mutex<HashMap<String, u64>>,
    mode: AtomicU8,
    full_at: Mutex<Option<Instant>>,
    watch: Arc<Watch>,
    /// The generation that counts as "everything" for `full_at`.
    full: u64,
}

impl Fake {
    async fn behave(&self) {
        match self.mode.load(Ordering::Relaxed) {
            SLOW_MODE => tokio::time::sleep(SLOW).await,
            STALLED => {
                while self.mode.load(Ordering::Relaxed) == STALLED {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            _ => {}
        }
    }

    fn held(&self, ledger: &str) -> u64 {
        self.held.lock().unwrap().get(ledger).copied().unwrap_or(0)
    }

    /// Takes a batch; returns the generation now held.
    fn take(&self, ledger: &str, generation: u64, approvals: &[pb::Approval]) -> u64 {
        let now = Instant::now();
        for approval in approvals {
            if let Some(&i) = self.watch.index.get(&approval.digest) {
                self.watch.arrivals[i].lock().unwrap().push((self.id, now));
            }
        }
        let mut held = self.held.lock().unwrap();
        let entry = held.entry(ledger.to_string()).or_insert(0);
        *entry = (*entry).max(generation);
        if *entry >= self.full {
            self.full_at.lock().unwrap().get_or_insert(now);
        }
        *entry
    }
}

/// The `dial` design's agent: an `AgentService` server.
struct Served(Arc<Fake>);

#[tonic::async_trait]
impl AgentService for Served {
    async fn push_approvals(
        &self,
        request: Request<pb::PushApprovalsRequest>,
    ) -> Result<Response<pb::PushApprovalsResponse>, Status> {
        self.0.behave().await;
        let r = request.into_inner();
        let generation = self.0.take(&r.ledger, r.generation, &r.approvals);
        Ok(Response::new(pb::PushApprovalsResponse {
            added: r.approvals.len() as u32,
            generation,
            rejected: Vec::new(),
        }))
    }

    async fn sync_approvals(
        &self,
        request: Request<pb::SyncApprovalsRequest>,
    ) -> Result<Response<pb::SyncApprovalsResponse>, Status> {
        self.0.behave().await;
        let r = request.into_inner();
        let generation = self.0.take(&r.ledger, r.generation, &r.approvals);
        Ok(Response::new(pb::SyncApprovalsResponse {
            added: r.approvals.len() as u32,
            generation,
            rejected: Vec::new(),
        }))
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::Status>, Status> {
        self.0.behave().await;
        let sources = self
            .0
            .held
            .lock()
            .unwrap()
            .iter()
            .map(|(ledger, generation)| pb::Source {
                source: format!("{}/{ledger}", imagegate_proto::WEBHOOK_IDENTITY),
                generation: *generation,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::Status {
            sources,
            ..Default::default()
        }))
    }

    async fn list_approvals(
        &self,
        _: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        Err(Status::unimplemented("bench agent"))
    }

    async fn list_containers(
        &self,
        _: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        Err(Status::unimplemented("bench agent"))
    }

    async fn list_violations(
        &self,
        _: Request<pb::ListViolationsRequest>,
    ) -> Result<Response<pb::ListViolationsResponse>, Status> {
        Err(Status::unimplemented("bench agent"))
    }

    type WatchEventsStream = tokio_stream::Empty<Result<pb::Event, Status>>;

    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Err(Status::unimplemented("bench agent"))
    }
}

/// A `dial` agent's server on a port the kernel picks (thousands of
/// servers: picked ports would collide).
fn serve_agent(agent: Arc<Fake>, files: &Files) -> (u16, tokio::task::JoinHandle<()>) {
    let incoming =
        tonic::transport::server::TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let port = incoming.local_addr().unwrap().port();
    (port, serve_agent_on(agent, files, incoming))
}

fn serve_agent_on(
    agent: Arc<Fake>,
    files: &Files,
    incoming: tonic::transport::server::TcpIncoming,
) -> tokio::task::JoinHandle<()> {
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(
        files.read("imagegate-agent.crt"),
        files.read("imagegate-agent.key"),
    ));
    let server = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(AgentServiceServer::new(Served(agent)));
    tokio::spawn(async move {
        if let Err(e) = server.serve_with_incoming(incoming).await {
            eprintln!("push_scale: a bench agent stopped serving: {e}");
        }
    })
}

struct Files {
    dir: PathBuf,
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }
}

/// The `feed` design's agent: follows the webhook's feed from its own
/// loopback address, reopening like the real agent (backoff from 200 ms to
/// 10 s, with jitter).
async fn follow(fake: Arc<Fake>, feed: SocketAddr, files: Arc<Files>) {
    let local = IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (fake.id / 60_000) as u8,
        ((fake.id / 250) % 240) as u8,
        (fake.id % 250 + 1) as u8,
    ));
    let mut backoff = Duration::from_millis(200);
    loop {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(files.read("ca.pem")))
            .identity(Identity::from_pem(
                files.read("imagegate-agent.crt"),
                files.read("imagegate-agent.key"),
            ))
            .domain_name(imagegate_proto::WEBHOOK_IDENTITY);
        let opened = std::sync::atomic::AtomicBool::new(false);
        let session = async {
            let channel = Endpoint::from_shared(format!("https://{feed}"))
                .map_err(|e| e.to_string())?
                .tls_config(tls)
                .map_err(|e| e.to_string())?
                .local_address(Some(local))
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let held = fake.held.lock().unwrap().clone();
            let mut stream = ApprovalFeedClient::new(channel)
                .max_decoding_message_size(imagegate_proto::MAX_MESSAGE_BYTES)
                .follow(pb::FollowRequest {
                    node: format!("bench-{}", fake.id),
                    held,
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            opened.store(true, Ordering::Relaxed);
            while let Some(batch) = stream.message().await.map_err(|e| e.to_string())? {
                fake.behave().await;
                if batch.since_generation > fake.held(&batch.ledger) {
                    return Ok::<_, String>(true);
                }
                fake.take(&batch.ledger, batch.generation, &batch.approvals);
            }
            Ok(false)
        };
        match session.await {
            Ok(true) => continue,
            Ok(false) => backoff = Duration::from_millis(200),
            Err(_) if !opened.load(Ordering::Relaxed) => {
                fake.watch.failed_opens.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        let jitter = backoff.mul_f64((fake.id % 97) as f64 / 194.0);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// CPU seconds and peak/current RSS of a process.
fn usage(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .zip(fields.get(12).and_then(|s| s.parse::<f64>().ok()))
        .map_or(0.0, |(u, s)| (u + s) / ticks);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (cpu, kib("VmHWM:"), kib("VmRSS:"))
}

struct Run {
    design: String,
    files: Arc<Files>,
    registry_host: String,
    ca_pem: String,
    ledger: PathBuf,
    feed_port: u16,
    agent_ports: Vec<u16>,
}

impl Run {
    fn start_webhook(&self, bin: &Path) -> (Process, u16) {
        let path = |f: &str| self.files.path(f).display().to_string();
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--cert".into(),
            path("tls.crt"),
            "--key".into(),
            path("tls.key"),
            "--policy".into(),
            path("policy.yaml"),
            "--plain-http-registry".into(),
            self.registry_host.clone(),
            "--ledger".into(),
            self.ledger.display().to_string(),
            "--agent-ca".into(),
            path("ca.pem"),
            "--agent-client-cert".into(),
            path("imagegate-webhook.crt"),
            "--agent-client-key".into(),
            path("imagegate-webhook.key"),
        ];
        if self.design == "feed" {
            args.push("--feed-listen".into());
            args.push(format!("127.0.0.1:{}", self.feed_port));
        }
        for port in &self.agent_ports {
            args.push("--agent".into());
            args.push(format!("127.0.0.1:{port}"));
        }
        let mut webhook = Process::start("webhook", bin, &args);
        let serving = webhook.wait_message(
            "serving /image_policy, /validate, /, /healthz, /readyz, /metrics over HTTPS",
            Duration::from_secs(60),
        );
        let port = serving["fields"]["listen"]
            .as_str()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        (webhook, port)
    }

    async fn admit(&self, port: u16, image: &str) -> f64 {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "bench", "operation": "CREATE", "namespace": "bench",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "userInfo": {"username": "bench"},
                "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                    "spec": {"containers": [{"name": "app", "image": image}]}}}
        });
        // The apiserver is another machine: the review is sent from a
        // thread of its own, not from the runtime the thousands of bench
        // agents keep busy (there it waited behind them, and their work
        // showed as admission latency).
        let (ca_pem, body) = (self.ca_pem.clone(), serde_json::to_vec(&review).unwrap());
        let (elapsed, status, body) = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let started = Instant::now();
                let (status, body) = https::post(port, "/validate", &ca_pem, &body).await;
                (started.elapsed().as_secs_f64() * 1000.0, status, body)
            })
        })
        .await
        .unwrap();
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        elapsed
    }
}

/// The webhook's `/metrics` text.
async fn metrics_text(port: u16, ca_pem: &str) -> String {
    let (status, body) = https::get_from(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "localhost",
        "/metrics",
        ca_pem,
    )
    .await;
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body).into_owned()
}

/// The webhook's own time on AdmissionReviews so far (seconds from body
/// read to answer ready, summed, and how many), from its `/metrics`: two
/// readings give the mean spent deciding, apart from connecting, TLS and
/// the wire.
async fn server_time(port: u16, ca_pem: &str) -> (f64, f64) {
    let text = metrics_text(port, ca_pem).await;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("endpoint=\"validate\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (
        value("imagegate_webhook_request_duration_seconds_sum"),
        value("imagegate_webhook_request_duration_seconds_count"),
    )
}

/// The webhook's registry lookups so far (seconds summed, and how many),
/// from its `/metrics`: the part of its own time spent waiting on the
/// registry, which this bench runs on the agents' machine.
async fn registry_time(port: u16, ca_pem: &str) -> (f64, f64) {
    let text = metrics_text(port, ca_pem).await;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    (
        value("imagegate_webhook_registry_lookup_duration_seconds_sum"),
        value("imagegate_webhook_registry_lookup_duration_seconds_count"),
    )
}

/// The feed's messages and lagged streams so far, from its `/metrics`.
async fn feed_counts(port: u16, ca_pem: &str) -> (f64, f64) {
    let [messages, lagged] = counters(
        port,
        ca_pem,
        [
            "imagegate_webhook_feed_messages_total",
            "imagegate_webhook_feed_lagged_total",
        ],
    )
    .await;
    (messages, lagged)
}

/// Counters from the webhook's `/metrics` (NaN where a build has none).
async fn counters<const N: usize>(port: u16, ca_pem: &str, names: [&str; N]) -> [f64; N] {
    let text = metrics_text(port, ca_pem).await;
    names.map(|name| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(f64::NAN)
    })
}

/// The burst's images: after the steady, impaired and restart ones.
fn burst_images() -> std::ops::Range<usize> {
    STEADY + IMPAIRED + 1..STEADY + IMPAIRED + 1 + BURST
}

/// [`BURST`] admissions by [`CALLERS`] callers at once, then until every
/// agent holds all of them.
async fn burst(
    run: &Run,
    port: u16,
    pid: u32,
    images: &[(String, String)],
    watch: &Watch,
    n: usize,
) -> Value {
    let (cpu_before, _, _) = usage(pid);
    let (messages_before, lagged_before) = feed_counts(port, &run.ca_pem).await;
    let started = Instant::now();
    let lanes = (0..CALLERS).map(|lane| async move {
        let mut latency = Vec::new();
        for i in burst_images().skip(lane).step_by(CALLERS) {
            latency.push(run.admit(port, &images[i].0).await);
        }
        latency
    });
    let latency: Vec<f64> = futures_util::future::join_all(lanes)
        .await
        .into_iter()
        .flatten()
        .collect();
    let answered_s = started.elapsed().as_secs_f64();
    let everyone: Vec<usize> = (0..n).collect();
    let (mut on99, mut on_all, mut missing) = (0f64, 0f64, 0);
    if n > 0 {
        for i in burst_images() {
            let delays = visible(watch, i, &everyone, started).await;
            missing += n - delays.len();
            let (p99, all) = quantiles(delays, n);
            on99 = on99.max(p99);
            on_all = on_all.max(all);
        }
    }
    let (cpu_after, peak_rss, _) = usage(pid);
    let (messages_after, lagged_after) = feed_counts(port, &run.ca_pem).await;
    let (messages, lagged) = (
        messages_after - messages_before,
        lagged_after - lagged_before,
    );
    json!({
        "admissions": BURST,
        "callers": CALLERS,
        "admission_ms": summary(latency),
        "all_answered_seconds": answered_s,
        "all_on_99pct_seconds": on99 / 1000.0,
        "all_on_all_seconds": on_all / 1000.0,
        "missing_after_timeout": missing,
        "webhook_cpu_ms_per_admission": (cpu_after - cpu_before) * 1000.0 / BURST as f64,
        "feed_messages_per_agent": if n > 0 { messages / n as f64 } else { 0.0 },
        "streams_lagged": lagged,
        "webhook_peak_rss_mib": peak_rss as f64 / 1048576.0,
    })
}

/// Waits until `among` agents all received watched digest `i` (or the
/// timeout); returns the arrival delays (ms) after `answered` of those.
async fn visible(watch: &Watch, i: usize, among: &[usize], answered: Instant) -> Vec<f64> {
    let deadline = answered + VISIBLE_TIMEOUT;
    loop {
        let arrivals: Vec<f64> = {
            let arrivals = watch.arrivals[i].lock().unwrap();
            let mut first: HashMap<usize, Instant> = HashMap::new();
            for (agent, at) in arrivals.iter() {
                first.entry(*agent).or_insert(*at);
            }
            among
                .iter()
                .filter_map(|a| first.get(a))
                .map(|at| at.saturating_duration_since(answered).as_secs_f64() * 1000.0)
                .collect()
        };
        if arrivals.len() == among.len() || Instant::now() > deadline {
            return arrivals;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The 99% and 100% visibility of one admission over `among` agents
/// (infinite when some never got it within the timeout).
fn quantiles(mut delays: Vec<f64>, among: usize) -> (f64, f64) {
    delays.sort_by(f64::total_cmp);
    let at = |k: usize| delays.get(k - 1).copied().unwrap_or(f64::INFINITY);
    let k99 = ((among as f64) * 0.99).ceil().max(1.0) as usize;
    (at(k99), at(among))
}

#[allow(clippy::too_many_arguments)]
async fn one_run(
    design: &str,
    n: usize,
    webhook_bin: &Path,
    files: Arc<Files>,
    registry_host: &str,
    ca_pem: &str,
    images: &[(String, String)],
    prefilled: &Path,
) -> Value {
    let run_dir = files.dir.join(format!("{design}-{n}"));
    std::fs::create_dir_all(&run_dir).unwrap();
    let ledger_path = run_dir.join("ledger.redb");
    std::fs::copy(prefilled, &ledger_path).unwrap();
    let ledger_id = Ledger::open(&ledger_path, Duration::from_secs(86_400), 1_000_000)
        .unwrap()
        .id()
        .to_string();
    let watch = Arc::new(Watch {
        index: images
            .iter()
            .enumerate()
            .map(|(i, (_, d))| (d.clone(), i))
            .collect(),
        arrivals: images.iter().map(|_| Mutex::new(Vec::new())).collect(),
        failed_opens: Default::default(),
    });
    let fake = |id: usize, holds: bool| {
        Arc::new(Fake {
            id,
            held: Mutex::new(if holds {
                HashMap::from([(ledger_id.clone(), PREFILL as u64)])
            } else {
                HashMap::new()
            }),
            mode: AtomicU8::new(HEALTHY),
            full_at: Mutex::new(None),
            watch: watch.clone(),
            full: PREFILL as u64,
        })
    };
    // N agents holding the prefilled ledger, and one new one (index N).
    let agents: Vec<Arc<Fake>> = (0..n)
        .map(|i| fake(i, true))
        .chain([fake(n, false)])
        .collect();
    let mut run = Run {
        design: design.to_string(),
        files: files.clone(),
        registry_host: registry_host.to_string(),
        ca_pem: ca_pem.to_string(),
        ledger: ledger_path,
        feed_port: free_port(),
        agent_ports: Vec::new(),
    };
    let mut tasks = Vec::new();
    let start_agent = |agent: Arc<Fake>, run: &Run| -> (Option<u16>, tokio::task::JoinHandle<()>) {
        if design == "dial" {
            let (port, task) = serve_agent(agent, &files);
            (Some(port), task)
        } else {
            let feed = SocketAddr::from(([127, 0, 0, 1], run.feed_port));
            (None, tokio::spawn(follow(agent, feed, files.clone())))
        }
    };
    // The new agent's port is known from the start in `dial` (the webhook
    // is given every agent); it serves only from step 3 on.
    let newcomer_listener =
        tonic::transport::server::TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let new_port = newcomer_listener.local_addr().unwrap().port();
    for agent in &agents[..n] {
        let (port, task) = start_agent(agent.clone(), &run);
        run.agent_ports.extend(port);
        tasks.push(task);
    }
    if design == "dial" {
        run.agent_ports.push(new_port);
    }
    let everyone: Vec<usize> = (0..n).collect();

    // 1. The fleet gets in touch: the first admission is visible on every
    // agent (for `feed` every stream is open, for `dial` every agent dialed).
    let started = Instant::now();
    let (webhook, port) = run.start_webhook(webhook_bin);
    let pid = webhook.child.id();
    let warm_up = WARM_UP_IMAGE;
    run.admit(port, &images[warm_up].0).await;
    let in_touch = if n > 0 {
        let delays = visible(&watch, warm_up, &everyone, Instant::now()).await;
        (delays.len() == n).then(|| started.elapsed().as_secs_f64())
    } else {
        Some(started.elapsed().as_secs_f64())
    };

    // 2. Steady admissions. With agents, each image is also admitted by a
    // control webhook that has none (its own ledger, no feed), in turns
    // (which goes first alternates): both see the same minutes of this
    // machine, so what differs is the push. A baseline run minutes apart
    // differs by about half a millisecond on its own here.
    let control = (n > 0).then(|| {
        let ledger = run_dir.join("control.redb");
        std::fs::copy(prefilled, &ledger).unwrap();
        let control = Run {
            design: "control".into(),
            files: files.clone(),
            registry_host: registry_host.to_string(),
            ca_pem: ca_pem.to_string(),
            ledger,
            feed_port: free_port(),
            agent_ports: Vec::new(),
        };
        control.start_webhook(webhook_bin)
    });
    let control_port = control.as_ref().map(|(_, port)| *port);
    if let Some(control_port) = control_port {
        // Its first admission pays for connections and caches: not counted.
        run.admit(control_port, &images[warm_up].0).await;
    }
    let (cpu_before, _, _) = usage(pid);
    let server_before = server_time(port, ca_pem).await;
    let registry_before = registry_time(port, ca_pem).await;
    let control_before = match control_port {
        Some(p) => Some(server_time(p, ca_pem).await),
        None => None,
    };
    let mut latency = Vec::new();
    let mut control_latency = Vec::new();
    let mut on99 = Vec::new();
    let mut on_all = Vec::new();
    let mut missing = 0;
    for (i, (image, _)) in images.iter().enumerate().take(STEADY) {
        if let Some(control_port) = control_port.filter(|_| i % 2 == 0) {
            control_latency.push(run.admit(control_port, image).await);
        }
        let ms = run.admit(port, image).await;
        let answered = Instant::now();
        latency.push(ms);
        if n > 0 {
            let delays = visible(&watch, i, &everyone, answered).await;
            missing += n - delays.len();
            let (p99, all) = quantiles(delays, n);
            on99.push(p99);
            on_all.push(all);
        }
        if let Some(control_port) = control_port.filter(|_| i % 2 == 1) {
            control_latency.push(run.admit(control_port, image).await);
        }
    }
    let (cpu_after, peak_rss, rss) = usage(pid);
    let server_after = server_time(port, ca_pem).await;
    let server_ms =
        (server_after.0 - server_before.0) * 1000.0 / (server_after.1 - server_before.1);
    let control_summary = match (control_port, control_before) {
        (Some(p), Some(before)) => {
            let after = server_time(p, ca_pem).await;
            json!({
                "admission_ms": summary(control_latency),
                "server_mean_ms": (after.0 - before.0) * 1000.0 / (after.1 - before.1),
            })
        }
        _ => Value::Null,
    };
    drop(control);
    let registry_after = registry_time(port, ca_pem).await;
    let registry_ms =
        (registry_after.0 - registry_before.0) * 1000.0 / (registry_after.1 - registry_before.1);
    let steady = json!({
        "admission_ms": summary(latency),
        "server_mean_ms": server_ms,
        "registry_lookup_mean_ms": registry_ms,
        "control": control_summary,
        "visible_on_99pct_ms": summary(on99),
        "visible_on_all_ms": summary(on_all),
        "missing_after_timeout": missing,
        "webhook_cpu_seconds": cpu_after - cpu_before,
        "webhook_cpu_ms_per_admission": (cpu_after - cpu_before) * 1000.0 / STEADY as f64,
        "webhook_rss_mib": rss as f64 / 1048576.0,
        "webhook_peak_rss_mib": peak_rss as f64 / 1048576.0,
        "webhook_start_to_first_admission_on_all_seconds": in_touch,
    });
    let burst = burst(&run, port, pid, images, &watch, n).await;
    if n == 0 {
        drop(webhook);
        return json!({"design": design, "agents": 0, "steady": steady, "burst": burst});
    }

    // 3. A new agent with nothing.
    let newcomer = agents[n].clone();
    let joined = Instant::now();
    let task = if design == "dial" {
        serve_agent_on(newcomer.clone(), &files, newcomer_listener)
    } else {
        drop(newcomer_listener);
        start_agent(newcomer.clone(), &run).1
    };
    tasks.push(task);
    let (cpu_before, _, _) = usage(pid);
    let new_agent_sync = loop {
        if let Some(at) = *newcomer.full_at.lock().unwrap() {
            break at.duration_since(joined).as_secs_f64();
        }
        if joined.elapsed() > Duration::from_secs(300) {
            break f64::INFINITY;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (cpu_after, peak_rss, _) = usage(pid);
    let new_agent = json!({
        "approvals": PREFILL,
        "seconds": new_agent_sync,
        "webhook_cpu_seconds": cpu_after - cpu_before,
        "webhook_peak_rss_mib": peak_rss as f64 / 1048576.0,
    });

    // 4. 10% stalled, 10% slow.
    let tenth = (n / 10).max(1);
    for agent in &agents[..tenth] {
        agent.mode.store(STALLED, Ordering::Relaxed);
    }
    for agent in &agents[tenth..(2 * tenth).min(n)] {
        agent.mode.store(SLOW_MODE, Ordering::Relaxed);
    }
    let healthy: Vec<usize> = ((2 * tenth).min(n)..n).collect();
    let mut latency = Vec::new();
    let mut on99 = Vec::new();
    let mut on_all = Vec::new();
    let mut missing = 0;
    for (i, (image, _)) in images.iter().enumerate().skip(STEADY).take(IMPAIRED) {
        let ms = run.admit(port, image).await;
        let answered = Instant::now();
        latency.push(ms);
        if !healthy.is_empty() {
            let delays = visible(&watch, i, &healthy, answered).await;
            missing += healthy.len() - delays.len();
            let (p99, all) = quantiles(delays, healthy.len());
            on99.push(p99);
            on_all.push(all);
        }
    }
    let (_, peak_rss, _) = usage(pid);
    let recovered = Instant::now();
    for agent in &agents[..n] {
        agent.mode.store(HEALTHY, Ordering::Relaxed);
    }
    let last = STEADY + IMPAIRED - 1;
    let delays = visible(&watch, last, &everyone, recovered).await;
    let caught_up_ms = quantiles(delays.clone(), n).1;
    let impaired = json!({
        "stalled": tenth,
        "slow": (2 * tenth).min(n) - tenth,
        "admission_ms": summary(latency),
        "visible_on_99pct_of_healthy_ms": summary(on99),
        "visible_on_all_healthy_ms": summary(on_all),
        "missing_after_timeout": missing,
        "webhook_peak_rss_mib": peak_rss as f64 / 1048576.0,
        "after_recovery_all_hold_everything_ms": caught_up_ms,
        "behind_after_recovery": n - delays.len(),
    });

    // 5. The webhook killed and started again.
    drop(webhook);
    let failed_before = watch.failed_opens.load(Ordering::Relaxed);
    let restarted = Instant::now();
    let (webhook, port) = run.start_webhook(webhook_bin);
    let pid = webhook.child.id();
    let i = STEADY + IMPAIRED;
    let ms = run.admit(port, &images[i].0).await;
    let answered = Instant::now();
    // Pods keep coming while the agents reconnect: admissions one after
    // another (the steady phase's images again, or new ones: see
    // `restart_new_images`) until that first one is on every agent, and at
    // least DURING_RESTART of them (a run without agents has no storm and
    // makes just those).
    let new_images = restart_new_images();
    let storm_over = std::sync::atomic::AtomicBool::new(false);
    let (delays, during) = tokio::join!(
        async {
            let delays = visible(&watch, i, &everyone, answered).await;
            storm_over.store(true, Ordering::Relaxed);
            delays
        },
        async {
            let mut latency = Vec::new();
            while latency.len() < DURING_RESTART || !storm_over.load(Ordering::Relaxed) {
                let image = match new_images {
                    0 => &images[latency.len() % STEADY].0,
                    new => &images[FIRST_NEW_IMAGE + latency.len() % new].0,
                };
                latency.push(run.admit(port, image).await);
            }
            latency
        }
    );
    let during_count = during.len();
    let behind = n - delays.len();
    let (p99, all) = quantiles(delays, n);
    let (cpu, peak_rss, _) = usage(pid);
    let [catch_ups, shared_reads] = counters(
        port,
        &run.ca_pem,
        [
            "imagegate_webhook_feed_catch_ups_total",
            "imagegate_webhook_feed_shared_reads_total",
        ],
    )
    .await;
    let restart = json!({
        "catch_ups": catch_ups,
        "catch_up_messages_from_shared_reads": shared_reads,
        "admission_ms": ms,
        "admission_during_reconnects_ms": summary(during),
        "new_images_admitted_during": new_images.min(during_count),
        "failed_opens": watch.failed_opens.load(Ordering::Relaxed) - failed_before,
        "serving_after_seconds": answered.duration_since(restarted).as_secs_f64() - ms / 1000.0,
        "visible_on_99pct_ms": p99,
        "visible_on_all_ms": all,
        "behind_after_timeout": behind,
        "from_restart_to_all_seconds": (answered.duration_since(restarted).as_secs_f64() + all / 1000.0),
        "webhook_cpu_seconds": cpu,
        "webhook_peak_rss_mib": peak_rss as f64 / 1048576.0,
    });
    drop(webhook);
    for task in tasks {
        task.abort();
    }
    json!({
        "design": design,
        "agents": n,
        "steady": steady,
        "burst": burst,
        "new_agent": new_agent,
        "impaired": impaired,
        "restart": restart,
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let usage_text = "usage: push_scale WEBHOOK_BIN AGENTS DESIGNS";
    let webhook_bin = PathBuf::from(args.next().expect(usage_text));
    let counts: Vec<usize> = args
        .next()
        .expect(usage_text)
        .split(',')
        .map(|n| n.trim().parse().expect("agent counts are numbers"))
        .collect();
    let designs: Vec<String> = args
        .next()
        .expect(usage_text)
        .split(',')
        .map(str::to_string)
        .collect();
    let _ = rustls::crypto::ring::default_provider().install_default();
    imagegate_testkit::process::quiet();
    // Thousands of sockets: the default soft limit (1,024) is too low.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }

    let dir = tempfile::tempdir().unwrap();
    let files = Arc::new(Files {
        dir: dir.path().to_path_buf(),
    });
    let ca = Ca::new("imagegate push scale CA");
    for name in ["imagegate-agent", "imagegate-webhook"] {
        ca.write(dir.path(), name, &ca.identity(name));
    }
    let serving = ca.server("webhook");
    std::fs::write(files.path("tls.crt"), &serving.cert_pem).unwrap();
    std::fs::write(files.path("tls.key"), &serving.key_pem).unwrap();

    let registry = Registry::plain();
    let mut images = Vec::new();
    // Steady, impaired, one after the restart, the burst, one warm-up,
    // and any new ones for the restart.
    for i in 0..FIRST_NEW_IMAGE + restart_new_images() {
        let digest = registry
            .push_image("bench/scale", &format!("v{i}"), &format!("push-scale-{i}"))
            .await;
        images.push((format!("{}/bench/scale:v{i}", registry.host), digest));
    }
    std::fs::write(
        files.path("policy.yaml"),
        format!(
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: local\n    registries: ['{}']\n",
            registry.host
        ),
    )
    .unwrap();
    // One prefilled ledger, copied for each run (each copy keeps its id:
    // the fleet holds that ledger).
    let prefilled = files.path("prefilled.redb");
    {
        let ledger = Ledger::open(&prefilled, Duration::from_secs(86_400), 1_000_000).unwrap();
        let all: Vec<Approval> = (0..PREFILL).map(synthetic).collect();
        for chunk in all.chunks(5_000) {
            ledger.record(chunk).unwrap();
        }
    }

    let mut runs = Vec::new();
    // Admission latency with nobody to push to: what the push adds is the
    // difference.
    runs.push(
        one_run(
            "feed",
            0,
            &webhook_bin,
            files.clone(),
            &registry.host,
            &ca.pem(),
            &images,
            &prefilled,
        )
        .await,
    );
    for &n in &counts {
        for design in &designs {
            eprintln!("push_scale: {design} with {n} agents");
            runs.push(
                one_run(
                    design,
                    n,
                    &webhook_bin,
                    files.clone(),
                    &registry.host,
                    &ca.pem(),
                    &images,
                    &prefilled,
                )
                .await,
            );
        }
    }
    println!("{}", json!({ "prefill": PREFILL, "runs": runs }));
}
