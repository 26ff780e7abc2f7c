//! The agent's persistent state (redb: transactional, crash-safe, pure
//! Rust): approvals, the containers it has seen with their verdicts, and
//! the violations, so a restart keeps history and keeps enforcing.
//!
//! Approved digests are also held in memory for the exec path's lookups;
//! everything else is read from disk when asked for.
//!
//! Reads are on [`Store`], shared by everyone; writes are on the one
//! [`StoreWriter`] that [`Store::open`] hands out (`write`); retention's
//! scan and drop are in `prune`, paged lists in `pages`.

mod pages;
mod prune;
mod write;

pub use pages::Page;
use pages::page;
pub use prune::{PrunePlan, Pruned, Retention};
pub use write::StoreWriter;

use std::{
    path::Path,
    sync::{Arc, RwLock},
};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use imagegate_plumbing::clock::now_ms;

use crate::{
    digest::{Digest, DigestSet},
    model::SettleRecord,
    model::{Approval, Caveats, ContainerRecord, ContainerVerdict, Violation},
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
    /// Opens (or creates) the store at `path`, loads the approvals, and
    /// hands out its one writer.
    pub fn open(path: &Path) -> Result<(Arc<Self>, StoreWriter), StoreError> {
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
        let store = Arc::new(store);
        Ok((store.clone(), StoreWriter { store }))
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

    pub fn approvals(&self) -> Result<Vec<Approval>, StoreError> {
        self.all(APPROVALS)
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

    /// How many containers have `verdict` (a kept count: nothing is read).
    pub fn count_with_verdict(&self, verdict: ContainerVerdict) -> Result<u64, StoreError> {
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
        self.all(CONTAINERS)
    }

    pub fn violations(&self) -> Result<Vec<Violation>, StoreError> {
        self.all(VIOLATIONS)
    }

    /// Every record of `table`, in key order (for `print-state`; the API
    /// reads pages).
    fn all<K: redb::Key + 'static, T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<K, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(table).map_err(store_err)?;
        let mut out = Vec::with_capacity(table.len().map_err(store_err)? as usize);
        for row in table.iter().map_err(store_err)? {
            let (_, value) = row.map_err(store_err)?;
            out.push(decode(value.value())?);
        }
        Ok(out)
    }
}

fn verdict_key(verdict: ContainerVerdict) -> String {
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
mod tests;
