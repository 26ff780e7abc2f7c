//! The ledger's latest records, kept decoded, so that reading what was
//! just written (the feed catching agents up) neither opens a read
//! transaction nor decodes JSON again.
//!
//! After a webhook restart under load, every agent is caught up on the
//! writes since the restart, and each catch-up read them from redb and
//! decoded each record's JSON: 26% of the restarted replica's CPU samples
//! at 5,000 agents (`perf`, `push_scale <webhook> 5000 feed`, restart).
//!
//! These records are a copy: the ledger tells them of every write and
//! every removal under the same lock readers take, and answers from them
//! only where they hold every record the store holds.

use std::collections::VecDeque;

use super::Approval;

/// Records kept: the writes of a restart under load (2,000 to 2,900
/// admissions in `push_scale`'s restart phase at 5,000 agents) and some.
/// About 1 KiB each with their strings.
pub const KEPT: usize = 4_096;

#[derive(Debug)]
pub struct RecentWrites {
    /// Every record the store holds after this generation is in `records`.
    complete_after: u64,
    /// Oldest first, generations ascending.
    records: VecDeque<Approval>,
    capacity: usize,
}

impl RecentWrites {
    /// Nothing kept yet, for a store at `generation`: complete after it.
    pub fn new(generation: u64, capacity: usize) -> Self {
        Self {
            complete_after: generation,
            records: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// A record just written, after every one kept (the ledger writes
    /// generations in order).
    pub fn written(&mut self, approval: Approval) {
        if self
            .records
            .back()
            .is_some_and(|last| last.generation >= approval.generation)
        {
            // Out of order (cannot happen with one writer): keep nothing
            // rather than ever answer with a gap.
            self.forget_up_to(approval.generation);
            return;
        }
        self.records.push_back(approval);
        while self.records.len() > self.capacity {
            if let Some(oldest) = self.records.pop_front() {
                self.complete_after = oldest.generation;
            }
        }
    }

    /// The record at `generation` left the store (recorded again under a
    /// new generation, or dropped).
    pub fn removed(&mut self, generation: u64) {
        if let Ok(at) = self
            .records
            .binary_search_by_key(&generation, |a| a.generation)
        {
            self.records.remove(at);
        }
    }

    /// Keeps nothing; the store is at `generation`.
    pub fn forget_up_to(&mut self, generation: u64) {
        self.records.clear();
        self.complete_after = generation;
    }

    /// The records after `generation`, oldest first, at most `limit`, when
    /// every one the store holds is here; `None` sends the reader to the
    /// store.
    pub fn since(&self, generation: u64, limit: usize) -> Option<Vec<Approval>> {
        if generation < self.complete_after {
            return None;
        }
        let start = self.records.partition_point(|a| a.generation <= generation);
        Some(self.records.range(start..).take(limit).cloned().collect())
    }
}
