//! Clients that try to exhaust a server, and one that behaves, for the
//! hostile-load tests and benchmark. Each attacker connects from its own
//! loopback address (`127.0.0.2`, ...: all of 127/8 reaches `lo`), as a pod
//! would from its own, so per-address bounds can tell it from the
//! well-behaved client on `127.0.0.1`, as they tell it from the apiserver.
//!
//! Over 500 lines: each attacker is short; they share the loopback-address
//! and connection helpers, and the bench and the tests use all of them.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    task::JoinSet,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// A TLS server to attack.
#[derive(Clone)]
pub struct Target {
    pub address: SocketAddr,
    server_name: ServerName<'static>,
    ca_pem: String,
}

impl Target {
    pub fn new(address: SocketAddr, server_name: &str, ca_pem: &str) -> Self {
        Self {
            address,
            server_name: ServerName::try_from(server_name.to_string()).expect("a server name"),
            ca_pem: ca_pem.to_string(),
        }
    }

    fn tls(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).expect("CA PEM"))
            .expect("CA certificate");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }

    /// A TCP connection from `source`.
    pub async fn tcp_from(&self, source: IpAddr) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        socket.connect(self.address).await
    }

    /// A TLS connection from `source`, offering `alpn`.
    pub async fn tls_from(
        &self,
        source: IpAddr,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = self.tcp_from(source).await?;
        self.tls(alpn).connect(self.server_name.clone(), tcp).await
    }
}

/// What happened to one attacking connection.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The server refused it before TLS completed (closed at accept).
    Refused,
    /// The server answered with this HTTP status and closed, after this long.
    Answered { status: u16, after: Duration },
    /// The server closed it without an answer after this long.
    Closed { after: Duration },
    /// Still open when the attack gave up.
    StillOpen,
}

impl Outcome {
    /// Whether the server ended it (refused, answered or closed it).
    pub fn ended(&self) -> bool {
        !matches!(self, Outcome::StillOpen)
    }
}

/// A running attack: its connections' tasks.
pub struct Attack {
    tasks: JoinSet<Outcome>,
}

impl Attack {
    /// Every connection's outcome, waiting at most `limit` for each to end.
    pub async fn outcomes(mut self) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        while let Some(done) = self.tasks.join_next().await {
            outcomes.push(done.unwrap_or(Outcome::StillOpen));
        }
        outcomes
    }

    /// Stops every connection now.
    pub fn abort(mut self) {
        self.tasks.abort_all();
    }
}

/// Reads until the server closes or `limit` passes: the status line's code
/// if an answer came.
async fn until_closed(mut tls: TlsStream<TcpStream>, started: Instant, limit: Duration) -> Outcome {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout_at((started + limit).into(), async {
        loop {
            match tls.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if answer.len() < 64 * 1024 {
                        answer.extend_from_slice(&buffer[..n]);
                    }
                }
            }
        }
    })
    .await;
    if read.is_err() {
        return Outcome::StillOpen;
    }
    let after = started.elapsed();
    match status_of(&answer) {
        Some(status) => Outcome::Answered { status, after },
        None => Outcome::Closed { after },
    }
}

fn status_of(answer: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(answer.get(..answer.len().min(64))?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// `count` HTTP/1.1 clients from `source` that each declare a body of
/// `declared` bytes to `path`, send `sent` of them, and stop; each waits up
/// to `limit` for the server to end it.
pub fn slow_bodies(
    target: &Target,
    source: IpAddr,
    count: usize,
    path: &str,
    declared: usize,
    sent: usize,
    limit: Duration,
) -> Attack {
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let (target, path) = (target.clone(), path.to_string());
        tasks.spawn(async move {
            let started = Instant::now();
            let Ok(mut tls) = target.tls_from(source, &[b"http/1.1"]).await else {
                return Outcome::Refused;
            };
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n\
                 Content-Length: {declared}\r\n\r\n"
            );
            // An AdmissionReview whose object never ends.
            let start = format!(
                r#"{{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{{"uid":"slow-{i}","object":{{"x":""#
            );
            if tls.write_all(head.as_bytes()).await.is_err()
                || tls.write_all(start.as_bytes()).await.is_err()
            {
                return until_closed(tls, started, limit).await;
            }
            let chunk = vec![b'a'; 64 * 1024];
            let mut left = sent.saturating_sub(start.len());
            while left > 0 {
                let n = left.min(chunk.len());
                if tls.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
                left -= n;
            }
            let _ = tls.flush().await;
            until_closed(tls, started, limit).await
        });
    }
    Attack { tasks }
}

/// `count` clients from `source` that finish TLS and send half a request
/// head, then nothing; each waits up to `limit` for the server to end it.
pub fn half_headers(target: &Target, source: IpAddr, count: usize, limit: Duration) -> Attack {
    let mut tasks = JoinSet::new();
    for _ in 0..count {
        let target = target.clone();
        tasks.spawn(async move {
            let started = Instant::now();
            let Ok(mut tls) = target.tls_from(source, &[b"http/1.1"]).await else {
                return Outcome::Refused;
            };
            let _ = tls
                .write_all(b"POST /validate HTTP/1.1\r\nHost: webhook\r\nContent-Type: appl")
                .await;
            let _ = tls.flush().await;
            until_closed(tls, started, limit).await
        });
    }
    Attack { tasks }
}

/// What one HTTP/2 connection's streams got.
#[derive(Debug, Default, Clone)]
pub struct StreamsOutcome {
    /// Streams the server answered, by status.
    pub statuses: Vec<u16>,
    /// Streams that failed (reset, refused, connection closed).
    pub failed: usize,
    /// Streams still waiting when the attack gave up.
    pub waiting: usize,
}

/// `connections` HTTP/2 connections from `source`, each opening `streams`
/// requests to `path` that send `sent` bytes of a body and never finish it;
/// waits up to `limit`.
pub async fn h2_streams(
    target: &Target,
    source: IpAddr,
    connections: usize,
    streams: usize,
    path: &str,
    sent: usize,
    limit: Duration,
) -> Vec<StreamsOutcome> {
    let mut outcomes = Vec::new();
    let mut running = JoinSet::new();
    for _ in 0..connections {
        let (target, path) = (target.clone(), path.to_string());
        running.spawn(async move {
            let mut outcome = StreamsOutcome::default();
            let Ok(tls) = target.tls_from(source, &[b"h2"]).await else {
                outcome.failed = streams;
                return outcome;
            };
            let Ok((sender, connection)) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
            else {
                outcome.failed = streams;
                return outcome;
            };
            let driver = tokio::spawn(connection);
            let mut requests = JoinSet::new();
            for i in 0..streams {
                let mut sender = sender.clone();
                let uri = format!("https://webhook{path}");
                requests.spawn(async move {
                    let start = format!(
                        r#"{{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{{"uid":"h2-{i}","object":{{"x":""#
                    );
                    let body = stream::iter(
                        std::iter::once(Bytes::from(start))
                            .chain((0..sent / (64 * 1024)).map(|_| Bytes::from(vec![b'a'; 64 * 1024]))),
                    )
                    .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b)))
                    .chain(stream::pending());
                    let request = hyper::Request::post(uri)
                        .header("content-type", "application/json")
                        .body(StreamBody::new(body))
                        .expect("request");
                    match sender.send_request(request).await {
                        Ok(response) => Ok(response.status().as_u16()),
                        Err(e) => Err(e.to_string()),
                    }
                });
            }
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                match tokio::time::timeout_at(deadline, requests.join_next()).await {
                    Ok(Some(Ok(Ok(status)))) => outcome.statuses.push(status),
                    Ok(Some(_)) => outcome.failed += 1,
                    Ok(None) => break,
                    Err(_) => {
                        outcome.waiting = requests.len();
                        requests.abort_all();
                        break;
                    }
                }
            }
            driver.abort();
            outcome
        });
    }
    while let Some(done) = running.join_next().await {
        outcomes.push(done.unwrap_or_default());
    }
    outcomes
}

/// Latencies of a well-behaved client: one review at a time, each on a new
/// connection (the worst case for the client: a handshake every time).
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    pub ok: Vec<Duration>,
    pub errors: Vec<String>,
}

impl Latencies {
    /// The `p`th percentile (0-100) of the successful requests.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let mut sorted = self.ok.clone();
        sorted.sort();
        let at = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
        sorted.get(at).copied()
    }
}

/// Sends `body` to `path` from `source`, one request per new connection,
/// until `stop` flips; a request taking longer than `limit` is an error.
pub async fn well_behaved(
    target: &Target,
    source: IpAddr,
    path: &str,
    body: Vec<u8>,
    limit: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Latencies {
    let mut latencies = Latencies::default();
    let body = Bytes::from(body);
    while !*stop.borrow() {
        let started = Instant::now();
        let result = tokio::time::timeout(limit, post(target, source, path, body.clone())).await;
        match result {
            Ok(Ok((200, _))) => latencies.ok.push(started.elapsed()),
            Ok(Ok((status, _))) => latencies.errors.push(format!("HTTP {status}")),
            Ok(Err(e)) => latencies.errors.push(e),
            Err(_) => latencies.errors.push(format!("no answer within {limit:?}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies
}

/// One POST of `body` to `path` on a new HTTP/1.1 connection from
/// `source`: the status and the answer's body.
pub async fn post(
    target: &Target,
    source: IpAddr,
    path: &str,
    body: Bytes,
) -> Result<(u16, Vec<u8>), String> {
    let tls = target
        .tls_from(source, &[b"http/1.1"])
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header("host", "webhook")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let answer = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, answer.to_vec()))
}

/// What an attack's connections came to.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct AttackSummary {
    /// Connections (or HTTP/2 streams) the attack opened or tried.
    pub tried: usize,
    /// Ended by the server: refused, answered or closed.
    pub ended: usize,
    /// Answers by HTTP status (an AdmissionReview denial is a 200).
    pub statuses: std::collections::BTreeMap<u16, usize>,
    /// The longest any one stayed open before the server ended it.
    pub longest_open_ms: u64,
}

impl AttackSummary {
    pub fn of_connections(outcomes: &[Outcome]) -> Self {
        let mut summary = Self {
            tried: outcomes.len(),
            ..Self::default()
        };
        for outcome in outcomes {
            match outcome {
                Outcome::Refused => summary.ended += 1,
                Outcome::Answered { status, after } => {
                    summary.ended += 1;
                    *summary.statuses.entry(*status).or_default() += 1;
                    summary.longest_open_ms = summary.longest_open_ms.max(after.as_millis() as u64);
                }
                Outcome::Closed { after } => {
                    summary.ended += 1;
                    summary.longest_open_ms = summary.longest_open_ms.max(after.as_millis() as u64);
                }
                Outcome::StillOpen => {}
            }
        }
        summary
    }

    pub fn of_streams(outcomes: &[StreamsOutcome], started: Instant) -> Self {
        let mut summary = Self::default();
        for outcome in outcomes {
            summary.tried += outcome.statuses.len() + outcome.failed + outcome.waiting;
            summary.ended += outcome.statuses.len() + outcome.failed;
            for status in &outcome.statuses {
                *summary.statuses.entry(*status).or_default() += 1;
            }
        }
        summary.longest_open_ms = started.elapsed().as_millis() as u64;
        summary
    }
}

/// One attack's figures: the server's memory during and after it, and how
/// a well-behaved client fared meanwhile.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PhaseReport {
    pub attack: String,
    pub summary: AttackSummary,
    pub rss_before_mib: f64,
    /// Highest resident memory sampled (every 20 ms) during the attack.
    pub rss_peak_mib: f64,
    /// The cgroup's own peak (page cache and kernel memory included).
    pub cgroup_peak_mib: Option<f64>,
    /// Resident memory once the attack ended and memory settled.
    pub rss_after_mib: f64,
    /// How long after the attack memory took to come back under
    /// `rss_before + 16 MiB` (`None`: it did not within 20 s).
    pub returned_after_ms: Option<u64>,
    pub well_behaved_requests: usize,
    pub well_behaved_errors: Vec<String>,
    pub well_behaved_p50_ms: Option<f64>,
    pub well_behaved_p99_ms: Option<f64>,
    pub well_behaved_max_ms: Option<f64>,
    pub oom_kills: u64,
}

const MIB: f64 = 1024.0 * 1024.0;

/// What a phase needs to know about the server under attack.
pub struct Watched<'a> {
    pub pid: u32,
    pub cgroup: Option<&'a crate::cgroup::MemoryCgroup>,
    /// The well-behaved client's target, path and body.
    pub target: Target,
    pub path: String,
    pub body: Vec<u8>,
}

/// Runs `attack` against the server while a well-behaved client sends
/// reviews from 127.0.0.1 and its memory is sampled; then waits for memory
/// to come back.
pub async fn phase(
    name: &str,
    watched: &Watched<'_>,
    attack: impl std::future::Future<Output = AttackSummary>,
) -> PhaseReport {
    let rss = |pid| crate::cgroup::rss_bytes(pid).map_or(0, |(now, _)| now);
    if let Some(cgroup) = watched.cgroup {
        cgroup.reset_peak();
    }
    let before = rss(watched.pid);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let well = tokio::spawn({
        let (target, path, body) = (
            watched.target.clone(),
            watched.path.clone(),
            watched.body.clone(),
        );
        async move {
            well_behaved(
                &target,
                IpAddr::from([127, 0, 0, 1]),
                &path,
                body,
                Duration::from_secs(10),
                stop,
            )
            .await
        }
    });
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = std::thread::spawn({
        let (sampling, pid) = (sampling.clone(), watched.pid);
        move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        }
    });
    let summary = attack.await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(0);
    stop_tx.send(true).ok();
    let latencies = well.await.unwrap_or_default();
    let returned_at = Instant::now();
    let mut returned_after_ms = None;
    let mut after = rss(watched.pid);
    while returned_at.elapsed() < Duration::from_secs(20) {
        after = rss(watched.pid);
        if after as f64 <= before as f64 + 16.0 * MIB {
            returned_after_ms = Some(returned_at.elapsed().as_millis() as u64);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    PhaseReport {
        attack: name.to_string(),
        summary,
        rss_before_mib: before as f64 / MIB,
        rss_peak_mib: peak.max(before) as f64 / MIB,
        cgroup_peak_mib: watched.cgroup.map(|c| c.peak_bytes() as f64 / MIB),
        rss_after_mib: after as f64 / MIB,
        returned_after_ms,
        well_behaved_requests: latencies.ok.len() + latencies.errors.len(),
        well_behaved_errors: latencies.errors.clone(),
        well_behaved_p50_ms: ms(latencies.percentile(50.0)),
        well_behaved_p99_ms: ms(latencies.percentile(99.0)),
        well_behaved_max_ms: ms(latencies.percentile(100.0)),
        oom_kills: watched.cgroup.map_or(0, |c| c.oom_kills()),
    }
}

/// Starts `binary` (imagegate-webhook) inside `cgroup`, serving on a free
/// loopback port with `dir`'s `tls.crt`, `tls.key` and `policy.yaml`, no
/// adoption, and `extra` flags (without any, digest resolution is off).
/// Returns the process and the address it serves on.
pub fn start_webhook(
    binary: &std::path::Path,
    dir: &std::path::Path,
    cgroup: &crate::cgroup::MemoryCgroup,
    extra: &[&str],
) -> (crate::process::Process, SocketAddr) {
    let extra: &[&str] = if extra.is_empty() {
        &["--digest-resolution", "off"]
    } else {
        extra
    };
    let file = |name: &str| dir.join(name).display().to_string();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--adopt-running-pods",
        "off",
    ]
    .iter()
    .chain(extra)
    .map(|a| a.to_string())
    .chain([
        "--cert".to_string(),
        file("tls.crt"),
        "--key".to_string(),
        file("tls.key"),
        "--policy".to_string(),
        file("policy.yaml"),
    ]);
    let mut webhook = crate::process::Process::start_with("webhook", binary, args, |command| {
        cgroup.run_inside(command)
    });
    let serving = webhook.wait_message(
        "serving /image_policy, /validate, /, /healthz, /readyz, /metrics over HTTPS",
        Duration::from_secs(20),
    );
    let address = serving["fields"]["listen"]
        .as_str()
        .and_then(|l| l.parse().ok())
        .expect("the webhook logs its address");
    (webhook, address)
}

/// The attacks seen to take the webhook down before it had bounds, each as
/// a phase against `watched` from `source`: its test asserts on them, its
/// benchmark prints them.
pub mod webhook_attacks {
    use super::*;

    const MIB: usize = 1024 * 1024;

    /// 100 clients each sending 2.9 MiB of a 3 MiB body and stopping (found:
    /// 32 -> 324 MiB, held for ever; OOM-killed under 256 MiB).
    pub async fn slow_bodies(watched: &Watched<'_>, source: IpAddr) -> PhaseReport {
        phase("100 slow bodies (2.9 of 3 MiB each)", watched, async {
            let attack = super::slow_bodies(
                &watched.target,
                source,
                100,
                &watched.path,
                3 * MIB,
                29 * MIB / 10,
                Duration::from_secs(30),
            );
            AttackSummary::of_connections(&attack.outcomes().await)
        })
        .await
    }

    /// 500 half-sent request heads (found: open for 70 s).
    pub async fn half_headers(watched: &Watched<'_>, source: IpAddr) -> PhaseReport {
        phase("500 half-sent request heads", watched, async {
            let attack = super::half_headers(&watched.target, source, 500, Duration::from_secs(30));
            AttackSummary::of_connections(&attack.outcomes().await)
        })
        .await
    }

    /// Two HTTP/2 connections of 200 streams, each sending 2.9 MiB and
    /// never finishing (found: 22 -> 1,175 MiB, not returned after).
    pub async fn h2_streams(watched: &Watched<'_>, source: IpAddr) -> PhaseReport {
        phase(
            "2 HTTP/2 connections x 200 streams (2.9 MiB each, never finished)",
            watched,
            async {
                let started = Instant::now();
                let outcomes = super::h2_streams(
                    &watched.target,
                    source,
                    2,
                    200,
                    &watched.path,
                    29 * MIB / 10,
                    Duration::from_secs(40),
                )
                .await;
                AttackSummary::of_streams(&outcomes, started)
            },
        )
        .await
    }
}

/// A registry that serves manifests far larger than any real one: every
/// HEAD answers an index media type and a digest, every GET streams
/// `size` bytes of an index that never ends its list (generated as it is
/// sent: the stand-in itself holds 64 KiB). Tags starting `chunked` are
/// sent without a Content-Length, the others with it. Plain HTTP on
/// 127.0.0.1; it counts the requests it gets.
pub struct HugeRegistry {
    pub host: String,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    bytes_sent: Arc<std::sync::atomic::AtomicU64>,
    _server: tokio::task::JoinHandle<()>,
}

impl HugeRegistry {
    pub async fn start(size: u64) -> Self {
        use axum::{
            body::Body,
            extract::Path,
            http::{Method, StatusCode, header},
            response::Response,
        };
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        const INDEX: &str = "application/vnd.oci.image.index.v1+json";
        let requests = Arc::new(AtomicUsize::new(0));
        let bytes_sent = Arc::new(AtomicU64::new(0));
        let (counted, sent) = (requests.clone(), bytes_sent.clone());
        let app = axum::Router::new().route(
            "/v2/{*rest}",
            axum::routing::any(move |method: Method, Path(rest): Path<String>| {
                let (counted, sent) = (counted.clone(), sent.clone());
                async move {
                    counted.fetch_add(1, Ordering::Relaxed);
                    let tag = rest.rsplit('/').next().unwrap_or_default().to_string();
                    let mut response = Response::builder()
                        .status(StatusCode::OK)
                        .header(header::CONTENT_TYPE, INDEX)
                        .header(
                            "docker-content-digest",
                            format!("sha256:{}", "ab".repeat(32)),
                        );
                    if !tag.starts_with("chunked") {
                        response = response.header(header::CONTENT_LENGTH, size);
                    }
                    if method == Method::HEAD {
                        return response.body(Body::empty()).unwrap();
                    }
                    let entry = Bytes::from(
                        r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"#
                            .repeat(64 * 1024 / 160),
                    );
                    let chunks = size / entry.len() as u64 + 1;
                    let body = stream::once(async {
                        Ok::<_, std::convert::Infallible>(Bytes::from_static(
                            br#"{"schemaVersion":2,"manifests":["#,
                        ))
                    })
                    .chain(stream::iter(0..chunks).map(move |_| {
                        sent.fetch_add(entry.len() as u64, Ordering::Relaxed);
                        Ok(entry.clone())
                    }));
                    response.body(Body::from_stream(body)).unwrap()
                }
            }),
        );
        let (host, server) = crate::serve_on_loopback(app).await;
        Self {
            host,
            requests,
            bytes_sent,
            _server: server,
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of manifest bodies handed to the connection so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(std::sync::atomic::Ordering::Relaxed)
    }
}
