//! The ledger: every admitted image's digests, with who and what admitted
//! them, in an embedded store (redb: transactional, crash-safe, pure Rust).
//! It is what the webhook pushes to node agents: [`Ledger::since`] gives the
//! approvals after a generation, [`Ledger::all`] every one.
//!
//! One record per digest (an index's and each platform manifest's share a
//! record under the index digest). Recording a digest again refreshes it:
//! a new generation and time, once the record is older than the refresh
//! interval or tells agents something else. Records unused for the retention period are
//! dropped, and the store keeps at most `max_entries`, dropping the least
//! recently admitted first.
//!
//! Over 500 lines with its unit tests (the module itself is about 420).

use std::{
    borrow::Cow,
    collections::HashMap,
    path::Path,
    sync::{Mutex, RwLock},
    time::{Duration, Instant},
};

use imagegate_proto::{digest::Digest, platform::Child};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::review::Api;

mod recent_writes;

use recent_writes::RecentWrites;

/// Digest -> record (JSON).
const APPROVALS: TableDefinition<&str, &[u8]> = TableDefinition::new("approvals");
/// Generation -> digest: the order in which records were (re)written.
const BY_GENERATION: TableDefinition<u64, &str> = TableDefinition::new("by_generation");
/// "generation" -> the last generation handed out; "cluster_set" -> the
/// generation at which the ledger held the admitted set rebuilt from the
/// cluster (absent until this start's rebuild finished).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CLUSTER_SET: &str = "cluster_set";
/// "id" -> this ledger's random id: generations count within one ledger,
/// so agents keep them per ledger (each webhook replica has its own).
const IDENTITY: TableDefinition<&str, &str> = TableDefinition::new("identity");

/// A digest recorded within this window is not written again: it is on
/// disk already, and a fsync per admission of a popular image would be the
/// webhook's bottleneck.
const REFRESH_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the ledger at {path} cannot be opened: {reason}")]
    Open { path: String, reason: String },
    #[error("the ledger failed: {0}")]
    Store(String),
}

fn store<E: std::fmt::Display>(e: E) -> LedgerError {
    LedgerError::Store(e.to_string())
}

/// What admission approved, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The digest the reference resolved to (an index or a manifest).
    /// Checked: what the agent accepts.
    pub digest: Digest,
    /// For an index, the manifests it lists, with their platforms (a node
    /// may report its own platform's).
    #[serde(default)]
    pub children: Vec<Child>,
    /// The registry confirmed the repository serves `digest`; false when a
    /// policy took a written digest as given (`verifyDigest: false`).
    #[serde(default = "verified_by_default")]
    pub verified: bool,
    /// Admitted by breaking glass, not by a rule.
    #[serde(default)]
    pub break_glass: bool,
    /// When nodes stop admitting new containers by this approval
    /// (milliseconds since the Unix epoch; break-glass with a TTL).
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// Normalised reference, e.g. `docker.io/library/nginx:1.25`.
    pub reference: String,
    pub namespace: String,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub user: Option<String>,
    /// The rule that allowed it.
    pub rule: String,
    /// `ImageReview` or `AdmissionReview`.
    #[serde(with = "api_name")]
    pub api: Api,
    /// A review, or a pod found running when the admitted set was rebuilt
    /// from the cluster.
    #[serde(default)]
    pub origin: Origin,
    /// When it was (last) admitted, milliseconds since the Unix epoch.
    pub admitted_at_ms: u64,
    /// Set by the ledger: the generation of the write that stored it.
    #[serde(default)]
    pub generation: u64,
    /// Who signed it, per signature or attestation requirement of its rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<crate::signature::Signer>,
}

fn verified_by_default() -> bool {
    true
}

/// How an approval came about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// A review the apiserver sent.
    #[default]
    Admission,
    /// A pod that already ran when the webhook rebuilt the admitted set
    /// from the cluster.
    Adopted,
}

/// What a record tells agents besides its digest and when it was admitted:
/// a record that says the same need not be written again soon. Not its
/// origin, which agents only show: the rebuild from the cluster at each
/// start finds every image in use, and writing each admitted one again as
/// adopted pushed every image to every agent after every restart.
/// Borrowed to compare (an admission's filter clones nothing), owned to
/// keep.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Effect<'a> {
    verified: bool,
    break_glass: bool,
    expires_at_ms: Option<u64>,
    children: Cow<'a, [Child]>,
    signers: Cow<'a, [crate::signature::Signer]>,
}

impl<'a> Effect<'a> {
    fn of(approval: &'a Approval) -> Self {
        Self {
            verified: approval.verified,
            break_glass: approval.break_glass,
            expires_at_ms: approval.expires_at_ms,
            children: Cow::Borrowed(&approval.children),
            signers: Cow::Borrowed(&approval.signers),
        }
    }

    fn into_owned(self) -> Effect<'static> {
        Effect {
            children: Cow::Owned(self.children.into_owned()),
            signers: Cow::Owned(self.signers.into_owned()),
            ..self
        }
    }
}

/// A change to the store's order of records, for [`RecentWrites`].
enum Change {
    Removed(u64),
    Written(Box<Approval>),
}

/// The ledger's page cache.
const LEDGER_CACHE_BYTES: usize = 4 << 20;

pub struct Ledger {
    db: Database,
    id: String,
    /// The generation after the last write, for whoever pushes to agents.
    generation_tx: tokio::sync::watch::Sender<u64>,
    retention: Duration,
    max_entries: u64,
    /// Digests recorded (or found recorded) within [`REFRESH_AFTER`], with
    /// what their record tells agents: not looked up again unless that
    /// changes (a break-glass approval, then a normal one).
    recent: Mutex<HashMap<Digest, (Instant, Effect<'static>)>>,
    /// The latest records, decoded. Changed only with the store's commit
    /// under its write lock, so a reader that saw a commit's generation
    /// finds its records here.
    recent_writes: RwLock<RecentWrites>,
}

/// 16 random bytes as hex, from the kernel.
fn new_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Ledger {
    pub fn open(path: &Path, retention: Duration, max_entries: u64) -> Result<Self, LedgerError> {
        Self::open_keeping(path, retention, max_entries, recent_writes::KEPT)
    }

    /// [`Ledger::open`], keeping the latest `kept` records decoded.
    fn open_keeping(
        path: &Path,
        retention: Duration,
        max_entries: u64,
        kept: usize,
    ) -> Result<Self, LedgerError> {
        let open_err = |reason: String| LedgerError::Open {
            path: path.display().to_string(),
            reason,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| open_err(e.to_string()))?;
        }
        // redb caches up to 1 GiB of pages by default: a new agent's sync
        // reads the whole ledger, and the webhook's memory limit is 256 MiB.
        // Pages past this come from the kernel's page cache instead.
        // Measured (`push_scale`, one new agent syncing 100,000 approvals):
        // webhook peak RSS 112 MiB with 32 MiB of cache, 58 MiB with 4 MiB,
        // sync time within noise (0.8 and 1.0 s).
        let db = redb::Builder::new()
            .set_cache_size(LEDGER_CACHE_BYTES)
            .create(path)
            .map_err(|e| open_err(e.to_string()))?;
        // Create the tables, so readers never meet a missing one.
        let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        {
            txn.open_table(APPROVALS)
                .map_err(|e| open_err(e.to_string()))?;
            txn.open_table(BY_GENERATION)
                .map_err(|e| open_err(e.to_string()))?;
            // A cluster set from an earlier run says nothing about pods
            // started while this webhook was away: it is rebuilt each start.
            txn.open_table(META)
                .map_err(|e| open_err(e.to_string()))?
                .remove(CLUSTER_SET)
                .map_err(|e| open_err(e.to_string()))?;
            let mut identity = txn
                .open_table(IDENTITY)
                .map_err(|e| open_err(e.to_string()))?;
            if identity
                .get("id")
                .map_err(|e| open_err(e.to_string()))?
                .is_none()
            {
                let id = new_id().map_err(|e| open_err(e.to_string()))?;
                identity
                    .insert("id", id.as_str())
                    .map_err(|e| open_err(e.to_string()))?;
            }
        }
        txn.commit().map_err(|e| open_err(e.to_string()))?;
        let (id, generation) = {
            let txn = db.begin_read().map_err(|e| open_err(e.to_string()))?;
            let identity = txn
                .open_table(IDENTITY)
                .map_err(|e| open_err(e.to_string()))?;
            let id = identity
                .get("id")
                .map_err(|e| open_err(e.to_string()))?
                .map(|v| v.value().to_string())
                .unwrap_or_default();
            let meta = txn.open_table(META).map_err(|e| open_err(e.to_string()))?;
            let generation = meta
                .get("generation")
                .map_err(|e| open_err(e.to_string()))?
                .map(|g| g.value())
                .unwrap_or(0);
            (id, generation)
        };
        Ok(Self {
            db,
            id,
            generation_tx: tokio::sync::watch::Sender::new(generation),
            retention,
            max_entries: max_entries.max(1),
            recent: Mutex::new(HashMap::new()),
            recent_writes: RwLock::new(RecentWrites::new(generation, kept)),
        })
    }

    /// Records approvals durably (the commit is fsynced) and returns the
    /// ledger's generation after it. Blocking: call from a blocking thread.
    pub fn record(&self, approvals: &[Approval]) -> Result<u64, LedgerError> {
        let fresh: Vec<&Approval> = {
            let recent = self.recent.lock().map_err(store)?;
            approvals
                .iter()
                .filter(|a| {
                    recent.get(&a.digest).is_none_or(|(t, effect)| {
                        t.elapsed() >= REFRESH_AFTER || *effect != Effect::of(a)
                    })
                })
                .collect()
        };
        if fresh.is_empty() {
            return self.generation();
        }
        let txn = self.db.begin_write().map_err(store)?;
        // What this write removes from the order and adds to it, in order
        // (one digest twice in `approvals` is both), for the decoded copy
        // of the latest records.
        let mut changes = Vec::with_capacity(fresh.len());
        let generation = {
            let mut meta = txn.open_table(META).map_err(store)?;
            let mut records = txn.open_table(APPROVALS).map_err(store)?;
            let mut order = txn.open_table(BY_GENERATION).map_err(store)?;
            let mut generation = meta
                .get("generation")
                .map_err(store)?
                .map(|g| g.value())
                .unwrap_or(0);
            for approval in &fresh {
                // A digest recorded before leaves its old place in the order.
                let old = records
                    .get(approval.digest.as_str())
                    .map_err(store)?
                    .and_then(|v| serde_json::from_slice::<Approval>(v.value()).ok());
                if old
                    .as_ref()
                    .is_some_and(|old| self.still_current(old, approval))
                {
                    continue;
                }
                generation += 1;
                if let Some(old) = old {
                    order.remove(old.generation).map_err(store)?;
                    changes.push(Change::Removed(old.generation));
                }
                let mut stored = (*approval).clone();
                stored.generation = generation;
                let bytes = serde_json::to_vec(&stored).map_err(store)?;
                records
                    .insert(approval.digest.as_str(), bytes.as_slice())
                    .map_err(store)?;
                order
                    .insert(generation, approval.digest.as_str())
                    .map_err(store)?;
                changes.push(Change::Written(Box::new(stored)));
            }
            if changes.is_empty() {
                // Every one is on disk, and on every agent, as it is.
                drop((meta, records, order));
                txn.abort().map_err(store)?;
                self.remember(&fresh);
                return Ok(generation);
            }
            meta.insert("generation", generation).map_err(store)?;
            // Bounded: the least recently admitted go first.
            while records.len().map_err(store)? > self.max_entries {
                let Some((oldest_generation, digest)) = order
                    .first()
                    .map_err(store)?
                    .map(|(g, d)| (g.value(), d.value().to_string()))
                else {
                    break;
                };
                order.remove(oldest_generation).map_err(store)?;
                records.remove(digest.as_str()).map_err(store)?;
                changes.push(Change::Removed(oldest_generation));
            }
            generation
        };
        {
            // Held across the commit: no reader sees the new generation
            // before its records are kept here.
            let mut kept = self.recent_writes.write().map_err(store)?;
            txn.commit().map_err(store)?;
            for change in changes {
                match change {
                    Change::Removed(generation) => kept.removed(generation),
                    Change::Written(stored) => kept.written(*stored),
                }
            }
        }
        self.generation_tx.send_replace(generation);
        self.remember(&fresh);
        Ok(generation)
    }

    /// Whether the stored record `old` already says what recording
    /// `approval` would tell agents, and was admitted within
    /// [`Ledger::refresh_every`] before it: then it is not written again.
    ///
    /// The in-memory window above ([`REFRESH_AFTER`]) is empty after a
    /// restart, and each image in use was then written again at its first
    /// admission, and pushed again to every agent: after a restart under
    /// load at 5,000 agents, 1,000 images re-admitted were 5 million
    /// approvals sent (`push_scale <webhook> 5000 feed`).
    fn still_current(&self, old: &Approval, approval: &Approval) -> bool {
        let recent = approval.admitted_at_ms >= old.admitted_at_ms
            && approval.admitted_at_ms - old.admitted_at_ms
                < self.refresh_every().as_millis() as u64;
        recent && Effect::of(old) == Effect::of(approval)
    }

    /// How often a digest in use is written again, so that neither the
    /// ledger nor an agent lets it expire: a 24th of the retention, at most
    /// an hour.
    fn refresh_every(&self) -> Duration {
        (self.retention / 24).min(Duration::from_secs(3600))
    }

    /// Digests just recorded, or found recorded: not looked up again within
    /// [`REFRESH_AFTER`].
    fn remember(&self, approvals: &[&Approval]) {
        let Ok(mut recent) = self.recent.lock() else {
            return;
        };
        let now = Instant::now();
        recent.retain(|_, (t, _)| t.elapsed() < REFRESH_AFTER);
        for approval in approvals {
            recent.insert(
                approval.digest.clone(),
                (now, Effect::of(approval).into_owned()),
            );
        }
    }

    /// Records that the ledger now holds the admitted set rebuilt from the
    /// cluster; returns the generation it does at, and wakes the push.
    pub fn mark_cluster_set(&self) -> Result<u64, LedgerError> {
        let txn = self.db.begin_write().map_err(store)?;
        let generation = {
            let mut meta = txn.open_table(META).map_err(store)?;
            let generation = meta
                .get("generation")
                .map_err(store)?
                .map(|g| g.value())
                .unwrap_or(0);
            meta.insert(CLUSTER_SET, generation).map_err(store)?;
            generation
        };
        txn.commit().map_err(store)?;
        self.generation_tx.send_modify(|_| {});
        Ok(generation)
    }

    /// The generation at which the ledger held the cluster set, once this
    /// start's rebuild finished.
    pub fn cluster_set(&self) -> Result<Option<u64>, LedgerError> {
        let txn = self.db.begin_read().map_err(store)?;
        let meta = txn.open_table(META).map_err(store)?;
        Ok(meta.get(CLUSTER_SET).map_err(store)?.map(|g| g.value()))
    }

    /// This ledger's id (random, made when the file was created).
    /// How long a record is kept without being admitted (or adopted) again;
    /// agents are told, so they expire what no webhook keeps any more.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Follows the generation: changes after every write.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation_tx.subscribe()
    }

    /// The last generation handed out (0 for an empty ledger).
    pub fn generation(&self) -> Result<u64, LedgerError> {
        let txn = self.db.begin_read().map_err(store)?;
        let meta = txn.open_table(META).map_err(store)?;
        Ok(meta
            .get("generation")
            .map_err(store)?
            .map(|g| g.value())
            .unwrap_or(0))
    }

    /// Approvals written after `generation`, oldest first, at most `limit`.
    pub fn since(&self, generation: u64, limit: usize) -> Result<Vec<Approval>, LedgerError> {
        if let Some(kept) = self
            .recent_writes
            .read()
            .map_err(store)?
            .since(generation, limit)
        {
            return Ok(kept);
        }
        self.since_stored(generation, limit)
    }

    /// [`Ledger::since`] from the store alone.
    fn since_stored(&self, generation: u64, limit: usize) -> Result<Vec<Approval>, LedgerError> {
        let txn = self.db.begin_read().map_err(store)?;
        let order = txn.open_table(BY_GENERATION).map_err(store)?;
        let records = txn.open_table(APPROVALS).map_err(store)?;
        let mut out = Vec::new();
        for entry in order.range(generation.saturating_add(1)..).map_err(store)? {
            if out.len() >= limit {
                break;
            }
            let (at, digest) = entry.map_err(store)?;
            let Some(bytes) = records.get(digest.value()).map_err(store)? else {
                continue;
            };
            // A record this version cannot read (written by an older one,
            // with a digest the agent refuses) is skipped, not fatal: one
            // bad record must never stall every record after it.
            match serde_json::from_slice::<Approval>(bytes.value()) {
                Ok(approval) => out.push(approval),
                Err(e) => tracing::error!(
                    generation = at.value(),
                    key = digest.value(),
                    "ledger record unreadable, skipped: {e}"
                ),
            }
        }
        Ok(out)
    }

    /// Every approval, oldest first.
    pub fn all(&self) -> Result<Vec<Approval>, LedgerError> {
        self.since(0, usize::MAX)
    }

    /// Drops approvals not admitted within the retention period; returns
    /// how many.
    pub fn expire(&self, now_ms: u64) -> Result<usize, LedgerError> {
        let cutoff = now_ms.saturating_sub(self.retention.as_millis() as u64);
        let txn = self.db.begin_write().map_err(store)?;
        let mut removed = Vec::new();
        {
            let mut order = txn.open_table(BY_GENERATION).map_err(store)?;
            let mut records = txn.open_table(APPROVALS).map_err(store)?;
            loop {
                let Some((generation, digest)) = order
                    .first()
                    .map_err(store)?
                    .map(|(g, d)| (g.value(), d.value().to_string()))
                else {
                    break;
                };
                let admitted = records
                    .get(digest.as_str())
                    .map_err(store)?
                    .and_then(|v| serde_json::from_slice::<Approval>(v.value()).ok())
                    .map(|a| a.admitted_at_ms)
                    .unwrap_or(0);
                // Generations follow admission times: stop at the first
                // record still inside the retention period.
                if admitted >= cutoff {
                    break;
                }
                order.remove(generation).map_err(store)?;
                records.remove(digest.as_str()).map_err(store)?;
                removed.push(generation);
            }
        }
        let mut kept = self.recent_writes.write().map_err(store)?;
        txn.commit().map_err(store)?;
        for generation in &removed {
            kept.removed(*generation);
        }
        Ok(removed.len())
    }
}

/// The API as the ledger writes it: `ImageReview` or `AdmissionReview`.
mod api_name {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::review::Api;

    pub fn serialize<S: Serializer>(api: &Api, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(api.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Api, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "ImageReview" => Ok(Api::ImageReview),
            "AdmissionReview" => Ok(Api::AdmissionReview),
            other => Err(D::Error::custom(format!(
                "api {other:?}: expected ImageReview or AdmissionReview"
            ))),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A digest for tests: `sha256:` and a 64-digit hex made from `name`.
    fn d(name: &str) -> Digest {
        let hex: String = name
            .bytes()
            .flat_map(|b| format!("{b:02x}").into_bytes())
            .chain(std::iter::repeat(b'0'))
            .take(64)
            .map(char::from)
            .collect();
        Digest::parse(&format!("sha256:{hex}")).unwrap()
    }

    /// An admitted approval of `digest` (see [`d`]) at `at` ms, for this
    /// module's tests and the feed's.
    pub(crate) fn approval(digest: &str, at: u64) -> Approval {
        let digest = d(digest);
        Approval {
            digest: digest.clone(),
            children: Vec::new(),
            verified: true,
            break_glass: false,
            expires_at_ms: None,
            reference: format!("registry.local/app@{digest}"),
            namespace: "default".into(),
            kind: Some("Pod".into()),
            name: Some("p".into()),
            user: Some("alice".into()),
            rule: "local".into(),
            api: Api::AdmissionReview,
            origin: Origin::Admission,
            admitted_at_ms: at,
            generation: 0,
            signers: Vec::new(),
        }
    }

    fn ledger(dir: &Path, max: u64) -> Ledger {
        Ledger::open(&dir.join("ledger.redb"), Duration::from_secs(3600), max).unwrap()
    }

    #[test]
    fn records_in_generations_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let l = ledger(dir.path(), 100);
            id = l.id().to_string();
            assert_eq!(id.len(), 32, "{id}");
            let mut changes = l.subscribe();
            assert_eq!(l.generation().unwrap(), 0);
            assert_eq!(
                l.record(&[approval("sha256:a", 1), approval("sha256:b", 2)])
                    .unwrap(),
                2
            );
            assert_eq!(l.record(&[approval("sha256:c", 3)]).unwrap(), 3);
            assert!(changes.has_changed().unwrap());
            assert_eq!(*changes.borrow_and_update(), 3);
            let since = l.since(1, 10).unwrap();
            assert_eq!(
                since.iter().map(|a| a.digest.clone()).collect::<Vec<_>>(),
                [d("sha256:b"), d("sha256:c")]
            );
            assert_eq!(since[1].generation, 3);
        }
        // A restart loses nothing.
        let l = ledger(dir.path(), 100);
        assert_eq!(l.generation().unwrap(), 3);
        assert_eq!(*l.subscribe().borrow(), 3);
        assert_eq!(l.id(), id, "the id is the file's, kept across restarts");
        let all = l.all().unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[0],
            Approval {
                generation: 1,
                ..approval("sha256:a", 1)
            }
        );
        assert!(l.since(3, 10).unwrap().is_empty());
    }

    #[test]
    fn recording_again_refreshes_and_moves_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path(), 100);
        // An hour's retention: refreshed every 150 s.
        assert_eq!(l.refresh_every(), Duration::from_secs(150));
        l.record(&[approval("sha256:a", 1), approval("sha256:b", 2)])
            .unwrap();
        // Within the in-memory window a repeat is not looked up again...
        assert_eq!(l.record(&[approval("sha256:a", 5)]).unwrap(), 2);
        // ...nor written after it (as after a restart, which empties it)
        // while the stored record is recent and says the same...
        l.recent.lock().unwrap().clear();
        assert_eq!(l.record(&[approval("sha256:a", 149_000)]).unwrap(), 2);
        // ...but it is once the record is older than the refresh interval.
        l.recent.lock().unwrap().clear();
        assert_eq!(l.record(&[approval("sha256:a", 150_001)]).unwrap(), 3);
        let all = l.all().unwrap();
        assert_eq!(
            all.iter().map(|a| a.digest.clone()).collect::<Vec<_>>(),
            [d("sha256:b"), d("sha256:a")]
        );
        assert_eq!(all[1].admitted_at_ms, 150_001);
    }

    /// A record that would tell agents something else is written at once,
    /// within both windows: a break-glass approval with its deadline, then
    /// a normal one of the same digest, which must not expire with it.
    #[test]
    fn a_change_in_what_agents_are_told_is_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path(), 100);
        let mut broken = approval("sha256:a", 1);
        broken.break_glass = true;
        broken.expires_at_ms = Some(600_000);
        assert_eq!(l.record(&[broken.clone()]).unwrap(), 1);
        assert_eq!(l.record(&[approval("sha256:a", 2)]).unwrap(), 2);
        let stored = &l.all().unwrap()[0];
        assert!(
            !stored.break_glass && stored.expires_at_ms.is_none(),
            "{stored:?}"
        );
        // And from the stored record alone, after a restart.
        l.recent.lock().unwrap().clear();
        assert_eq!(l.record(&[broken]).unwrap(), 3);
        assert!(l.all().unwrap()[0].break_glass);
        l.recent.lock().unwrap().clear();
        let mut unverified = approval("sha256:a", 4);
        unverified.verified = false;
        assert_eq!(l.record(&[unverified]).unwrap(), 4);
        // The rebuild from the cluster at a start finds it in use: the
        // record, current, stays as it is.
        l.recent.lock().unwrap().clear();
        let mut unverified_adopted = approval("sha256:a", 5);
        unverified_adopted.verified = false;
        unverified_adopted.origin = Origin::Adopted;
        assert_eq!(l.record(&[unverified_adopted]).unwrap(), 4);
        assert_eq!(l.all().unwrap()[0].origin, Origin::Admission);
    }

    #[test]
    fn stays_bounded_dropping_the_least_recent() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path(), 3);
        for i in 0..5 {
            l.record(&[approval(&format!("sha256:{i}"), i)]).unwrap();
        }
        let all = l.all().unwrap();
        assert_eq!(
            all.iter().map(|a| a.digest.clone()).collect::<Vec<_>>(),
            [d("sha256:2"), d("sha256:3"), d("sha256:4")]
        );
    }

    #[test]
    fn expires_what_was_not_admitted_within_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path(), 100);
        let hour = 3_600_000;
        l.record(&[
            approval("sha256:old", 1_000),
            approval("sha256:new", 1_000 + hour),
        ])
        .unwrap();
        assert_eq!(l.expire(1_000 + hour + 10).unwrap(), 1);
        assert_eq!(
            l.all()
                .unwrap()
                .iter()
                .map(|a| a.digest.clone())
                .collect::<Vec<_>>(),
            [d("sha256:new")]
        );
        assert_eq!(l.expire(1_000 + hour + 10).unwrap(), 0);
    }

    /// Found as a poisoned ledger: an older version recorded a digest the
    /// agent refuses, and every later push stalled. A record this version
    /// cannot read is skipped; the ones after it go on.
    #[test]
    fn an_unreadable_record_does_not_block_the_ones_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path(), 100);
        l.record(&[approval("a", 1)]).unwrap();
        {
            // What an older webhook wrote: not a digest this version takes.
            let txn = l.db.begin_write().unwrap();
            {
                let mut records = txn.open_table(APPROVALS).unwrap();
                let mut order = txn.open_table(BY_GENERATION).unwrap();
                let mut meta = txn.open_table(META).unwrap();
                let bad = serde_json::json!({
                    "digest": "md5:0123", "children": [], "reference": "x",
                    "namespace": "n", "kind": null, "name": null, "user": null,
                    "rule": "r", "api": "AdmissionReview", "admitted_at_ms": 2, "generation": 2
                });
                records
                    .insert("md5:0123", serde_json::to_vec(&bad).unwrap().as_slice())
                    .unwrap();
                order.insert(2, "md5:0123").unwrap();
                meta.insert("generation", 2).unwrap();
            }
            txn.commit().unwrap();
        }
        l.record(&[approval("c", 3)]).unwrap();
        let all: Vec<Digest> = l.all().unwrap().into_iter().map(|a| a.digest).collect();
        assert_eq!(all, [d("a"), d("c")]);
        assert_eq!(l.since(1, 10).unwrap()[0].digest, d("c"));
    }

    #[test]
    fn the_cluster_set_mark_lasts_one_run() {
        let dir = tempfile::tempdir().unwrap();
        {
            let l = ledger(dir.path(), 100);
            assert_eq!(l.cluster_set().unwrap(), None);
            let mut changes = l.subscribe();
            changes.borrow_and_update();
            l.record(&[approval("sha256:a", 1)]).unwrap();
            assert_eq!(l.mark_cluster_set().unwrap(), 1);
            assert!(changes.has_changed().unwrap(), "the push is woken");
            assert_eq!(l.cluster_set().unwrap(), Some(1));
        }
        // A restart rebuilds it: pods may have started meanwhile.
        assert_eq!(ledger(dir.path(), 100).cluster_set().unwrap(), None);
    }

    #[test]
    fn a_path_that_cannot_be_opened_says_so() {
        let err = Ledger::open(
            Path::new("/proc/imagegate/ledger.redb"),
            Duration::from_secs(1),
            1,
        )
        .err()
        .expect("cannot create under /proc");
        assert!(
            err.to_string()
                .starts_with("the ledger at /proc/imagegate/ledger.redb cannot be opened"),
            "{err}"
        );
    }

    /// One step of the ledger's life, for the property below.
    #[derive(Clone, Debug)]
    enum Step {
        /// Record these digests (a small pool: some are recorded again).
        Record(Vec<u8>),
        /// Time passes, in ms (the retention is an hour).
        Wait(u64),
        Expire,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            4 => proptest::collection::vec(0u8..10, 1..4).prop_map(Step::Record),
            1 => (0u64..5_000_000).prop_map(Step::Wait),
            1 => Just(Step::Expire),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever is written again, dropped for the bound or expired,
        /// the decoded copy of the latest records answers every reader as
        /// the store does, or leaves it to the store.
        #[test]
        fn the_latest_records_kept_answer_as_the_store(
            steps in proptest::collection::vec(step(), 1..24),
            kept in 1usize..8,
            max in 3u64..12,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let l = Ledger::open_keeping(
                &dir.path().join("ledger.redb"),
                Duration::from_secs(3600),
                max,
                kept,
            )
            .unwrap();
            let mut now = 10_000_000;
            for step in steps {
                match step {
                    Step::Record(names) => {
                        // Written again at once, not after REFRESH_AFTER.
                        l.recent.lock().unwrap().clear();
                        let approvals: Vec<Approval> = names
                            .iter()
                            .map(|n| approval(&format!("n{n}"), now))
                            .collect();
                        l.record(&approvals).unwrap();
                    }
                    Step::Wait(ms) => now += ms,
                    Step::Expire => {
                        l.expire(now).unwrap();
                    }
                }
                let generation = l.generation().unwrap();
                for since in 0..=generation + 1 {
                    for limit in [1, 2, usize::MAX] {
                        proptest::prop_assert_eq!(
                            l.since(since, limit).unwrap(),
                            l.since_stored(since, limit).unwrap(),
                            "since {} limit {}", since, limit
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_latest_records_are_read_without_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open_keeping(
            &dir.path().join("ledger.redb"),
            Duration::from_secs(3600),
            100,
            2,
        )
        .unwrap();
        for (n, name) in ["a", "b", "c"].into_iter().enumerate() {
            l.record(&[approval(name, n as u64)]).unwrap();
        }
        let kept = l.recent_writes.read().unwrap();
        // Two kept: complete after generation 1.
        assert_eq!(kept.since(0, 10), None, "generation 1 is not kept");
        let from_one: Vec<Digest> = kept
            .since(1, 10)
            .unwrap()
            .into_iter()
            .map(|a| a.digest)
            .collect();
        assert_eq!(from_one, [d("b"), d("c")]);
        assert_eq!(kept.since(3, 10), Some(Vec::new()));
        drop(kept);
        // Opened again, nothing is kept: the store answers.
        drop(l);
        let l = ledger(dir.path(), 100);
        assert_eq!(
            l.recent_writes.read().unwrap().since(3, 10),
            Some(Vec::new())
        );
        assert_eq!(l.recent_writes.read().unwrap().since(2, 10), None);
        assert_eq!(l.since(1, 10).unwrap().len(), 2);
    }
}
