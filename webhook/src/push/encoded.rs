//! Feed messages as protobuf bytes. A live batch is encoded once, by the
//! tail, and every stream sends those same bytes (a reference count, no
//! copy): at 5,000 streams a burst used to cost 5,000 decoded copies of
//! each merged message and 5,000 encodings of it (`cargo xtask bench push`).
//!
//! Merging relies on protobuf's rule that concatenated encodings read as
//! one message in which the last value of a scalar field wins and repeated
//! fields append
//! (<https://protobuf.dev/programming-guides/encoding/#last-one-wins>).

use bytes::{Bytes, BytesMut};
use imagegate_proto::v1 as pb;
use prost::Message;

/// `ApprovalBatch.since_generation`'s field number.
const SINCE_GENERATION_FIELD: u32 = 2;
/// `ApprovalBatch.approvals`' field number.
pub const APPROVALS_FIELD: u32 = 4;

/// A live batch, encoded, with what a stream judges it by.
#[derive(Clone, Debug)]
pub struct Batch {
    pub since: u64,
    pub generation: u64,
    pub approvals: usize,
    pub cluster_set: Option<u64>,
    bytes: Bytes,
}

impl Batch {
    pub fn encode(message: &pb::ApprovalBatch) -> Self {
        Batch {
            since: message.since_generation,
            generation: message.generation,
            approvals: message.approvals.len(),
            cluster_set: message.cluster_set_generation,
            bytes: message.encode_to_vec().into(),
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// One message for one stream: the parts are written one after the other.
#[derive(Debug)]
pub struct Encoded {
    parts: Vec<Bytes>,
    pub approvals: usize,
}

impl Encoded {
    /// A message only this stream sends (a catch-up from the ledger).
    pub fn message(message: &pb::ApprovalBatch) -> Self {
        Encoded {
            parts: vec![message.encode_to_vec().into()],
            approvals: message.approvals.len(),
        }
    }

    /// A message of `header`'s fields and `approvals`, the encoded
    /// `approvals` field of `count` records (a catch-up's shared read,
    /// [`super::recent_reads`]). `header` carries no approvals.
    pub fn with_approvals(header: &pb::ApprovalBatch, approvals: Bytes, count: usize) -> Self {
        debug_assert!(header.approvals.is_empty());
        Encoded {
            parts: vec![header.encode_to_vec().into(), approvals],
            approvals: count,
        }
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    /// The message's bytes, to be written one after the other.
    pub fn into_parts(self) -> Vec<Bytes> {
        self.parts
    }

    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        self.parts.concat()
    }
}

/// Live batches that follow one another, sent as one message.
#[derive(Debug)]
pub struct Merged {
    since: u64,
    generation: u64,
    cluster_set: Option<u64>,
    approvals: usize,
    bytes: usize,
    parts: Vec<Bytes>,
}

/// Why a batch was not added to a [`Merged`] message.
#[derive(Debug, PartialEq, Eq)]
pub enum NotAdded {
    /// It does not start where the message ends, or it would take back the
    /// cluster set mark (an absent field cannot override a present one).
    DoesNotFollow,
    /// The message would pass its bounds.
    TooLarge,
}

impl Merged {
    pub fn new(batch: &Batch) -> Self {
        Merged {
            since: batch.since,
            generation: batch.generation,
            cluster_set: batch.cluster_set,
            approvals: batch.approvals,
            bytes: batch.len(),
            parts: vec![batch.bytes.clone()],
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Appends `batch` if it follows on and the message stays within
    /// `max_bytes` and `max_approvals`.
    pub fn add(
        &mut self,
        batch: &Batch,
        max_bytes: usize,
        max_approvals: usize,
    ) -> Result<(), NotAdded> {
        if batch.since != self.generation
            || batch.generation < self.generation
            || (self.cluster_set.is_some() && batch.cluster_set.is_none())
        {
            return Err(NotAdded::DoesNotFollow);
        }
        // The trailer that restores `since` is at most 11 bytes.
        if self.bytes + batch.len() + 11 > max_bytes
            || self.approvals + batch.approvals > max_approvals
        {
            return Err(NotAdded::TooLarge);
        }
        self.generation = batch.generation;
        self.cluster_set = batch.cluster_set;
        self.approvals += batch.approvals;
        self.bytes += batch.len();
        self.parts.push(batch.bytes.clone());
        Ok(())
    }

    /// The message. Every part after the first set `since_generation` to
    /// where it continued from; a last field sets it back to where the
    /// message starts. It is written even when zero (proto3 leaves zero out
    /// of an encoding, which would leave the last part's value standing).
    pub fn into_encoded(mut self) -> Encoded {
        if self.parts.len() > 1 {
            let mut trailer = BytesMut::with_capacity(11);
            prost::encoding::uint64::encode(SINCE_GENERATION_FIELD, &self.since, &mut trailer);
            self.parts.push(trailer.freeze());
        }
        Encoded {
            parts: self.parts,
            approvals: self.approvals,
        }
    }
}

/// A batch as the tail makes it, for the feed's tests: approvals
/// `since+1..=upto`, each digest its generation; a retention that differs
/// per batch, so a merge's last value can be told from the first.
#[cfg(test)]
pub fn test_batch(since: u64, upto: u64, cluster_set: Option<u64>) -> pb::ApprovalBatch {
    pb::ApprovalBatch {
        ledger: "ledger".into(),
        since_generation: since,
        generation: upto,
        approvals: (since + 1..=upto)
            .map(|n| pb::Approval {
                digest: format!("sha256:{n:064x}"),
                ..Default::default()
            })
            .collect(),
        cluster_set_generation: cluster_set,
        retention_seconds: 60 + upto,
        caught_up: false,
    }
}

#[cfg(test)]
mod tests {
    use super::{test_batch as batch, *};

    fn decoded(encoded: Encoded) -> pb::ApprovalBatch {
        pb::ApprovalBatch::decode(encoded.to_vec().as_slice()).expect("a merged message decodes")
    }

    #[test]
    fn merged_bytes_decode_as_the_batches_merged() {
        let batches = [
            batch(0, 2, None),
            batch(2, 2, Some(2)),
            batch(2, 5, Some(2)),
        ];
        let mut merged = Merged::new(&Batch::encode(&batches[0]));
        for b in &batches[1..] {
            merged.add(&Batch::encode(b), 1 << 20, 100).unwrap();
        }
        let message = decoded(merged.into_encoded());
        let mut expected = batch(0, 5, Some(2));
        expected.retention_seconds = batches[2].retention_seconds;
        // since_generation is the first batch's, zero included.
        assert_eq!(message, expected);
    }

    #[test]
    fn one_batch_is_sent_as_it_was_encoded() {
        let one = batch(7, 9, Some(3));
        let encoded = Merged::new(&Batch::encode(&one)).into_encoded();
        assert_eq!(encoded.to_vec(), one.encode_to_vec());
        assert_eq!(encoded.approvals, 2);
    }

    #[test]
    fn a_batch_that_does_not_follow_on_is_not_merged() {
        let mut merged = Merged::new(&Batch::encode(&batch(0, 2, Some(1))));
        for (b, why) in [
            (batch(3, 4, Some(1)), "a gap"),
            (batch(1, 4, Some(1)), "an overlap"),
            (batch(2, 4, None), "the cluster set mark taken back"),
        ] {
            assert_eq!(
                merged.add(&Batch::encode(&b), 1 << 20, 100),
                Err(NotAdded::DoesNotFollow),
                "{why}"
            );
        }
        assert_eq!(merged.generation(), 2);
        assert_eq!(decoded(merged.into_encoded()), batch(0, 2, Some(1)));
    }

    #[test]
    fn a_merged_message_keeps_to_its_bounds() {
        let first = Batch::encode(&batch(0, 10, None));
        let second = Batch::encode(&batch(10, 20, None));
        let mut merged = Merged::new(&first);
        assert_eq!(
            merged.add(&second, first.len() + second.len(), 100),
            Err(NotAdded::TooLarge),
            "no room left for the trailer"
        );
        assert_eq!(merged.add(&second, 1 << 20, 19), Err(NotAdded::TooLarge));
        merged
            .add(&second, first.len() + second.len() + 11, 20)
            .unwrap();
        let encoded = merged.into_encoded();
        assert!(encoded.len() <= first.len() + second.len() + 11);
        assert_eq!(decoded(encoded).approvals.len(), 20);
    }
}
