//! Admission decisions as Warning Events, written by every replica for the
//! decisions it made (Gatekeeper's admission events, on the object rather
//! than in its own namespace), and read back by the reporter.
//!
//! Each replica decides its own share of the requests, and reports need one
//! writer, so the Events are also how decisions reach the Lease holder:
//! each carries the label [`DECISION_LABEL`] and, in the annotation
//! [`DETAILS_ANNOTATION`], what a report result needs; the reporter watches
//! Events with that label (one watch per cluster, filtered by the
//! apiserver) and files a result for each ([`decision_of_event`]). A
//! decision the per-object rate limit drops has no Event, and so no new
//! result: the object's earlier Event, and result, stand for it.
//!
//! Admission never waits on this: decisions go through a bounded queue
//! ([`DecisionQueue::tell`] never blocks) and what does not fit is counted.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Event;
use prometheus_client::metrics::{counter::Counter, family::Family};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::{
    OutcomeLabels,
    events::{KubeEvents, Occurrence, Recorded, Recorder, Tell},
    model::{Decision, DecisionKind, Subject},
};

/// Every admission Event has it, with the decision's reason as value: what
/// the reporter selects.
pub const DECISION_LABEL: &str = "imagegate.dev/decision";
/// The decision's details, as JSON ([`Details`]).
pub const DETAILS_ANNOTATION: &str = "imagegate.dev/decision-details";
/// Decisions waiting for their Event; more are dropped (counted).
const QUEUE: usize = 1024;

/// What a report result needs that the Event's own fields do not say.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Details {
    container: String,
    image: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    digest: String,
    rule: String,
    reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    signers: Vec<String>,
}

impl Tell for Decision {
    fn occurrence(&self) -> Option<Occurrence> {
        let details = Details {
            container: self.container.clone(),
            image: self.image.clone(),
            digest: self.digest.clone(),
            rule: self.rule.clone(),
            reason: self.reason.clone(),
            signers: self.signers.clone(),
        };
        let field_path =
            (self.subject.kind == "Pod").then(|| format!("spec.containers{{{}}}", self.container));
        Some(Occurrence {
            subject: self.subject.clone(),
            field_path,
            reason: self.kind.reason(),
            what: format!("{}|{}", self.container, self.image),
            message: message(self),
            at_ms: self.at_ms,
            component: "imagegate-webhook",
            reporting_component: "imagegate.dev/webhook",
            instance: self.replica.clone(),
            labels: BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "imagegate".to_string(),
                ),
                (DECISION_LABEL.to_string(), self.kind.reason().to_string()),
            ]),
            annotations: BTreeMap::from([(
                DETAILS_ANNOTATION.to_string(),
                serde_json::to_string(&details).unwrap_or_default(),
            )]),
        })
    }
}

/// What the Event says.
pub fn message(d: &Decision) -> String {
    let image = if d.digest.is_empty() {
        d.image.clone()
    } else {
        format!("{} ({})", d.image, d.digest)
    };
    let container = &d.container;
    let (rule, reason) = (&d.rule, &d.reason);
    match d.kind {
        DecisionKind::Denied => {
            format!("container {container}: image {image} denied by imagegate ({rule}): {reason}")
        }
        DecisionKind::AuditWouldDeny => format!(
            "container {container}: image {image} admitted in audit mode; enforce mode would deny \
             it ({rule}): {reason}"
        ),
        DecisionKind::BreakGlass => format!(
            "container {container}: image {image} admitted by break-glass, past imagegate's rules: \
             {reason}"
        ),
        DecisionKind::Unverified => format!(
            "container {container}: image {image} runs, but its signature no longer verifies \
             ({rule}): {reason}"
        ),
    }
}

/// The decision an admission Event tells (the reporter's side): `None` for
/// an Event that is not one.
pub fn decision_of_event(event: &Event) -> Option<Decision> {
    let labels = event.metadata.labels.as_ref()?;
    let kind = DecisionKind::from_reason(labels.get(DECISION_LABEL)?)?;
    let details: Details = serde_json::from_str(
        event
            .metadata
            .annotations
            .as_ref()?
            .get(DETAILS_ANNOTATION)?,
    )
    .ok()?;
    let object = &event.involved_object;
    let at = event
        .last_timestamp
        .as_ref()
        .or(event.first_timestamp.as_ref())
        .map(|t| t.0.as_millisecond())?;
    Some(Decision {
        kind,
        subject: Subject {
            api_version: object.api_version.clone()?,
            kind: object.kind.clone()?,
            namespace: object.namespace.clone().unwrap_or_default(),
            name: object.name.clone()?,
            uid: object.uid.clone().unwrap_or_default(),
        },
        container: details.container,
        image: details.image,
        digest: details.digest,
        rule: details.rule,
        reason: details.reason,
        signers: details.signers,
        at_ms: at,
        replica: event.reporting_instance.clone().unwrap_or_default(),
    })
}

/// Where the handlers put the decisions to tell.
#[derive(Clone)]
pub struct DecisionQueue {
    tx: mpsc::Sender<Decision>,
    dropped: Counter,
}

impl DecisionQueue {
    /// Queues `decisions` without waiting; what does not fit is counted in
    /// `admission_events{outcome="queue-full"}`.
    pub fn tell(&self, decisions: Vec<Decision>) {
        for decision in decisions {
            if self.tx.try_send(decision).is_err() {
                self.dropped.inc();
            }
        }
    }
}

/// The queue the handlers fill, and the receiving end for [`run`].
pub fn queue(
    metrics: &Family<OutcomeLabels, Counter>,
) -> (DecisionQueue, mpsc::Receiver<Decision>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let dropped = metrics
        .get_or_create(&OutcomeLabels {
            outcome: "queue-full",
        })
        .clone();
    (DecisionQueue { tx, dropped }, rx)
}

/// Writes an Event for each decision queued, until `stop` turns true.
pub async fn run(
    client: kube::Client,
    mut decisions: mpsc::Receiver<Decision>,
    metrics: Family<OutcomeLabels, Counter>,
    mut stop: watch::Receiver<bool>,
) {
    let mut recorder = Recorder::new(KubeEvents { client });
    loop {
        let decision = tokio::select! {
            Some(d) = decisions.recv() => d,
            _ = stop.wait_for(|s| *s) => return,
            else => return,
        };
        let now = imagegate_plumbing::clock::now_ms_i64();
        let outcome = match recorder.record(&decision, now).await {
            Ok(Recorded::Created { .. }) => "created",
            Ok(Recorded::Counted { .. }) => "counted",
            Ok(Recorded::AlreadyCounted) => "already-counted",
            Ok(Recorded::RateLimited) => "rate-limited",
            Ok(Recorded::NoPod) => "no-object",
            Err(e) => {
                warn!(
                    reason = decision.kind.reason(),
                    object = %decision.subject.name,
                    error = %e,
                    "could not write the admission decision's Event"
                );
                "failed"
            }
        };
        metrics.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

/// The reporter's side: every admission Event, as it is created or counted
/// (and, at the start, every one the apiserver still keeps), read back as
/// a decision into `out`, until `end` turns true. One watch, filtered by
/// the apiserver on [`DECISION_LABEL`]; kube-runtime's watcher re-lists and
/// resumes after errors (with backoff), so nothing is missed while the
/// apiserver keeps the Events.
pub async fn watch_decisions(
    client: kube::Client,
    out: mpsc::Sender<Decision>,
    mut end: watch::Receiver<bool>,
) {
    use futures_util::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};

    let api: kube::Api<Event> = kube::Api::all(client);
    let events = watcher(api, watcher::Config::default().labels(DECISION_LABEL))
        .default_backoff()
        .applied_objects();
    let mut events = std::pin::pin!(events);
    loop {
        let item = tokio::select! {
            item = events.next() => item,
            _ = end.wait_for(|e| *e) => return,
        };
        match item {
            Some(Ok(event)) => {
                if let Some(decision) = decision_of_event(&event)
                    && out.send(decision).await.is_err()
                {
                    return;
                }
            }
            Some(Err(e)) => warn!(
                error = %imagegate_plumbing::errors::error_chain(&e),
                "cannot watch the admission Events (needs list and watch on events); the \
                 reports miss admission decisions until it can"
            ),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(kind: DecisionKind) -> Decision {
        Decision {
            kind,
            subject: Subject {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                namespace: "shop".into(),
                name: "web-5d8f".into(),
                uid: "rs-uid".into(),
            },
            container: "app".into(),
            image: "quay.io/x/app:1".into(),
            digest: "sha256:ab".into(),
            rule: "internal-only".into(),
            reason: "registry quay.io is not allowed".into(),
            signers: vec!["key release (sha256:cd)".into()],
            at_ms: 1_800_000_000_000,
            replica: "imagegate-webhook-7c9-abc".into(),
        }
    }

    #[test]
    fn an_admission_event_reads_back_as_the_decision_it_tells() {
        for kind in [
            DecisionKind::Denied,
            DecisionKind::AuditWouldDeny,
            DecisionKind::BreakGlass,
            DecisionKind::Unverified,
        ] {
            let d = decision(kind);
            let o = d.occurrence().unwrap();
            let event = super::super::events::tests_support::event(&o);
            assert_eq!(event.reason.as_deref(), Some(kind.reason()));
            assert_eq!(decision_of_event(&event), Some(d));
        }
    }

    #[test]
    fn events_that_are_not_admission_decisions_are_not_read() {
        let d = decision(DecisionKind::Denied);
        let mut event = super::super::events::tests_support::event(&d.occurrence().unwrap());
        event
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(DETAILS_ANNOTATION.into(), "{not json".into());
        assert_eq!(decision_of_event(&event), None);
        let mut event = super::super::events::tests_support::event(&d.occurrence().unwrap());
        event
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(DECISION_LABEL.into(), "NeverAdmitted".into());
        assert_eq!(decision_of_event(&event), None);
    }

    #[test]
    fn messages_say_what_happened_and_why() {
        let denied = message(&decision(DecisionKind::Denied));
        assert!(denied.contains("denied") && denied.contains("quay.io is not allowed"));
        let audit = message(&decision(DecisionKind::AuditWouldDeny));
        assert!(audit.contains("audit mode") && audit.contains("would deny"));
        assert!(message(&decision(DecisionKind::BreakGlass)).contains("break-glass"));
        assert!(message(&decision(DecisionKind::Unverified)).contains("no longer verifies"));
    }
}
