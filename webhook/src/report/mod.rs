//! What operators read in the cluster about violations on nodes: Warning
//! Events on the pods (`kubectl describe pod`).
//!
//! One writer per cluster: the replica holding the `imagegate-reporter`
//! Lease ([`lease`]). It learns of violations from the agents themselves,
//! through the API they already serve ([`intake`]: `ListViolations` from
//! the last sequence number read, woken by `WatchEvents`), reaching each
//! agent at the address it follows the approval feed from, so no new
//! credentials go to nodes and no DNS list of 5,000 agents is needed.
//! [`events`] turns violations into Events the way client-go's recorder
//! does: one object per pod, reason and image whose count grows, similar
//! events folded together, and a per-pod rate limit.
//!
//! Data flows one way: agents' violations -> [`model::NodeViolation`] ->
//! recorder -> apiserver.

pub mod events;
pub mod intake;
pub mod lease;
pub mod model;

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::push::followers::Followers;
use events::{KubeEvents, Recorded, Recorder};

/// Violations waiting for the recorder; the agents' readers wait when it is
/// full (they resume from their sequence number, so nothing is lost).
const QUEUE: usize = 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Default)]
pub struct ReportMetrics {
    leader: Gauge,
    events: Family<OutcomeLabels, Counter>,
}

impl ReportMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "report_leader",
            "1 while this replica holds the reporter Lease and writes Events",
            metrics.leader.clone(),
        );
        registry.register(
            "violation_events",
            "Violations turned into Events, by outcome (created, counted, already-counted, \
             rate-limited, no-pod, failed)",
            metrics.events.clone(),
        );
        metrics
    }

    fn count(&self, outcome: &'static str) {
        self.events.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

pub struct Reporter {
    pub client: kube::Client,
    pub lease: lease::LeaseConfig,
    pub intake: intake::IntakeConfig,
    pub followers: Followers,
    pub metrics: ReportMetrics,
}

/// Elects one replica; while this one leads, its agents' violations become
/// Events. Runs until `stop` turns true.
pub async fn run(reporter: Reporter, stop: watch::Receiver<bool>) {
    let reporter = Arc::new(reporter);
    let (leading_tx, mut leading) = watch::channel(false);
    tokio::spawn(lease::run(
        reporter.client.clone(),
        reporter.lease.clone(),
        leading_tx,
        stop.clone(),
    ));
    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            led = leading.wait_for(|l| *l) => if led.is_err() { return },
            _ = stopping.wait_for(|s| *s) => return,
        }
        reporter.metrics.leader.set(1);
        lead(&reporter, &mut leading, &mut stopping).await;
        reporter.metrics.leader.set(0);
    }
}

/// Reports until this replica no longer leads (or stops).
async fn lead(
    reporter: &Reporter,
    leading: &mut watch::Receiver<bool>,
    stopping: &mut watch::Receiver<bool>,
) {
    let (end_tx, end) = watch::channel(false);
    let (tx, mut violations) = mpsc::channel(QUEUE);
    tokio::spawn(intake::run(
        reporter.followers.subscribe(),
        reporter.intake.clone(),
        tx,
        end,
    ));
    let mut recorder = Recorder::new(KubeEvents {
        client: reporter.client.clone(),
    });
    loop {
        tokio::select! {
            Some(violation) = violations.recv() => {
                let now = i64::try_from(imagegate_plumbing::clock::now_ms()).unwrap_or(i64::MAX);
                let outcome = match recorder.record(&violation, now).await {
                    Ok(Recorded::Created { .. }) => "created",
                    Ok(Recorded::Counted { .. }) => "counted",
                    Ok(Recorded::AlreadyCounted) => "already-counted",
                    Ok(Recorded::RateLimited) => "rate-limited",
                    Ok(Recorded::NoPod) => "no-pod",
                    Err(e) => {
                        warn!(node = %violation.node, error = %e, "could not write the violation's Event");
                        "failed"
                    }
                };
                reporter.metrics.count(outcome);
            }
            // (The waits yield nothing to hold: a watch guard held across
            // the recorder's awaits would make this task not Send.)
            _ = async { let _ = leading.wait_for(|l| !*l).await; } => break,
            _ = async { let _ = stopping.wait_for(|s| *s).await; } => break,
        }
    }
    let _ = end_tx.send(true);
}
