//! The webhook under hostile clients, in the memory the chart gives its pod
//! (a 256 MiB cgroup), with its default bounds: slow bodies, half-sent
//! headers and HTTP/2 stream floods, each from its own address while a
//! well-behaved client keeps sending reviews from 127.0.0.1. Each attack
//! was seen to take the webhook past 256 MiB (OOM-killed) or to hold
//! connections for minutes before the bounds existed.
//!
//! Needs root (the cgroup): run through `sudo -E cargo xtask test`.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use bytes::Bytes;
use common::{Ca, EXAMPLE_POLICY, admission_review, fixture};
use imagegate_testkit::{
    cgroup::MemoryCgroup,
    hostile::{self, AttackSummary, HugeRegistry, PhaseReport, Target, Watched, webhook_attacks},
    process::Process,
};
use serde_json::{Value, json};

const CHART_MEMORY_LIMIT: u64 = 256 * 1024 * 1024;
const MIB: usize = 1024 * 1024;

fn start(dir: &Path, cgroup: &MemoryCgroup, extra: &[&str]) -> (Process, SocketAddr) {
    hostile::start_webhook(
        Path::new(env!("CARGO_BIN_EXE_imagegate-webhook")),
        dir,
        cgroup,
        extra,
    )
}

fn check(report: &PhaseReport, alive: bool) {
    eprintln!(
        "{}",
        serde_json::to_string_pretty(report).expect("a report is JSON")
    );
    assert!(alive, "{}: the webhook died", report.attack);
    assert_eq!(report.oom_kills, 0, "{}: OOM-killed", report.attack);
    assert!(
        report.rss_peak_mib < 200.0,
        "{}: {:.0} MiB resident at the peak, too close to the 256 MiB limit",
        report.attack,
        report.rss_peak_mib
    );
    assert_eq!(
        report.summary.ended, report.summary.tried,
        "{}: connections left open: {:?}",
        report.attack, report.summary
    );
    assert!(
        report.well_behaved_requests >= 1 && report.well_behaved_errors.is_empty(),
        "{}: the well-behaved client got {} answers and these errors: {:?}",
        report.attack,
        report.well_behaved_requests,
        report.well_behaved_errors
    );
    assert!(
        report.returned_after_ms.is_some(),
        "{}: memory stayed at {:.0} MiB after the attack (before: {:.0} MiB)",
        report.attack,
        report.rss_after_mib,
        report.rss_before_mib
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_half_sent_and_multiplexed_clients_stay_bounded() {
    let ca = Ca::new("imagegate hostile-load CA");
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.server("webhook");
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), EXAMPLE_POLICY).unwrap();
    let cgroup = MemoryCgroup::new("webhook-hostile", CHART_MEMORY_LIMIT);
    let (mut webhook, address) = start(dir.path(), &cgroup, &[]);
    let target = Target::new(address, "localhost", &ca.pem());
    let (_, review) = fixture("admissionreview-3.json");
    let watched = Watched {
        pid: webhook.child.id(),
        cgroup: Some(&cgroup),
        target: target.clone(),
        path: "/validate".into(),
        body: serde_json::to_vec(&review).unwrap(),
    };
    // Warm up (allocator arenas, caches) so "before" is the steady state.
    let warm = hostile::phase("warm-up", &watched, async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        AttackSummary::default()
    })
    .await;
    assert!(warm.well_behaved_errors.is_empty(), "{warm:?}");

    let attacker = |n: u8| IpAddr::from([127, 0, 0, n]);
    // The attacks found before the bounds (testkit's `webhook_attacks`).
    let slow = webhook_attacks::slow_bodies(&watched, attacker(2)).await;
    check(&slow, webhook.child.try_wait().unwrap().is_none());
    // Ended by the bounds: answered (the uid-carrying denial, or 408/503)
    // within the 5 s body deadline, not held.
    assert!(
        slow.summary.longest_open_ms < 10_000,
        "slow bodies held for {} ms",
        slow.summary.longest_open_ms
    );

    let half = webhook_attacks::half_headers(&watched, attacker(3)).await;
    check(&half, webhook.child.try_wait().unwrap().is_none());
    assert!(
        half.summary.longest_open_ms < 10_000,
        "half-sent heads held for {} ms",
        half.summary.longest_open_ms
    );

    let h2 = webhook_attacks::h2_streams(&watched, attacker(4)).await;
    check(&h2, webhook.child.try_wait().unwrap().is_none());

    let _ = webhook.wait_message(
        "request bodies at their memory budget; refusing one",
        Duration::from_secs(1),
    );
    webhook.stop();
}

/// A dry-run Pod CREATE naming `images`.
fn dry_run_pod(images: &[String]) -> Vec<u8> {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
        .collect();
    let mut review = admission_review(
        "",
        "Pod",
        "CREATE",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
               "spec": {"containers": containers}}),
    );
    review["request"]["dryRun"] = true.into();
    serde_json::to_vec(&review).unwrap()
}

/// Found: four dry-run reviews of an image whose registry serves a 100 MiB
/// index took the webhook from 23 to 1,079 MiB; one review with 3,000
/// distinct tags caused 778 registry lookups in 2.3 s. Manifests are read
/// up to 4 MiB, and one review looks up at most 64 references.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registry_serving_huge_manifests_and_reviews_naming_thousands_of_tags_stay_bounded() {
    let ca = Ca::new("imagegate hostile-registry CA");
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.server("webhook");
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).unwrap();
    let registry = HugeRegistry::start(100 * MIB as u64).await;
    std::fs::write(
        dir.path().join("policy.yaml"),
        format!(
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: huge\n    \
             registries: ['{}']\n",
            registry.host
        ),
    )
    .unwrap();
    let cgroup = MemoryCgroup::new("webhook-registry", CHART_MEMORY_LIMIT);
    let (mut webhook, address) = start(
        dir.path(),
        &cgroup,
        &[
            "--digest-resolution",
            "on",
            "--plain-http-registry",
            &registry.host,
            "--registry-timeout",
            "10s",
        ],
    );
    let target = Target::new(address, "localhost", &ca.pem());
    let client = IpAddr::from([127, 0, 0, 1]);
    let (_, review) = fixture("admissionreview-3.json");
    let watched = Watched {
        pid: webhook.child.id(),
        cgroup: Some(&cgroup),
        target: target.clone(),
        path: "/validate".into(),
        body: serde_json::to_vec(&review).unwrap(),
    };

    let huge = hostile::phase(
        "4 reviews of images with a 100 MiB index",
        &watched,
        async {
            let reviews = ["1", "2", "chunked-1", "chunked-2"].map(|tag| {
                let target = target.clone();
                let body = dry_run_pod(&[format!("{}/app:{tag}", registry.host)]);
                tokio::spawn(async move {
                    hostile::post(&target, client, "/validate", Bytes::from(body)).await
                })
            });
            let mut summary = AttackSummary::default();
            for review in reviews {
                let (status, answer) = review.await.unwrap().expect("an answer");
                let answer: Value = serde_json::from_slice(&answer).unwrap();
                assert_eq!(status, 200);
                assert_eq!(answer["response"]["allowed"], false, "{answer}");
                let message = answer["response"]["status"]["message"].as_str().unwrap();
                assert!(
                    message.contains("could not resolve")
                        && message.contains("larger than the 4194304 bytes"),
                    "{message}"
                );
                summary.tried += 1;
                summary.ended += 1;
            }
            summary
        },
    )
    .await;
    check(&huge, webhook.child.try_wait().unwrap().is_none());
    assert!(huge.rss_peak_mib - huge.rss_before_mib < 32.0, "{huge:?}");
    // Nothing like the whole bodies went out: the webhook stopped reading
    // at 4 MiB (what sits in socket buffers aside).
    assert!(
        registry.bytes_sent() < 4 * 40 * MIB as u64,
        "{} bytes sent",
        registry.bytes_sent()
    );

    let before = registry.requests();
    let tags: Vec<String> = (0..3000)
        .map(|i| format!("{}/app:tag-{i}", registry.host))
        .collect();
    let (status, answer) = hostile::post(
        &target,
        client,
        "/validate",
        Bytes::from(dry_run_pod(&tags)),
    )
    .await
    .expect("an answer");
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("more than 64 distinct images"),
        "{message}"
    );
    // A HEAD and a GET for each of the 64 looked up.
    let asked = registry.requests() - before;
    assert!(asked <= 2 * 64, "{asked} registry requests for one review");
    eprintln!("one review naming 3,000 tags: {asked} registry requests");
    webhook.stop();
}
