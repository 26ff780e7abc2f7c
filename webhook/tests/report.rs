//! The reporter's writes against the stand-in apiserver (testkit's: strict
//! about the API's types and the report CRDs' schemas, 409 on stale
//! updates as the real one): the Lease that elects one writer, and the
//! Events and policy reports violations become.
//! Admission decisions: the Events each replica writes, and the report
//! results the reporter files from watching them.
//! Reading agents' violations, with real agents, is in
//! e2e/tests/chart_pods.rs.

mod common;

use std::{net::IpAddr, time::Duration};

use imagegate_testkit::{apiserver::Apiserver, ca::Ca};
use imagegate_webhook::{
    adopt::cluster::Apiserver as Cluster,
    report::{
        events::{KubeEvents, Recorded, Recorder},
        lease::{self, LeaseConfig},
        model::{Kind, NodeViolation, PodRef},
        reports::{
            Format,
            writer::{KubeReports, Writer},
        },
    },
};
use tokio::{sync::watch, time::Instant};

async fn stand_in() -> (Apiserver, tempfile::TempDir, kube::Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = Ca::new("apiserver-ca");
    let apiserver = Apiserver::start(&ca, IpAddr::from([127, 0, 0, 1])).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, apiserver.kubeconfig()).unwrap();
    let client = Cluster::connect(Some(&kubeconfig)).await.unwrap().client();
    (apiserver, dir, client)
}

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        namespace: "imagegate".into(),
        name: "imagegate-reporter".into(),
        identity: identity.into(),
        duration: Duration::from_secs(3),
        renew_every: Duration::from_millis(500),
        retry_every: Duration::from_millis(200),
    }
}

struct Candidate {
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn candidate(client: &kube::Client, identity: &str) -> Candidate {
    let (leading_tx, leading) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(lease::run(
        client.clone(),
        config(identity),
        leading_tx,
        stop_rx,
    ));
    Candidate {
        leading,
        stop,
        task,
    }
}

/// Waits up to `within` for `which` to lead, checking every 20 ms that no
/// two candidates lead at once.
async fn wait_leader(candidates: &[&Candidate], which: usize, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let leading: Vec<bool> = candidates.iter().map(|c| *c.leading.borrow()).collect();
        assert!(
            leading.iter().filter(|l| **l).count() <= 1,
            "two leaders at once: {leading:?}"
        );
        if leading[which] {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "candidate {which} did not lead within {within:?}: {leading:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn holder(apiserver: &Apiserver) -> String {
    let leases = apiserver.objects("Lease");
    assert_eq!(leases.len(), 1, "{leases:?}");
    leases[0]["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_replica_reports_and_hands_over_at_once_on_stop_or_after_the_lease_on_a_crash() {
    let (apiserver, _dir, client) = stand_in().await;
    let a = candidate(&client, "webhook-a");
    // b starts once a holds the lease, so the first leader is known.
    wait_leader(&[&a], 0, Duration::from_secs(5)).await;
    let b = candidate(&client, "webhook-b");
    // Two candidates for three lease lengths: a keeps it, b never leads.
    let settled = Instant::now();
    while settled.elapsed() < Duration::from_secs(9) {
        assert!(*a.leading.borrow() && !*b.leading.borrow());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(holder(&apiserver), "webhook-a");

    // a stops (SIGTERM): it releases the lease, b takes it at once.
    a.stop.send(true).unwrap();
    let handed = wait_leader(&[&a, &b], 1, Duration::from_secs(3)).await;
    assert!(handed < Duration::from_secs(2), "{handed:?}");
    assert_eq!(holder(&apiserver), "webhook-b");
    let lease = &apiserver.objects("Lease")[0];
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");

    // b crashes (no release): c waits the lease out, then takes it.
    let c = candidate(&client, "webhook-c");
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.task.abort();
    let crashed = Instant::now();
    // (b's receiver keeps its last value: the crashed process is gone.)
    wait_leader(&[&c], 0, Duration::from_secs(8)).await;
    let took = crashed.elapsed();
    assert!(
        took >= Duration::from_millis(2_500) && took < Duration::from_secs(6),
        "took over after {took:?}: before the lease ran out, or long after"
    );
    assert_eq!(holder(&apiserver), "webhook-c");
    assert!(apiserver.refused().is_empty(), "{:?}", apiserver.refused());
    drop(c);
}

fn violation(at_ms: i64) -> NodeViolation {
    NodeViolation {
        node: "node-1".into(),
        seq: 7,
        at_ms,
        pod: Some(PodRef {
            namespace: "shop".into(),
            name: "legacy-7d9f".into(),
            uid: "0b9e8a1c-4a57-4f0e-9a39-0e7c2a7f4a11".into(),
        }),
        container: "main".into(),
        image: "registry.local/shop/legacy:1".into(),
        digest: "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".into(),
        kind: Kind::NeverAdmitted,
        reason: "no webhook admitted this digest".into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn violations_become_events_the_apiserver_accepts_counted_once_across_leaders() {
    let (apiserver, _dir, client) = stand_in().await;
    let t0 = 1_800_000_000_000;
    let mut recorder = Recorder::new(KubeEvents {
        client: client.clone(),
    });
    let Recorded::Created { name } = recorder.record(&violation(t0), t0).await.unwrap() else {
        panic!("not created");
    };
    assert_eq!(
        recorder
            .record(&violation(t0 + 60_000), t0 + 60_000)
            .await
            .unwrap(),
        Recorded::Counted {
            name: name.clone(),
            count: 2
        }
    );
    // A new leader: what it reads again is already counted.
    let mut next = Recorder::new(KubeEvents { client });
    for at in [t0, t0 + 60_000] {
        assert_eq!(
            next.record(&violation(at), t0 + 90_000).await.unwrap(),
            Recorded::AlreadyCounted
        );
    }
    assert!(apiserver.refused().is_empty(), "{:?}", apiserver.refused());
    let events = apiserver.objects("Event");
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event["metadata"]["name"], name.as_str());
    assert_eq!(event["metadata"]["namespace"], "shop");
    assert_eq!(event["involvedObject"]["kind"], "Pod");
    assert_eq!(event["involvedObject"]["name"], "legacy-7d9f");
    assert_eq!(
        event["involvedObject"]["fieldPath"],
        "spec.containers{main}"
    );
    assert_eq!(event["reason"], "NeverAdmitted");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["count"], 2);
    assert_eq!(event["source"]["host"], "node-1");
    assert_eq!(event["firstTimestamp"], "2027-01-15T08:00:00Z");
    assert_eq!(event["lastTimestamp"], "2027-01-15T08:01:00Z");
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains("registry.local/shop/legacy:1 (sha256:2c26")
            && message.contains("never admitted"),
        "{message}"
    );
}

fn pod_json(namespace: &str, name: &str, uid: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "uid": uid},
        "spec": {"containers": [{"name": "main", "image": "registry.local/shop/legacy:1"}]},
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn violations_become_reports_the_crds_accept_carried_on_by_a_new_leader() {
    let (apiserver, _dir, client) = stand_in().await;
    let t0 = 1_800_000_000_000;
    let legacy = violation(t0);
    let mut gone = violation(t0 + 1_000);
    gone.pod = Some(PodRef {
        namespace: "shop".into(),
        name: "batch-1".into(),
        uid: "uid-batch-1".into(),
    });
    let mut podless = violation(t0 + 2_000);
    podless.pod = None;
    podless.container = "default/ctr-run-1".into();
    let legacy_pod = legacy.pod.clone().unwrap();
    apiserver.set_pods(vec![pod_json("shop", &legacy_pod.name, &legacy_pod.uid)]);

    let sink = || KubeReports {
        client: client.clone(),
    };
    let mut first = Writer::new(sink(), Format::OpenReports, 100);
    for v in [&legacy, &gone, &podless] {
        first.record(v);
    }
    let flushed = first.flush().await;
    assert_eq!(flushed.written, 2, "{flushed:?}");
    assert!(apiserver.refused().is_empty(), "{:?}", apiserver.refused());
    let reports = apiserver.objects("Report");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["metadata"]["namespace"], "shop");
    assert_eq!(reports[0]["summary"]["fail"], 2);
    let cluster = apiserver.objects("ClusterReport");
    assert_eq!(cluster.len(), 1);
    assert_eq!(
        cluster[0]["results"][0]["properties"]["container"],
        "default/ctr-run-1"
    );

    // A new leader: it reads what is written, adds to it, and takes out
    // the pod that is gone.
    let mut second = Writer::new(sink(), Format::OpenReports, 100);
    let mut again = violation(t0 + 5_000);
    again.kind = Kind::Killed;
    second.record(&again);
    assert_eq!(second.flush().await.written, 1);
    assert_eq!(second.prune(100).await, 1, "batch-1 is gone");
    assert_eq!(second.flush().await.written, 1);
    let report = &apiserver.objects("Report")[0];
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{report:#}");
    assert_eq!(results[0]["rule"], "Killed", "updated, not appended");
    assert_eq!(results[0]["resources"][0]["name"], legacy_pod.name.as_str());
    assert_eq!(report["summary"]["fail"], 1);

    // The old leader's stale write conflicts; it reads again and applies
    // its own change only: batch-1, taken out by the new leader, stays out.
    let mut newer = violation(t0 + 9_000);
    newer.container = "sidecar".into();
    first.record(&newer);
    let flushed = first.flush().await;
    assert_eq!((flushed.written, flushed.conflicts), (0, 1), "{flushed:?}");
    assert_eq!(first.flush().await.written, 1);
    let report = &apiserver.objects("Report")[0];
    assert_eq!(report["summary"]["fail"], 2, "{report:#}");
    let named: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["resources"][0]["name"].as_str().unwrap())
        .collect();
    assert!(!named.contains(&"batch-1"), "{report:#}");
    assert!(apiserver.refused().is_empty(), "{:?}", apiserver.refused());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_crds_the_writer_says_so_and_writes_once_they_exist() {
    let (apiserver, _dir, client) = stand_in().await;
    apiserver.set_crds_installed(false);
    let mut writer = Writer::new(KubeReports { client }, Format::WgPolicy, 10);
    writer.record(&violation(1_800_000_000_000));
    let flushed = writer.flush().await;
    assert!(flushed.crds_missing, "{flushed:?}");
    assert!(apiserver.objects("PolicyReport").is_empty());
    apiserver.set_crds_installed(true);
    let flushed = writer.flush().await;
    assert_eq!((flushed.written, flushed.crds_missing), (1, false));
    let reports = apiserver.objects("PolicyReport");
    assert_eq!(reports[0]["apiVersion"], "wgpolicyk8s.io/v1alpha2");
    assert_eq!(reports[0]["results"][0]["result"], "fail");
}

/// The webhook's routes with `policy`, telling its decisions as Events
/// through the stand-in, as replica `replica`.
fn telling_app(
    client: &kube::Client,
    policy: &str,
    replica: &str,
) -> imagegate_webhook::server::Routes {
    use imagegate_webhook::{
        policy::Policy,
        policy_store::PolicyStore,
        report::{ReportMetrics, admission},
        server::{AppState, Routes, limits::Budgets, metrics::Metrics},
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ReportMetrics::register(&mut registry);
    let (queue, queued) = admission::queue(&metrics.admission_events);
    let client = client.clone();
    tokio::spawn(async move {
        // Never stopped: the test's runtime ends it.
        let (_stop_tx, stop) = watch::channel(false);
        admission::run(client, queued, metrics.admission_events, stop).await
    });
    Routes::new(
        std::sync::Arc::new(AppState {
            policy: PolicyStore::fixed(Policy::from_yaml(policy).unwrap()),
            metrics: std::sync::Arc::new(Metrics::new()),
            resolver: None,
            ledger: None,
            budgets: Budgets::new(Default::default()),
            decisions: Some(queue),
            replica: replica.into(),
        }),
        None,
    )
}

const INTERNAL_ONLY: &str = "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmode: MODE\n\
                             rules:\n  - name: internal-only\n    registries: [registry.internal]\n";

/// Waits for the Event with `reason` on `object` (kind/name) and `count`.
async fn wait_admission_event(
    apiserver: &Apiserver,
    reason: &str,
    kind: &str,
    name: &str,
    count: i64,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = apiserver.objects("Event");
        if let Some(event) = events.iter().find(|e| {
            e["reason"] == reason
                && e["involvedObject"]["kind"] == kind
                && e["involvedObject"]["name"] == name
                && e["count"].as_i64() >= Some(count)
        }) {
            return event.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} Event on {kind} {name} (count {count}): {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admission_decisions_become_events_on_their_objects_and_results_in_the_report() {
    use imagegate_webhook::report::{admission, model::DecisionKind};
    let (apiserver, _dir, client) = stand_in().await;
    // Two replicas: one enforcing, one (say, during a policy rollout) in
    // audit mode. Both are asked about the pod a ReplicaSet creates.
    let enforcing = telling_app(
        &client,
        &INTERNAL_ONLY.replace("MODE", "enforce"),
        "webhook-a",
    );
    let auditing = telling_app(
        &client,
        &INTERNAL_ONLY.replace("MODE", "audit"),
        "webhook-b",
    );
    let (path, review) = common::fixture("admissionreview-3.json");
    let body = serde_json::to_vec(&review).unwrap();
    let (status, answer) = common::send(&enforcing, "POST", &path, body.clone()).await;
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let (_, answer) = common::send(&auditing, "POST", &path, body.clone()).await;
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");

    // The denial is told on the ReplicaSet (the pod was never created; its
    // ReplicaSet makes another), the audit verdict on the pod that runs.
    let denied =
        wait_admission_event(&apiserver, "ImageDenied", "ReplicaSet", "d2-588fc765b5", 1).await;
    assert_eq!(denied["type"], "Warning");
    assert_eq!(
        denied["involvedObject"]["uid"],
        "dc998bf4-94a9-4879-a907-6a8a3b746a52"
    );
    assert_eq!(denied["reportingInstance"], "webhook-a");
    assert_eq!(denied["metadata"]["namespace"], "default");
    let message = denied["message"].as_str().unwrap();
    assert!(
        message.contains("nginx:1.25")
            && message.contains("accepted here: registries registry.internal"),
        "{message}"
    );
    let audited = wait_admission_event(
        &apiserver,
        "AuditWouldDeny",
        "Pod",
        "d2-588fc765b5-fmgqc",
        1,
    )
    .await;
    assert_eq!(
        audited["involvedObject"]["uid"],
        "1d3f1499-720d-4bf8-b194-bdcc2b977d61"
    );
    assert_eq!(
        audited["involvedObject"]["fieldPath"], "spec.containers{nginx}",
        "{audited}"
    );

    // The ReplicaSet retries (another pod, another name and uid; the same
    // controller): the same Event, counted.
    let mut retry = review.clone();
    retry["request"]["uid"] = serde_json::json!("retry-1");
    retry["request"]["name"] = serde_json::json!("d2-588fc765b5-x7k2p");
    retry["request"]["object"]["metadata"]["name"] = serde_json::json!("d2-588fc765b5-x7k2p");
    retry["request"]["object"]["metadata"]["uid"] =
        serde_json::json!("9f1c0d9e-0000-4000-8000-000000000001");
    tokio::time::sleep(Duration::from_millis(5)).await;
    common::send(
        &enforcing,
        "POST",
        &path,
        serde_json::to_vec(&retry).unwrap(),
    )
    .await;
    wait_admission_event(&apiserver, "ImageDenied", "ReplicaSet", "d2-588fc765b5", 2).await;
    let denials = apiserver
        .objects("Event")
        .into_iter()
        .filter(|e| e["reason"] == "ImageDenied")
        .count();
    assert_eq!(denials, 1, "one Event per controller, reason and image");

    // A dry run is not told.
    let mut dry = review.clone();
    dry["request"]["dryRun"] = serde_json::json!(true);
    dry["request"]["object"]["metadata"]["ownerReferences"] = serde_json::json!([]);
    dry["request"]["object"]["metadata"]["name"] = serde_json::json!("dry");
    dry["request"]["name"] = serde_json::json!("dry");
    common::send(&enforcing, "POST", &path, serde_json::to_vec(&dry).unwrap()).await;

    // The reporter watches the admission Events (label-selected, from the
    // list onwards) and files one result per object and container.
    let (tx, mut decisions) = tokio::sync::mpsc::channel(16);
    let (end_tx, end) = watch::channel(false);
    tokio::spawn(admission::watch_decisions(client.clone(), tx, end));
    let mut writer = Writer::new(
        KubeReports {
            client: client.clone(),
        },
        Format::OpenReports,
        10,
    )
    .with_denied_ttl(Duration::from_secs(3600));
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(seen.contains(&DecisionKind::Denied) && seen.contains(&DecisionKind::AuditWouldDeny)) {
        let d = tokio::time::timeout_at(deadline, decisions.recv())
            .await
            .expect("the watch delivers both decisions")
            .unwrap();
        assert_ne!(d.subject.name, "dry", "a dry run was told: {d:?}");
        writer.record_decision(&d);
        seen.push(d.kind);
    }
    assert_eq!(writer.flush().await.written, 1);
    let report = &apiserver.objects("Report")[0];
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{report:#}");
    assert_eq!(report["summary"]["fail"], 1);
    assert_eq!(report["summary"]["warn"], 1);
    let denied = results.iter().find(|r| r["rule"] == "ImageDenied").unwrap();
    assert_eq!(denied["policy"], "imagegate-admission");
    assert_eq!(denied["resources"][0]["kind"], "ReplicaSet");
    assert_eq!(denied["properties"]["container"], "nginx");
    // No rule accepts it: the policy's default verdict decided.
    assert_eq!(denied["properties"]["imagegateRule"], "default");
    let audit = results
        .iter()
        .find(|r| r["rule"] == "AuditWouldDeny")
        .unwrap();
    assert_eq!(audit["result"], "warn");
    assert_eq!(
        audit["resources"][0]["uid"],
        "1d3f1499-720d-4bf8-b194-bdcc2b977d61"
    );

    // Watched, not only listed: the next retry's count reaches the
    // reporter as the Event changes.
    let first_at = denied["timestamp"]["seconds"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    retry["request"]["uid"] = serde_json::json!("retry-2");
    common::send(
        &enforcing,
        "POST",
        &path,
        serde_json::to_vec(&retry).unwrap(),
    )
    .await;
    wait_admission_event(&apiserver, "ImageDenied", "ReplicaSet", "d2-588fc765b5", 3).await;
    let again = tokio::time::timeout(Duration::from_secs(10), decisions.recv())
        .await
        .expect("the watch delivers the counted Event")
        .unwrap();
    assert_eq!(again.kind, DecisionKind::Denied);
    assert!(again.at_ms / 1000 > first_at, "{again:?}");
    writer.record_decision(&again);

    // A denial goes once its time is up (no pod's deletion will take it
    // out); the audit result stays while its pod runs.
    let later = i64::try_from(imagegate_plumbing::clock::now_ms()).unwrap() + 3_600_001;
    assert_eq!(writer.expire(later), 1);
    assert_eq!(writer.flush().await.written, 1);
    let report = &apiserver.objects("Report")[0];
    let rules: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["AuditWouldDeny"], "{report:#}");
    assert!(apiserver.refused().is_empty(), "{:?}", apiserver.refused());
    end_tx.send(true).unwrap();
}
