//! Every write to the store, on the one [`StoreWriter`] the store hands
//! out when it is opened. A running agent gives it to the engine's writer
//! thread (`engine::writer`): the API, the approvals file and retention send
//! it commands, so no two places write behind each other's back.

use imagegate_plumbing::clock::now_ms;
use redb::ReadableTable;

use super::*;
use crate::{
    model::SettleRecord,
    model::{Approval, Caveats, ContainerRecord, Violation},
};

/// The store's only writer. It reads too (through [`Store`]).
pub struct StoreWriter {
    pub(super) store: std::sync::Arc<Store>,
}

impl std::ops::Deref for StoreWriter {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl StoreWriter {
    /// Stores approvals from `source` and moves its generation to
    /// `generation` (never backwards), and its cluster set generation when
    /// given. One transaction: all or nothing.
    pub fn add_approvals_from(
        &self,
        source: &str,
        approvals: &[Approval],
        generation: u64,
        cluster_set_generation: Option<u64>,
        retention_ms: u64,
    ) -> Result<Received, StoreError> {
        let now = now_ms();
        let txn = self.db.begin_write().map_err(store_err)?;
        let held;
        let holds_cluster_set;
        let mut new = Vec::new();
        let mut caveat_changes = Vec::new();
        {
            let mut table = txn.open_table(APPROVALS).map_err(store_err)?;
            let mut caveats = txn.open_table(CAVEATS).map_err(store_err)?;
            let known = self.caveats.read().unwrap_or_else(|e| e.into_inner());
            for approval in approvals {
                let held: Option<Approval> = table
                    .get(approval.digest.as_str())
                    .map_err(store_err)?
                    .map(|v| decode(v.value()))
                    .transpose()?;
                let fresh = held.is_none();
                // Pushed again: the approval lives on (the record is
                // rewritten at most hourly).
                let write = match held {
                    None => Some(approval.clone()),
                    // A file's approvals never expire: a digest the file
                    // lists is the file's from now on.
                    Some(held)
                        if approval.source.starts_with("file:")
                            && !held.source.starts_with("file:") =>
                    {
                        Some(Approval {
                            source: approval.source.clone(),
                            refreshed_at_ms: now,
                            ..held
                        })
                    }
                    Some(held) if now.saturating_sub(held.last_pushed_ms()) >= REFRESH_EVERY_MS => {
                        Some(Approval {
                            refreshed_at_ms: now,
                            ..held
                        })
                    }
                    Some(_) => None,
                };
                if let Some(record) = write {
                    let bytes = serde_json::to_vec(&record).map_err(store_err)?;
                    table
                        .insert(approval.digest.as_str(), bytes.as_slice())
                        .map_err(store_err)?;
                }
                if fresh {
                    new.push(approval.digest.clone());
                }
                // A caveat holds until an approval without it arrives: one
                // verified approval of a digest is enough.
                let now = Caveats::of(approval);
                let had = known.get(&approval.digest).copied();
                let next = match (fresh, had) {
                    (true, _) => now.any().then_some(now),
                    (false, Some(_)) if !now.any() => None,
                    (false, had) => had,
                };
                if next != had {
                    match next {
                        Some(c) => {
                            let bytes = serde_json::to_vec(&c).map_err(store_err)?;
                            caveats
                                .insert(approval.digest.as_str(), bytes.as_slice())
                                .map_err(store_err)?;
                        }
                        None => {
                            caveats
                                .remove(approval.digest.as_str())
                                .map_err(store_err)?;
                        }
                    }
                    caveat_changes.push((approval.digest.clone(), next));
                }
            }
            let mut sources = txn.open_table(SOURCES).map_err(store_err)?;
            let mut state: SourceState = match sources.get(source).map_err(store_err)? {
                Some(value) => decode(value.value())?,
                None => SourceState::default(),
            };
            state.generation = state.generation.max(generation);
            state.last_sync_ms = now_ms();
            if cluster_set_generation.is_some() {
                state.cluster_set_generation = cluster_set_generation;
            }
            state.retention_ms = retention_ms;
            held = state.generation;
            holds_cluster_set = state.holds_cluster_set();
            let bytes = serde_json::to_vec(&state).map_err(store_err)?;
            sources
                .insert(source, bytes.as_slice())
                .map_err(store_err)?;
        }
        txn.commit().map_err(store_err)?;
        {
            let mut caveats = self.caveats.write().unwrap_or_else(|e| e.into_inner());
            for (digest, change) in caveat_changes {
                match change {
                    Some(c) => caveats.insert(digest, c),
                    None => caveats.remove(&digest),
                };
            }
        }
        let mut known = self.approved.write().unwrap_or_else(|e| e.into_inner());
        let added = new.len();
        for digest in &new {
            known.insert(digest);
        }
        Ok(Received {
            added,
            generation: held,
            holds_cluster_set,
        })
    }
    /// Stores approvals; returns how many digests were new. Idempotent.
    /// A digest already held from a webhook becomes the file's when a
    /// `file:` approval lists it, so retention never expires it.
    pub fn add_approvals(&self, approvals: &[Approval]) -> Result<usize, StoreError> {
        let mut new = Vec::new();
        let mut known_from_file = Vec::new();
        {
            let known = self.approved.read().unwrap_or_else(|e| e.into_inner());
            for approval in approvals {
                if !known.contains(approval.digest.as_str()) {
                    new.push(approval);
                } else if approval.source.starts_with("file:") {
                    known_from_file.push(approval);
                }
            }
        }
        if new.is_empty() && known_from_file.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write().map_err(store_err)?;
        {
            let mut table = txn.open_table(APPROVALS).map_err(store_err)?;
            for approval in &new {
                let bytes = serde_json::to_vec(approval).map_err(store_err)?;
                table
                    .insert(approval.digest.as_str(), bytes.as_slice())
                    .map_err(store_err)?;
            }
            for approval in known_from_file {
                let held: Option<Approval> = table
                    .get(approval.digest.as_str())
                    .map_err(store_err)?
                    .map(|v| decode(v.value()))
                    .transpose()?;
                if let Some(held) = held.filter(|h| !h.source.starts_with("file:")) {
                    let record = Approval {
                        source: approval.source.clone(),
                        ..held
                    };
                    let bytes = serde_json::to_vec(&record).map_err(store_err)?;
                    table
                        .insert(approval.digest.as_str(), bytes.as_slice())
                        .map_err(store_err)?;
                }
            }
        }
        txn.commit().map_err(store_err)?;
        let mut known = self.approved.write().unwrap_or_else(|e| e.into_inner());
        let mut added = 0;
        for approval in new {
            added += usize::from(known.insert(&approval.digest));
        }
        Ok(added)
    }
    pub fn put_settle_record(&self, record: &SettleRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(store_err)?;
        let txn = self.db.begin_write().map_err(store_err)?;
        {
            let mut table = txn.open_table(SETTLE).map_err(store_err)?;
            table
                .insert(SETTLE_KEY, bytes.as_slice())
                .map_err(store_err)?;
        }
        txn.commit().map_err(store_err)
    }
    /// Stores a container's record, keeping the counts by verdict.
    pub fn put_container(&self, record: &ContainerRecord) -> Result<(), StoreError> {
        self.put_containers(std::slice::from_ref(record))
    }
    /// Stores records in one transaction (one disk sync for all), keeping
    /// the counts by verdict.
    pub fn put_containers(&self, records: &[ContainerRecord]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(store_err)?;
        {
            let mut table = txn.open_table(CONTAINERS).map_err(store_err)?;
            let mut meta = txn.open_table(META).map_err(store_err)?;
            for record in records {
                let bytes = serde_json::to_vec(record).map_err(store_err)?;
                let before: Option<ContainerRecord> = table
                    .insert(record.key.as_str(), bytes.as_slice())
                    .map_err(store_err)?
                    .map(|old| decode(old.value()))
                    .transpose()?;
                if before.as_ref().map(|b| b.verdict) != Some(record.verdict) {
                    if let Some(before) = before {
                        add_to(&mut meta, &verdict_key(before.verdict), -1)?;
                    }
                    add_to(&mut meta, &verdict_key(record.verdict), 1)?;
                }
            }
        }
        txn.commit().map_err(store_err)
    }
    /// Marks the containers with these keys gone (their cgroups were
    /// removed) at `at_ms`, unless marked before.
    pub fn mark_gone(&self, keys: &[String], at_ms: u64) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(store_err)?;
        {
            let mut table = txn.open_table(CONTAINERS).map_err(store_err)?;
            for key in keys {
                let record: Option<ContainerRecord> = table
                    .get(key.as_str())
                    .map_err(store_err)?
                    .map(|v| decode(v.value()))
                    .transpose()?;
                if let Some(mut record) = record.filter(|r| r.gone_at_ms.is_none()) {
                    record.gone_at_ms = Some(at_ms);
                    let bytes = serde_json::to_vec(&record).map_err(store_err)?;
                    table
                        .insert(key.as_str(), bytes.as_slice())
                        .map_err(store_err)?;
                }
            }
        }
        txn.commit().map_err(store_err)
    }
    /// Appends a violation, numbering it; returns it as stored.
    pub fn add_violation(&self, mut violation: Violation) -> Result<Violation, StoreError> {
        let txn = self.db.begin_write().map_err(store_err)?;
        {
            let mut meta = txn.open_table(META).map_err(store_err)?;
            let seq = meta
                .get(VIOLATION_SEQ)
                .map_err(store_err)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            meta.insert(VIOLATION_SEQ, seq).map_err(store_err)?;
            violation.seq = seq;
            let bytes = serde_json::to_vec(&violation).map_err(store_err)?;
            let mut table = txn.open_table(VIOLATIONS).map_err(store_err)?;
            table.insert(seq, bytes.as_slice()).map_err(store_err)?;
        }
        txn.commit().map_err(store_err)?;
        Ok(violation)
    }
}
