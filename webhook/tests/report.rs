//! The reporter's writes against the stand-in apiserver (testkit's: strict
//! about the API's types and the report CRDs' schemas, 409 on stale
//! updates as the real one): the Lease that elects one writer, and the
//! Events and policy reports violations become.
//! Reading agents' violations, with real agents, is in
//! e2e/tests/chart_pods.rs.

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
