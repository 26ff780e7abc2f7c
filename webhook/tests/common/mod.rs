//! Helpers shared by the webhook's integration tests.
#![allow(dead_code)]

// Each test binary uses a different part of these.
#[allow(unused_imports)]
pub use imagegate_testkit::{
    ca::{Ca, Leaf},
    registry,
};

use std::{path::PathBuf, sync::Arc};

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use http_body_util::BodyExt;
use imagegate_webhook::{
    policy::Policy,
    policy_store::PolicyStore,
    server::{AppState, Routes, metrics::Metrics},
};
use serde_json::{Value, json};
use tower::ServiceExt;

pub mod signing;

pub const EXAMPLE_POLICY: &str = include_str!("../../../deploy/policy/example-policy.yaml");

/// The webhook's routes with `policy_yaml`, no resolver and no ledger.
pub fn app_with(policy_yaml: &str) -> Routes {
    let policy = Policy::from_yaml(policy_yaml).expect("valid policy");
    app_with_store(PolicyStore::fixed(policy), Arc::new(Metrics::new()))
}

/// The webhook's routes with the policy `store` and `metrics`, no resolver
/// and no ledger.
pub fn app_with_store(store: Arc<PolicyStore>, metrics: Arc<Metrics>) -> Routes {
    Routes::new(
        Arc::new(AppState {
            policy: store,
            metrics,
            resolver: None,
            ledger: None,
            budgets: imagegate_webhook::server::limits::Budgets::new(Default::default()),
            decisions: None,
            replica: "test".into(),
        }),
        None,
    )
}

/// One request through `app`, without a socket: the status and the body.
pub async fn send(app: &Routes, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("router answers");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, bytes.to_vec())
}

/// A fixture captured from a real kube-apiserver v1.28.7: `(http_path, body)`.
pub fn fixture(name: &str) -> (String, Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/apiserver-v1.28")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut doc: Value = serde_json::from_str(&text).expect("fixture is JSON");
    let http_path = doc["http_path"].as_str().expect("http_path").to_string();
    (http_path, doc["body"].take())
}

/// An AdmissionReview v1 for `object` of `group/kind`.
pub fn admission_review(group: &str, kind: &str, operation: &str, object: Value) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": "things"},
            "name": "thing",
            "namespace": "default",
            "operation": operation,
            "userInfo": {"username": "alice"},
            "object": object,
            "oldObject": null,
            "dryRun": false
        }
    })
}

/// A pod spec with one container, one init container and one ephemeral
/// container, each with its own image.
pub fn pod_spec(container: &str, init: &str, ephemeral: &str) -> Value {
    json!({
        "containers": [{"name": "app", "image": container}],
        "initContainers": [{"name": "init", "image": init}],
        "ephemeralContainers": [{"name": "debug", "image": ephemeral}]
    })
}

/// An ImageReview with `images` in namespace `default`.
pub fn image_review(images: &[&str], annotations: Value) -> Value {
    json!({
        "kind": "ImageReview",
        "apiVersion": "imagepolicy.k8s.io/v1alpha1",
        "metadata": {"creationTimestamp": null},
        "spec": {
            "containers": images.iter().map(|i| json!({"image": i})).collect::<Vec<_>>(),
            "annotations": annotations,
            "namespace": "default"
        },
        "status": {"allowed": false}
    })
}

/// A resolver for `settings`, and the metrics it registers into.
pub fn resolver(
    settings: imagegate_webhook::resolve::Settings,
) -> (imagegate_webhook::resolve::Resolver, Metrics) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut metrics = Metrics::new();
    let resolver = imagegate_webhook::resolve::Resolver::new(
        settings,
        imagegate_webhook::resolve::ResolverMetrics::register(metrics.registry()),
    )
    .unwrap();
    (resolver, metrics)
}

/// Registry credentials for `host`, as a pull secret holds them.
pub fn credentials(
    host: &str,
    user: &str,
    password: &str,
) -> imagegate_webhook::registry::Credentials {
    let json =
        format!(r#"{{"auths": {{"{host}": {{"username": "{user}", "password": "{password}"}}}}}}"#);
    imagegate_webhook::registry::Credentials::parse(json.as_bytes()).unwrap()
}

/// The value of the first metric line starting with `line_start` (0 when
/// there is none).
pub fn metric(metrics: &Metrics, line_start: &str) -> f64 {
    metrics
        .render()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}
