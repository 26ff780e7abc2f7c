//! `imagegate.v1.ApprovalFeed` on the webhook's mTLS feed listener: each
//! node agent opens one stream. A stream is first caught up from the
//! ledger (a bounded number at once: catching up is what reads the ledger
//! and holds batches in memory), then follows the tail's live batches. A
//! stream that falls behind the tail catches up again; one that cannot
//! take a batch for [`SEND_TIMEOUT`] is closed, and the agent reopens it
//! from what it holds. Admission never waits on any of this.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use imagegate_plumbing::grpc::{
    bounded::ListenerBounds,
    mtls::{self, TlsPeer, has_identity},
};
use imagegate_proto::{AGENT_IDENTITY, v1 as pb};
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tonic::{Request, Status, transport::Server};
use tracing::{debug, info, warn};

use super::{
    PushMetrics,
    encoded::{Batch, Encoded, Merged},
    feed_service::{FeedService, Messages},
    followers::Followers,
    recent_reads::{Read, RecentReads},
    tail,
    wire::{BatchLimits, batch},
};
use crate::ledger::Ledger;

/// Streams catching up at once; the others wait their turn (they are
/// behind anyway).
pub const CATCH_UPS_AT_ONCE: usize = 8;
/// A stream that cannot take a batch this long is closed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Batches queued per stream beyond what HTTP/2 holds.
const STREAM_BUFFER: usize = 1;
/// Live batches are merged into one message up to this many encoded bytes
/// (a single batch may be larger, up to the feed's bound): what an agent
/// decodes at once. The webhook holds no copy per stream: a merged message
/// is the live batches' shared bytes ([`super::encoded`]).
const MERGED_BYTES: usize = 64 << 10;

/// Where the feed listens and with which certificates.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    pub listen: SocketAddr,
    /// The webhook's push identity (valid for `imagegate-webhook`): agents
    /// check it as they would a pusher's.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA agents' certificates chain to.
    pub client_ca: PathBuf,
    /// Connections open at once: one per agent, with room for reconnects.
    pub max_connections: usize,
    /// Told of every agent that follows, and from where.
    pub followers: Followers,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("binding the approval feed listener {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the approval feed's certificates: {0}")]
    Tls(#[from] mtls::TlsError),
    #[error("starting the approval feed's thread: {0}")]
    Thread(String),
}

struct Shared {
    ledger: Arc<Ledger>,
    followers: Followers,
    /// The tail's sender, weakly: when the tail stops (the webhook
    /// stops), every stream's receiver closes and the stream ends with
    /// status OK; a strong sender here kept them waiting until the process
    /// exited.
    live: broadcast::WeakSender<Batch>,
    catch_ups: Semaphore,
    /// What catch-ups read lately, for the next ones from there.
    recent: Mutex<RecentReads>,
    metrics: PushMetrics,
}

pub struct Feed {
    shared: Arc<Shared>,
}

/// [`serve`] on a thread and runtime of its own. A write fans out to every
/// stream (at 2,000 agents, 45 ms of CPU per admitted image): on the
/// admission runtime that work queued ahead of the next review and added
/// tens of milliseconds to admission p99 (`cargo xtask bench push`). On its
/// own thread the kernel's scheduler gives a waking review its turn at once,
/// and the feed uses at most one core.
pub async fn serve_apart(
    config: FeedConfig,
    ledger: Arc<Ledger>,
    metrics: PushMetrics,
    stop: watch::Receiver<bool>,
) -> Result<SocketAddr, FeedError> {
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("approval-feed".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = bound_tx.send(Err(FeedError::Thread(e.to_string())));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut stopped = stop.clone();
                let bound = serve(config, ledger, metrics, stop).await;
                let serving = bound.is_ok();
                let _ = bound_tx.send(bound);
                if serving {
                    let _ = stopped.wait_for(|s| *s).await;
                }
            });
        })
        .map_err(|e| FeedError::Thread(e.to_string()))?;
    bound_rx
        .await
        .map_err(|_| FeedError::Thread("the feed's thread ended before it served".into()))?
}

/// Binds the feed listener and serves until `stop` turns true; returns the
/// bound address.
pub async fn serve(
    config: FeedConfig,
    ledger: Arc<Ledger>,
    metrics: PushMetrics,
    stop: watch::Receiver<bool>,
) -> Result<SocketAddr, FeedError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| FeedError::Bind {
            address: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| FeedError::Bind {
        address: config.listen,
        source,
    })?;
    let tls = mtls::load(
        mtls::TlsFiles {
            cert: config.cert,
            key: config.key,
            client_ca: config.client_ca,
        },
        stop.clone(),
    )
    .await?;
    let bounds = ListenerBounds {
        connections: config.max_connections,
        // An agent has one connection (two while it replaces a broken
        // one), but agents behind one address (NAT, or several on one
        // host as in tests) each need theirs; the bound only keeps one
        // address from taking every slot.
        per_address: 64,
        // Keepalive pings (below) keep live streams moving.
        idle: Duration::from_secs(60),
    };
    // Agents that connect meanwhile wait in the listen backlog.
    let Some(live) = tail::start(ledger.clone(), stop.clone()).await else {
        return Ok(local);
    };
    let incoming = mtls::incoming(tls, listener, bounds);
    let feed = Feed {
        shared: Arc::new(Shared {
            live: live.downgrade(),
            ledger,
            followers: config.followers.clone(),
            catch_ups: Semaphore::new(CATCH_UPS_AT_ONCE),
            recent: Mutex::default(),
            metrics,
        }),
    };
    let router = Server::builder()
        .max_concurrent_streams(4)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(FeedService::new(feed));
    let mut stop_serving = stop;
    tokio::spawn(async move {
        let done = async move {
            let _ = stop_serving.wait_for(|s| *s).await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, done).await {
            warn!(error = %e, "approval feed listener stopped");
        }
    });
    Ok(local)
}

impl Feed {
    /// Opens one agent's stream (its catch-up, then the live batches).
    pub fn follow(&self, request: Request<pb::FollowRequest>) -> Result<Messages, Status> {
        let peer = request.extensions().get::<TlsPeer>().cloned();
        let certificate = peer
            .as_ref()
            .and_then(|peer| peer.certificate.clone())
            .ok_or_else(|| {
                Status::unauthenticated("the feed needs an agent's client certificate")
            })?;
        if !has_identity(&certificate, AGENT_IDENTITY) {
            return Err(Status::permission_denied(format!(
                "only {AGENT_IDENTITY} may follow approvals; this client certificate is not valid \
                 for that name"
            )));
        }
        let body = request.into_inner();
        let held = body.held.get(self.shared.ledger.id()).copied().unwrap_or(0);
        // Subscribed before catching up: nothing written meanwhile falls
        // between the two.
        let Some(live) = self.shared.live.upgrade().map(|live| live.subscribe()) else {
            return Err(Status::unavailable(
                "this webhook replica is stopping; follow another one",
            ));
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        debug!(node = %body.node, held, "agent follows the approval feed");
        let following = peer
            .and_then(|p| p.remote)
            .filter(|_| !body.node.is_empty())
            .map(|remote| self.shared.followers.joined(&body.node, remote.ip()));
        let shared = self.shared.clone();
        tokio::spawn(async move {
            stream(shared, body.node, held, live, tx).await;
            drop(following);
        });
        Ok(rx)
    }
}

type Tx = mpsc::Sender<Result<Encoded, Status>>;

/// Why a stream ends.
enum End {
    /// The agent went, or could not take a batch in time.
    Closed,
}

/// One agent's stream, until it goes.
async fn stream(
    shared: Arc<Shared>,
    node: String,
    mut held: u64,
    mut live: broadcast::Receiver<Batch>,
    tx: Tx,
) {
    let metrics = &shared.metrics;
    metrics.followers.inc();
    let _followers = scopeguard(metrics.followers.clone());
    'catch_up: loop {
        if let Err(End::Closed) = catch_up(&shared, &node, &mut held, &tx).await {
            return;
        }
        // A batch received but left for the next message (it did not fit).
        let mut next: Option<Batch> = None;
        loop {
            let received = match next.take() {
                Some(batch) => Ok(batch),
                None => live.recv().await,
            };
            match received {
                Ok(batch) if batch.since > held => {
                    // Written before this stream subscribed and after the
                    // catch-up read: read it from the ledger.
                    continue 'catch_up;
                }
                Ok(batch) if batch.generation < held => {}
                Ok(batch) => {
                    let mut message = Merged::new(&batch);
                    match coalesce(&mut live, &mut message) {
                        Waiting::Nothing => {}
                        Waiting::DidNotFit(batch) => next = Some(batch),
                        Waiting::Lagged(missed) => {
                            debug!(%node, missed, "feed stream behind the live batches; catching up");
                            metrics.feed_lagged.inc();
                            continue 'catch_up;
                        }
                    }
                    let generation = message.generation();
                    if send(&shared, &tx, message.into_encoded(), &node)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    held = held.max(generation);
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    debug!(%node, missed, "feed stream behind the live batches; catching up");
                    metrics.feed_lagged.inc();
                    continue 'catch_up;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// What else the live batches held once a stream took one.
enum Waiting {
    Nothing,
    /// The next batch, which would have made the message too large or does
    /// not follow on from it.
    DidNotFit(Batch),
    /// The stream fell behind: what it took is read again from the ledger.
    Lagged(u64),
}

/// Adds to `message` the live batches already waiting for this stream, so
/// one message carries them. When writes come faster than the fan-out
/// reaches every stream, each stream sends what piled up in one go: the
/// feed's work follows the streams' count, not streams x writes. Batches
/// are contiguous (the tail sends each from where the last ended), so the
/// merged message is too; it stays within [`MERGED_BYTES`] and the feed's
/// count of approvals.
fn coalesce(live: &mut broadcast::Receiver<Batch>, message: &mut Merged) -> Waiting {
    loop {
        let batch = match live.try_recv() {
            Ok(batch) => batch,
            Err(broadcast::error::TryRecvError::Lagged(missed)) => return Waiting::Lagged(missed),
            // Closed: the tail stopped; what was taken is still sent.
            Err(_) => return Waiting::Nothing,
        };
        if message
            .add(&batch, MERGED_BYTES, BatchLimits::FEED.approvals)
            .is_err()
        {
            return Waiting::DidNotFit(batch);
        }
    }
}

/// Sends what the ledger has after `held`, then where the ledger stands.
/// What another catch-up read lately from the same generation is sent as
/// it was encoded ([`super::recent_reads`]); the rest is read.
async fn catch_up(shared: &Shared, node: &str, held: &mut u64, tx: &Tx) -> Result<(), End> {
    let _turn = shared.catch_ups.acquire().await.map_err(|_| End::Closed)?;
    shared.metrics.feed_catch_ups.inc();
    loop {
        let kept = recent(shared).from(*held, Instant::now(), BatchLimits::FEED);
        if let Some(read) = kept {
            send_read(shared, tx, &read, node).await?;
            shared.metrics.feed_shared_reads.inc();
            *held = read.upto;
            continue;
        }
        let read_at = Instant::now();
        let (records, generation, cluster_set) = match tail::read(&shared.ledger, Some(*held)).await
        {
            Ok(read) => read,
            Err(e) => {
                warn!(%node, error = %e, "approval feed: cannot read the ledger; closing the stream");
                let _ = tx
                    .send(Err(Status::unavailable(format!(
                        "the webhook cannot read its ledger: {e}"
                    ))))
                    .await;
                return Err(End::Closed);
            }
        };
        if records.is_empty() {
            // Nothing after `held` up to `generation`: the agent holds it
            // (records there expired), learns of the cluster set, and that
            // it is caught up. Sent even when it says nothing else: until
            // then the agent holds its stops for this replica, whose
            // approvals may still be on the way (thousands of agents wait
            // their turn here after a restart).
            let to = generation.max(*held);
            let mut message = tail::message(&shared.ledger, Vec::new(), *held, to, cluster_set);
            message.caught_up = true;
            send(shared, tx, Encoded::message(&message), node).await?;
            *held = to;
            return Ok(());
        }
        let (approvals, upto) = batch(&records, BatchLimits::FEED);
        let read = Read::encode(*held, upto, cluster_set, &approvals, read_at);
        recent(shared).keep(read.clone(), Instant::now());
        send_read(shared, tx, &read, node).await?;
        *held = upto;
    }
}

fn recent(shared: &Shared) -> std::sync::MutexGuard<'_, RecentReads> {
    // Held for a map lookup or insert, never across an await: a panic
    // there leaves nothing half-done worth refusing the reads for.
    shared
        .recent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hands a read to the stream as one message.
async fn send_read(shared: &Shared, tx: &Tx, read: &Read, node: &str) -> Result<(), End> {
    let header = tail::message(
        &shared.ledger,
        Vec::new(),
        read.since,
        read.upto,
        read.cluster_set,
    );
    let message = Encoded::with_approvals(&header, read.bytes.clone(), read.approvals);
    send(shared, tx, message, node).await
}

/// Hands one batch to the stream, or gives up on a stream that cannot
/// take it in time.
async fn send(shared: &Shared, tx: &Tx, message: Encoded, node: &str) -> Result<(), End> {
    let count = message.approvals as u64;
    match tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(message))).await {
        Ok(Ok(())) => {
            shared.metrics.feed_messages.inc();
            shared.metrics.pushed_approvals.inc_by(count);
            Ok(())
        }
        Ok(Err(_)) => Err(End::Closed),
        Err(_) => {
            info!(%node, "agent too slow to take approvals; closing its stream (it reopens from what it holds)");
            shared.metrics.feed_slow_closed.inc();
            Err(End::Closed)
        }
    }
}

/// Decrements the followers gauge when the stream ends, however it ends.
fn scopeguard(gauge: prometheus_client::metrics::gauge::Gauge) -> impl Drop {
    struct Guard(prometheus_client::metrics::gauge::Gauge);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Guard(gauge)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::push::{LIVE_BATCHES, encoded::test_batch};

    /// A live batch as the tail makes it, the cluster set complete at
    /// where it starts.
    fn live_batch(since: u64, upto: u64) -> pb::ApprovalBatch {
        test_batch(since, upto, Some(since))
    }

    fn encoded(since: u64, upto: u64) -> Batch {
        Batch::encode(&live_batch(since, upto))
    }

    /// The first batch waiting, with what [`coalesce`] merged into it, as
    /// the agent decodes it; its size on the wire is checked against
    /// [`MERGED_BYTES`] here.
    fn merge(rx: &mut broadcast::Receiver<Batch>) -> (pb::ApprovalBatch, Waiting) {
        let mut message = Merged::new(&rx.try_recv().unwrap());
        let waiting = coalesce(rx, &mut message);
        let encoded = message.into_encoded();
        let bytes = encoded.to_vec();
        assert!(bytes.len() <= MERGED_BYTES);
        let decoded = pb::ApprovalBatch::decode(bytes.as_slice()).unwrap();
        assert_eq!(encoded.approvals, decoded.approvals.len());
        (decoded, waiting)
    }

    fn generations(message: &pb::ApprovalBatch) -> Vec<u64> {
        message
            .approvals
            .iter()
            .map(|a| u64::from_str_radix(&a.digest["sha256:".len()..], 16).unwrap())
            .collect()
    }

    #[test]
    fn batches_waiting_go_out_as_one_message_in_order() {
        let (tx, mut rx) = broadcast::channel(LIVE_BATCHES);
        for (since, upto) in [(0, 2), (2, 3), (3, 3), (3, 7)] {
            tx.send(encoded(since, upto)).unwrap();
        }
        let (message, waiting) = merge(&mut rx);
        assert!(matches!(waiting, Waiting::Nothing));
        assert_eq!(message.since_generation, 0);
        assert_eq!(message.generation, 7);
        assert_eq!(generations(&message), (1..=7).collect::<Vec<_>>());
        // The latest cluster set mark is what the merged message carries.
        assert_eq!(message.cluster_set_generation, Some(3));
        // Nothing is left behind for the next message.
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_merged_message_stays_within_its_bytes_and_the_rest_follows() {
        let (tx, mut rx) = broadcast::channel(LIVE_BATCHES);
        // 50 batches of 40 approvals, about 3 KiB each: 150 KiB in all.
        for b in 0..50 {
            tx.send(encoded(b * 40, (b + 1) * 40)).unwrap();
        }
        let (message, waiting) = merge(&mut rx);
        let Waiting::DidNotFit(left) = waiting else {
            panic!("150 KiB do not fit in one message of {MERGED_BYTES} bytes");
        };
        assert!(message.approvals.len() > 40, "batches were merged");
        assert_eq!(
            generations(&message),
            (1..=message.generation).collect::<Vec<_>>()
        );
        // What did not fit starts where the message ends: sent next, no gap.
        assert_eq!(left.since, message.generation);
    }

    #[test]
    fn a_merged_message_stays_within_the_feed_bound_of_approvals() {
        // Approvals with nothing in them: the count, not the bytes, binds.
        let empty = |since: u64, upto: u64| {
            let mut batch = live_batch(since, upto);
            batch.approvals.iter_mut().for_each(|a| a.digest.clear());
            Batch::encode(&batch)
        };
        let (tx, mut rx) = broadcast::channel(LIVE_BATCHES);
        let per = (BatchLimits::FEED.approvals / 2) as u64;
        tx.send(empty(0, per)).unwrap();
        tx.send(empty(per, 2 * per)).unwrap();
        tx.send(empty(2 * per, 2 * per + 1)).unwrap();
        let (message, waiting) = merge(&mut rx);
        let Waiting::DidNotFit(left) = waiting else {
            panic!(
                "the third batch would pass the bound of {}",
                BatchLimits::FEED.approvals
            );
        };
        assert_eq!(message.approvals.len(), 2 * per as usize);
        assert_eq!(message.generation, 2 * per);
        assert_eq!(left.since, message.generation);
        assert_eq!(left.generation, 2 * per + 1);
    }

    #[test]
    fn a_cluster_set_mark_alone_is_not_lost_in_a_merge() {
        let (tx, mut rx) = broadcast::channel(LIVE_BATCHES);
        tx.send(encoded(0, 3)).unwrap();
        // No new record, but the cluster set is now complete at 3: the
        // tail says so in a batch of nothing.
        let mut mark = live_batch(3, 3);
        mark.cluster_set_generation = Some(3);
        tx.send(Batch::encode(&mark)).unwrap();
        let (message, waiting) = merge(&mut rx);
        assert!(matches!(waiting, Waiting::Nothing));
        assert_eq!(message.generation, 3);
        assert_eq!(message.cluster_set_generation, Some(3));
        assert_eq!(generations(&message), vec![1, 2, 3]);
    }

    #[test]
    fn a_gap_is_not_merged_over() {
        let (tx, mut rx) = broadcast::channel(LIVE_BATCHES);
        tx.send(encoded(0, 2)).unwrap();
        tx.send(encoded(5, 6)).unwrap();
        let (message, waiting) = merge(&mut rx);
        let Waiting::DidNotFit(left) = waiting else {
            panic!("a batch that does not follow on is left for the stream to judge");
        };
        assert_eq!(message.generation, 2);
        assert_eq!(left.since, 5);
    }

    #[test]
    fn a_stream_that_fell_behind_is_told_so() {
        let (tx, mut rx) = broadcast::channel(2);
        tx.send(encoded(0, 1)).unwrap();
        let mut message = Merged::new(&rx.try_recv().unwrap());
        for n in 1..5 {
            tx.send(encoded(n, n + 1)).unwrap();
        }
        assert!(matches!(
            coalesce(&mut rx, &mut message),
            Waiting::Lagged(2)
        ));
    }
}
