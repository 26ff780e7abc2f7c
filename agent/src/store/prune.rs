//! What retention drops: found in a read transaction, dropped in one short
//! write, so the engine's writes never wait on a scan of the whole store.

use redb::{ReadableDatabase, ReadableTable};

use super::*;
use crate::model::{Approval, ContainerRecord};

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

/// What one retention pass found to drop.
#[derive(Debug, Default)]
pub struct PrunePlan {
    /// Containers whose cgroup is gone, to mark gone now.
    newly_gone: Vec<String>,
    /// Gone containers to drop.
    pub(super) containers: Vec<String>,
    violations: Vec<u64>,
    approvals: Vec<Digest>,
    /// Approvals last pushed before this expire.
    expire_before: u64,
}

impl Store {
    /// What a pass would drop, read without blocking writers.
    pub fn plan_prune(
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
                        in_use.insert(digest);
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
}

impl StoreWriter {
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

    /// Drops what `plan` found, each record checked again; one short write
    /// transaction.
    pub fn apply_prune(&self, now: u64, plan: &PrunePlan) -> Result<Pruned, StoreError> {
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

/// Whether `approval` expires: no sender pushed it since `expire_before`,
/// and no file lists it.
fn expires(approval: &Approval, expire_before: u64) -> bool {
    !approval.source.starts_with("file:") && approval.last_pushed_ms() < expire_before
}
