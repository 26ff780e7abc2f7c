//! What the reports hold, kept in memory by the writer: per report, one
//! result per container, bounded, with what changed since the last write.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};

use super::{Format, REPORT_NAME};
use crate::report::{
    admission,
    events::message,
    model::{Decision, DecisionKind, Kind, NodeViolation, PodRef, Subject},
};

/// The policy every node result is filed under: what the agents check.
pub const POLICY: &str = "imagegate-admitted-images";
/// The policy admission decisions are filed under: what the webhook
/// checks.
pub const ADMISSION_POLICY: &str = "imagegate-admission";
/// A denial stays this long after its last occurrence, unless set.
pub const DENIED_TTL_MS: i64 = 3_600_000;
/// `source` of every result and report.
pub const SOURCE: &str = "imagegate";
/// How many results were dropped from a full report, on the report.
pub const DROPPED_ANNOTATION: &str = "imagegate.dev/dropped-results";

/// Which report a result goes to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// A namespace's report: containers of its pods.
    Namespace(String),
    /// The cluster report: containers that are no pod's.
    Cluster,
}

/// One container's result: the last violation seen for it.
#[derive(Clone, Debug)]
struct Entry {
    at_ms: i64,
    /// The pod whose deletion takes the result out.
    pod: Option<PodRef>,
    /// When the result goes, whatever exists (an admission result with no
    /// pod to follow: a denial's pod never existed).
    expires_at_ms: Option<i64>,
    result: Value,
}

#[derive(Default)]
struct Sheet {
    /// Container key -> its result.
    entries: HashMap<String, Entry>,
    /// Results dropped because the report was full, over its life.
    dropped: u64,
    /// Keys recorded, and keys removed, since the last write: what this
    /// writer adds to a report read again after a conflict. Everything
    /// else comes from the report as read (another writer may have taken
    /// results out since).
    recorded: BTreeSet<String>,
    removed: BTreeSet<String>,
}

impl Sheet {
    /// Takes out the entries `gone` selects, remembered as removed (a
    /// report read again after a conflict does not bring them back);
    /// returns how many.
    fn take_out(&mut self, gone: impl Fn(&Entry) -> bool) -> usize {
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| gone(e))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &keys {
            self.entries.remove(key);
            self.recorded.remove(key);
            self.removed.insert(key.clone());
        }
        keys.len()
    }
}

/// Every report's results, bounded per report.
pub struct Book {
    max: usize,
    denied_ttl_ms: i64,
    sheets: BTreeMap<Scope, Sheet>,
    changed: BTreeSet<Scope>,
}

impl Book {
    /// At most `max` results per report (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            denied_ttl_ms: DENIED_TTL_MS,
            sheets: BTreeMap::new(),
            changed: BTreeSet::new(),
        }
    }

    /// How long a denial stays after its last occurrence.
    pub fn set_denied_ttl_ms(&mut self, ttl_ms: i64) {
        self.denied_ttl_ms = ttl_ms.max(0);
    }

    /// Files `v` as its container's result (replacing an older one);
    /// returns how many results this dropped to stay within bounds.
    pub fn record(&mut self, v: &NodeViolation) -> u64 {
        let scope = scope_of(v.pod.as_ref());
        let key = key(v.pod.as_ref(), &v.node, &v.container);
        let entry = Entry {
            at_ms: v.at_ms,
            pod: v.pod.clone(),
            expires_at_ms: None,
            result: result(v),
        };
        self.file(scope, key, entry)
    }

    /// Files admission decision `d` as its container's admission result
    /// (one per object and container, beside the node's); returns how
    /// many results this dropped.
    pub fn record_decision(&mut self, d: &Decision) -> u64 {
        let scope = if d.subject.namespace.is_empty() {
            Scope::Cluster
        } else {
            Scope::Namespace(d.subject.namespace.clone())
        };
        let key = decision_key(&d.subject, &d.container);
        let pod = decision_pod(d.kind, &d.subject);
        let entry = Entry {
            at_ms: d.at_ms,
            expires_at_ms: pod.is_none().then(|| d.at_ms + self.denied_ttl_ms),
            pod,
            result: decision_result(d),
        };
        self.file(scope, key, entry)
    }

    fn file(&mut self, scope: Scope, key: String, entry: Entry) -> u64 {
        let sheet = self.sheets.entry(scope.clone()).or_default();
        sheet.removed.remove(&key);
        sheet.recorded.insert(key.clone());
        self.put(scope, key, entry)
    }

    fn put(&mut self, scope: Scope, key: String, entry: Entry) -> u64 {
        let sheet = self.sheets.entry(scope.clone()).or_default();
        if sheet
            .entries
            .get(&key)
            .is_some_and(|old| old.at_ms > entry.at_ms)
        {
            // An older violation of a container already reported newer.
            return 0;
        }
        sheet.entries.insert(key, entry);
        let mut dropped = 0;
        while sheet.entries.len() > self.max {
            let Some(oldest) = sheet
                .entries
                .iter()
                .min_by_key(|(k, e)| (e.at_ms, (*k).clone()))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            sheet.entries.remove(&oldest);
            dropped += 1;
        }
        sheet.dropped += dropped;
        self.changed.insert(scope);
        dropped
    }

    /// Takes the report as written (by this replica or another leader)
    /// as the base, and applies to it what this book recorded and removed
    /// since its last write: a new leader carries on from what is in the
    /// cluster, and a writer that lost a conflict neither undoes the other
    /// writer's removals nor loses its own changes. Newer results win.
    pub fn load(&mut self, scope: &Scope, report: &Value) {
        let dropped = report["metadata"]["annotations"][DROPPED_ANNOTATION]
            .as_str()
            .and_then(|d| d.parse::<u64>().ok())
            .unwrap_or(0);
        let changed = self.changed.contains(scope);
        let mut sheet = self.sheets.remove(scope).unwrap_or_default();
        let own: Vec<(String, Entry)> = sheet
            .recorded
            .iter()
            .filter_map(|k| Some((k.clone(), sheet.entries.get(k)?.clone())))
            .collect();
        sheet.entries.clear();
        let removed = sheet.removed.clone();
        self.sheets.insert(scope.clone(), sheet);
        for result in report["results"].as_array().into_iter().flatten() {
            if result["source"] != SOURCE {
                continue;
            }
            let Some((key, entry)) = entry_of(result, self.denied_ttl_ms) else {
                continue;
            };
            if !removed.contains(&key) {
                self.put(scope.clone(), key, entry);
            }
        }
        for (key, entry) in own {
            self.put(scope.clone(), key, entry);
        }
        let sheet = self.sheets.entry(scope.clone()).or_default();
        sheet.dropped = sheet.dropped.max(dropped);
        if !changed {
            // Loading what is written is no change to write.
            self.changed.remove(scope);
        }
    }

    /// Removes the results of pod `uid` (it is gone).
    pub fn remove_pod(&mut self, pod: &PodRef) {
        let scope = Scope::Namespace(pod.namespace.clone());
        if let Some(sheet) = self.sheets.get_mut(&scope)
            && sheet.take_out(|e| e.pod.as_ref().is_some_and(|p| p.uid == pod.uid)) > 0
        {
            self.changed.insert(scope);
        }
    }

    /// Takes out the results whose time is up; returns how many.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let mut expired = 0;
        for (scope, sheet) in &mut self.sheets {
            let gone = sheet.take_out(|e| e.expires_at_ms.is_some_and(|at| at <= now_ms));
            if gone > 0 {
                expired += gone;
                self.changed.insert(scope.clone());
            }
        }
        expired
    }

    /// Every pod a result names.
    pub fn pods(&self) -> Vec<PodRef> {
        let pods: BTreeSet<(String, String, String)> = self
            .sheets
            .values()
            .flat_map(|s| s.entries.values())
            .filter_map(|e| e.pod.as_ref())
            .map(|p| (p.namespace.clone(), p.name.clone(), p.uid.clone()))
            .collect();
        pods.into_iter()
            .map(|(namespace, name, uid)| PodRef {
                namespace,
                name,
                uid,
            })
            .collect()
    }

    /// The reports changed since the last call.
    pub fn take_changed(&mut self) -> Vec<Scope> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }

    /// `scope`'s report is written as rendered: nothing of this book's
    /// own is left to apply to a report read again.
    pub fn written(&mut self, scope: &Scope) {
        if let Some(sheet) = self.sheets.get_mut(scope) {
            sheet.recorded.clear();
            sheet.removed.clear();
        }
    }

    /// Marks `scope` changed again (its write failed).
    pub fn changed_again(&mut self, scope: Scope) {
        self.changed.insert(scope);
    }

    /// Whether the book holds anything for `scope`.
    pub fn knows(&self, scope: &Scope) -> bool {
        self.sheets.contains_key(scope)
    }

    /// The whole report object for `scope`, newest result first.
    pub fn render(&self, scope: &Scope, format: Format) -> Value {
        let empty = Sheet::default();
        let sheet = self.sheets.get(scope).unwrap_or(&empty);
        let mut entries: Vec<(&String, &Entry)> = sheet.entries.iter().collect();
        entries.sort_by(|(ka, a), (kb, b)| b.at_ms.cmp(&a.at_ms).then(ka.cmp(kb)));
        let results: Vec<Value> = entries.iter().map(|(_, e)| e.result.clone()).collect();
        let count = |outcome: &str| results.iter().filter(|r| r["result"] == outcome).count();
        let namespaced = matches!(scope, Scope::Namespace(_));
        let mut metadata = json!({
            "name": REPORT_NAME,
            "labels": {"app.kubernetes.io/managed-by": "imagegate"},
            "annotations": {DROPPED_ANNOTATION: sheet.dropped.to_string()},
        });
        if let Scope::Namespace(namespace) = scope {
            metadata["namespace"] = json!(namespace);
        }
        let mut report = json!({
            "apiVersion": format.group_version(),
            "kind": format.kind(namespaced),
            "metadata": metadata,
            "summary": {
                "pass": count("pass"), "fail": count("fail"), "warn": count("warn"),
                "error": count("error"), "skip": count("skip"),
            },
            "results": results,
        });
        if format == Format::OpenReports {
            // Only OpenReports names the report's source; PolicyReport
            // has it on each result alone.
            report["source"] = json!(SOURCE);
            // The contract with readers: how many results this report
            // holds at most.
            report["configuration"] = json!({"limits": {"maxResults": self.max}});
        }
        report
    }
}

fn scope_of(pod: Option<&PodRef>) -> Scope {
    match pod {
        Some(pod) => Scope::Namespace(pod.namespace.clone()),
        None => Scope::Cluster,
    }
}

/// One result per container: a pod's by its uid and name, others by node
/// and the runtime's key.
fn key(pod: Option<&PodRef>, node: &str, container: &str) -> String {
    match pod {
        Some(pod) => format!("{}/{container}", pod.uid),
        None => format!("{node}/{container}"),
    }
}

/// The rule, as the Event's reason: `kubectl get events` and the reports
/// use the same words.
fn rule(kind: Kind) -> &'static str {
    kind.reason()
}

/// The result for `v`, as the shared results schema defines it.
fn result(v: &NodeViolation) -> Value {
    let (outcome, severity) = match v.kind {
        Kind::NeverAdmitted | Kind::Killed => ("fail", "high"),
        // The agent cannot tell: no proof of a violation.
        Kind::Unidentified => ("warn", "medium"),
    };
    let at = v.at_ms.max(0);
    let mut result = json!({
        "source": SOURCE,
        "policy": POLICY,
        "rule": rule(v.kind),
        "result": outcome,
        "severity": severity,
        "scored": true,
        "category": "Supply chain",
        "timestamp": {"seconds": at / 1000, "nanos": (at % 1000) * 1_000_000},
        "message": message(v),
        "properties": {
            "node": v.node,
            "container": v.container,
            "image": v.image,
            "digest": v.digest,
        },
    });
    if let Some(pod) = &v.pod {
        let mut resource = json!({
            "apiVersion": "v1", "kind": "Pod",
            "namespace": pod.namespace, "name": pod.name,
        });
        if !pod.uid.is_empty() {
            resource["uid"] = json!(pod.uid);
        }
        result["resources"] = json!([resource]);
    }
    result
}

/// The key of an admission result: the object and the container.
fn decision_key(subject: &Subject, container: &str) -> String {
    format!("admission/{}/{container}", subject.key())
}

/// The pod whose deletion takes a decision's result out: the pod admitted
/// or running. Results with none to follow (a denied pod never exists; a
/// workload's or an ImageReview's namespace results) expire instead, the
/// TTL after their last occurrence.
fn decision_pod(kind: DecisionKind, subject: &Subject) -> Option<PodRef> {
    if kind == DecisionKind::Denied {
        None
    } else {
        subject.as_pod()
    }
}

/// The result for admission decision `d`.
fn decision_result(d: &Decision) -> Value {
    let (outcome, severity) = match d.kind {
        DecisionKind::Denied | DecisionKind::Unverified => ("fail", "high"),
        // Admitted: running, but not as the policy would have it.
        DecisionKind::AuditWouldDeny => ("warn", "medium"),
        DecisionKind::BreakGlass => ("warn", "high"),
    };
    let at = d.at_ms.max(0);
    let mut properties = json!({
        "container": d.container,
        "image": d.image,
        "imagegateRule": d.rule,
        "replica": d.replica,
    });
    if !d.digest.is_empty() {
        properties["digest"] = json!(d.digest);
    }
    if !d.signers.is_empty() {
        properties["signer"] = json!(d.signers.join(", "));
    }
    let mut resource = json!({
        "apiVersion": d.subject.api_version, "kind": d.subject.kind, "name": d.subject.name,
    });
    if !d.subject.namespace.is_empty() {
        resource["namespace"] = json!(d.subject.namespace);
    }
    if !d.subject.uid.is_empty() {
        resource["uid"] = json!(d.subject.uid);
    }
    json!({
        "source": SOURCE,
        "policy": ADMISSION_POLICY,
        "rule": d.kind.reason(),
        "result": outcome,
        "severity": severity,
        "scored": true,
        "category": "Supply chain",
        "timestamp": {"seconds": at / 1000, "nanos": (at % 1000) * 1_000_000},
        "message": admission::message(d),
        "properties": properties,
        "resources": [resource],
    })
}

/// A written admission result read back.
fn decision_entry_of(result: &Value, at_ms: i64, denied_ttl_ms: i64) -> Option<(String, Entry)> {
    let kind = DecisionKind::from_reason(result["rule"].as_str()?)?;
    let container = result["properties"]["container"].as_str()?;
    let resource = result["resources"][0].as_object()?;
    let field = |name: &str| {
        resource
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let subject = Subject {
        api_version: field("apiVersion"),
        kind: field("kind"),
        namespace: field("namespace"),
        name: field("name"),
        uid: field("uid"),
    };
    let pod = decision_pod(kind, &subject);
    Some((
        decision_key(&subject, container),
        Entry {
            at_ms,
            expires_at_ms: pod.is_none().then(|| at_ms + denied_ttl_ms),
            pod,
            result: result.clone(),
        },
    ))
}

/// A written result read back: its key and entry.
fn entry_of(result: &Value, denied_ttl_ms: i64) -> Option<(String, Entry)> {
    let at_ms = result["timestamp"]["seconds"].as_i64()? * 1000
        + result["timestamp"]["nanos"].as_i64().unwrap_or(0) / 1_000_000;
    if result["policy"] == ADMISSION_POLICY {
        return decision_entry_of(result, at_ms, denied_ttl_ms);
    }
    let properties = &result["properties"];
    let node = properties["node"].as_str()?;
    let container = properties["container"].as_str()?;
    let pod = result["resources"][0]
        .as_object()
        .filter(|r| r.get("kind").and_then(Value::as_str) == Some("Pod"))
        .and_then(|r| {
            Some(PodRef {
                namespace: r.get("namespace")?.as_str()?.to_string(),
                name: r.get("name")?.as_str()?.to_string(),
                uid: r
                    .get("uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            })
        });
    let key = key(pod.as_ref(), node, container);
    Some((
        key,
        Entry {
            at_ms,
            pod,
            expires_at_ms: None,
            result: result.clone(),
        },
    ))
}
