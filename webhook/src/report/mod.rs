//! What operators read in the cluster about violations on nodes: Warning
//! Events on the pods (`kubectl describe pod`) and policy reports
//! (`kubectl get reports`, Policy Reporter).
//!
//! One writer per cluster: the replica holding the `imagegate-reporter`
//! Lease ([`lease`]). It learns of violations from the agents themselves,
//! through the API they already serve ([`intake`]: `ListViolations` from
//! the last sequence number read, woken by `WatchEvents`), reaching each
//! agent at the address it follows the approval feed from, so no new
//! credentials go to nodes and no DNS list of 5,000 agents is needed.
//! [`events`] turns violations into Events the way client-go's recorder
//! does: one object per pod, reason and image whose count grows, similar
//! events folded together, and a per-pod rate limit. [`reports`] keeps one
//! result per container in a report per namespace, bounded, and writes
//! what changed every few seconds.
//!
//! Data flows one way: agents' violations -> [`model::NodeViolation`] ->
//! recorder and report book -> apiserver.

pub mod admission;
pub mod decisions;
pub mod events;
pub mod intake;
pub mod lease;
pub mod model;
pub mod reports;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::push::followers::Followers;
use events::{KubeEvents, Recorded, Recorder};
use reports::writer::{KubeReports, Writer};

/// Violations waiting for the recorder; the agents' readers wait when it is
/// full (they resume from their sequence number, so nothing is lost).
const QUEUE: usize = 1024;
/// Reports are written at most this often (what changed in between goes
/// in one write per report).
const FLUSH: Duration = Duration::from_secs(2);
/// How often the pods reports name are looked up, and how many at a time:
/// at most this many `GET pod` a minute from the leader, whatever the
/// cluster's size.
const PRUNE: Duration = Duration::from_secs(60);
const PRUNE_PODS: usize = 200;
/// Missing CRDs are said at most this often.
const SAY_AGAIN: Duration = Duration::from_secs(600);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Default)]
pub struct ReportMetrics {
    leader: Gauge,
    events: Family<OutcomeLabels, Counter>,
    /// Per replica: its admission decisions' Events.
    pub admission_events: Family<OutcomeLabels, Counter>,
    report_writes: Family<OutcomeLabels, Counter>,
    results_dropped: Counter,
    reports_crds_missing: Gauge,
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
        registry.register(
            "admission_events",
            "This replica's admission decisions (denied, audit, break-glass, unverified) turned \
             into Events, by outcome (created, counted, already-counted, rate-limited, \
             queue-full, failed)",
            metrics.admission_events.clone(),
        );
        registry.register(
            "report_writes",
            "Policy report writes, by outcome (written, conflict, failed, crds-missing)",
            metrics.report_writes.clone(),
        );
        registry.register(
            "report_results_dropped",
            "Results dropped from full policy reports (the oldest go first)",
            metrics.results_dropped.clone(),
        );
        registry.register(
            "reports_crds_missing",
            "1 while the report format's CRDs are not installed and reports cannot be written",
            metrics.reports_crds_missing.clone(),
        );
        // Exported at 0 from the start, so an alert on a rate sees the first failure.
        for outcome in ["written", "conflict", "failed", "crds-missing"] {
            drop(
                metrics
                    .report_writes
                    .get_or_create(&OutcomeLabels { outcome }),
            );
        }
        for outcome in ["queue-full", "failed"] {
            drop(
                metrics
                    .admission_events
                    .get_or_create(&OutcomeLabels { outcome }),
            );
        }
        metrics
    }

    fn count(&self, outcome: &'static str) {
        self.events.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

/// Which reports are written, and how large they may grow.
#[derive(Clone, Copy, Debug)]
pub struct ReportSettings {
    pub format: reports::Format,
    pub max_results: usize,
}

pub struct Reporter {
    pub client: kube::Client,
    /// Warning Events on the pods.
    pub events: bool,
    /// Policy reports.
    pub reports: Option<ReportSettings>,
    /// Admission decisions are told as Events (by every replica): file
    /// them as report results too.
    pub admission_results: bool,
    /// How long a denial stays in the reports after its last occurrence.
    pub denied_result_ttl: Duration,
    pub lease: lease::LeaseConfig,
    pub intake: intake::IntakeConfig,
    pub followers: Followers,
    pub metrics: ReportMetrics,
}

/// Elects one replica; while this one leads, its agents' violations become
/// Events and report results. Runs until `stop` turns true.
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
    let mut recorder = reporter.events.then(|| {
        Recorder::new(KubeEvents {
            client: reporter.client.clone(),
        })
    });
    // A new writer per term: it reads each report before its first write,
    // so it carries on from what the last leader wrote.
    let mut writer = reporter.reports.map(|settings| {
        Writer::new(
            KubeReports {
                client: reporter.client.clone(),
            },
            settings.format,
            settings.max_results,
        )
        .with_denied_ttl(reporter.denied_result_ttl)
    });
    let (decisions_tx, mut decisions) = mpsc::channel(QUEUE);
    if writer.is_some() && reporter.admission_results {
        tokio::spawn(admission::watch_decisions(
            reporter.client.clone(),
            decisions_tx,
            end_tx.subscribe(),
        ));
    } else {
        drop(decisions_tx);
    }
    let mut flush = tokio::time::interval(FLUSH);
    let mut prune = tokio::time::interval(PRUNE);
    for interval in [&mut flush, &mut prune] {
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    // The first prune a whole period in: pods just reported exist.
    prune.reset();
    let mut said_missing: Option<Instant> = None;
    loop {
        tokio::select! {
            Some(violation) = violations.recv() => {
                if let Some(writer) = &mut writer {
                    reporter.metrics.results_dropped.inc_by(writer.record(&violation));
                }
                if let Some(recorder) = &mut recorder {
                    record_event(reporter, recorder, &violation).await;
                }
            }
            Some(decision) = decisions.recv() => {
                if let Some(writer) = &mut writer {
                    reporter.metrics.results_dropped.inc_by(writer.record_decision(&decision));
                }
            }
            _ = flush.tick(), if writer.is_some() => {
                if let Some(writer) = &mut writer {
                    write_reports(reporter, writer, &mut said_missing).await;
                }
            }
            _ = prune.tick(), if writer.is_some() => {
                if let Some(writer) = &mut writer {
                    let gone = writer.prune(PRUNE_PODS).await;
                    if gone > 0 {
                        info!(pods = gone, "results of pods that are gone taken out of the reports");
                    }
                    let now = imagegate_plumbing::clock::now_ms_i64();
                    let expired = writer.expire(now);
                    if expired > 0 {
                        info!(results = expired, "denials older than --denied-result-ttl taken out of the reports");
                    }
                }
            }
            // (The waits yield nothing to hold: a watch guard held across
            // the recorder's awaits would make this task not Send.)
            _ = async { let _ = leading.wait_for(|l| !*l).await; } => break,
            _ = async { let _ = stopping.wait_for(|s| *s).await; } => break,
        }
    }
    // What changed since the last write goes out before the term ends (a
    // conflict with a new leader's write loses nothing: it read the
    // agents too).
    if let Some(writer) = &mut writer {
        write_reports(reporter, writer, &mut said_missing).await;
    }
    let _ = end_tx.send(true);
}

async fn record_event(
    reporter: &Reporter,
    recorder: &mut Recorder<KubeEvents>,
    violation: &model::NodeViolation,
) {
    let now = imagegate_plumbing::clock::now_ms_i64();
    let outcome = match recorder.record(violation, now).await {
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

async fn write_reports(
    reporter: &Reporter,
    writer: &mut Writer<KubeReports>,
    said_missing: &mut Option<Instant>,
) {
    let flushed = writer.flush().await;
    let metrics = &reporter.metrics;
    let count = |outcome: &'static str, n: usize| {
        metrics
            .report_writes
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(n as u64);
    };
    count("written", flushed.written);
    count("conflict", flushed.conflicts);
    count("failed", flushed.failed.len());
    for failed in &flushed.failed {
        warn!("could not write the policy report {failed}; trying again");
    }
    if flushed.crds_missing {
        count("crds-missing", 1);
        metrics.reports_crds_missing.set(1);
        if said_missing.is_none_or(|at| at.elapsed() >= SAY_AGAIN) {
            let format = writer.format();
            error!(
                crds = ?format.crds(),
                "policy reports cannot be written: the apiserver does not serve {} (its CRDs are \
                 not installed). Install them (the chart does unless \
                 webhook.reports.installCRDs=false) or set --report-format=off; the results are \
                 kept (bounded) and written once the CRDs exist",
                format.group_version()
            );
            *said_missing = Some(Instant::now());
        }
    } else if flushed.written > 0 {
        metrics.reports_crds_missing.set(0);
        *said_missing = None;
    }
}
