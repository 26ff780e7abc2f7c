//! The store's one writer: a thread that owns the [`StoreWriter`] and
//! carries out its commands in the order they were sent. The engine
//! sends it verdicts (so blocking redb commits never run on the event
//! loop), the API sends it pushed approvals and waits for the answer, the
//! approvals file and retention send theirs. Nothing else can write: the
//! store hands out its writer once.

use std::sync::Arc;

use imagegate_proto::source::SourceKey;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{info, warn};

use super::machine::Concluded;
use crate::{
    events::{self, AgentEvent, EventKind},
    model::{Approval, ContainerRecord},
    settle::Gate,
    store::{PrunePlan, Pruned, Received, StoreError, StoreWriter},
};

/// Commands queued at most: a writer this far behind slows the engine
/// down instead of growing the queue.
const QUEUE: usize = 1024;

/// A sender's approvals, as the API checked them.
pub struct Push {
    pub source: SourceKey,
    pub approvals: Vec<Approval>,
    pub generation: u64,
    pub cluster_set_generation: Option<u64>,
    pub retention_ms: u64,
}

enum Write {
    Concluded(Box<Concluded>),
    MarkGone {
        containers: Vec<String>,
        at_ms: u64,
    },
    Push {
        push: Box<Push>,
        reply: oneshot::Sender<Result<Received, StoreError>>,
    },
    FromFile {
        approvals: Vec<Approval>,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    Prune {
        at_ms: u64,
        plan: Box<PrunePlan>,
        reply: oneshot::Sender<Result<Pruned, StoreError>>,
    },
    SettleByWindow,
}

/// A write that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the agent is stopping: its store writer has ended")]
    Stopped,
}

/// Sends commands to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Write>,
}

/// What the writer tells after it wrote.
pub struct Listeners {
    /// `WatchEvents`.
    pub events: events::Sender,
    /// The engine, when approvals were added.
    pub approvals_changed: Arc<Notify>,
    /// Settled by a cluster set or the window.
    pub settle: Arc<Gate>,
}

/// Starts the writer thread. It ends when every [`Writer`] is dropped,
/// after carrying out what was queued.
pub fn spawn(
    store: StoreWriter,
    listeners: Listeners,
) -> std::io::Result<(Writer, std::thread::JoinHandle<()>)> {
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            while let Some(write) = rx.blocking_recv() {
                carry_out(&store, &listeners, write);
            }
        })?;
    Ok((Writer { tx }, thread))
}

impl Writer {
    async fn send(&self, write: Write) -> Result<(), WriteError> {
        self.tx.send(write).await.map_err(|_| WriteError::Stopped)
    }

    async fn ask<T>(
        &self,
        write: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Write,
    ) -> Result<T, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.send(write(reply)).await?;
        Ok(answer.await.map_err(|_| WriteError::Stopped)??)
    }

    /// Records a verdict (and its violation), then tells watchers.
    pub async fn concluded(&self, concluded: Box<Concluded>) -> Result<(), WriteError> {
        self.send(Write::Concluded(concluded)).await
    }

    pub async fn mark_gone(&self, containers: Vec<String>, at_ms: u64) -> Result<(), WriteError> {
        self.send(Write::MarkGone { containers, at_ms }).await
    }

    /// Stores a sender's approvals; settles the agent when it now holds the
    /// sender's cluster set.
    pub async fn push(&self, push: Push) -> Result<Received, WriteError> {
        self.ask(|reply| Write::Push {
            push: Box::new(push),
            reply,
        })
        .await
    }

    /// Stores approvals from the approvals file; returns how many were new.
    pub async fn from_file(&self, approvals: Vec<Approval>) -> Result<usize, WriteError> {
        self.ask(|reply| Write::FromFile { approvals, reply }).await
    }

    /// [`Writer::from_file`] from a blocking thread.
    pub fn blocking_from_file(&self, approvals: Vec<Approval>) -> Result<usize, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .blocking_send(Write::FromFile { approvals, reply })
            .map_err(|_| WriteError::Stopped)?;
        Ok(answer.blocking_recv().map_err(|_| WriteError::Stopped)??)
    }

    /// Drops what a retention scan found (each record checked again).
    pub async fn prune(&self, at_ms: u64, plan: PrunePlan) -> Result<Pruned, WriteError> {
        self.ask(|reply| Write::Prune {
            at_ms,
            plan: Box::new(plan),
            reply,
        })
        .await
    }

    /// Writes down that the settle window passed, if it has.
    pub async fn settle_by_window(&self) -> Result<(), WriteError> {
        self.send(Write::SettleByWindow).await
    }
}

fn carry_out(store: &StoreWriter, listeners: &Listeners, write: Write) {
    match write {
        Write::Concluded(concluded) => conclude(store, listeners, *concluded),
        Write::MarkGone { containers, at_ms } => {
            if let Err(e) = store.mark_gone(&containers, at_ms) {
                warn!(error = %e, "could not mark gone containers");
            }
        }
        Write::Push { push, reply } => {
            let Push {
                source,
                approvals,
                generation,
                cluster_set_generation,
                retention_ms,
            } = *push;
            let received = store.add_approvals_from(
                &source.to_string(),
                &approvals,
                generation,
                cluster_set_generation,
                retention_ms,
            );
            if let Ok(received) = &received {
                if received.added > 0 {
                    listeners.approvals_changed.notify_one();
                }
                if received.holds_cluster_set
                    && listeners.settle.settle(
                        format!("the cluster's admitted set arrived from {source}"),
                        store,
                    )
                {
                    info!(%source, "settled: the cluster's admitted set arrived; enforce mode now stops violations");
                }
            }
            let _ = reply.send(received);
        }
        Write::FromFile { approvals, reply } => {
            let added = store.add_approvals(&approvals);
            if matches!(added, Ok(n) if n > 0) {
                listeners.approvals_changed.notify_one();
            }
            let _ = reply.send(added);
        }
        Write::Prune { at_ms, plan, reply } => {
            let _ = reply.send(store.apply_prune(at_ms, &plan));
        }
        Write::SettleByWindow => {
            if listeners.settle.settle_by_window(store) {
                info!("settled: the settle window passed without a cluster set from a webhook");
            }
        }
    }
}

/// Stored first, told after: whoever sees the verdict (log, stream) finds
/// the record and the violation already there.
fn conclude(store: &StoreWriter, listeners: &Listeners, concluded: Concluded) {
    let Concluded {
        record,
        violation,
        latency,
    } = concluded;
    if let Err(e) = store.put_container(&record) {
        warn!(error = %e, container = %record.key, "could not store a container record");
    }
    if let Some(violation) = violation {
        let enforced = violation.enforced;
        match store.add_violation(violation) {
            Ok(stored) => warn!(
                seq = stored.seq,
                container = %stored.container,
                verdict = stored.verdict.as_str(),
                image = stored.image.as_deref().unwrap_or(""),
                digest = stored.digest.as_ref().map_or("", |d| d.as_str()),
                reason = %stored.reason,
                enforced,
                "violation"
            ),
            Err(e) => warn!(error = %e, container = %record.key, "could not store a violation"),
        }
        publish(&listeners.events, EventKind::Violation, &record);
    }
    publish(&listeners.events, EventKind::Verdict, &record);
    let pod = record
        .pod
        .as_ref()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .unwrap_or_default();
    info!(
        container = %record.key,
        verdict = record.verdict.as_str(),
        image = record.image.as_deref().unwrap_or(""),
        digest = record.digest.as_ref().map_or("", |d| d.as_str()),
        pod,
        cgroup = %record.cgroup,
        reason = %record.reason,
        latency_ms = latency.as_secs_f64() * 1000.0,
        "verdict"
    );
}

/// Tells `WatchEvents` streams, if any are open.
pub fn publish(events: &events::Sender, kind: EventKind, record: &ContainerRecord) {
    if events.receiver_count() > 0 {
        let _ = events.send(AgentEvent {
            kind,
            at_ms: imagegate_plumbing::clock::now_ms(),
            container: record.clone(),
            pid: None,
            filename: None,
        });
    }
}
