//! The demo's scenario, every step asserted, plus what a demo does not
//! show: a tag moved after admission, the webhook stopped, the agent
//! restarted, enforce mode, a pinned pod. Root: eBPF and containerd.

use std::time::Duration;

use imagegate_e2e::{Stack, patched_image, unique};
use imagegate_testkit::grpcurl;
use serde_json::json;

fn require_root() {
    imagegate_testkit::require_root("the end-to-end test loads eBPF and runs containerd");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_whole_flow_on_one_machine() {
    require_root();
    let mut stack = Stack::start().await.unwrap();
    stack.start_agent("audit").unwrap();
    stack.start_webhook().unwrap();
    let app = stack.images.app.clone();
    let miner = stack.images.miner.clone();
    let multi = stack.images.multi.clone();

    // Admission, as the apiserver asks.
    let r = stack
        .admission_review("/validate", "web", &app.reference)
        .await
        .unwrap();
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(
        r["auditAnnotations"]["resolved-digests"],
        format!("{}={}", app.reference, app.digest).as_str()
    );
    let s = stack.image_review(&[&multi.reference]).await.unwrap();
    assert_eq!(s["allowed"], true, "{s}");
    let latest = app.reference.replace(":1.0", ":latest");
    let r = stack
        .admission_review("/validate", "bad", &latest)
        .await
        .unwrap();
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"].as_str().unwrap().contains("latest"),
        "{r}"
    );

    // The digests reach the agent: the app, the index and the manifest of
    // this node's platform (amd64); the arm64 one it never runs, so it
    // does not keep it.
    stack.wait_approval(&app.digest).unwrap();
    stack.wait_approval(&multi.digest).unwrap();
    let (amd64, arm64) = (
        &stack.images.multi_platforms[0],
        &stack.images.multi_platforms[1],
    );
    stack.wait_approval(amd64).unwrap();
    let (_, other) = stack
        .grpcurl("ListApprovals", &format!(r#"{{"digest": "{arm64}"}}"#))
        .unwrap();
    assert_eq!(grpcurl::count(&other, "approvals"), 0, "{other}");
    let (_, approvals) = stack.grpcurl("ListApprovals", "{}").unwrap();
    assert!(approvals["approvals"].as_array().unwrap().iter().all(|a| {
        a["source"]
            .as_str()
            .unwrap()
            .starts_with("imagegate-webhook/")
    }));
    let (_, status) = stack.grpcurl("GetStatus", "{}").unwrap();
    assert_eq!(status["sources"].as_array().unwrap().len(), 1, "{status}");
    // The one replica found, its stream open; audit mode holds nothing.
    let feeds = &status["feeds"];
    assert_eq!(
        (
            &feeds["replicasFound"],
            &feeds["streamsOpen"],
            &feeds["holdingStops"]
        ),
        (&json!(1), &json!(1), &json!(false)),
        "{status}"
    );

    // The pinned pod: /mutate pins the tag, the pinned reference runs.
    let r = stack
        .admission_review("/mutate", "pinned", &app.reference)
        .await
        .unwrap();
    let pinned = patched_image(&r).expect("a pinning patch");
    assert_eq!(pinned, format!("{}@{}", app.reference, app.digest));
    let pinned_pod = stack
        .containerd
        .cri_run_pod("shop", "pinned", &pinned)
        .await;
    stack
        .wait_verdict(&format!("k8s.io/{}", pinned_pod.container_id), "admitted")
        .unwrap();

    // Containers: the admitted app through CRI, the miner with ctr.
    let pod = stack
        .containerd
        .cri_run_pod("shop", "web", &app.reference)
        .await;
    let v = stack
        .wait_verdict(&format!("k8s.io/{}", pod.container_id), "admitted")
        .unwrap();
    assert_eq!(v["fields"]["digest"], app.digest.as_str());
    assert_eq!(v["fields"]["pod"], "shop/web");
    stack
        .wait_verdict(&format!("k8s.io/{}", pod.sandbox_id), "exempt")
        .unwrap();
    let miner_id = unique("miner");
    stack.containerd.pull("default", &miner.reference);
    stack
        .containerd
        .run("default", &miner.reference, &miner_id, &[]);
    let v = stack
        .wait_verdict(&format!("default/{miner_id}"), "never-admitted")
        .unwrap();
    assert_eq!(v["fields"]["digest"], miner.digest.as_str());
    let multi_id = unique("multi");
    stack.containerd.pull("default", &multi.reference);
    stack
        .containerd
        .run("default", &multi.reference, &multi_id, &[]);
    stack
        .wait_verdict(&format!("default/{multi_id}"), "admitted")
        .unwrap();
    let (_, violations) = stack.grpcurl("ListViolations", "{}").unwrap();
    assert_eq!(violations["total"], "1", "{violations}");
    assert_eq!(violations["violations"][0]["digest"], miner.digest.as_str());

    // A tag moved after admission: same name, new digest, flagged.
    let moved_digest = stack
        .registry
        .push_runnable_image("shop/app", "1.0", "moved")
        .await;
    assert_ne!(moved_digest, app.digest);
    let moved_id = unique("moved");
    stack.containerd.pull("moved", &app.reference);
    stack
        .containerd
        .run("moved", &app.reference, &moved_id, &[]);
    let v = stack
        .wait_verdict(&format!("moved/{moved_id}"), "never-admitted")
        .unwrap();
    assert_eq!(v["fields"]["digest"], moved_digest.as_str());

    // The webhook stopped: the agent still flags.
    stack.stop_webhook();
    let later_id = unique("later");
    stack
        .containerd
        .run("default", &miner.reference, &later_id, &[]);
    stack
        .wait_verdict(&format!("default/{later_id}"), "never-admitted")
        .unwrap();

    // The agent restarted: approvals and history kept, running containers
    // found again, no violation filed twice.
    stack.stop_agent();
    stack.start_agent("audit").unwrap();
    let (_, violations) = stack.grpcurl("ListViolations", "{}").unwrap();
    assert_eq!(violations["total"], "3", "{violations}");
    stack.wait_approval(&app.digest).unwrap();
    stack
        .wait_verdict(&format!("k8s.io/{}", pod.container_id), "admitted")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let (_, violations) = stack.grpcurl("ListViolations", "{}").unwrap();
    assert_eq!(violations["total"], "3", "{violations}");

    // Enforce mode: a new violating container is killed; nothing else is.
    // The webhook is still stopped, so its feed is not open: the stop waits
    // past the grace window for it (an approval could have been on it).
    stack.stop_agent();
    stack.start_agent("enforce").unwrap();
    let doomed = unique("doomed");
    let started = std::time::Instant::now();
    stack.containerd.run(
        "default",
        &miner.reference,
        &doomed,
        &[
            "/bin/sh",
            "-c",
            "while :; do /bin/true; /bin/sleep 0.05; done",
        ],
    );
    let v = stack
        .wait_verdict(&format!("default/{doomed}"), "never-admitted")
        .unwrap();
    assert!(
        started.elapsed() >= imagegate_e2e::GRACE + imagegate_e2e::FEED_WAIT,
        "stopped after {:?}, before the feed wait ended",
        started.elapsed()
    );
    assert!(
        v["fields"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("approval feed was not open")),
        "{v}"
    );
    // grpcurl shows why: no stream open, stops held, one that waited.
    let (_, status) = stack.grpcurl("GetStatus", "{}").unwrap();
    let feeds = &status["feeds"];
    assert_eq!(
        (
            &feeds["streamsOpen"],
            &feeds["holdingStops"],
            &feeds["stopsWaited"]
        ),
        (&json!(0), &json!(true), &json!("1")),
        "{status}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stack.containerd.task_status("default", &doomed).as_deref() == Some("RUNNING") {
        assert!(
            std::time::Instant::now() < deadline,
            "the violating container still runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        stack.containerd.exit_status("default", &doomed).await,
        Some(137)
    );
    assert_eq!(
        stack
            .containerd
            .task_status("default", &multi_id)
            .as_deref(),
        Some("RUNNING"),
        "an admitted container runs on"
    );
    let exec = stack
        .containerd
        .exec("default", &multi_id, "after", &["/bin/true"]);
    assert!(exec.status.success(), "{exec:?}");
}
