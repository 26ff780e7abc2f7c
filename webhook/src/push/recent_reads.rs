//! The catch-ups' recent ledger reads, encoded once and shared.
//!
//! After a replica restarts, every agent reconnects holding the generation
//! the replica had when it went down, and each is caught up from the same
//! place: the same records, read from the ledger, converted and encoded
//! thousands of times over (`perf` on the restarted replica at 5,000
//! agents: record copies and protobuf encoding). A catch-up now keeps what it read, encoded, for
//! [`KEEP`]; the next stream caught up from that generation sends those
//! bytes and goes on from where the read ended.
//!
//! A kept read is what the ledger held after its `since` when it was read,
//! so a stream that sends it is in the state of one that read the ledger
//! then: every write since has a higher generation than the read's end,
//! and is read or sent live after it. Records rewritten meanwhile come
//! again at their new generation. A record that expired on the ledger
//! since the read may still go out, as it may from a message waiting in a
//! stream's queue (up to [`super::feed::SEND_TIMEOUT`]); [`KEEP`] is
//! shorter than that.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use imagegate_proto::v1 as pb;

use super::{encoded::APPROVALS_FIELD, wire::BatchLimits};

/// How long a read is shared. At 5,000 agents a restarted replica catches
/// up hundreds of streams a second, so a read is sent many times within it.
pub const KEEP: Duration = Duration::from_secs(1);

/// The bytes kept at most: a few full feed messages.
const MAX_BYTES: usize = 8 * BatchLimits::FEED.bytes;

/// The records a catch-up read after `since`, up to `upto`, as the
/// `approvals` field of a feed message.
#[derive(Clone, Debug)]
pub struct Read {
    pub since: u64,
    pub upto: u64,
    pub approvals: usize,
    /// The ledger's cluster set mark when it was read.
    pub cluster_set: Option<u64>,
    /// Each approval as a field of `ApprovalBatch`, one after the other.
    pub bytes: Bytes,
    read_at: Instant,
}

impl Read {
    /// `approvals` as one read: the records after `since` up to `upto`.
    pub fn encode(
        since: u64,
        upto: u64,
        cluster_set: Option<u64>,
        approvals: &[pb::Approval],
        read_at: Instant,
    ) -> Self {
        let mut bytes = BytesMut::new();
        for approval in approvals {
            prost::encoding::message::encode(APPROVALS_FIELD, approval, &mut bytes);
        }
        Read {
            since,
            upto,
            approvals: approvals.len(),
            cluster_set,
            bytes: bytes.freeze(),
            read_at,
        }
    }
}

/// Reads kept by where they start.
#[derive(Debug, Default)]
pub struct RecentReads {
    by_since: HashMap<u64, Read>,
}

impl RecentReads {
    /// Keeps `read` for the streams that follow, dropping those past
    /// [`KEEP`] and, over [`MAX_BYTES`], the oldest. A read of nothing
    /// ends no catch-up and is not kept.
    pub fn keep(&mut self, read: Read, now: Instant) {
        if read.approvals == 0 || read.upto <= read.since {
            return;
        }
        self.by_since
            .retain(|_, r| now.saturating_duration_since(r.read_at) < KEEP);
        self.by_since.insert(read.since, read);
        let mut bytes = self.bytes();
        while bytes > MAX_BYTES {
            let Some(oldest) = self
                .by_since
                .values()
                .min_by_key(|r| r.read_at)
                .map(|r| r.since)
            else {
                break;
            };
            if let Some(old) = self.by_since.remove(&oldest) {
                bytes -= old.bytes.len();
            }
        }
    }

    /// What is kept from `held` on, the reads that follow one another
    /// joined within `limits`, as one read; `None` if no fresh read starts
    /// at `held`. Joined reads are kept joined, from `held`, as old as the
    /// oldest of them: the next stream from there sends one part.
    pub fn from(&mut self, held: u64, now: Instant, limits: BatchLimits) -> Option<Read> {
        let mut read = self.fresh(held, now)?.clone();
        let mut parts = vec![read.bytes.clone()];
        let mut len = read.bytes.len();
        while let Some(next) = self.fresh(read.upto, now) {
            if read.approvals + next.approvals > limits.approvals
                || len + next.bytes.len() > limits.bytes
            {
                break;
            }
            read.approvals += next.approvals;
            read.upto = next.upto;
            read.cluster_set = read.cluster_set.max(next.cluster_set);
            read.read_at = read.read_at.min(next.read_at);
            len += next.bytes.len();
            parts.push(next.bytes.clone());
        }
        if parts.len() > 1 {
            read.bytes = parts.concat().into();
            self.keep(read.clone(), now);
        }
        Some(read)
    }

    fn fresh(&self, since: u64, now: Instant) -> Option<&Read> {
        self.by_since
            .get(&since)
            .filter(|r| now.saturating_duration_since(r.read_at) < KEEP)
    }

    /// The bytes kept (a few hundred reads at most: summed when needed).
    fn bytes(&self) -> usize {
        self.by_since.values().map(|r| r.bytes.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::push::encoded::{Encoded, test_batch};

    const LIMITS: BatchLimits = BatchLimits::FEED;

    /// A read of approvals `since+1..=upto` (each digest its generation),
    /// made at `at`.
    fn read(since: u64, upto: u64, cluster_set: Option<u64>, at: Instant) -> Read {
        let batch = test_batch(since, upto, None);
        Read::encode(since, upto, cluster_set, &batch.approvals, at)
    }

    /// A read sent as a message, decoded as an agent decodes it.
    fn sent(read: &Read) -> pb::ApprovalBatch {
        let mut header = test_batch(read.since, read.upto, read.cluster_set);
        header.approvals.clear();
        let encoded = Encoded::with_approvals(&header, read.bytes.clone(), read.approvals);
        pb::ApprovalBatch::decode(encoded.to_vec().as_slice()).unwrap()
    }

    #[test]
    fn a_read_sent_decodes_as_the_message_it_was_read_for() {
        let now = Instant::now();
        let message = sent(&read(4, 9, Some(6), now));
        assert_eq!(message, test_batch(4, 9, Some(6)));
    }

    #[test]
    fn reads_that_follow_one_another_go_out_joined_and_stay_joined() {
        let now = Instant::now();
        let mut reads = RecentReads::default();
        reads.keep(read(10, 20, Some(12), now), now);
        reads.keep(read(20, 21, Some(20), now + Duration::from_millis(5)), now);
        reads.keep(read(21, 30, None, now + Duration::from_millis(9)), now);
        // Not where a stream holds: nothing.
        assert!(reads.from(11, now, LIMITS).is_none());

        let joined = reads.from(10, now, LIMITS).unwrap();
        assert_eq!((joined.since, joined.upto, joined.approvals), (10, 30, 20));
        // The latest mark, and as old as the oldest read in it.
        assert_eq!(joined.cluster_set, Some(20));
        assert_eq!(joined.read_at, now);
        assert_eq!(sent(&joined), test_batch(10, 30, Some(20)));
        // Kept joined from 10; the reads from 20 and 21 are still there
        // for streams that hold those.
        assert_eq!(reads.by_since[&10].upto, 30);
        assert_eq!(reads.from(21, now, LIMITS).unwrap().approvals, 9);
    }

    #[test]
    fn a_joined_read_keeps_to_the_feed_bounds() {
        let now = Instant::now();
        let mut reads = RecentReads::default();
        let per = LIMITS.approvals as u64 / 2;
        for n in 0..3 {
            reads.keep(read(n * per, (n + 1) * per, None, now), now);
        }
        let joined = reads.from(0, now, LIMITS).unwrap();
        assert_eq!(joined.approvals, 2 * per as usize, "bounded by count");
        assert_eq!(joined.upto, 2 * per);

        let bytes = BatchLimits {
            approvals: usize::MAX,
            bytes: joined.bytes.len() - 1,
        };
        let mut reads = RecentReads::default();
        for n in 0..3 {
            reads.keep(read(n * per, (n + 1) * per, None, now), now);
        }
        let first = reads.from(0, now, bytes).unwrap();
        assert_eq!(first.upto, per, "bounded by bytes");
        assert!(first.bytes.len() <= bytes.bytes);
    }

    #[test]
    fn a_read_is_shared_for_keep_and_no_longer() {
        let then = Instant::now();
        let mut reads = RecentReads::default();
        reads.keep(read(0, 5, None, then), then);
        assert!(
            reads
                .from(0, then + KEEP - Duration::from_millis(1), LIMITS)
                .is_some()
        );
        assert!(reads.from(0, then + KEEP, LIMITS).is_none());
        // A later read does not join one past its time, and the stale one
        // is dropped when the next is kept.
        let later = then + KEEP;
        reads.keep(read(5, 7, None, later), later);
        assert!(!reads.by_since.contains_key(&0));
        assert_eq!(reads.from(5, later, LIMITS).unwrap().upto, 7);
    }

    #[test]
    fn the_bytes_kept_are_bounded_the_oldest_going_first() {
        let now = Instant::now();
        let mut reads = RecentReads::default();
        let mut since = 0;
        let mut n = 0;
        while reads.bytes() <= MAX_BYTES - 200_000 {
            let at = now + Duration::from_micros(n);
            reads.keep(read(since, since + 1_000, None, at), at);
            since += 1_000;
            n += 1;
        }
        let kept = reads.by_since.len();
        let at = now + Duration::from_micros(n);
        reads.keep(read(since, since + 2_000, None, at), at);
        assert!(reads.bytes() <= MAX_BYTES);
        assert!(!reads.by_since.contains_key(&0), "the oldest went");
        assert!(reads.by_since.contains_key(&since), "the newest stays");
        assert!(reads.by_since.len() <= kept);
    }

    #[test]
    fn a_read_of_nothing_is_not_kept() {
        let now = Instant::now();
        let mut reads = RecentReads::default();
        reads.keep(read(3, 3, Some(3), now), now);
        assert!(reads.by_since.is_empty());
        assert!(reads.from(3, now, LIMITS).is_none());
    }
}
