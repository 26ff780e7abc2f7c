//! Following the webhooks' approval feeds: one stream to each webhook
//! replica the names resolve to (a headless Service: one record per
//! replica), opened by the agent, so the webhook never needs to find or
//! dial nodes. Each stream starts from what this agent holds of that
//! replica's ledger; approvals are checked and kept exactly as pushed ones
//! are. On any failure the stream is reopened after a backoff with jitter,
//! so thousands of agents losing a replica at once do not come back at
//! once.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use imagegate_plumbing::errors::error_chain;
use imagegate_proto::{
    source::SourceKey,
    v1::{self as pb, approval_feed_client::ApprovalFeedClient},
};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, info, warn};

use crate::{api::service::take_approvals, engine, metrics::Metrics, store::Store};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting, the TLS and HTTP/2 handshakes and the call's answer: a
/// replica that accepts connections but answers nothing (overloaded, or
/// stopped mid-way) is left and tried again, not waited on for ever.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Which webhooks to follow and how to reach them.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// `host:port` names, each resolving to one or more webhook replicas.
    pub webhooks: Vec<String>,
    pub resolve_every: Duration,
    /// CA the webhook's feed certificate chains to.
    pub ca: PathBuf,
    /// This agent's certificate and key (valid for `imagegate-agent`).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The name the webhook's certificate must be valid for: the push
    /// identity, which approvals are kept under.
    pub push_identity: String,
    /// This node, for the webhook's logs.
    pub node: String,
}

/// What following needs of the agent.
#[derive(Clone)]
pub struct Follower {
    pub config: FeedConfig,
    pub store: Arc<Store>,
    pub writer: engine::Writer,
    pub metrics: Arc<Metrics>,
    pub health: Arc<FeedHealth>,
}

/// Whether every webhook replica the names resolve to has its stream open
/// now, and caught up (from the replica's mark, when it sets one). While
/// one does not (the replica restarted and thousands of agents reconnect
/// to it and wait their turn to catch up, or it was just discovered),
/// approvals it wrote may be on their way, and in enforce mode the engine
/// holds stops a little longer (see `engine::Config::feed_wait`). At 5,000
/// agents a restarted replica's approvals reached 99% of them 7.4 s after
/// it served again (`push_scale <webhook> 5000 feed`), more than the 2 s
/// grace window; with pods admitted meanwhile, thousands of agents were
/// connected but not caught up 20 s later.
#[derive(Debug, Default)]
pub struct FeedHealth {
    /// Replicas followed, and streams open and caught up: the agent's
    /// `feeds` and `feed_streams_open` gauges themselves, so `/metrics`
    /// and the engine read one count.
    followed: Gauge,
    open: Gauge,
    /// When the names were last resolved (unix ms; 0: not yet).
    resolved_ms: AtomicU64,
    /// Asks for a resolution now (a stop is due).
    resolve: tokio::sync::Notify,
}

/// What `GetStatus` shows of the feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedCounts {
    pub followed: u64,
    pub open: u64,
    pub resolved_ms: u64,
}

impl FeedCounts {
    /// Every replica found has its stream open, and at least one was found.
    pub fn all_open(&self) -> bool {
        self.followed > 0 && self.open >= self.followed
    }
}

impl FeedHealth {
    /// Health that keeps its counts on these gauges (the agent's
    /// `feeds` and `feed_streams_open`).
    pub fn counting_on(followed: Gauge, open: Gauge) -> Self {
        Self {
            followed,
            open,
            ..Self::default()
        }
    }

    pub fn counts(&self) -> FeedCounts {
        FeedCounts {
            followed: self.followed.get().max(0) as u64,
            open: self.open.get().max(0) as u64,
            resolved_ms: self.resolved_ms(),
        }
    }

    pub fn resolved_ms(&self) -> u64 {
        self.resolved_ms.load(Ordering::Relaxed)
    }

    /// Resolves the names again now, rather than at the next period.
    pub fn resolve_now(&self) {
        self.resolve.notify_one();
    }

    /// Every replica found has its stream open, and at least one was found.
    pub fn all_open(&self) -> bool {
        self.counts().all_open()
    }

    /// A resolution found `n` replicas, all of them followed from now on.
    fn followed(&self, n: usize) {
        self.followed.set(n as i64);
        self.resolved_ms
            .store(imagegate_plumbing::clock::now_ms(), Ordering::Relaxed);
    }

    /// One stream open, until the guard is dropped (the stream ended, or
    /// its task was aborted because the replica is gone from discovery).
    fn opened(self: &Arc<Self>) -> OpenStream {
        self.open.inc();
        OpenStream(self.clone())
    }
}

struct OpenStream(Arc<FeedHealth>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.dec();
    }
}

#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("reading the TLS files: {0}")]
    Files(String),
    #[error("connecting: {0}")]
    Connect(String),
    #[error("Follow: {0}")]
    Rpc(Box<tonic::Status>),
    #[error("the agent's store: {0}")]
    Store(String),
    #[error(
        "the feed skipped from generation {held} to {since} of ledger {ledger}: reopening from {held}"
    )]
    Gap {
        ledger: String,
        held: u64,
        since: u64,
    },
    #[error("the webhook sent an invalid batch: {0}")]
    Invalid(String),
}

/// Follows every replica the names resolve to, until `stop` turns true.
pub async fn run(follower: Follower, stop: watch::Receiver<bool>) {
    let names = follower.config.webhooks.clone();
    let every = follower.config.resolve_every;
    let follower = Arc::new(follower);
    let health = follower.health.clone();
    imagegate_plumbing::discovery::follow_addresses(
        names,
        every,
        "webhook",
        stop,
        &follower.health.resolve,
        |address| follow(address, follower.clone()),
        move |n| health.followed(n),
    )
    .await;
}

/// One replica, for as long as it is discovered.
async fn follow(address: SocketAddr, follower: Arc<Follower>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match stream(address, &follower, &mut backoff).await {
            Ok(()) => info!(webhook = %address, "approval feed ended; reopening"),
            Err(e @ FollowError::Gap { .. }) => {
                info!(webhook = %address, "{e}");
                continue;
            }
            Err(e) => {
                warn!(webhook = %address, error = %e, retry_in = ?backoff, "approval feed failed")
            }
        }
        follower.metrics.feed_reconnects.inc();
        tokio::time::sleep(with_jitter(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One stream's life: returns when it ends or fails.
async fn stream(
    address: SocketAddr,
    follower: &Follower,
    backoff: &mut Duration,
) -> Result<(), FollowError> {
    let config = &follower.config;
    let mut held = held(follower)?;
    let open = async {
        let mut client = ApprovalFeedClient::new(connect(address, config).await?)
            .max_decoding_message_size(imagegate_proto::MAX_MESSAGE_BYTES);
        client
            .follow(pb::FollowRequest {
                node: config.node.clone(),
                held: held.clone(),
            })
            .await
            .map_err(|s| FollowError::Rpc(Box::new(s)))
    };
    let response = tokio::time::timeout(OPEN_TIMEOUT, open)
        .await
        .map_err(|_| FollowError::Connect(format!("no answer within {OPEN_TIMEOUT:?}")))??;
    // Open: the replica sends what this agent lacks first, then every new
    // write, in order. Until the catch-up's end, approvals it admitted may
    // still be on their way, so stops wait for it as for a closed stream
    // (after a restart under load, thousands of agents wait their turn to
    // catch up). A replica of an earlier release marks no end: open at once.
    let marks_caught_up = response
        .metadata()
        .contains_key(imagegate_proto::MARKS_CAUGHT_UP_HEADER);
    let mut open = (!marks_caught_up).then(|| follower.health.opened());
    let mut batches = response.into_inner();
    info!(webhook = %address, "following the approval feed");
    while let Some(batch) = batches
        .message()
        .await
        .map_err(|s| FollowError::Rpc(Box::new(s)))?
    {
        let caught_up = batch.caught_up;
        let source = SourceKey::new(&config.push_identity, &batch.ledger)
            .map_err(|e| FollowError::Invalid(e.to_string()))?;
        let holds = held.get(&batch.ledger).copied().unwrap_or(0);
        if batch.since_generation > holds {
            return Err(FollowError::Gap {
                ledger: batch.ledger,
                held: holds,
                since: batch.since_generation,
            });
        }
        let count = batch.approvals.len();
        let (_, now_holds, rejected) = take_approvals(
            &follower.writer,
            &follower.metrics,
            source,
            batch.approvals,
            batch.generation,
            batch.cluster_set_generation,
            batch.retention_seconds,
        )
        .await
        .map_err(|s| FollowError::Store(s.message().to_string()))?;
        debug!(webhook = %address, count, generation = now_holds, rejected = rejected.len(), "approvals followed");
        held.insert(batch.ledger, now_holds);
        *backoff = FIRST_BACKOFF;
        if caught_up && open.is_none() {
            debug!(webhook = %address, "caught up with the approval feed");
            open = Some(follower.health.opened());
        }
    }
    drop(open);
    Ok(())
}

/// Per ledger of the push identity, the generation this agent holds.
fn held(follower: &Follower) -> Result<HashMap<String, u64>, FollowError> {
    let sources = follower
        .store
        .sources()
        .map_err(|e| FollowError::Store(e.to_string()))?;
    Ok(sources
        .into_iter()
        .filter_map(|(key, state)| {
            let key = SourceKey::parse(&key).ok()?;
            (key.identity == follower.config.push_identity)
                .then_some((key.ledger, state.generation))
        })
        .collect())
}

/// A channel to the replica with this agent's certificate. The files are
/// read on every connection, so renewed certificates are used from the
/// next one on.
async fn connect(address: SocketAddr, config: &FeedConfig) -> Result<Channel, FollowError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| FollowError::Files(format!("{}: {e}", path.display())))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&config.ca)?))
        .identity(Identity::from_pem(read(&config.cert)?, read(&config.key)?))
        .domain_name(config.push_identity.clone());
    Endpoint::from_shared(format!("https://{address}"))
        .map_err(|e| FollowError::Connect(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| FollowError::Connect(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        // A replica that vanished without closing (its node died) is found
        // by pings, not by waiting for a batch that never comes.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| FollowError::Connect(error_chain(&e)))
}

/// `backoff` plus up to half of it again, drawn per call: agents that lost
/// the same replica at the same moment come back spread out.
fn with_jitter(backoff: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // The clock's low bits, mixed: different on every node and every call.
    let mixed =
        (u64::from(nanos) ^ u64::from(std::process::id())).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let fraction = (mixed >> 11) as f64 / (1u64 << 53) as f64;
    backoff + backoff.mul_f64(fraction / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_the_backoff_again() {
        let backoff = Duration::from_secs(2);
        let draws: Vec<Duration> = (0..200).map(|_| with_jitter(backoff)).collect();
        assert!(draws.iter().all(|d| *d >= backoff && *d <= backoff * 3 / 2));
        // Spread out, not one value.
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 20, "{} distinct delays", distinct.len());
    }

    #[test]
    fn feeds_are_open_only_while_every_replica_found_has_its_stream() {
        let health = Arc::new(FeedHealth::default());
        assert!(!health.all_open(), "no replica found yet");
        health.followed(2);
        let first = health.opened();
        assert!(!health.all_open(), "one of two open");
        let second = health.opened();
        assert!(health.all_open());
        // A replica restarts: its stream ends, the agent reconnects.
        drop(second);
        assert!(!health.all_open());
        let _again = health.opened();
        assert!(health.all_open());
        // A replica gone from discovery: one followed, its task aborted.
        health.followed(1);
        drop(first);
        assert!(health.all_open());
    }

    #[test]
    fn counts_are_the_gauges_metrics_export() {
        let (followed, open) = (Gauge::default(), Gauge::default());
        let health = Arc::new(FeedHealth::counting_on(followed.clone(), open.clone()));
        health.followed(3);
        let one = health.opened();
        let two = health.opened();
        let counts = health.counts();
        assert_eq!((counts.followed, counts.open), (3, 2));
        assert!(counts.resolved_ms > 0);
        assert_eq!((followed.get(), open.get()), (3, 2));
        drop(one);
        drop(two);
        assert_eq!((health.counts().open, open.get()), (0, 0));
    }
}
