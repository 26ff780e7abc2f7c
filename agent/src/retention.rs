//! Keeps the agent's state bounded on a node that runs for months.
//!
//! Every pass (every `--prune-interval`, the first one interval after
//! start): container records
//! whose cgroup is gone are marked gone; gone containers and violations
//! older than `--record-retention`, or beyond `--max-container-records` /
//! `--max-violations`, are dropped (oldest first; a running container's
//! record never is); approvals no webhook pushed again within the longest
//! ledger retention webhooks announced expire, except digests a running
//! container uses and approvals from `--approvals-file`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tracing::{info, warn};

use imagegate_plumbing::clock::now_ms;

use crate::{
    engine::writer::{WriteError, Writer},
    metrics::{EventLabels, Metrics},
    model::ContainerRecord,
    store::{Pruned, Retention, Store, StoreError},
};

/// When retention runs and what it keeps.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub keep: Retention,
    pub every: Duration,
}

/// One pass: what to drop is found in a read transaction on a blocking
/// thread (redb readers never block the writer), then the store's writer
/// drops it in one short transaction, checking each record again.
pub async fn prune_once(
    store: &Arc<Store>,
    writer: &Writer,
    key_root: &Path,
    keep: &Retention,
    metrics: &Metrics,
) -> Result<Pruned, PassError> {
    let now = now_ms();
    let plan = {
        let (store, key_root, keep) = (store.clone(), key_root.to_path_buf(), *keep);
        tokio::task::spawn_blocking(move || {
            let alive = |record: &ContainerRecord| {
                // A record with no cgroup path cannot be checked: kept as
                // alive, so retention never drops what it cannot prove is
                // gone.
                record.cgroup.is_empty()
                    || key_root
                        .join(record.cgroup.trim_start_matches('/'))
                        .exists()
            };
            store.plan_prune(now, &keep, alive)
        })
        .await
        .map_err(|_| PassError::Panicked)??
    };
    let pruned = writer.prune(now, plan).await?;
    for (kind, count) in [
        ("container", pruned.containers),
        ("violation", pruned.violations),
        ("approval", pruned.approvals.len() as u64),
    ] {
        metrics
            .pruned
            .get_or_create(&EventLabels { kind })
            .inc_by(count);
    }
    metrics.approvals.set(store.approval_count() as i64);
    Ok(pruned)
}

/// A retention pass that did not finish.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("the retention scan panicked")]
    Panicked,
}

/// Runs a pass every `config.every` until `stop` turns true. The first waits
/// one interval too: an agent that was down for longer than a ledger's
/// retention holds approvals the webhooks refreshed meanwhile, and their
/// sync after the restart must arrive before anything is expired.
/// `key_root` is the cgroup hierarchy container records' paths are in.
pub async fn run(
    store: Arc<Store>,
    writer: Writer,
    key_root: PathBuf,
    metrics: Arc<Metrics>,
    config: Config,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.every) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        match prune_once(&store, &writer, &key_root, &config.keep, &metrics).await {
            Ok(pruned) if pruned != Pruned::default() => info!(
                containers = pruned.containers,
                violations = pruned.violations,
                approvals = pruned.approvals.len(),
                "retention: records dropped"
            ),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "retention pass failed; state keeps growing until one works")
            }
        }
    }
}
