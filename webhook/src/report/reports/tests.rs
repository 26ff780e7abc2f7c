use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use imagegate_deploy_check::crd::Crd;
use serde_json::Value;

use super::{
    Format,
    book::{Book, DROPPED_ANNOTATION, Scope},
    writer::{Flushed, ReportSink, SinkError, Writer},
};
use crate::report::model::{Kind, NodeViolation, PodRef};

fn pod(namespace: &str, name: &str, uid: &str) -> PodRef {
    PodRef {
        namespace: namespace.into(),
        name: name.into(),
        uid: uid.into(),
    }
}

fn violation(pod: Option<PodRef>, container: &str, at_ms: i64, kind: Kind) -> NodeViolation {
    NodeViolation {
        node: "node-1".into(),
        seq: at_ms as u64,
        at_ms,
        pod,
        container: container.into(),
        image: "registry.example/shop/app:1".into(),
        digest: format!("sha256:{}", "a".repeat(64)),
        kind,
        reason: "never admitted".into(),
    }
}

/// The CRDs the chart installs, as an apiserver would check reports.
fn crds() -> Vec<Crd> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/imagegate/files/crds");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .map(|path| Crd::load(&path).unwrap())
        .collect()
}

fn assert_valid(report: &Value) {
    let crds = crds();
    let crd = crds
        .iter()
        .find(|c| c.defines(report))
        .unwrap_or_else(|| panic!("no CRD defines {report}"));
    let violations = crd.violations(report).unwrap();
    assert!(violations.is_empty(), "{violations:?}\n{report:#}");
}

#[test]
fn one_result_per_container_updated_and_a_summary_that_adds_up() {
    let mut book = Book::new(100);
    let web = pod("shop", "web-1", "uid-web");
    book.record(&violation(
        Some(web.clone()),
        "app",
        1_000,
        Kind::NeverAdmitted,
    ));
    book.record(&violation(Some(web.clone()), "app", 2_500, Kind::Killed));
    book.record(&violation(
        Some(web.clone()),
        "sidecar",
        1_500,
        Kind::Unidentified,
    ));
    // An older violation of a container reported newer changes nothing.
    book.record(&violation(Some(web), "app", 500, Kind::NeverAdmitted));
    book.record(&violation(
        None,
        "default/ctr-run-1",
        3_000,
        Kind::NeverAdmitted,
    ));
    assert_eq!(
        book.take_changed(),
        vec![Scope::Namespace("shop".into()), Scope::Cluster]
    );
    for format in [Format::OpenReports, Format::WgPolicy] {
        let report = book.render(&Scope::Namespace("shop".into()), format);
        assert_valid(&report);
        let results = report["results"].as_array().unwrap();
        assert_eq!(results.len(), 2, "{report:#}");
        // Newest first; the container's last violation, not both.
        assert_eq!(results[0]["rule"], "Killed");
        assert_eq!(results[0]["timestamp"]["seconds"], 2);
        assert_eq!(results[0]["timestamp"]["nanos"], 500_000_000);
        assert_eq!(results[0]["resources"][0]["uid"], "uid-web");
        assert_eq!(results[0]["properties"]["node"], "node-1");
        assert_eq!(results[1]["result"], "warn", "no proof: a warning");
        assert_eq!(report["summary"]["fail"], 1);
        assert_eq!(report["summary"]["warn"], 1);
        let total: u64 = ["pass", "fail", "warn", "error", "skip"]
            .iter()
            .map(|k| report["summary"][k].as_u64().unwrap())
            .sum();
        assert_eq!(total as usize, results.len());
        let cluster = book.render(&Scope::Cluster, format);
        assert_valid(&cluster);
        assert_eq!(cluster["kind"], format.kind(false));
        assert!(cluster["metadata"]["namespace"].is_null());
        assert!(cluster["results"][0]["resources"].is_null());
    }
}

#[test]
fn a_full_report_drops_its_oldest_results_and_counts_them() {
    let mut book = Book::new(3);
    for (i, at) in [5_000, 1_000, 4_000, 2_000, 3_000].iter().enumerate() {
        let dropped = book.record(&violation(
            Some(pod("shop", &format!("p{i}"), &format!("u{i}"))),
            "app",
            *at,
            Kind::NeverAdmitted,
        ));
        assert_eq!(dropped, u64::from(i >= 3), "record {i}");
    }
    let report = book.render(&Scope::Namespace("shop".into()), Format::OpenReports);
    assert_valid(&report);
    let times: Vec<i64> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["timestamp"]["seconds"].as_i64().unwrap())
        .collect();
    assert_eq!(times, vec![5, 4, 3], "the two oldest went");
    assert_eq!(report["metadata"]["annotations"][DROPPED_ANNOTATION], "2");
    assert_eq!(report["configuration"]["limits"]["maxResults"], 3);
}

/// The apiserver as the writer needs it, with resource versions.
#[derive(Default)]
struct FakeApi {
    reports: Mutex<HashMap<Scope, Value>>,
    version: Mutex<u64>,
    unserved: AtomicBool,
    pods: Mutex<HashMap<(String, String), Result<String, ()>>>,
    lookups: Mutex<usize>,
}

impl ReportSink for &FakeApi {
    async fn served(&self, _: Format) -> Result<bool, SinkError> {
        Ok(!self.unserved.load(Ordering::SeqCst))
    }

    async fn get(&self, _: Format, scope: &Scope) -> Result<Option<Value>, SinkError> {
        if self.unserved.load(Ordering::SeqCst) {
            return Err(SinkError::NotFound);
        }
        Ok(self.reports.lock().unwrap().get(scope).cloned())
    }

    async fn put(&self, _: Format, scope: &Scope, mut report: Value) -> Result<String, SinkError> {
        if self.unserved.load(Ordering::SeqCst) {
            return Err(SinkError::NotFound);
        }
        assert_valid(&report);
        let mut reports = self.reports.lock().unwrap();
        let stored = reports
            .get(scope)
            .map(|r| r["metadata"]["resourceVersion"].clone());
        let given = report["metadata"]["resourceVersion"].clone();
        match stored {
            Some(stored) if stored != given => return Err(SinkError::Conflict),
            None if !given.is_null() => return Err(SinkError::NotFound),
            _ => {}
        }
        let mut version = self.version.lock().unwrap();
        *version += 1;
        report["metadata"]["resourceVersion"] = Value::String(version.to_string());
        reports.insert(scope.clone(), report);
        Ok(version.to_string())
    }

    async fn pod_uid(&self, pod: &PodRef) -> Result<Option<String>, SinkError> {
        *self.lookups.lock().unwrap() += 1;
        match self
            .pods
            .lock()
            .unwrap()
            .get(&(pod.namespace.clone(), pod.name.clone()))
        {
            Some(Ok(uid)) => Ok(Some(uid.clone())),
            Some(Err(())) => Err(SinkError::Api("timed out".into())),
            None => Ok(None),
        }
    }
}

fn stored(api: &FakeApi, namespace: &str) -> Value {
    api.reports.lock().unwrap()[&Scope::Namespace(namespace.into())].clone()
}

fn result_pods(report: &Value) -> Vec<String> {
    let mut pods: Vec<String> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["resources"][0]["name"].as_str().unwrap().to_string())
        .collect();
    pods.sort();
    pods
}

#[tokio::test]
async fn a_new_leader_carries_on_and_a_conflict_reads_again() {
    let api = FakeApi::default();
    let mut first = Writer::new(&api, Format::OpenReports, 10);
    first.record(&violation(
        Some(pod("shop", "a", "ua")),
        "app",
        1_000,
        Kind::NeverAdmitted,
    ));
    assert_eq!(first.flush().await.written, 1);
    assert_eq!(first.flush().await, Flushed::default(), "nothing changed");

    // A new leader knows nothing yet: it reads the report before writing.
    let mut second = Writer::new(&api, Format::OpenReports, 10);
    second.record(&violation(
        Some(pod("shop", "b", "ub")),
        "app",
        2_000,
        Kind::Killed,
    ));
    assert_eq!(second.flush().await.written, 1);
    assert_eq!(result_pods(&stored(&api, "shop")), ["a", "b"]);

    // The old leader, not yet aware it lost the Lease, writes at the
    // version it read: a conflict, then it reads again and merges.
    first.record(&violation(
        Some(pod("shop", "c", "uc")),
        "app",
        3_000,
        Kind::NeverAdmitted,
    ));
    let flushed = first.flush().await;
    assert_eq!((flushed.written, flushed.conflicts), (0, 1));
    assert_eq!(first.flush().await.written, 1);
    let report = stored(&api, "shop");
    assert_eq!(result_pods(&report), ["a", "b", "c"]);
    assert_eq!(report["summary"]["fail"], 3);
}

#[tokio::test]
async fn without_the_crds_nothing_is_lost_and_it_is_said() {
    let api = FakeApi::default();
    api.unserved.store(true, Ordering::SeqCst);
    let mut writer = Writer::new(&api, Format::WgPolicy, 10);
    writer.record(&violation(
        Some(pod("shop", "a", "ua")),
        "app",
        1_000,
        Kind::NeverAdmitted,
    ));
    writer.record(&violation(None, "default/x", 1_000, Kind::NeverAdmitted));
    let flushed = writer.flush().await;
    assert!(flushed.crds_missing);
    assert_eq!(flushed.written, 0);
    // Installed later: everything held is written.
    api.unserved.store(false, Ordering::SeqCst);
    let flushed = writer.flush().await;
    assert_eq!((flushed.written, flushed.crds_missing), (2, false));
    assert_eq!(stored(&api, "shop")["kind"], "PolicyReport");
}

#[tokio::test]
async fn results_of_gone_pods_are_removed_and_of_unreadable_ones_kept() {
    let api = FakeApi::default();
    {
        let mut pods = api.pods.lock().unwrap();
        pods.insert(("shop".into(), "running".into()), Ok("u1".into()));
        // Deleted and created again under the same name: another pod.
        pods.insert(("shop".into(), "recreated".into()), Ok("new-uid".into()));
        pods.insert(("shop".into(), "unreadable".into()), Err(()));
    }
    let mut writer = Writer::new(&api, Format::OpenReports, 10);
    for (name, uid) in [
        ("running", "u1"),
        ("recreated", "old-uid"),
        ("unreadable", "u3"),
        ("deleted", "u4"),
    ] {
        writer.record(&violation(
            Some(pod("shop", name, uid)),
            "app",
            1_000,
            Kind::NeverAdmitted,
        ));
    }
    writer.flush().await;
    // Two lookups per call: the next two pods on the second.
    assert_eq!(writer.prune(2).await + writer.prune(2).await, 2);
    assert_eq!(*api.lookups.lock().unwrap(), 4);
    assert_eq!(writer.flush().await.written, 1);
    let report = stored(&api, "shop");
    assert_eq!(result_pods(&report), ["running", "unreadable"]);
    assert_eq!(report["summary"]["fail"], 2);
}

fn decision(
    kind: crate::report::model::DecisionKind,
    subject: crate::report::model::Subject,
    at_ms: i64,
) -> crate::report::model::Decision {
    crate::report::model::Decision {
        kind,
        subject,
        container: "app".into(),
        image: "quay.io/x/app:1".into(),
        digest: String::new(),
        rule: "default".into(),
        reason: "no rule accepts it".into(),
        signers: Vec::new(),
        at_ms,
        replica: "webhook-0".into(),
    }
}

#[test]
fn admission_results_with_no_pod_to_follow_expire_and_pods_results_stay() {
    use crate::report::model::{DecisionKind, Subject};
    let t0 = 1_800_000_000_000;
    let ttl = 3_600_000;
    let mut book = Book::new(10);
    book.set_denied_ttl_ms(ttl);
    let running = pod("shop", "web-1", "uid-web-1");
    // On the pod that runs: goes with the pod, never expires.
    book.record_decision(&decision(
        DecisionKind::AuditWouldDeny,
        Subject::pod(&running),
        t0,
    ));
    // A denial on the pod's ReplicaSet, and break-glass through
    // ImageReview, on the namespace: nothing to follow, so they expire.
    let replicaset = Subject {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        namespace: "shop".into(),
        name: "web".into(),
        uid: "uid-rs".into(),
    };
    book.record_decision(&decision(DecisionKind::Denied, replicaset, t0));
    let namespace = Subject {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        namespace: String::new(),
        name: "shop".into(),
        uid: String::new(),
    };
    book.record_decision(&decision(DecisionKind::BreakGlass, namespace, t0));
    assert_eq!(book.pods(), vec![running.clone()]);
    let shop = book.render(&Scope::Namespace("shop".into()), Format::OpenReports);
    assert_valid(&shop);
    assert_eq!(shop["results"].as_array().unwrap().len(), 2);
    let cluster = book.render(&Scope::Cluster, Format::OpenReports);
    assert_valid(&cluster);
    assert_eq!(cluster["results"][0]["resources"][0]["kind"], "Namespace");

    assert_eq!(book.expire(t0 + ttl - 1), 0, "not yet");
    assert_eq!(book.expire(t0 + ttl), 2);
    let shop = book.render(&Scope::Namespace("shop".into()), Format::OpenReports);
    let rules: Vec<&str> = shop["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["AuditWouldDeny"]);
    let cluster = book.render(&Scope::Cluster, Format::OpenReports);
    assert_eq!(cluster["results"].as_array().unwrap().len(), 0);

    // Read back from a written report (a new leader), the same: the
    // denial recorded again expires, the pod's result does not.
    let mut again = Book::new(10);
    again.set_denied_ttl_ms(ttl);
    let written = {
        let mut book = Book::new(10);
        book.record_decision(&decision(
            DecisionKind::Denied,
            Subject {
                api_version: "v1".into(),
                kind: "Pod".into(),
                namespace: "shop".into(),
                name: "bare".into(),
                uid: "uid-bare".into(),
            },
            t0,
        ));
        book.record_decision(&decision(
            DecisionKind::Unverified,
            Subject::pod(&running),
            t0,
        ));
        book.render(&Scope::Namespace("shop".into()), Format::OpenReports)
    };
    again.load(&Scope::Namespace("shop".into()), &written);
    assert_eq!(again.pods(), vec![running], "a denied pod is not followed");
    assert_eq!(again.expire(t0 + ttl), 1);
}
