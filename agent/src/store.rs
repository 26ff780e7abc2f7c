//! The agent's persistent state (redb: transactional, crash-safe, pure
//! Rust): approvals, the containers it has seen with their verdicts, and
//! the violations, so a restart keeps history and keeps enforcing.
//!
//! Approved digests are also held in memory for the exec path's lookups;
//! everything else is read from disk when asked for.

use std::{
    path::Path,
    sync::RwLock,
    time::{SystemTime, UNIX_EPOCH},
};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{
    digest::{Digest, DigestSet},
    runtime::PodRef,
    settle::SettleRecord,
    verdict::VerdictKind,
};

/// Digest -> [`Approval`] (JSON).
const APPROVALS: TableDefinition<&str, &[u8]> = TableDefinition::new("approvals");
/// `namespace/id` -> [`ContainerRecord`] (JSON).
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
/// Sequence number -> [`Violation`] (JSON).
const VIOLATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("violations");
/// Counters and sequence numbers.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `identity/ledger` of a sender -> [`SourceState`] (JSON).
const SOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("sources");
/// Digest -> [`Caveats`] (JSON), for the approvals that have any.
const CAVEATS: TableDefinition<&str, &[u8]> = TableDefinition::new("caveats");
/// `state` -> [`SettleRecord`] (JSON): when enforce mode may kill.
const SETTLE: TableDefinition<&str, &[u8]> = TableDefinition::new("settle");
const SETTLE_KEY: &str = "state";

const VIOLATION_SEQ: &str = "violation_seq";
const STORE_CACHE_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the state store at {path} cannot be opened: {reason}; is another agent running with \
         the same --state-dir?"
    )]
    Open { path: String, reason: String },
    #[error("the state store failed: {0}")]
    Store(String),
    #[error("a stored record is unreadable: {0}")]
    Corrupt(String),
}

fn store_err<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Store(e.to_string())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One approved digest, with where the approval came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub digest: Digest,
    /// The reference admission approved, e.g. `registry.example/app:1.2`.
    #[serde(default)]
    pub reference: Option<String>,
    /// The Kubernetes namespace of the admitted object.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Who sent it: a webhook's identity, or `file:PATH`.
    #[serde(default)]
    pub source: String,
    /// When the agent stored it.
    #[serde(default)]
    pub received_at_ms: u64,
    /// The policy rule that allowed it (from a webhook).
    #[serde(default)]
    pub rule: Option<String>,
    /// When admission approved it (from a webhook; 0 if unknown).
    #[serde(default)]
    pub admitted_at_ms: u64,
    #[serde(default)]
    pub origin: Origin,
    /// The webhook took the digest as written, unconfirmed by the registry.
    #[serde(default)]
    pub unverified: bool,
    /// Admitted by breaking glass, not by a rule.
    #[serde(default)]
    pub break_glass: bool,
    /// After this, the approval admits no new container.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

/// What sets an approval apart, for verdicts to say: kept in memory only
/// for the few approvals that have any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caveats {
    /// The digest was not confirmed by the registry.
    #[serde(default)]
    pub unverified: bool,
    /// Admitted by breaking glass.
    #[serde(default)]
    pub break_glass: bool,
    /// After this (milliseconds since the Unix epoch), no new container.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

impl Caveats {
    fn of(approval: &Approval) -> Self {
        Self {
            unverified: approval.unverified,
            break_glass: approval.break_glass,
            expires_at_ms: approval.expires_at_ms,
        }
    }

    fn any(&self) -> bool {
        *self != Self::default()
    }
}

/// How an approval came about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Not said (older senders, approvals files).
    #[default]
    Unspecified,
    /// A review the apiserver sent.
    Admission,
    /// A pod that already ran when a webhook rebuilt the admitted set from
    /// the cluster.
    Adopted,
}

/// A container the agent has seen, with its latest verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// `containerd namespace/container id`, or `cgroup:PATH` when the
    /// container could not be identified.
    pub key: String,
    pub runtime_namespace: Option<String>,
    pub id: Option<String>,
    pub image: Option<String>,
    pub digest: Option<String>,
    pub platform_digest: Option<String>,
    pub pod: Option<PodRef>,
    pub cgroup: String,
    pub verdict: VerdictKind,
    pub reason: String,
    pub first_seen_ms: u64,
    pub decided_at_ms: u64,
}

/// A container that ran without approval (or could not be identified).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub seq: u64,
    pub at_ms: u64,
    pub container: String,
    pub pod: Option<PodRef>,
    pub image: Option<String>,
    pub digest: Option<String>,
    /// `never-admitted`, or `unknown` for a container that could not be
    /// identified (flagged, never passed silently).
    pub verdict: VerdictKind,
    pub reason: String,
    /// Enforce mode acted on it (processes killed, execs stopped).
    pub enforced: bool,
}

/// How far a sender of approvals has got with this agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    /// The sender's ledger generation the agent holds.
    pub generation: u64,
    pub last_sync_ms: u64,
    /// The generation at which the sender's ledger held the admitted set
    /// rebuilt from the cluster, once it said so.
    #[serde(default)]
    pub cluster_set_generation: Option<u64>,
}

impl SourceState {
    /// Whether the agent holds the sender's cluster set.
    pub fn holds_cluster_set(&self) -> bool {
        self.cluster_set_generation
            .is_some_and(|g| self.generation >= g)
    }
}

/// What storing a sender's approvals did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Digests new to the agent.
    pub added: usize,
    /// The sender's generation the agent now holds.
    pub generation: u64,
    /// Whether the agent now holds the sender's cluster set.
    pub holds_cluster_set: bool,
}

pub struct Store {
    db: Database,
    approved: RwLock<DigestSet>,
    caveats: RwLock<std::collections::HashMap<Digest, Caveats>>,
}

impl Store {
    /// Opens (or creates) the store at `path` and loads the approvals.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        // redb caches pages in memory up to its cache size (1 GiB by
        // default); the agent reads the store rarely, so a small cache
        // keeps it far below its memory budget.
        let db = Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(path)
            .map_err(|e| open_err(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        {
            txn.open_table(APPROVALS).map_err(store_err)?;
            txn.open_table(CONTAINERS).map_err(store_err)?;
            txn.open_table(VIOLATIONS).map_err(store_err)?;
            txn.open_table(META).map_err(store_err)?;
            txn.open_table(SOURCES).map_err(store_err)?;
            txn.open_table(SETTLE).map_err(store_err)?;
            txn.open_table(CAVEATS).map_err(store_err)?;
        }
        txn.commit().map_err(store_err)?;
        let store = Self {
            db,
            approved: RwLock::new(DigestSet::default()),
            caveats: RwLock::default(),
        };
        // Keys only: the records stay on disk until someone asks.
        let mut digests = DigestSet::default();
        {
            let txn = store.db.begin_read().map_err(store_err)?;
            let table = txn.open_table(APPROVALS).map_err(store_err)?;
            for row in table.iter().map_err(store_err)? {
                let (key, _) = row.map_err(store_err)?;
                if let Ok(digest) = Digest::parse(key.value()) {
                    digests.insert(&digest);
                }
            }
        }
        *store.approved.write().unwrap_or_else(|e| e.into_inner()) = digests;
        let mut caveats = std::collections::HashMap::new();
        {
            let txn = store.db.begin_read().map_err(store_err)?;
            let table = txn.open_table(CAVEATS).map_err(store_err)?;
            for row in table.iter().map_err(store_err)? {
                let (key, value) = row.map_err(store_err)?;
                if let Ok(digest) = Digest::parse(key.value()) {
                    caveats.insert(digest, decode(value.value())?);
                }
            }
        }
        *store.caveats.write().unwrap_or_else(|e| e.into_inner()) = caveats;
        Ok(store)
    }

    /// Whether `digest` was approved (in memory; the exec path's question).
    pub fn is_approved(&self, digest: &str) -> bool {
        self.approved
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(digest)
    }

    /// `Some` with what sets it apart when `digest` is approved now: an
    /// approval past its expiry admits nothing more.
    pub fn approved(&self, digest: &str) -> Option<Caveats> {
        if !self.is_approved(digest) {
            return None;
        }
        let digest = Digest::parse(digest).ok()?;
        let caveats = self
            .caveats
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .copied()
            .unwrap_or_default();
        match caveats.expires_at_ms {
            Some(at) if now_ms() >= at => None,
            _ => Some(caveats),
        }
    }

    pub fn approval_count(&self) -> usize {
        self.approved
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Stores approvals from `source` and moves its generation to
    /// `generation` (never backwards), and its cluster set generation when
    /// given. One transaction: all or nothing.
    pub fn add_approvals_from(
        &self,
        source: &str,
        approvals: &[Approval],
        generation: u64,
        cluster_set_generation: Option<u64>,
    ) -> Result<Received, StoreError> {
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
                let fresh = table
                    .get(approval.digest.as_str())
                    .map_err(store_err)?
                    .is_none();
                if fresh {
                    let bytes = serde_json::to_vec(approval).map_err(store_err)?;
                    table
                        .insert(approval.digest.as_str(), bytes.as_slice())
                        .map_err(store_err)?;
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

    /// When enforce mode may kill (see `settle`); `None` before the first
    /// start wrote it.
    pub fn settle_record(&self) -> Result<Option<SettleRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(SETTLE).map_err(store_err)?;
        match table.get(SETTLE_KEY).map_err(store_err)? {
            Some(value) => Ok(Some(decode(value.value())?)),
            None => Ok(None),
        }
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

    /// The generation of `source` the agent holds (0 if none).
    pub fn source_generation(&self, source: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(SOURCES).map_err(store_err)?;
        match table.get(source).map_err(store_err)? {
            Some(value) => Ok(decode::<SourceState>(value.value())?.generation),
            None => Ok(0),
        }
    }

    /// Every sender and how far it got.
    pub fn sources(&self) -> Result<Vec<(String, SourceState)>, StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(SOURCES).map_err(store_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(store_err)? {
            let (key, value) = row.map_err(store_err)?;
            out.push((key.value().to_string(), decode(value.value())?));
        }
        Ok(out)
    }

    /// Stores approvals; returns how many digests were new. Idempotent.
    pub fn add_approvals(&self, approvals: &[Approval]) -> Result<usize, StoreError> {
        let mut new = Vec::new();
        {
            let known = self.approved.read().unwrap_or_else(|e| e.into_inner());
            for approval in approvals {
                if !known.contains(approval.digest.as_str()) {
                    new.push(approval);
                }
            }
        }
        if new.is_empty() {
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
        }
        txn.commit().map_err(store_err)?;
        let mut known = self.approved.write().unwrap_or_else(|e| e.into_inner());
        let mut added = 0;
        for approval in new {
            added += usize::from(known.insert(&approval.digest));
        }
        Ok(added)
    }

    pub fn approvals(&self) -> Result<Vec<Approval>, StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(APPROVALS).map_err(store_err)?;
        let mut out = Vec::with_capacity(table.len().map_err(store_err)? as usize);
        for row in table.iter().map_err(store_err)? {
            let (_, value) = row.map_err(store_err)?;
            out.push(decode(value.value())?);
        }
        Ok(out)
    }

    /// One approval by digest (a point lookup).
    pub fn approval(&self, digest: &str) -> Result<Option<Approval>, StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(APPROVALS).map_err(store_err)?;
        match table.get(digest).map_err(store_err)? {
            Some(value) => Ok(Some(decode(value.value())?)),
            None => Ok(None),
        }
    }

    /// Approvals in digest order after `after`, those `keep` accepts, at
    /// most `limit`; and whether more follow. Reads only as far as needed.
    pub fn approvals_after(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&Approval) -> bool,
    ) -> Result<(Vec<Approval>, bool), StoreError> {
        use std::ops::Bound;
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(APPROVALS).map_err(store_err)?;
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for row in table
            .range::<&str>((start, Bound::Unbounded))
            .map_err(store_err)?
        {
            let (_, value) = row.map_err(store_err)?;
            let approval: Approval = decode(value.value())?;
            if keep(&approval) {
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(approval);
            }
        }
        Ok((out, false))
    }

    pub fn container(&self, key: &str) -> Result<Option<ContainerRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(CONTAINERS).map_err(store_err)?;
        match table.get(key).map_err(store_err)? {
            Some(value) => Ok(Some(decode(value.value())?)),
            None => Ok(None),
        }
    }

    pub fn put_container(&self, record: &ContainerRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(store_err)?;
        let txn = self.db.begin_write().map_err(store_err)?;
        {
            let mut table = txn.open_table(CONTAINERS).map_err(store_err)?;
            table
                .insert(record.key.as_str(), bytes.as_slice())
                .map_err(store_err)?;
        }
        txn.commit().map_err(store_err)
    }

    /// How many containers and violations are stored (the tables' own
    /// counts: nothing is decoded).
    pub fn counts(&self) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let containers = txn.open_table(CONTAINERS).map_err(store_err)?;
        let violations = txn.open_table(VIOLATIONS).map_err(store_err)?;
        Ok((
            containers.len().map_err(store_err)?,
            violations.len().map_err(store_err)?,
        ))
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(CONTAINERS).map_err(store_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(store_err)? {
            let (_, value) = row.map_err(store_err)?;
            out.push(decode(value.value())?);
        }
        Ok(out)
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

    pub fn violations(&self) -> Result<Vec<Violation>, StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(VIOLATIONS).map_err(store_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(store_err)? {
            let (_, value) = row.map_err(store_err)?;
            out.push(decode(value.value())?);
        }
        Ok(out)
    }
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    fn approval(n: u8) -> Approval {
        Approval {
            digest: digest(n),
            reference: Some(format!("registry.test/app:{n}")),
            namespace: Some("default".into()),
            source: "test".into(),
            received_at_ms: now_ms(),
            rule: None,
            admitted_at_ms: 0,
            origin: Origin::Admission,
            unverified: false,
            break_glass: false,
            expires_at_ms: None,
        }
    }

    #[test]
    fn approvals_are_idempotent_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.add_approvals(&[approval(1), approval(2)]).unwrap(), 2);
            assert_eq!(store.add_approvals(&[approval(2), approval(3)]).unwrap(), 1);
            assert!(store.is_approved(digest(3).as_str()));
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.approval_count(), 3);
        assert!(store.is_approved(digest(1).as_str()));
        assert!(!store.is_approved(digest(4).as_str()));
        assert!(!store.is_approved("sha256:not-a-digest"));
    }

    #[test]
    fn sources_keep_the_highest_generation_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path).unwrap();
            let r = store
                .add_approvals_from("webhook/a", &[approval(1), approval(2)], 7, None)
                .unwrap();
            assert_eq!((r.added, r.generation), (2, 7));
            assert!(!r.holds_cluster_set);
            // Another replica's ledger counts on its own.
            let r = store
                .add_approvals_from("webhook/b", &[approval(2), approval(3)], 3, Some(9))
                .unwrap();
            assert_eq!((r.added, r.generation), (1, 3));
            assert!(
                !r.holds_cluster_set,
                "told of its cluster set at 9, holds 3"
            );
            // An older push does not move a generation back.
            let r = store.add_approvals_from("webhook/a", &[], 5, None).unwrap();
            assert_eq!(r.generation, 7);
            let r = store.add_approvals_from("webhook/b", &[], 9, None).unwrap();
            assert!(r.holds_cluster_set, "reaches the generation it was told of");
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.source_generation("webhook/a").unwrap(), 7);
        assert_eq!(store.source_generation("nobody").unwrap(), 0);
        assert_eq!(store.sources().unwrap().len(), 2);
        assert_eq!(store.approval_count(), 3);
    }

    #[test]
    fn an_unverified_approval_says_so_until_a_verified_one_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let unverified = Approval {
            unverified: true,
            ..approval(1)
        };
        {
            let store = Store::open(&path).unwrap();
            store
                .add_approvals_from("w/a", &[unverified.clone(), approval(2)], 2, None)
                .unwrap();
            assert!(store.approved(digest(1).as_str()).unwrap().unverified);
            assert!(!store.approved(digest(2).as_str()).unwrap().unverified);
            assert_eq!(store.approved(digest(3).as_str()), None);
        }
        // Kept across a restart...
        let store = Store::open(&path).unwrap();
        assert!(store.approved(digest(1).as_str()).unwrap().unverified);
        // ...until the registry confirms it in another approval.
        store
            .add_approvals_from("w/b", &[approval(1)], 1, None)
            .unwrap();
        assert!(!store.approved(digest(1).as_str()).unwrap().unverified);
        drop(store);
        let store = Store::open(&path).unwrap();
        assert!(!store.approved(digest(1).as_str()).unwrap().unverified);
    }

    #[test]
    fn a_break_glass_approval_ends_when_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let glass = |n, expires_at_ms| Approval {
            break_glass: true,
            expires_at_ms,
            ..approval(n)
        };
        store
            .add_approvals_from(
                "w/a",
                &[glass(1, Some(now_ms() + 60_000)), glass(2, Some(1))],
                2,
                None,
            )
            .unwrap();
        assert!(store.approved(digest(1).as_str()).unwrap().break_glass);
        assert_eq!(store.approved(digest(2).as_str()), None, "expired");
        // An approval by a rule outlives it.
        store
            .add_approvals_from("w/b", &[approval(2)], 1, None)
            .unwrap();
        assert_eq!(store.approved(digest(2).as_str()), Some(Caveats::default()));
    }

    #[test]
    fn violations_are_numbered_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let violation = Violation {
            seq: 0,
            at_ms: 1,
            container: "default/x".into(),
            pod: None,
            image: Some("registry.test/x:1".into()),
            digest: Some(digest(9).to_string()),
            verdict: VerdictKind::NeverAdmitted,
            reason: "never admitted".into(),
            enforced: false,
        };
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.add_violation(violation.clone()).unwrap().seq, 1);
            assert_eq!(store.add_violation(violation.clone()).unwrap().seq, 2);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.add_violation(violation).unwrap().seq, 3);
        let all = store.violations().unwrap();
        assert_eq!(all.iter().map(|v| v.seq).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let _first = Store::open(&path).unwrap();
        let err = Store::open(&path).err().expect("second open refused");
        assert!(err.to_string().contains("--state-dir"), "{err}");
    }
}
