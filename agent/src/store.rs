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
/// Containers by verdict, `containers/<verdict>`, kept with every write.
const VERDICT_COUNT: &str = "containers/";
/// Set once the verdict counts were computed for an existing store.
const COUNTS_KEPT: &str = "counts_kept";
const CONTAINERS_PRUNED: &str = "containers_pruned";
const VIOLATIONS_PRUNED: &str = "violations_pruned";
const APPROVALS_EXPIRED: &str = "approvals_expired";
/// Records one list call reads at most: a filter that matches little gives
/// a short page with a token to go on, never a walk of the whole table.
pub const MAX_SCAN: usize = 10_000;
/// Re-pushes of an approval rewrite its record at most this often.
const REFRESH_EVERY_MS: u64 = 3_600_000;
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
    /// The last time a sender pushed it (0: when received): approvals no
    /// sender pushes again within its ledger's retention expire.
    #[serde(default)]
    pub refreshed_at_ms: u64,
}

impl Approval {
    /// When a sender last pushed it.
    pub fn last_pushed_ms(&self) -> u64 {
        self.refreshed_at_ms.max(self.received_at_ms)
    }
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
    /// When the agent found the container gone (its cgroup removed).
    #[serde(default)]
    pub gone_at_ms: Option<u64>,
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
    /// How long the sender's ledger keeps records not admitted again (0:
    /// not said).
    #[serde(default)]
    pub retention_ms: u64,
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
            // A store from before the counts were kept: count once.
            let mut meta = txn.open_table(META).map_err(store_err)?;
            if meta.get(COUNTS_KEPT).map_err(store_err)?.is_none() {
                let containers = txn.open_table(CONTAINERS).map_err(store_err)?;
                let mut counts = std::collections::HashMap::<String, u64>::new();
                for row in containers.iter().map_err(store_err)? {
                    let (_, value) = row.map_err(store_err)?;
                    let record: ContainerRecord = decode(value.value())?;
                    *counts.entry(verdict_key(record.verdict)).or_default() += 1;
                }
                for (key, count) in counts {
                    meta.insert(key.as_str(), count).map_err(store_err)?;
                }
                meta.insert(COUNTS_KEPT, 1).map_err(store_err)?;
            }
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
    /// most `limit`, reading at most [`MAX_SCAN`] records.
    pub fn approvals_after(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&Approval) -> bool,
    ) -> Result<Page<Approval, String>, StoreError> {
        use std::ops::Bound;
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(APPROVALS).map_err(store_err)?;
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let rows = table
            .range::<&str>((start, Bound::Unbounded))
            .map_err(store_err)?
            .map(|row| {
                let (key, value) = row.map_err(store_err)?;
                Ok((key.value().to_string(), decode(value.value())?))
            });
        page(rows, limit, keep)
    }

    pub fn container(&self, key: &str) -> Result<Option<ContainerRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(CONTAINERS).map_err(store_err)?;
        match table.get(key).map_err(store_err)? {
            Some(value) => Ok(Some(decode(value.value())?)),
            None => Ok(None),
        }
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

    /// How many containers have `verdict` (a kept count: nothing is read).
    pub fn count_with_verdict(&self, verdict: VerdictKind) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let meta = txn.open_table(META).map_err(store_err)?;
        Ok(meta
            .get(verdict_key(verdict).as_str())
            .map_err(store_err)?
            .map_or(0, |v| v.value()))
    }

    /// Records dropped by retention so far: containers, violations,
    /// approvals.
    pub fn pruned(&self) -> Result<(u64, u64, u64), StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let meta = txn.open_table(META).map_err(store_err)?;
        let get = |key: &str| -> Result<u64, StoreError> {
            Ok(meta.get(key).map_err(store_err)?.map_or(0, |v| v.value()))
        };
        Ok((
            get(CONTAINERS_PRUNED)?,
            get(VIOLATIONS_PRUNED)?,
            get(APPROVALS_EXPIRED)?,
        ))
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

/// One page of a list, and where the next starts (`None`: nothing more).
#[derive(Debug)]
pub struct Page<T, K> {
    pub items: Vec<T>,
    pub next: Option<K>,
}

/// How long, and how many, records are kept.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Gone containers and violations older than this are dropped.
    pub records_ms: u64,
    /// At most this many container records (the longest gone dropped
    /// first; running containers are never dropped) and violations (the
    /// oldest dropped first).
    pub max_containers: u64,
    pub max_violations: u64,
}

/// What one pass of retention dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub containers: u64,
    pub violations: u64,
    /// Approvals expired: no sender pushed them again within its ledger's
    /// retention, and no running container uses them.
    pub approvals: Vec<Digest>,
}

impl Store {
    /// Container records in key order after `after`, those `keep`
    /// accepts, at most `limit`, reading at most [`MAX_SCAN`] records;
    /// only keys starting with `prefix`.
    pub fn containers_page(
        &self,
        after: Option<&str>,
        prefix: &str,
        limit: usize,
        keep: impl Fn(&ContainerRecord) -> bool,
    ) -> Result<Page<ContainerRecord, String>, StoreError> {
        use std::ops::Bound;
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(CONTAINERS).map_err(store_err)?;
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let rows = table
            .range::<&str>((start, Bound::Unbounded))
            .map_err(store_err)?
            .map(|row| {
                let (key, value) = row.map_err(store_err)?;
                Ok((key.value().to_string(), value))
            })
            // Keys are in order: the first without the prefix ends it.
            .take_while(|row| match row {
                Ok((key, _)) => key.starts_with(prefix),
                Err(_) => true,
            })
            .map(|row| row.and_then(|(key, value)| Ok((key, decode(value.value())?))));
        page(rows, limit, keep)
    }

    /// Violations in order after sequence number `after`, those `keep`
    /// accepts, at most `limit`, reading at most [`MAX_SCAN`].
    pub fn violations_page(
        &self,
        after: u64,
        limit: usize,
        keep: impl Fn(&Violation) -> bool,
    ) -> Result<Page<Violation, u64>, StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(VIOLATIONS).map_err(store_err)?;
        let rows = table
            .range(after.saturating_add(1)..)
            .map_err(store_err)?
            .map(|row| {
                let (seq, value) = row.map_err(store_err)?;
                Ok((seq.value(), decode(value.value())?))
            });
        page(rows, limit, keep)
    }

    /// Drops what retention says to: gone containers and violations past
    /// `retention`, or over its counts; approvals no sender pushed again
    /// within the longest retention senders gave (approvals from a file
    /// never expire), unless a running container uses them. A container
    /// record whose container is not `alive` (its cgroup is gone) and not
    /// yet marked gone is marked now.
    ///
    /// Two steps, so the engine's writes never wait on a scan: what to drop
    /// is found in a read transaction (redb readers do not block the
    /// writer), then one short write transaction drops it, checking each
    /// record again (an approval pushed again meanwhile is kept).
    pub fn prune(
        &self,
        now: u64,
        retention: &Retention,
        alive: impl Fn(&ContainerRecord) -> bool,
    ) -> Result<Pruned, StoreError> {
        let plan = self.plan_prune(now, retention, alive)?;
        self.apply_prune(now, &plan)
    }

    /// What a pass would drop, read without blocking writers.
    fn plan_prune(
        &self,
        now: u64,
        retention: &Retention,
        alive: impl Fn(&ContainerRecord) -> bool,
    ) -> Result<PrunePlan, StoreError> {
        let cutoff = now.saturating_sub(retention.records_ms);
        let mut plan = PrunePlan::default();
        let txn = self.db.begin_read().map_err(store_err)?;

        // Containers: note the gone, and the digests the running use.
        let containers = txn.open_table(CONTAINERS).map_err(store_err)?;
        let mut in_use = DigestSet::default();
        let mut gone: Vec<(u64, String)> = Vec::new();
        for row in containers.iter().map_err(store_err)? {
            let (key, value) = row.map_err(store_err)?;
            let record: ContainerRecord = decode(value.value())?;
            let gone_at = match record.gone_at_ms {
                Some(at) => Some(at),
                None if !alive(&record) => {
                    plan.newly_gone.push(record.key.clone());
                    Some(now)
                }
                None => None,
            };
            match gone_at {
                Some(at) => gone.push((at, key.value().to_string())),
                None => {
                    for digest in [&record.digest, &record.platform_digest]
                        .into_iter()
                        .flatten()
                    {
                        if let Ok(digest) = Digest::parse(digest) {
                            in_use.insert(&digest);
                        }
                    }
                }
            }
        }
        // The longest gone first; past the retention, or over the count.
        gone.sort();
        let over = containers
            .len()
            .map_err(store_err)?
            .saturating_sub(retention.max_containers);
        for (i, (at, key)) in gone.into_iter().enumerate() {
            if at >= cutoff && (i as u64) >= over {
                break;
            }
            plan.containers.push(key);
        }

        // Violations: the oldest first.
        let violations = txn.open_table(VIOLATIONS).map_err(store_err)?;
        let over = violations
            .len()
            .map_err(store_err)?
            .saturating_sub(retention.max_violations);
        for (i, row) in violations.iter().map_err(store_err)?.enumerate() {
            let (seq, value) = row.map_err(store_err)?;
            let at = decode::<Violation>(value.value())?.at_ms;
            if at >= cutoff && (i as u64) >= over {
                break;
            }
            plan.violations.push(seq.value());
        }

        // Approvals: after the longest retention any sender gave.
        let sources = txn.open_table(SOURCES).map_err(store_err)?;
        let mut longest = 0u64;
        for row in sources.iter().map_err(store_err)? {
            let (_, value) = row.map_err(store_err)?;
            longest = longest.max(decode::<SourceState>(value.value())?.retention_ms);
        }
        if longest > 0 {
            plan.expire_before = now.saturating_sub(longest);
            let approvals = txn.open_table(APPROVALS).map_err(store_err)?;
            for row in approvals.iter().map_err(store_err)? {
                let (_, value) = row.map_err(store_err)?;
                let approval: Approval = decode(value.value())?;
                if expires(&approval, plan.expire_before)
                    && !in_use.contains(approval.digest.as_str())
                {
                    plan.approvals.push(approval.digest);
                }
            }
        }
        Ok(plan)
    }

    /// Drops what `plan` found, each record checked again; one short write
    /// transaction.
    fn apply_prune(&self, now: u64, plan: &PrunePlan) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        let txn = self.db.begin_write().map_err(store_err)?;
        {
            let mut containers = txn.open_table(CONTAINERS).map_err(store_err)?;
            let mut meta = txn.open_table(META).map_err(store_err)?;
            let read = |table: &redb::Table<'_, &'static str, &'static [u8]>, key: &str| {
                table
                    .get(key)
                    .map_err(store_err)?
                    .map(|v| decode::<ContainerRecord>(v.value()))
                    .transpose()
            };
            for key in &plan.newly_gone {
                if let Some(mut record) = read(&containers, key)?.filter(|r| r.gone_at_ms.is_none())
                {
                    record.gone_at_ms = Some(now);
                    let bytes = serde_json::to_vec(&record).map_err(store_err)?;
                    containers
                        .insert(key.as_str(), bytes.as_slice())
                        .map_err(store_err)?;
                }
            }
            for key in &plan.containers {
                // Only what is still gone (a key reused by a new container
                // since the plan is kept).
                if let Some(record) = read(&containers, key)?.filter(|r| r.gone_at_ms.is_some()) {
                    containers.remove(key.as_str()).map_err(store_err)?;
                    add_to(&mut meta, &verdict_key(record.verdict), -1)?;
                    pruned.containers += 1;
                }
            }
            let mut violations = txn.open_table(VIOLATIONS).map_err(store_err)?;
            for seq in &plan.violations {
                if violations.remove(*seq).map_err(store_err)?.is_some() {
                    pruned.violations += 1;
                }
            }
            let mut approvals = txn.open_table(APPROVALS).map_err(store_err)?;
            let mut caveats = txn.open_table(CAVEATS).map_err(store_err)?;
            for digest in &plan.approvals {
                let still_expired = approvals
                    .get(digest.as_str())
                    .map_err(store_err)?
                    .map(|v| decode::<Approval>(v.value()))
                    .transpose()?
                    .is_some_and(|a| expires(&a, plan.expire_before));
                if still_expired {
                    approvals.remove(digest.as_str()).map_err(store_err)?;
                    caveats.remove(digest.as_str()).map_err(store_err)?;
                    pruned.approvals.push(digest.clone());
                }
            }
            add_to(&mut meta, CONTAINERS_PRUNED, pruned.containers as i64)?;
            add_to(&mut meta, VIOLATIONS_PRUNED, pruned.violations as i64)?;
            add_to(&mut meta, APPROVALS_EXPIRED, pruned.approvals.len() as i64)?;
        }
        txn.commit().map_err(store_err)?;
        if !pruned.approvals.is_empty() {
            let mut approved = self.approved.write().unwrap_or_else(|e| e.into_inner());
            let mut caveats = self.caveats.write().unwrap_or_else(|e| e.into_inner());
            for digest in &pruned.approvals {
                approved.remove(digest);
                caveats.remove(digest);
            }
        }
        Ok(pruned)
    }
}

/// What one retention pass found to drop.
#[derive(Debug, Default)]
struct PrunePlan {
    /// Containers whose cgroup is gone, to mark gone now.
    newly_gone: Vec<String>,
    /// Gone containers to drop.
    containers: Vec<String>,
    violations: Vec<u64>,
    approvals: Vec<Digest>,
    /// Approvals last pushed before this expire.
    expire_before: u64,
}

/// Whether `approval` expires: no sender pushed it since `expire_before`,
/// and no file lists it.
fn expires(approval: &Approval, expire_before: u64) -> bool {
    !approval.source.starts_with("file:") && approval.last_pushed_ms() < expire_before
}

/// One page of `rows` (key and record, in key order): the records `keep`
/// accepts, at most `limit`, reading at most [`MAX_SCAN`]; when more
/// follow, the next page starts after the last key read.
fn page<K, T>(
    rows: impl Iterator<Item = Result<(K, T), StoreError>>,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<Page<T, K>, StoreError> {
    let mut items = Vec::new();
    let mut last_read = None;
    for (read, row) in rows.enumerate() {
        let (key, item) = row?;
        if items.len() >= limit.max(1) || read == MAX_SCAN {
            return Ok(Page {
                items,
                next: last_read,
            });
        }
        last_read = Some(key);
        if keep(&item) {
            items.push(item);
        }
    }
    Ok(Page { items, next: None })
}

fn verdict_key(verdict: VerdictKind) -> String {
    format!("{VERDICT_COUNT}{}", verdict.as_str())
}

/// Adds `delta` to the counter `key` (never below zero).
fn add_to(
    meta: &mut redb::Table<'_, &'static str, u64>,
    key: &str,
    delta: i64,
) -> Result<(), StoreError> {
    let now = meta.get(key).map_err(store_err)?.map_or(0, |v| v.value());
    let next = now.saturating_add_signed(delta);
    meta.insert(key, next).map_err(store_err)?;
    Ok(())
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
            refreshed_at_ms: 0,
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
                .add_approvals_from("webhook/a", &[approval(1), approval(2)], 7, None, 0)
                .unwrap();
            assert_eq!((r.added, r.generation), (2, 7));
            assert!(!r.holds_cluster_set);
            // Another replica's ledger counts on its own.
            let r = store
                .add_approvals_from("webhook/b", &[approval(2), approval(3)], 3, Some(9), 0)
                .unwrap();
            assert_eq!((r.added, r.generation), (1, 3));
            assert!(
                !r.holds_cluster_set,
                "told of its cluster set at 9, holds 3"
            );
            // An older push does not move a generation back.
            let r = store
                .add_approvals_from("webhook/a", &[], 5, None, 0)
                .unwrap();
            assert_eq!(r.generation, 7);
            let r = store
                .add_approvals_from("webhook/b", &[], 9, None, 0)
                .unwrap();
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
                .add_approvals_from("w/a", &[unverified.clone(), approval(2)], 2, None, 0)
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
            .add_approvals_from("w/b", &[approval(1)], 1, None, 0)
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
                0,
            )
            .unwrap();
        assert!(store.approved(digest(1).as_str()).unwrap().break_glass);
        assert_eq!(store.approved(digest(2).as_str()), None, "expired");
        // An approval by a rule outlives it.
        store
            .add_approvals_from("w/b", &[approval(2)], 1, None, 0)
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

    fn container(key: &str, cgroup: &str, verdict: VerdictKind, d: Option<u8>) -> ContainerRecord {
        ContainerRecord {
            key: key.into(),
            runtime_namespace: Some("k8s.io".into()),
            id: Some(key.into()),
            image: None,
            digest: d.map(|n| digest(n).to_string()),
            platform_digest: None,
            pod: None,
            cgroup: cgroup.into(),
            verdict,
            reason: String::new(),
            first_seen_ms: 1,
            decided_at_ms: 1,
            gone_at_ms: None,
        }
    }

    const DAY: u64 = 86_400_000;

    #[test]
    fn retention_drops_gone_containers_never_running_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        for (key, verdict) in [
            ("running", VerdictKind::Admitted),
            ("long-gone", VerdictKind::NeverAdmitted),
            ("just-gone", VerdictKind::NeverAdmitted),
        ] {
            store
                .put_container(&container(key, &format!("/{key}"), verdict, None))
                .unwrap();
        }
        assert_eq!(
            store
                .count_with_verdict(VerdictKind::NeverAdmitted)
                .unwrap(),
            2
        );
        let now = now_ms();
        store
            .mark_gone(&["long-gone".into()], now - 8 * DAY)
            .unwrap();
        let keep = Retention {
            records_ms: 7 * DAY,
            max_containers: 100,
            max_violations: 100,
        };
        // "just-gone"'s cgroup is gone: marked now, kept for the retention.
        let pruned = store.prune(now, &keep, |c| c.cgroup == "/running").unwrap();
        assert_eq!(pruned.containers, 1, "{pruned:?}");
        let left = store.containers_page(None, "", 10, |_| true).unwrap().items;
        let keys: Vec<&str> = left.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["just-gone", "running"]);
        assert_eq!(left[0].gone_at_ms, Some(now));
        assert_eq!(left[1].gone_at_ms, None);
        assert_eq!(
            store
                .count_with_verdict(VerdictKind::NeverAdmitted)
                .unwrap(),
            1
        );
        assert_eq!(store.count_with_verdict(VerdictKind::Admitted).unwrap(), 1);

        // Over the count: gone records go, running ones never do.
        let tight = Retention {
            max_containers: 0,
            ..keep
        };
        let pruned = store
            .prune(now, &tight, |c| c.cgroup == "/running")
            .unwrap();
        assert_eq!(pruned.containers, 1);
        let left = store.containers_page(None, "", 10, |_| true).unwrap().items;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].key, "running");
        assert_eq!(store.pruned().unwrap().0, 2, "counted across passes");
    }

    #[test]
    fn retention_drops_the_oldest_violations_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let now = now_ms();
        for at_ms in [now - 9 * DAY, now - 3, now - 2, now - 1] {
            store
                .add_violation(Violation {
                    seq: 0,
                    at_ms,
                    container: "default/x".into(),
                    pod: None,
                    image: None,
                    digest: None,
                    verdict: VerdictKind::NeverAdmitted,
                    reason: "never admitted".into(),
                    enforced: false,
                })
                .unwrap();
        }
        let keep = Retention {
            records_ms: 7 * DAY,
            max_containers: 100,
            max_violations: 2,
        };
        let pruned = store.prune(now, &keep, |_| true).unwrap();
        assert_eq!(pruned.violations, 2, "one too old, one over the count");
        let left = store.violations_page(0, 10, |_| true).unwrap().items;
        let ats: Vec<u64> = left.iter().map(|v| v.at_ms).collect();
        assert_eq!(ats, [now - 2, now - 1]);
    }

    #[test]
    fn approvals_expire_after_the_senders_retention_unless_running_or_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let retention = 30 * DAY;
        store
            .add_approvals_from(
                "w/a",
                &[approval(1), approval(2), approval(3)],
                3,
                None,
                retention,
            )
            .unwrap();
        // 3 is also listed in the approvals file: the file's from now on.
        store
            .add_approvals(&[Approval {
                source: "file:/etc/approvals".into(),
                ..approval(3)
            }])
            .unwrap();
        store
            .put_container(&container(
                "uses-2",
                "/uses-2",
                VerdictKind::Admitted,
                Some(2),
            ))
            .unwrap();
        let keep = Retention {
            records_ms: 7 * DAY,
            max_containers: 100,
            max_violations: 100,
        };
        let now = now_ms();
        // Inside the retention: nothing expires.
        assert_eq!(
            store.prune(now + DAY, &keep, |_| true).unwrap(),
            Pruned::default()
        );
        let pruned = store.prune(now + retention + DAY, &keep, |_| true).unwrap();
        assert_eq!(pruned.approvals, [digest(1)]);
        assert!(
            !store.is_approved(digest(1).as_str()),
            "gone from memory too"
        );
        assert!(
            store.is_approved(digest(2).as_str()),
            "a running container uses it"
        );
        assert!(store.is_approved(digest(3).as_str()), "a file's approval");
        assert_eq!(store.approval_count(), 2);
        // Once the container is gone, its digest expires too.
        let pruned = store
            .prune(now + retention + 2 * DAY, &keep, |_| false)
            .unwrap();
        assert_eq!(pruned.approvals, [digest(2)]);
        // A reopened store agrees.
        drop(store);
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        assert_eq!(store.approval_count(), 1);
        assert_eq!(store.pruned().unwrap().2, 2);
    }

    #[test]
    fn without_a_sender_retention_approvals_never_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        store
            .add_approvals_from("w/old", &[approval(1)], 1, None, 0)
            .unwrap();
        let keep = Retention {
            records_ms: DAY,
            max_containers: 10,
            max_violations: 10,
        };
        let pruned = store.prune(now_ms() + 3650 * DAY, &keep, |_| true).unwrap();
        assert!(pruned.approvals.is_empty());
        assert!(store.is_approved(digest(1).as_str()));
    }

    #[test]
    fn pages_follow_their_tokens_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        for n in 0..7u8 {
            let verdict = if n % 2 == 0 {
                VerdictKind::Admitted
            } else {
                VerdictKind::NeverAdmitted
            };
            store
                .put_container(&container(&format!("ns/c{n}"), "/x", verdict, None))
                .unwrap();
        }
        store
            .put_container(&container("other/c", "/x", VerdictKind::Admitted, None))
            .unwrap();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .containers_page(after.as_deref(), "ns/", 2, |c| {
                    c.verdict == VerdictKind::Admitted
                })
                .unwrap();
            seen.extend(page.items.into_iter().map(|c| c.key));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, ["ns/c0", "ns/c2", "ns/c4", "ns/c6"]);
        // A verdict that changes moves between counts.
        assert_eq!(store.count_with_verdict(VerdictKind::Admitted).unwrap(), 5);
        store
            .put_container(&container("ns/c1", "/x", VerdictKind::Admitted, None))
            .unwrap();
        assert_eq!(store.count_with_verdict(VerdictKind::Admitted).unwrap(), 6);
        assert_eq!(
            store
                .count_with_verdict(VerdictKind::NeverAdmitted)
                .unwrap(),
            2
        );
    }

    #[test]
    fn a_page_reads_at_most_max_scan_records() {
        let rows = || (0..25_000u64).map(|n| Ok((n, n)));
        // A filter that matches nothing: a short (empty) page that says
        // where to go on from, after MAX_SCAN reads.
        let page_of_none = page(rows(), 100, |_| false).unwrap();
        assert!(page_of_none.items.is_empty());
        assert_eq!(page_of_none.next, Some(MAX_SCAN as u64 - 1));
        // A full page stops at its limit.
        let full = page(rows(), 3, |n| n % 2 == 0).unwrap();
        assert_eq!(full.items, [0, 2, 4]);
        assert_eq!(full.next, Some(4));
        // The last page says nothing follows.
        let last = page((0..5u64).map(|n| Ok((n, n))), 10, |_| true).unwrap();
        assert_eq!((last.items.len(), last.next), (5, None));
    }

    #[test]
    fn what_changed_between_the_scan_and_the_drop_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let now = now_ms();
        store
            .put_container(&container(
                "k8s.io/x",
                "/x",
                VerdictKind::NeverAdmitted,
                None,
            ))
            .unwrap();
        store
            .mark_gone(&["k8s.io/x".into()], now - 8 * DAY)
            .unwrap();
        let keep = Retention {
            records_ms: 7 * DAY,
            max_containers: 100,
            max_violations: 100,
        };
        let plan = store.plan_prune(now, &keep, |_| true).unwrap();
        assert_eq!(plan.containers, ["k8s.io/x"]);
        // The key is a running container again before the drop.
        store
            .put_container(&container("k8s.io/x", "/x", VerdictKind::Admitted, None))
            .unwrap();
        let pruned = store.apply_prune(now, &plan).unwrap();
        assert_eq!(pruned.containers, 0);
        let kept = store.container("k8s.io/x").unwrap().expect("kept");
        assert_eq!(
            (kept.verdict, kept.gone_at_ms),
            (VerdictKind::Admitted, None)
        );
        assert_eq!(store.count_with_verdict(VerdictKind::Admitted).unwrap(), 1);
    }
}
