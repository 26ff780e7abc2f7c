//! HTTP tests through the public router: fixtures from a real apiserver,
//! every container kind and template, bad input.
//!
//! Over 500 lines: one test per kind of review the apiserver sends, all
//! through the same router.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::{
    EXAMPLE_POLICY, admission_review, app_with, app_with_store, fixture, image_review, pod_spec,
    send,
};
use imagegate_webhook::{
    policy_store::{PolicyMetrics, PolicyStore},
    server::{
        Routes,
        limits::{APISERVER_REQUEST_BYTES, MAX_REVIEW_BYTES},
        metrics::Metrics,
    },
};
use serde_json::{Value, json};

const GOOD: &str = "nginx:1.25";
const BAD: &str = "quay.io/evil/miner:1";

fn app() -> Routes {
    app_with(EXAMPLE_POLICY)
}

async fn post(app: &Routes, path: &str, body: &Value) -> (StatusCode, Value) {
    let (status, bytes) = send(app, "POST", path, serde_json::to_vec(body).unwrap()).await;
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{path} answered non-JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, value)
}

/// The `response` of an AdmissionReview answer, after checking the envelope.
async fn admit(app: &Routes, body: &Value) -> Value {
    let (status, answer) = post(app, "/validate", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["apiVersion"], body["apiVersion"]);
    assert_eq!(
        answer["response"]["uid"], body["request"]["uid"],
        "the uid is echoed"
    );
    answer["response"].clone()
}

#[tokio::test]
async fn every_apiserver_fixture_is_answered() {
    let app = app();
    // (fixture, allowed, what the message says)
    let cases = [
        (
            "admissionreview-1.json",
            false,
            "image \"nginx\" (docker.io/library/nginx:latest) denied by rule \"docker-hub\"",
        ),
        (
            "admissionreview-2.json",
            false,
            "image \"nginx\" (docker.io/library/nginx:latest) denied by rule \"docker-hub\"",
        ),
        (
            "admissionreview-3.json",
            true,
            "1 image allowed (docker-hub)",
        ),
    ];
    for (name, allowed, says) in cases {
        let (path, body) = fixture(name);
        assert!(path.starts_with("/validate"));
        let (status, answer) = post(&app, &path, &body).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        let response = &answer["response"];
        assert_eq!(response["uid"], body["request"]["uid"], "{name}");
        assert_eq!(response["allowed"], allowed, "{name}: {answer}");
        assert_eq!(
            response["status"]["code"],
            if allowed { 200 } else { 403 },
            "{name}"
        );
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{name}: {message}");
        assert_eq!(
            response["auditAnnotations"]["decision"],
            if allowed { "allowed" } else { "denied" }
        );
    }

    let cases = [
        (
            "imagereview-1.json",
            false,
            "an image without a tag pulls latest",
        ),
        ("imagereview-2.json", true, ""),
        // Not allowed: registry.local:5000 is in no rule, and the fixture's
        // break-glass value "ticket-123" is not "true".
        (
            "imagereview-3.json",
            false,
            "no rule accepts repository registry.local:5000/team/app",
        ),
    ];
    for (name, allowed, says) in cases {
        let (_, body) = fixture(name);
        let (status, answer) = post(&app, "/image_policy", &body).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(answer["kind"], "ImageReview");
        assert_eq!(answer["apiVersion"], "imagepolicy.k8s.io/v1alpha1");
        assert_eq!(answer["status"]["allowed"], allowed, "{name}: {answer}");
        let reason = answer["status"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(says), "{name}: {reason}");
        if !allowed {
            assert!(
                !reason.contains("busybox"),
                "allowed images are not in the reason: {reason}"
            );
        }
    }
}

#[tokio::test]
async fn the_kube_image_bouncer_path_is_an_alias() {
    let (_, body) = fixture("admissionreview-1.json");
    let (status, answer) = post(&app(), "/", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["uid"], body["request"]["uid"]);
}

/// Reviews are dispatched by method and path before the router: the
/// apiserver's query (`?timeout=5s`) does not change the path, another
/// method gets 405 with what to use, and a path near a review's is not one.
#[tokio::test]
async fn a_review_is_its_post_on_its_path_whatever_the_query() {
    let app = app();
    let (_, body) = fixture("admissionreview-1.json");
    let (status, answer) = post(&app, "/validate?timeout=5s", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["response"]["uid"], body["request"]["uid"]);
    let (_, body) = fixture("imagereview-2.json");
    let (status, answer) = post(&app, "/image_policy?timeout=30s", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["kind"], "ImageReview");

    for path in ["/image_policy", "/validate", "/mutate", "/"] {
        for method in ["GET", "PUT", "DELETE"] {
            let (status, text) = send(&app, method, path, Vec::new()).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(
                String::from_utf8_lossy(&text).contains("POST"),
                "{method} {path}"
            );
        }
    }
    for path in ["/validate/", "/validatex", "/image_policy/x", "/mutate2"] {
        let (status, _) = send(&app, "POST", path, serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "POST {path}");
    }
}

#[tokio::test]
async fn v1beta1_is_answered_in_v1beta1() {
    let (_, mut body) = fixture("admissionreview-3.json");
    body["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let response = admit(&app(), &body).await;
    assert_eq!(response["allowed"], true);
}

#[tokio::test]
async fn every_container_kind_of_a_pod_is_checked() {
    let app = app();
    let pod = |c, i, e| json!({"metadata": {"name": "p"}, "spec": pod_spec(c, i, e)});
    let r = admit(
        &app,
        &admission_review("", "Pod", "CREATE", pod(GOOD, GOOD, GOOD)),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(
        r["status"]["message"],
        "3 images allowed (docker-hub, docker-hub, docker-hub)"
    );
    for (c, i, e) in [(BAD, GOOD, GOOD), (GOOD, BAD, GOOD), (GOOD, GOOD, BAD)] {
        let r = admit(&app, &admission_review("", "Pod", "CREATE", pod(c, i, e))).await;
        assert_eq!(r["allowed"], false, "{c} {i} {e}");
        assert!(
            r["status"]["message"].as_str().unwrap().contains(BAD),
            "{r}"
        );
    }
}

#[tokio::test]
async fn updates_and_the_ephemeral_containers_subresource_are_checked() {
    let app = app();
    // `kubectl debug` adds an ephemeral container through
    // pods/ephemeralcontainers: an UPDATE of the whole Pod.
    let mut body = admission_review(
        "",
        "Pod",
        "UPDATE",
        json!({"spec": pod_spec(GOOD, GOOD, BAD)}),
    );
    body["request"]["subResource"] = json!("ephemeralcontainers");
    let r = admit(&app, &body).await;
    assert_eq!(r["allowed"], false, "{r}");
    // Kubernetes 1.16-1.21 sent an EphemeralContainers object instead.
    let old = json!({"ephemeralContainers": [{"name": "debug", "image": BAD}]});
    let r = admit(
        &app,
        &admission_review("", "EphemeralContainers", "UPDATE", old),
    )
    .await;
    assert_eq!(r["allowed"], false, "{r}");
}

#[tokio::test]
async fn every_pod_template_kind_is_checked() {
    let app = app();
    const KINDS: [(&str, &str); 8] = [
        ("apps", "Deployment"),
        ("apps", "ReplicaSet"),
        ("apps", "StatefulSet"),
        ("apps", "DaemonSet"),
        ("batch", "Job"),
        ("", "ReplicationController"),
        ("batch", "CronJob"),
        ("", "PodTemplate"),
    ];
    /// An object of `kind` whose pod template's init container runs `image`.
    fn object(kind: &str, image: &str) -> Value {
        let template =
            json!({"metadata": {"labels": {"app": "x"}}, "spec": pod_spec(GOOD, image, GOOD)});
        match kind {
            "CronJob" => json!({"spec": {"jobTemplate": {"spec": {"template": template}}}}),
            "PodTemplate" => json!({"template": template}),
            _ => json!({"spec": {"template": template}}),
        }
    }
    for (group, kind) in KINDS {
        for operation in ["CREATE", "UPDATE"] {
            let r = admit(
                &app,
                &admission_review(group, kind, operation, object(kind, GOOD)),
            )
            .await;
            assert_eq!(r["allowed"], true, "{kind} {operation}: {r}");
            let r = admit(
                &app,
                &admission_review(group, kind, operation, object(kind, BAD)),
            )
            .await;
            assert_eq!(r["allowed"], false, "{kind} {operation}: {r}");
            assert!(
                r["status"]["message"].as_str().unwrap().contains(BAD),
                "{kind}: {r}"
            );
        }
    }
}

#[tokio::test]
async fn a_checked_kind_without_its_spec_is_denied_not_skipped() {
    let app = app();
    for (group, kind, object, says) in [
        (
            "apps",
            "Deployment",
            json!({"spec": {}}),
            "has no spec.template",
        ),
        ("", "Pod", json!({"metadata": {}}), "has no spec"),
        (
            "batch",
            "CronJob",
            json!({"spec": {"jobTemplate": {}}}),
            "spec.jobTemplate.spec",
        ),
    ] {
        let r = admit(&app, &admission_review(group, kind, "CREATE", object)).await;
        assert_eq!(r["allowed"], false, "{kind}");
        assert_eq!(r["status"]["code"], 400);
        assert!(
            r["status"]["message"].as_str().unwrap().contains(says),
            "{r}"
        );
    }
    // A container without an image is checked as an empty reference.
    let pod = json!({"spec": {"containers": [{"name": "x"}]}});
    let r = admit(&app, &admission_review("", "Pod", "CREATE", pod)).await;
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"].as_str().unwrap().contains("empty"),
        "{r}"
    );
}

#[tokio::test]
async fn kinds_and_operations_without_images_are_allowed_unchecked() {
    let app = app();
    let r = admit(
        &app,
        &admission_review("", "ConfigMap", "CREATE", json!({"data": {}})),
    )
    .await;
    assert_eq!(r["allowed"], true);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .starts_with("not checked")
    );
    let mut delete = admission_review("", "Pod", "DELETE", Value::Null);
    delete["request"]["oldObject"] = json!({"spec": pod_spec(BAD, BAD, BAD)});
    let r = admit(&app, &delete).await;
    assert_eq!(r["allowed"], true, "{r}");
    // A CRD that happens to be called Deployment is not apps/Deployment.
    let r = admit(
        &app,
        &admission_review("example.com", "Deployment", "CREATE", json!({})),
    )
    .await;
    assert_eq!(r["allowed"], true);
}

#[tokio::test]
async fn dry_run_gets_the_same_answer() {
    let app = app();
    let (_, mut body) = fixture("admissionreview-1.json");
    let wet = admit(&app, &body).await;
    body["request"]["dryRun"] = json!(true);
    let dry = admit(&app, &body).await;
    assert_eq!(wet, dry);
}

#[tokio::test]
async fn audit_mode_answers_allowed_with_warnings() {
    let app = app_with(&EXAMPLE_POLICY.replace("mode: enforce", "mode: audit"));
    let (_, body) = fixture("admissionreview-1.json");
    let r = admit(&app, &body).await;
    assert_eq!(r["allowed"], true);
    let warning = r["warnings"][0].as_str().expect("a warning");
    assert!(
        warning.starts_with("imagegate audit mode: would deny: image \"nginx\""),
        "{warning}"
    );
    assert_eq!(r["auditAnnotations"]["audit-would-deny"], "nginx");

    let (_, body) = fixture("imagereview-1.json");
    let (_, answer) = post(&app, "/image_policy", &body).await;
    assert_eq!(answer["status"]["allowed"], true);
    assert_eq!(
        answer["status"]["auditAnnotations"]["audit-would-deny"],
        "nginx"
    );
}

#[tokio::test]
async fn break_glass_is_allowed_and_recorded() {
    let app = app();
    let pod = json!({
        "metadata": {"annotations": {"imagegate.dev/break-glass": "true"}},
        "spec": pod_spec(BAD, GOOD, GOOD)
    });
    let r = admit(&app, &admission_review("", "Pod", "CREATE", pod)).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(
        r["auditAnnotations"]["break-glass"],
        "imagegate.dev/break-glass"
    );
    // On a Deployment, the annotation may sit on the pod template (where the
    // pods it creates will carry it too).
    let deployment = json!({"spec": {"template": {
        "metadata": {"annotations": {"imagegate.dev/break-glass": "true"}},
        "spec": pod_spec(BAD, GOOD, GOOD)
    }}});
    let r = admit(
        &app,
        &admission_review("apps", "Deployment", "CREATE", deployment),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");

    let body = image_review(
        &[BAD],
        json!({"alpha.image-policy.k8s.io/break-glass": "true"}),
    );
    let (_, answer) = post(&app, "/image_policy", &body).await;
    assert_eq!(answer["status"]["allowed"], true);
    assert_eq!(
        answer["status"]["auditAnnotations"]["break-glass"],
        "alpha.image-policy.k8s.io/break-glass"
    );
}

#[tokio::test]
async fn bypass_tricks_are_denied() {
    let app = app();
    for image in [
        "docker.io.evil.com/library/nginx:1.25",
        "index.docker.io.evil.com/nginx:1.25",
        "evil.com/docker.io/library/nginx:1.25",
        "registry.k8s.io.evil.com/pause:3.9",
        "nginx",
        "nginx:latest",
        "docker.io/library/nginx",
        "NGINX:1.25",
        "nginx:1.25é",
        "nginx@sha256:abc",
        "",
    ] {
        let body = image_review(&[GOOD, image], json!({}));
        let (_, answer) = post(&app, "/image_policy", &body).await;
        assert_eq!(
            answer["status"]["allowed"], false,
            "{image:?} slipped through"
        );
    }
    for image in [
        "Docker.IO/library/nginx:1.25",
        "index.docker.io/library/nginx:1.25",
        "docker.io/nginx:1.25",
    ] {
        let body = image_review(&[image], json!({}));
        let (_, answer) = post(&app, "/image_policy", &body).await;
        assert_eq!(answer["status"]["allowed"], true, "{image:?} is Docker Hub");
    }
}

#[tokio::test]
async fn bad_bodies_get_clear_errors() {
    let app = app();
    let error = |bytes: &[u8]| {
        serde_json::from_slice::<Value>(bytes).unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let (status, bytes) = send(&app, "POST", "/validate", b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error(&bytes).starts_with("the body is not JSON"),
        "{}",
        error(&bytes)
    );

    let (status, bytes) = send(&app, "POST", "/validate", Vec::new()).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&bytes)
    );

    let (_, image) = fixture("imagereview-1.json");
    let (status, answer) = post(&app, "/validate", &image).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("got kind \"ImageReview\""),
        "{answer}"
    );

    let (_, admission) = fixture("admissionreview-1.json");
    let (status, answer) = post(&app, "/image_policy", &admission).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("expected an ImageReview"),
        "{answer}"
    );

    let mut wrong_version = admission.clone();
    wrong_version["apiVersion"] = json!("admission.k8s.io/v2");
    let (status, _) = post(&app, "/validate", &wrong_version).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _) = send(&app, "POST", "/validate", b"[1, 2]".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_unreadable_object_with_a_readable_uid_is_a_denial_with_that_uid() {
    let app = app();
    let (_, mut body) = fixture("admissionreview-1.json");
    body["request"]["object"]["spec"]["containers"] = json!(5);
    let r = admit(&app, &body).await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 400);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be read"),
        "{r}"
    );

    // Bytes that are not UTF-8, in a field the webhook never reads: JSON
    // is UTF-8, so the review is unreadable, and denied with its uid.
    let (_, mut latin1) = fixture("admissionreview-1.json");
    latin1["request"]["note"] = json!("MARK");
    let uid = latin1["request"]["uid"].clone();
    let bytes = serde_json::to_vec(&latin1).unwrap();
    let at = bytes.windows(4).position(|w| w == b"MARK").unwrap();
    let mut bytes = bytes;
    bytes[at] = 0xe9; // 'é' in Latin-1, alone: not UTF-8
    let (status, answer) = send(&app, "POST", "/validate", bytes).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["response"]["uid"], uid, "{answer}");
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not UTF-8"),
        "{answer}"
    );

    // Without a uid there is nothing to answer to.
    body["request"]["uid"] = json!(42);
    let (status, _) = post(&app, "/validate", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // An ImageReview whose spec is garbage is denied, not errored: with
    // defaultAllow: true an error would be an allow.
    let (_, mut image) = fixture("imagereview-1.json");
    let mut bytes = serde_json::to_vec(&image).unwrap();
    let at = bytes.windows(5).position(|w| w == b"nginx").unwrap();
    bytes[at] = 0xff;
    let (status, answer) = send(&app, "POST", "/image_policy", bytes).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["status"]["allowed"], false, "{answer}");
    assert!(
        answer["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("not UTF-8"),
        "{answer}"
    );
    image["spec"]["containers"] = json!("nginx");
    let (status, answer) = post(&app, "/image_policy", &image).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["status"]["allowed"], false);
    assert!(
        answer["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot be read"),
        "{answer}"
    );
}

/// Found: a Pod with 560 KiB of `<` in an env value is a 3.28 MiB
/// AdmissionReview (Go's encoder writes `<` as `\u003c`), an UPDATE twice
/// that, and both got 413, which `failurePolicy: Ignore` turns into an
/// allow. What the apiserver can send is decided; what is larger is a
/// denial carrying the uid.
#[tokio::test]
async fn reviews_as_large_as_the_apiserver_sends_are_decided_and_larger_ones_denied_by_uid() {
    let app = app();
    let (_, mut body) = fixture("admissionreview-1.json");
    let uid = body["request"]["uid"].clone();
    let escaped = "<".repeat(560 * 1024);
    body["request"]["object"]["spec"]["containers"][0]["env"] =
        json!([{"name": "PAGE", "value": escaped}]);
    // As the apiserver encodes it: `request.uid` first, every `<` as six
    // bytes.
    let encode = |body: &Value| {
        let mut request = body["request"].clone();
        let uid = request.as_object_mut().unwrap().remove("uid").unwrap();
        let rest = serde_json::to_string(&request).unwrap();
        format!(
            r#"{{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{{"uid":{uid},{}}}"#,
            &rest[1..]
        )
        .replace('<', "\\u003c")
    };
    let text = encode(&body);
    assert!(text.len() > 3 * 1024 * 1024, "{}", text.len());
    let (status, answer) = send(&app, "POST", "/validate", text.into_bytes()).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["response"]["uid"], uid);
    assert_eq!(
        answer["response"]["status"]["code"], 403,
        "decided: {answer}"
    );
    // An UPDATE carries the old object too: twice the size, still decided.
    body["request"]["operation"] = "UPDATE".into();
    body["request"]["oldObject"] = body["request"]["object"].clone();
    let (status, answer) = send(&app, "POST", "/validate", encode(&body).into_bytes()).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["response"]["uid"], uid, "{answer}");
    assert_ne!(answer["response"]["status"]["code"], 413, "{answer}");
    // The largest the apiserver can send: two 3 MiB objects, all escaped.
    body["request"]["object"]["spec"]["containers"][0]["env"] =
        json!([{"name": "PAGE", "value": "<".repeat(APISERVER_REQUEST_BYTES - 4096)}]);
    body["request"]["oldObject"] = body["request"]["object"].clone();
    let largest = encode(&body);
    assert!(largest.len() < MAX_REVIEW_BYTES, "{}", largest.len());
    let (status, answer) = send(&app, "POST", "/validate", largest.into_bytes()).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_ne!(answer["response"]["status"]["code"], 413, "{answer}");
    // Larger than anything the apiserver sends: denied, with the uid.
    body["request"]["object"]["spec"]["containers"][0]["env"] =
        json!([{"name": "PAGE", "value": "x".repeat(MAX_REVIEW_BYTES)}]);
    let (status, answer) = send(&app, "POST", "/validate", encode(&body).into_bytes()).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["response"]["uid"], uid, "{answer}");
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["status"]["code"], 413);
    // Without a readable uid (an ImageReview): 413.
    let too_big =
        serde_json::to_vec(&json!({"spec": {"x": "x".repeat(MAX_REVIEW_BYTES)}})).unwrap();
    let (status, _) = send(&app, "POST", "/image_policy", too_big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn without_a_policy_nothing_is_allowed_and_it_is_not_ready() {
    let mut metrics = Metrics::new();
    let policy_metrics = PolicyMetrics::register(metrics.registry());
    let metrics = Arc::new(metrics);
    let dir = tempfile::tempdir().unwrap();
    let (store, _) =
        PolicyStore::load(dir.path().join("missing.yaml"), Vec::new(), &policy_metrics).await;
    let app = app_with_store(store, metrics);
    let (status, _) = send(&app, "GET", "/readyz", Vec::new()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = send(&app, "GET", "/healthz", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = fixture("admissionreview-3.json");
    let r = admit(&app, &body).await;
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("no valid policy")
    );
    let (_, body) = fixture("imagereview-2.json");
    let (_, answer) = post(&app, "/image_policy", &body).await;
    assert_eq!(answer["status"]["allowed"], false);
}

#[tokio::test]
async fn metrics_count_decisions_and_latency() {
    let app = app();
    for name in ["admissionreview-1.json", "admissionreview-3.json"] {
        let (_, body) = fixture(name);
        admit(&app, &body).await;
    }
    let (_, body) = fixture("imagereview-3.json");
    post(&app, "/image_policy", &body).await;
    let (status, bytes) = send(&app, "GET", "/metrics", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(bytes).unwrap();
    for line in [
        r#"imagegate_webhook_decisions_total{api="AdmissionReview",verdict="denied",rule="docker-hub"} 1"#,
        r#"imagegate_webhook_decisions_total{api="AdmissionReview",verdict="allowed",rule="docker-hub"} 1"#,
        r#"imagegate_webhook_decisions_total{api="ImageReview",verdict="denied",rule="default"} 2"#,
        r#"imagegate_webhook_decisions_total{api="ImageReview",verdict="allowed",rule="docker-hub"} 1"#,
        r#"imagegate_webhook_request_duration_seconds_count{endpoint="validate"} 2"#,
        r#"imagegate_webhook_responses_total{endpoint="image_policy",code="200"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
}

#[tokio::test]
async fn mutate_without_resolution_pins_nothing_and_denies_what_it_cannot_read() {
    let app = app();
    let (_, body) = fixture("admissionreview-3.json");
    let (status, answer) = post(&app, "/mutate", &body).await;
    assert_eq!(status, StatusCode::OK);
    let r = &answer["response"];
    assert_eq!(r["uid"], body["request"]["uid"]);
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none());
    assert_eq!(
        r["status"]["message"],
        "not pinned: digest resolution is off"
    );

    let (_, mut broken) = fixture("admissionreview-1.json");
    broken["request"]["object"]["spec"]["containers"] = json!({"not": "a list"});
    let (_, answer) = post(&app, "/mutate", &broken).await;
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["uid"], broken["request"]["uid"]);
}
