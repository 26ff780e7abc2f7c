//! One reader of the ledger for every feed stream: each new write is read
//! and encoded once, then its bytes are shared with every stream that is up
//! to date. Thousands of agents cost one ledger read per write,
//! not thousands.

use std::{sync::Arc, time::Duration};

use imagegate_proto::v1 as pb;
use tokio::sync::{broadcast, watch};
use tracing::warn;

use super::{
    encoded::Batch,
    wire::{BatchLimits, batch},
};
use crate::ledger::Ledger;

/// Batches kept for streams that are a little behind. A stream further
/// behind is told it lagged and catches up from the ledger instead, so a
/// slow agent never makes the webhook hold more than this.
pub const LIVE_BATCHES: usize = 64;

/// After a failed ledger read, try again this much later.
const RETRY: Duration = Duration::from_secs(1);

/// Live batches are made at most this often, and more rarely with many
/// streams following ([`LIVE_EVERY_PER_STREAM`]). A write after a quiet
/// spell goes out [`ANSWER_FIRST`] after it; writes that follow closely (a
/// Deployment scaled up) wait for the rest of this and go out together.
/// Without it each write is one batch and, at 2,000 streams, a burst of
/// 200 admissions ran past the [`LIVE_BATCHES`] ring faster than the
/// fan-out reached every stream: most streams lagged and were caught up
/// from the ledger, 8 at a time (`cargo xtask bench push`, burst).
pub const LIVE_EVERY: Duration = Duration::from_millis(10);

/// With many streams following, live batches are made at most once per
/// this much per stream: each batch costs every stream a wake-up and a
/// message, about 20 us of the feed thread's CPU each (the steady phase of
/// `push_scale <webhook> 5000 feed`: 100-119 ms per admission). So
/// batches come no faster than the feed's one core can fan one out, and
/// the [`LIVE_BATCHES`] ring covers 64 of these spans: at 5,000
/// agents 6.4 s, where 64 batches of 10 ms ran out while a restarted
/// replica caught every stream up, and lagged streams queued for a second
/// catch-up. A write after a quiet spell still goes out [`ANSWER_FIRST`]
/// after it.
const LIVE_EVERY_PER_STREAM: Duration = Duration::from_micros(20);

/// The longest wait between live batches, whatever the streams' count.
const LIVE_EVERY_AT_MOST: Duration = Duration::from_millis(100);

/// How long after a live batch the next may be made, with `streams`
/// following.
fn live_every(streams: usize) -> Duration {
    let streams = u32::try_from(streams).unwrap_or(u32::MAX);
    LIVE_EVERY_PER_STREAM
        .saturating_mul(streams)
        .clamp(LIVE_EVERY, LIVE_EVERY_AT_MOST)
}

/// A write after a quiet spell is read and sent this long after it is
/// made, so the review that made it has its answer out before the fan-out
/// to every stream takes the CPU. Sent at once, the fan-out at 2,000
/// agents added 0.31-0.43 ms to the mean admission and 0.80-0.94 ms to its
/// p90; 2 ms later, 0.01-0.18 and -0.23 to +0.31 ms (`push_scale`, four
/// runs of each, against a control webhook without agents in the same
/// minutes).
/// An agent needs an approval when the pod's container starts, seconds
/// after its admission.
pub const ANSWER_FIRST: Duration = Duration::from_millis(2);

pub type Live = broadcast::Sender<Batch>;

/// The live batches' sender, once the tail knows where the ledger stands;
/// the tail then runs until `stop` turns true. `None` if `stop` turned true
/// first.
///
/// The feed serves no stream before this returns: a stream caught up
/// before the tail's first read would miss what was written between the
/// two, as the tail carries only what follows its first read.
pub async fn start(ledger: Arc<Ledger>, mut stop: watch::Receiver<bool>) -> Option<Live> {
    let changes = ledger.subscribe();
    let (last, told_cluster_set) = loop {
        match read(&ledger, None).await {
            Ok((_, generation, cluster_set)) => break (generation, cluster_set),
            Err(e) => {
                warn!(error = %e, "approval feed: cannot read the ledger; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = stop.wait_for(|s| *s) => return None,
                }
            }
        }
    };
    let (live, _) = broadcast::channel(LIVE_BATCHES);
    let tail = Tail {
        ledger,
        live: live.clone(),
        changes,
        last,
        told_cluster_set,
    };
    tokio::spawn(tail.run(stop));
    Some(live)
}

struct Tail {
    ledger: Arc<Ledger>,
    live: Live,
    changes: watch::Receiver<u64>,
    /// The generation up to which every write was sent (or preceded the
    /// tail: streams catch up on that from the ledger).
    last: u64,
    told_cluster_set: Option<u64>,
}

impl Tail {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let Tail {
            ledger,
            live,
            mut changes,
            mut last,
            mut told_cluster_set,
        } = self;
        let mut sent_at: Option<tokio::time::Instant> = None;
        loop {
            if let Some(at) = sent_at {
                tokio::select! {
                    _ = tokio::time::sleep_until(at + live_every(live.receiver_count())) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            changes.borrow_and_update();
            match read(&ledger, Some(last)).await {
                Ok((records, _, cluster_set)) if records.is_empty() => {
                    if cluster_set.is_some() && cluster_set != told_cluster_set {
                        // No new record, but the cluster set is now complete.
                        let _ = live.send(Batch::encode(&message(
                            &ledger,
                            Vec::new(),
                            last,
                            last,
                            cluster_set,
                        )));
                        told_cluster_set = cluster_set;
                    }
                    tokio::select! {
                        _ = changes.changed() => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(ANSWER_FIRST) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
                Ok((records, _, cluster_set)) => {
                    let (approvals, upto) = batch(&records, BatchLimits::FEED);
                    sent_at = Some(tokio::time::Instant::now());
                    // No receiver is no error: no agent follows right now.
                    let _ = live.send(Batch::encode(&message(
                        &ledger,
                        approvals,
                        last,
                        upto,
                        cluster_set,
                    )));
                    last = upto;
                    told_cluster_set = cluster_set;
                }
                Err(e) => {
                    warn!(error = %e, "approval feed: cannot read the ledger; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }
}

/// The records after `since` (none if `since` is `None`), the ledger's
/// generation and its cluster set mark, read off the runtime's threads.
///
/// The generation is read first: when no record follows `since`, nothing
/// up to that generation is missing (records may have expired), so a
/// follower may be told it holds it.
pub async fn read(
    ledger: &Arc<Ledger>,
    since: Option<u64>,
) -> Result<(Vec<crate::ledger::Approval>, u64, Option<u64>), String> {
    let ledger = ledger.clone();
    tokio::task::spawn_blocking(move || {
        let generation = ledger.generation()?;
        let cluster_set = ledger.cluster_set()?;
        let records = match since {
            Some(since) => ledger.since(since, BatchLimits::FEED.approvals)?,
            None => Vec::new(),
        };
        Ok::<_, crate::ledger::LedgerError>((records, generation, cluster_set))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// One feed message.
pub fn message(
    ledger: &Ledger,
    approvals: Vec<pb::Approval>,
    since: u64,
    generation: u64,
    cluster_set: Option<u64>,
) -> pb::ApprovalBatch {
    pb::ApprovalBatch {
        ledger: ledger.id().to_string(),
        since_generation: since,
        generation,
        approvals,
        cluster_set_generation: cluster_set,
        retention_seconds: ledger.retention().as_secs(),
        caught_up: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::tests::approval;

    /// A tail started on a new ledger (with what must live as long).
    async fn started() -> (tempfile::TempDir, watch::Sender<bool>, Arc<Ledger>, Live) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(
            Ledger::open(
                &dir.path().join("ledger.redb"),
                Duration::from_secs(3600),
                1_000,
            )
            .unwrap(),
        );
        let (stop_tx, stop) = watch::channel(false);
        let live = start(ledger.clone(), stop).await.expect("the tail starts");
        (dir, stop_tx, ledger, live)
    }

    #[test]
    fn live_batches_are_spaced_by_the_streams_count_within_bounds() {
        assert_eq!(live_every(0), LIVE_EVERY);
        assert_eq!(live_every(200), LIVE_EVERY);
        assert_eq!(live_every(2_000), Duration::from_millis(40));
        assert_eq!(live_every(5_000), LIVE_EVERY_AT_MOST);
        assert_eq!(live_every(usize::MAX), LIVE_EVERY_AT_MOST);
    }

    /// With 2,000 streams following, a write made just as a batch goes out
    /// waits 40 ms from it; one after a quiet spell still goes out
    /// ANSWER_FIRST after it.
    #[tokio::test(start_paused = true)]
    async fn many_streams_space_the_live_batches_but_not_a_lone_write() {
        let (_dir, _stop, ledger, live) = started().await;
        let mut batches = live.subscribe();
        let _others: Vec<_> = (1..2_000).map(|_| live.subscribe()).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let written = tokio::time::Instant::now();
        ledger.record(&[approval("lone", 1)]).unwrap();
        batches.recv().await.unwrap();
        assert_eq!(written.elapsed(), ANSWER_FIRST);
        let written = tokio::time::Instant::now();
        ledger.record(&[approval("close", 1)]).unwrap();
        batches.recv().await.unwrap();
        assert_eq!(written.elapsed(), Duration::from_millis(40));
    }

    /// After a quiet spell, a write is sent ANSWER_FIRST after it, not at
    /// once; one that follows closely waits for LIVE_EVERY. On tokio's
    /// paused clock, which moves only to a timer when nothing else can run:
    /// without the wait, a write is sent at the same instant.
    #[tokio::test(start_paused = true)]
    async fn a_write_after_a_quiet_spell_waits_for_its_answer() {
        let (_dir, _stop, ledger, live) = started().await;
        let mut batches = live.subscribe();
        for (n, digest) in ["one", "two", "three"].into_iter().enumerate() {
            tokio::time::sleep(LIVE_EVERY * 2).await;
            let written = tokio::time::Instant::now();
            ledger.record(&[approval(digest, 1)]).unwrap();
            let batch = batches.recv().await.unwrap();
            assert_eq!(batch.generation, n as u64 + 1);
            assert_eq!(written.elapsed(), ANSWER_FIRST, "write {digest}");
        }
        // Writes that follow a batch closely wait for LIVE_EVERY from it,
        // and no longer: the wait for the answer is within it.
        for (n, digest) in ["four", "five"].into_iter().enumerate() {
            let written = tokio::time::Instant::now();
            ledger.record(&[approval(digest, 1)]).unwrap();
            let batch = batches.recv().await.unwrap();
            assert_eq!(batch.generation, n as u64 + 4);
            assert_eq!(written.elapsed(), LIVE_EVERY, "write {digest}");
        }
    }
}
