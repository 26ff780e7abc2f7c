//! Digest resolution against a real registry (Debian's docker-registry on
//! loopback): plain HTTP, HTTPS with a private CA and Basic auth, a
//! multi-arch index, a moved tag, wrong credentials, a registry that is
//! down or hangs, concurrent lookups, and the webhook's answers.
//!
//! Over 500 lines: one scenario per registry behaviour, all against the same
//! real registry set-up.

mod common;

use std::{
    net::TcpListener,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{body::Body, http::Request};
use common::{Ca, admission_review, credentials, metric, registry::Registry, resolver};
use http_body_util::BodyExt;
use imagegate_webhook::{
    policy::Policy,
    policy_store::PolicyStore,
    reference::Reference,
    registry::Credentials,
    resolve::{ResolveError, Resolver, Settings},
    server::{AppState, Routes, metrics::Metrics},
};
use serde_json::Value;
use tower::ServiceExt;

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn reference(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

fn settings_for(registry: &Registry) -> Settings {
    let mut settings = Settings::default();
    match &registry.ca_file {
        None => settings.plain_http.push(registry.host.clone()),
        Some(ca) => settings
            .ca_bundles
            .push((registry.host.clone(), ca.clone())),
    }
    if let Some((user, password)) = &registry.credentials {
        settings.credentials = credentials(&registry.host, user, password);
    }
    settings
}

/// The webhook's router with a resolver for `settings`, `policy` (YAML) and
/// an optional ledger; and its metrics.
fn webhook(
    settings: Settings,
    policy: &str,
    ledger: Option<Arc<imagegate_webhook::ledger::Ledger>>,
) -> (Routes, Arc<Metrics>) {
    let mut metrics = Metrics::new();
    let resolver = Resolver::new(
        settings,
        imagegate_webhook::resolve::ResolverMetrics::register(metrics.registry()),
    )
    .unwrap();
    let metrics = Arc::new(metrics);
    let app = Routes::new(
        Arc::new(AppState {
            policy: PolicyStore::fixed(Policy::from_yaml(policy).unwrap()),
            metrics: metrics.clone(),
            resolver: Some(Arc::new(resolver)),
            ledger,
            budgets: imagegate_webhook::server::limits::Budgets::new(Default::default()),
            decisions: None,
            replica: "test".into(),
        }),
        None,
    );
    (app, metrics)
}

/// A dockerconfigjson holding `user`/`password` for `host`.
#[tokio::test]
async fn resolves_a_tag_over_plain_http() {
    install_crypto();
    let registry = Registry::plain();
    let digest = registry.push_image("team/app", "1.0", "app-1").await;
    let (resolver, metrics) = resolver(settings_for(&registry));
    let resolved = resolver
        .resolve(
            &reference(&format!("{}/team/app:1.0", registry.host)),
            false,
        )
        .await
        .unwrap();
    assert_eq!(resolved.digest, digest);
    assert!(resolved.children.is_empty());
    // The second ask is answered from the cache.
    resolver
        .resolve(
            &reference(&format!("{}/team/app:1.0", registry.host)),
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        metric(
            &metrics,
            "imagegate_webhook_registry_lookups_total{outcome=\"resolved\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&metrics, "imagegate_webhook_resolution_cache_hits_total"),
        1.0
    );
    // A tag that does not exist.
    let err = resolver
        .resolve(
            &reference(&format!("{}/team/app:2.0", registry.host)),
            false,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ResolveError::NotFound(_)), "{err}");
}

#[tokio::test]
async fn only_named_hosts_get_plain_http() {
    install_crypto();
    let registry = Registry::plain();
    registry.push_image("team/app", "1.0", "app-1").await;
    // Without the plain-HTTP setting the resolver speaks TLS to it, and fails.
    let (resolver, _) = resolver(Settings::default());
    let err = resolver
        .resolve(
            &reference(&format!("{}/team/app:1.0", registry.host)),
            false,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ResolveError::Registry(_)), "{err}");
}

#[tokio::test]
async fn resolves_over_tls_with_basic_auth_and_refuses_wrong_credentials() {
    install_crypto();
    let ca = Ca::new("registry CA");
    let registry = Registry::tls_basic(&ca, "ci", "s3cret");
    let digest = registry.push_image("team/app", "1.0", "tls-app").await;
    let image = reference(&format!("{}/team/app:1.0", registry.host));

    let (good, _) = resolver(settings_for(&registry));
    assert_eq!(good.resolve(&image, false).await.unwrap().digest, digest);

    let mut wrong = settings_for(&registry);
    wrong.credentials = credentials(&registry.host, "ci", "wrong");
    let (bad, _) = resolver(wrong);
    let err = bad.resolve(&image, false).await.unwrap_err();
    assert!(matches!(err, ResolveError::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("check the pull secret"), "{err}");

    let mut anonymous = settings_for(&registry);
    anonymous.credentials = Credentials::default();
    let (anonymous, _) = resolver(anonymous);
    let err = anonymous.resolve(&image, false).await.unwrap_err();
    assert!(matches!(err, ResolveError::Unauthorized(_)), "{err:?}");

    // A CA given for another host is not trusted for this one.
    let mut other_host = settings_for(&registry);
    other_host.ca_bundles = vec![(
        "elsewhere.example:443".into(),
        registry.ca_file.clone().unwrap(),
    )];
    let (untrusting, _) = resolver(other_host);
    let err = untrusting.resolve(&image, false).await.unwrap_err();
    assert!(matches!(err, ResolveError::Registry(_)), "{err:?}");
}

#[tokio::test]
async fn a_multi_arch_tag_admits_the_index_and_every_platform() {
    install_crypto();
    let registry = Registry::plain();
    let (index, platforms) = registry.push_index("team/multi", "2.0", "multi").await;
    let (resolver, _) = resolver(settings_for(&registry));
    let resolved = resolver
        .resolve(
            &reference(&format!("{}/team/multi:2.0", registry.host)),
            false,
        )
        .await
        .unwrap();
    assert_eq!(resolved.digest, index);
    let children: Vec<String> = resolved
        .children
        .iter()
        .map(|c| c.digest.to_string())
        .collect();
    assert_eq!(children, platforms);
    // Each with the platform the index names, so agents keep their own.
    let architectures: Vec<&str> = resolved
        .children
        .iter()
        .map(|c| c.platform.as_ref().unwrap().architecture.as_str())
        .collect();
    assert_eq!(architectures, ["amd64", "arm64"]);
    assert_eq!(resolved.all_digests().len(), 3);
    // The index named by digest: its platforms are known without a lookup.
    let by_digest = resolver
        .resolve(
            &reference(&format!("{}/team/multi@{index}", registry.host)),
            false,
        )
        .await
        .unwrap();
    assert_eq!(by_digest.children, resolved.children);
}

#[tokio::test]
async fn a_moved_tag_is_seen_once_its_ttl_ends() {
    install_crypto();
    let registry = Registry::plain();
    let first = registry.push_image("team/app", "stable", "first").await;
    // The second image's blobs are in place before the clock starts, so
    // moving the tag is one request, well inside the TTL even on a busy
    // machine.
    let (second_manifest, _) = registry
        .push_manifest("team/app", "second", "amd64", false)
        .await;
    let mut settings = settings_for(&registry);
    settings.ttl = Duration::from_secs(2);
    let (resolver, _) = resolver(settings);
    let image = reference(&format!("{}/team/app:stable", registry.host));
    assert_eq!(resolver.resolve(&image, false).await.unwrap().digest, first);
    let second = registry
        .put_manifest(
            "team/app",
            "stable",
            &second_manifest,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .await;
    assert_ne!(first, second);
    // Within the TTL the cached digest stands (the documented semantics).
    assert_eq!(resolver.resolve(&image, false).await.unwrap().digest, first);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        resolver.resolve(&image, false).await.unwrap().digest,
        second
    );
}

#[tokio::test]
async fn digests_are_taken_as_given_or_verified() {
    install_crypto();
    let registry = Registry::plain();
    let digest = registry.push_image("team/app", "1.0", "verify").await;
    let (resolver, metrics) = resolver(settings_for(&registry));
    let missing = format!("sha256:{}", "0".repeat(64));
    let given = reference(&format!("{}/team/app@{missing}", registry.host));
    assert_eq!(
        resolver.resolve(&given, false).await.unwrap().digest,
        missing,
        "taken as written"
    );
    assert_eq!(
        metric(&metrics, "imagegate_webhook_registry_lookups_total"),
        0.0,
        "no lookup without verify"
    );
    let err = resolver.resolve(&given, true).await.unwrap_err();
    assert!(matches!(err, ResolveError::NotFound(_)), "{err:?}");
    let present = reference(&format!("{}/team/app:1.0@{digest}", registry.host));
    assert_eq!(
        resolver.resolve(&present, true).await.unwrap().digest,
        digest
    );
}

#[tokio::test]
async fn a_registry_that_is_down_or_hangs_fails_within_the_budget() {
    install_crypto();
    // Down: nothing listens.
    let down_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = Settings {
        timeout: Duration::from_millis(800),
        plain_http: vec![format!("127.0.0.1:{down_port}")],
        ..Default::default()
    };
    // Hangs: accepts connections, never answers.
    let hanging = TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_host = format!("127.0.0.1:{}", hanging.local_addr().unwrap().port());
    settings.plain_http.push(hang_host.clone());
    let (resolver, metrics) = resolver(settings);

    let started = Instant::now();
    let err = resolver
        .resolve(&reference(&format!("127.0.0.1:{down_port}/x:1")), false)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("onnection refused"), "{err}");

    let started = Instant::now();
    let err = resolver
        .resolve(&reference(&format!("{hang_host}/x:1")), false)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err, ResolveError::Timeout(Duration::from_millis(800)));
    assert_eq!(err.to_string(), "timed out after 800ms");
    assert!(
        took >= Duration::from_millis(790) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert_eq!(
        metric(
            &metrics,
            "imagegate_webhook_registry_lookups_total{outcome=\"timeout\"}"
        ),
        1.0
    );

    // The failure is remembered for the negative TTL: no second wait.
    let started = Instant::now();
    resolver
        .resolve(&reference(&format!("{hang_host}/x:1")), false)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(100));
    drop(hanging);
}

#[tokio::test]
async fn concurrent_lookups_of_one_reference_share_one_request() {
    install_crypto();
    let registry = Registry::plain();
    let digest = registry.push_image("team/app", "1.0", "shared").await;
    let (resolver, metrics) = resolver(settings_for(&registry));
    let resolver = Arc::new(resolver);
    let image = reference(&format!("{}/team/app:1.0", registry.host));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (resolver, image) = (resolver.clone(), image.clone());
            tokio::spawn(async move { resolver.resolve(&image, false).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().digest, digest);
    }
    assert_eq!(
        metric(
            &metrics,
            "imagegate_webhook_registry_lookups_total{outcome=\"resolved\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&metrics, "imagegate_webhook_resolution_cache_hits_total"),
        49.0
    );
}

const POLICY: &str = "apiVersion: imagegate.dev/v1alpha1
kind: ImagePolicy
rules:
  - name: local
    registries: ['127.0.0.1']
";

async fn review(settings: Settings, policy: &str, image: &str) -> Value {
    let (app, _) = webhook(settings, policy, None);
    let pod = serde_json::json!({"spec": {"containers": [{"name": "app", "image": image}]}});
    let body = serde_json::to_vec(&admission_review("", "Pod", "CREATE", pod)).unwrap();
    let response = app
        .oneshot(Request::post("/validate").body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice::<Value>(&bytes).unwrap()["response"].clone()
}

#[tokio::test]
async fn the_webhook_admits_with_digests_and_denies_what_it_cannot_resolve() {
    install_crypto();
    let registry = Registry::plain();
    let digest = registry.push_image("team/app", "1.0", "webhook").await;
    let port = registry.host.rsplit(':').next().unwrap();
    let policy = POLICY.replace("'127.0.0.1'", &format!("'127.0.0.1:{port}'"));
    let image = format!("{}/team/app:1.0", registry.host);

    let r = review(settings_for(&registry), &policy, &image).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(
        r["auditAnnotations"]["resolved-digests"],
        format!("{image}={digest}")
    );

    // A tag the registry does not have is denied with a reason to act on.
    let r = review(
        settings_for(&registry),
        &policy,
        &format!("{}/team/app:9.9", registry.host),
    )
    .await;
    assert_eq!(r["allowed"], false, "{r}");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "could not resolve {}/team/app:9.9 to a digest: the registry has no such manifest",
            registry.host
        )),
        "{message}"
    );

    // A registry that hangs: denied within the budget, saying so.
    let hanging = TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_host = format!("127.0.0.1:{}", hanging.local_addr().unwrap().port());
    let settings = Settings {
        timeout: Duration::from_millis(500),
        plain_http: vec![hang_host.clone()],
        ..Default::default()
    };
    let hang_policy = POLICY.replace("'127.0.0.1'", &format!("'{hang_host}'"));
    let started = Instant::now();
    let r = review(settings, &hang_policy, &format!("{hang_host}/app:1.2")).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(r["allowed"], false);
    assert_eq!(
        r["status"]["message"],
        format!("could not resolve {hang_host}/app:1.2 to a digest: timed out after 500ms")
    );

    // The policy may allow it instead, with an audit annotation.
    let settings = Settings {
        timeout: Duration::from_millis(300),
        plain_http: vec![hang_host.clone()],
        ..Default::default()
    };
    let lenient = format!("{hang_policy}resolution:\n  onFailure: allow\n");
    let r = review(settings, &lenient, &format!("{hang_host}/app:1.2")).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(
        r["auditAnnotations"]["unresolved-images"]
            .as_str()
            .unwrap()
            .contains("timed out after 300ms")
    );
    drop(hanging);
}

async fn post(app: &Routes, path: &str, body: &Value) -> Value {
    let response = app
        .clone()
        .oneshot(
            Request::post(path)
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        )
        .await
        .unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice::<Value>(&bytes).unwrap()["response"].clone()
}

/// Applies the `replace` operations of a base64 JSONPatch to `object`.
fn apply_patch(object: &mut Value, patch_b64: &str) -> Vec<Value> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch_b64)
        .unwrap();
    let operations: Vec<Value> = serde_json::from_slice(&bytes).unwrap();
    for op in &operations {
        assert_eq!(op["op"], "replace");
        let path = op["path"].as_str().unwrap();
        *object
            .pointer_mut(path)
            .unwrap_or_else(|| panic!("{path} is not in the object")) = op["value"].clone();
    }
    operations
}

#[tokio::test]
async fn mutation_pins_tags_to_digests_and_the_validator_agrees_without_a_lookup() {
    install_crypto();
    let registry = Registry::plain();
    let host = &registry.host;
    let app_digest = registry.push_image("team/app", "1.0", "pin-app").await;
    let (index, _) = registry.push_index("team/multi", "2.0", "pin-multi").await;
    let gitops_digest = registry
        .push_image("gitops/tool", "3.0", "pin-gitops")
        .await;
    let policy = format!(
        "apiVersion: imagegate.dev/v1alpha1
kind: ImagePolicy
resolution:
  verifyDigest: true
rules:
  - name: gitops
    registries: ['{host}/gitops']
    pinDigests: false
  - name: local
    registries: ['{host}']
"
    );
    let (app, metrics) = webhook(settings_for(&registry), &policy, None);
    let already = format!("{host}/team/app@{app_digest}");
    let deployment = serde_json::json!({"spec": {"template": {"spec": {
        "containers": [
            {"name": "app", "image": format!("{host}/team/app:1.0")},
            {"name": "multi", "image": format!("{host}/team/multi:2.0")},
            {"name": "tool", "image": format!("{host}/gitops/tool:3.0")}
        ],
        "initContainers": [{"name": "init", "image": already}]
    }}}});
    let review = admission_review("apps", "Deployment", "CREATE", deployment.clone());
    let r = post(&app, "/mutate", &review).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(r["patchType"], "JSONPatch");
    let mut mutated = deployment.clone();
    let operations = apply_patch(&mut mutated, r["patch"].as_str().expect("a patch"));
    assert_eq!(
        operations.len(),
        2,
        "only the two tagged images of pinning rules: {operations:?}"
    );
    let containers = &mutated["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        containers[0]["image"],
        format!("{host}/team/app:1.0@{app_digest}")
    );
    assert_eq!(
        containers[1]["image"],
        format!("{host}/team/multi:2.0@{index}"),
        "an index pins to the index"
    );
    assert_eq!(
        containers[2]["image"],
        format!("{host}/gitops/tool:3.0"),
        "pinDigests: false"
    );
    assert_eq!(
        mutated["spec"]["template"]["spec"]["initContainers"][0]["image"],
        already
    );

    // The validator admits the mutated object without asking the registry
    // again, verifyDigest included.
    let lookups_before = metrics.render();
    let r = post(
        &app,
        "/validate",
        &admission_review("apps", "Deployment", "CREATE", mutated),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    let count = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("imagegate_webhook_registry_lookups_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    // Mutation already resolved (and verified) every image: validating the
    // pinned object asks the registry nothing.
    assert_eq!(count(&metrics.render()) - count(&lookups_before), 0.0);
    let _ = gitops_digest;

    // An object that opts out is left alone.
    let mut opted_out = deployment;
    opted_out["metadata"] =
        serde_json::json!({"annotations": {"imagegate.dev/pin-digests": "false"}});
    let r = post(
        &app,
        "/mutate",
        &admission_review("apps", "Deployment", "CREATE", opted_out),
    )
    .await;
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none(), "{r}");
}

#[tokio::test]
async fn the_ledger_records_what_was_admitted_and_nothing_else() {
    use imagegate_webhook::ledger::Ledger;
    install_crypto();
    let registry = Registry::plain();
    let (index, platforms) = registry.push_index("team/multi", "2.0", "ledger").await;
    let port = registry.host.rsplit(':').next().unwrap();
    let policy = POLICY.replace("'127.0.0.1'", &format!("'127.0.0.1:{port}'"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let day = Duration::from_secs(86_400);
    let app_with = |ledger: Arc<Ledger>| webhook(settings_for(&registry), &policy, Some(ledger)).0;
    let image = format!("{}/team/multi:2.0", registry.host);
    let pod = |image: &str| serde_json::json!({"metadata": {"name": "web-1"}, "spec": {"containers": [{"name": "app", "image": image}]}});
    {
        let ledger = Arc::new(Ledger::open(&path, day, 1000).unwrap());
        let app = app_with(ledger.clone());
        // A dry run records nothing.
        let mut dry = admission_review("", "Pod", "CREATE", pod(&image));
        dry["request"]["dryRun"] = serde_json::json!(true);
        assert_eq!(post(&app, "/validate", &dry).await["allowed"], true);
        assert_eq!(ledger.generation().unwrap(), 0);
        // A denial records nothing.
        let denied = admission_review("", "Pod", "CREATE", pod("quay.io/other/app:1"));
        assert_eq!(post(&app, "/validate", &denied).await["allowed"], false);
        assert_eq!(ledger.generation().unwrap(), 0);
        // An admission records the index and every platform digest.
        let r = post(
            &app,
            "/validate",
            &admission_review("", "Pod", "CREATE", pod(&image)),
        )
        .await;
        assert_eq!(r["allowed"], true, "{r}");
        assert_eq!(ledger.generation().unwrap(), 1);
    }
    // After a restart (the store reopened), the approval is still there.
    let ledger = Ledger::open(&path, day, 1000).unwrap();
    let all = ledger.all().unwrap();
    assert_eq!(all.len(), 1);
    let approval = &all[0];
    assert_eq!(approval.digest, index);
    let children: Vec<String> = approval
        .children
        .iter()
        .map(|c| c.digest.to_string())
        .collect();
    assert_eq!(children, platforms);
    assert_eq!(approval.reference, image);
    assert_eq!(approval.namespace, "default");
    assert_eq!(approval.kind.as_deref(), Some("Pod"));
    assert_eq!(approval.name.as_deref(), Some("thing"));
    assert_eq!(approval.user.as_deref(), Some("alice"));
    assert_eq!(approval.rule, "local");
    assert_eq!(
        approval.api,
        imagegate_webhook::review::Api::AdmissionReview
    );
    assert!(approval.admitted_at_ms > 0);
    assert_eq!(ledger.since(1, 10).unwrap(), []);
}

#[tokio::test]
async fn resolves_against_a_bearer_token_registry() {
    use common::registry::TokenIssuer;
    install_crypto();
    let ca = Ca::new("registry CA");
    let issuer = TokenIssuer::start("ci", "s3cret").await;
    let registry = Registry::tls_token(&ca, &issuer, "ci", "s3cret");
    let digest = registry.push_image("team/app", "1.0", "bearer").await;
    let image = reference(&format!("{}/team/app:1.0", registry.host));
    let (good, _) = resolver(settings_for(&registry));
    assert_eq!(good.resolve(&image, false).await.unwrap().digest, digest);

    let mut wrong = settings_for(&registry);
    wrong.credentials = credentials(&registry.host, "ci", "nope");
    let (bad, _) = resolver(wrong);
    let err = bad.resolve(&image, false).await.unwrap_err();
    assert!(matches!(err, ResolveError::Unauthorized(_)), "{err:?}");
}

/// An UPDATE of `object` from `old`.
fn update(group: &str, kind: &str, old: Value, object: Value) -> Value {
    let mut body = admission_review(group, kind, "UPDATE", object);
    body["request"]["oldObject"] = old;
    body
}

/// Found with the registry down: a ReplicaSet scaled 3 -> 0 (what a
/// rollout needs), a finalizer removed, a label changed, were all denied
/// ("could not resolve ..."). A cluster must always be able to scale down
/// and clean up: on UPDATE only the images the old object lacked are
/// decided.
#[tokio::test]
async fn updates_that_add_no_image_never_wait_on_a_registry() {
    install_crypto();
    // A registry that is down: the port is closed.
    let host = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let mut settings = Settings::default();
    settings.plain_http.push(host.clone());
    let policy = format!(
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: local\n    registries: ['{host}']\n"
    );
    let (app, metrics) = webhook(settings, &policy, None);
    let image = format!("{host}/team/app:1.0");
    let replicaset = |replicas: u32, labels: Value| {
        serde_json::json!({
            "metadata": {"name": "app-1", "labels": labels},
            "spec": {"replicas": replicas, "template": {"spec": {
                "containers": [{"name": "app", "image": image}]}}}
        })
    };
    let scaled = post(
        &app,
        "/validate",
        &update(
            "apps",
            "ReplicaSet",
            replicaset(3, serde_json::json!({})),
            replicaset(0, serde_json::json!({})),
        ),
    )
    .await;
    assert_eq!(scaled["allowed"], true, "{scaled}");
    let relabelled = post(
        &app,
        "/validate",
        &update(
            "apps",
            "ReplicaSet",
            replicaset(3, serde_json::json!({})),
            replicaset(3, serde_json::json!({"tier": "web"})),
        ),
    )
    .await;
    assert_eq!(relabelled["allowed"], true, "{relabelled}");
    let pod = |finalizers: Value| {
        serde_json::json!({
            "metadata": {"name": "p", "finalizers": finalizers},
            "spec": {"containers": [{"name": "app", "image": image}]}
        })
    };
    let cleaned = post(
        &app,
        "/validate",
        &update(
            "",
            "Pod",
            pod(serde_json::json!(["example.com/hold"])),
            pod(serde_json::json!([])),
        ),
    )
    .await;
    assert_eq!(cleaned["allowed"], true, "{cleaned}");
    assert_eq!(
        metric(&metrics, "imagegate_webhook_registry_lookups_total"),
        0.0,
        "no registry was asked"
    );
    // An UPDATE that brings a new image is decided as a CREATE would be.
    let mut changed = replicaset(3, serde_json::json!({}));
    changed["spec"]["template"]["spec"]["containers"][0]["image"] =
        format!("{host}/team/app:2.0").into();
    let r = post(
        &app,
        "/validate",
        &update(
            "apps",
            "ReplicaSet",
            replicaset(3, serde_json::json!({})),
            changed,
        ),
    )
    .await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("could not resolve"),
        "{r}"
    );
}

/// Found: /mutate patched images on metadata-only UPDATEs (a changed image
/// restarts the container) and patched spec.containers on a
/// pods/ephemeralcontainers UPDATE. Only what is being admitted is pinned,
/// at its own path.
#[tokio::test]
async fn mutation_pins_only_what_an_update_adds() {
    install_crypto();
    let registry = Registry::plain();
    let host = &registry.host;
    let app_digest = registry.push_image("team/app", "1.0", "upd-app").await;
    let debug_digest = registry.push_image("team/debug", "1.0", "upd-debug").await;
    let policy = format!(
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: local\n    registries: ['{host}']\n"
    );
    let (app, _) = webhook(settings_for(&registry), &policy, None);
    let pod = |labels: Value, ephemeral: Option<&str>| {
        let mut pod = serde_json::json!({
            "metadata": {"name": "p", "labels": labels},
            "spec": {"containers": [{"name": "app", "image": format!("{host}/team/app:1.0")}]}
        });
        if let Some(image) = ephemeral {
            pod["spec"]["ephemeralContainers"] =
                serde_json::json!([{"name": "debug", "image": image}]);
        }
        pod
    };
    // A label change: nothing to pin.
    let r = post(
        &app,
        "/mutate",
        &update(
            "",
            "Pod",
            pod(serde_json::json!({}), None),
            pod(serde_json::json!({"x": "y"}), None),
        ),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r.get("patch").is_none(), "no patch on a label change: {r}");
    // `kubectl debug`: only the new ephemeral container is pinned.
    let debug = format!("{host}/team/debug:1.0");
    let mut body = update(
        "",
        "Pod",
        pod(serde_json::json!({}), None),
        pod(serde_json::json!({}), Some(&debug)),
    );
    body["request"]["subResource"] = "ephemeralcontainers".into();
    let r = post(&app, "/mutate", &body).await;
    let mut object = pod(serde_json::json!({}), Some(&debug));
    let operations = apply_patch(&mut object, r["patch"].as_str().expect("a patch"));
    assert_eq!(operations.len(), 1, "{operations:?}");
    assert_eq!(operations[0]["path"], "/spec/ephemeralContainers/0/image");
    assert_eq!(
        object["spec"]["ephemeralContainers"][0]["image"],
        format!("{debug}@{debug_digest}")
    );
    assert_eq!(
        object["spec"]["containers"][0]["image"],
        format!("{host}/team/app:1.0"),
        "the running container is left alone"
    );
    let _ = app_digest;
}

/// Found: a pod mounting `evil.example.com/miner:1` as an image volume was
/// allowed. Image volumes are checked, resolved, recorded and pinned like
/// container images.
#[tokio::test]
async fn image_volumes_are_checked_resolved_and_pinned() {
    install_crypto();
    let registry = Registry::plain();
    let host = &registry.host;
    let data_digest = registry.push_image("team/data", "1.0", "volume").await;
    let policy = format!(
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: local\n    registries: ['{host}']\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(
        imagegate_webhook::ledger::Ledger::open(
            &dir.path().join("l.redb"),
            Duration::from_secs(3600),
            100,
        )
        .unwrap(),
    );
    let (app, _) = webhook(settings_for(&registry), &policy, Some(ledger.clone()));
    let pod = |volume: &str| {
        serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [{"name": "app", "image": format!("{host}/team/data:1.0")}],
                "volumes": [
                    {"name": "config", "configMap": {"name": "c"}},
                    {"name": "data", "image": {"reference": volume, "pullPolicy": "IfNotPresent"}}
                ]
            }
        })
    };
    let r = post(
        &app,
        "/validate",
        &admission_review("", "Pod", "CREATE", pod("evil.example.com/miner:1")),
    )
    .await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("evil.example.com/miner:1"),
        "{r}"
    );
    // In a pod template too.
    let template = serde_json::json!({"spec": {"template": pod("evil.example.com/miner:1")}});
    let r = post(
        &app,
        "/validate",
        &admission_review("apps", "Deployment", "CREATE", template),
    )
    .await;
    assert_eq!(r["allowed"], false, "{r}");
    // Allowed, the volume's image is resolved and recorded, and pinned.
    let volume = format!("{host}/team/data:1.0");
    let r = post(
        &app,
        "/validate",
        &admission_review("", "Pod", "CREATE", pod(&volume)),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(
        ledger
            .all()
            .unwrap()
            .iter()
            .any(|a| a.digest == data_digest)
    );
    let r = post(
        &app,
        "/mutate",
        &admission_review("", "Pod", "CREATE", pod(&volume)),
    )
    .await;
    let mut object = pod(&volume);
    apply_patch(&mut object, r["patch"].as_str().expect("a patch"));
    assert_eq!(
        object["spec"]["volumes"][1]["image"]["reference"],
        format!("{volume}@{data_digest}")
    );
}

/// Found: break-glass made the webhook resolve an image against any host
/// the pod's author named (outbound TLS to an attacker's address), logged
/// nothing at the default level, and its approval looked like any other.
/// Now: only registries a rule names are asked; the approval says
/// break-glass and may be short-lived.
#[tokio::test]
async fn break_glass_asks_only_known_registries_and_says_so_to_the_nodes() {
    install_crypto();
    let registry = Registry::plain();
    let host = &registry.host;
    let digest = registry.push_image("team/app", "1.0", "glass").await;
    // Somewhere a pod author points at: counts who connects.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_host = trap.local_addr().unwrap().to_string();
    let policy = format!(
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nbreakGlass:\n  approvalTtl: 1h\nrules:\n  - name: local\n    registries: ['{host}']\n    repositories:\n      deny: ['{host}/team/*']\n"
    );
    let mut settings = settings_for(&registry);
    settings.plain_http.push(trap_host.clone());
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(
        imagegate_webhook::ledger::Ledger::open(
            &dir.path().join("l.redb"),
            Duration::from_secs(3600),
            100,
        )
        .unwrap(),
    );
    let (app, _) = webhook(settings, &policy, Some(ledger.clone()));
    let pod = |image: &str| {
        serde_json::json!({
            "metadata": {"name": "p", "annotations": {"imagegate.dev/break-glass": "true"}},
            "spec": {"containers": [{"name": "app", "image": image}]}
        })
    };
    // A host no rule names: allowed (break-glass), never contacted.
    let r = post(
        &app,
        "/validate",
        &admission_review("", "Pod", "CREATE", pod(&format!("{trap_host}/x/y:1"))),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(
        r["auditAnnotations"]["unresolved-images"]
            .as_str()
            .unwrap()
            .contains("not looked up"),
        "{r}"
    );
    assert!(
        trap.accept().is_err(),
        "the pod author's host was contacted"
    );
    assert!(ledger.all().unwrap().is_empty(), "nothing to record");
    // Pinned by digest there: recorded as written, unverified, break-glass.
    let pinned = format!("{trap_host}/x/y@sha256:{}", "c".repeat(64));
    let r = post(
        &app,
        "/validate",
        &admission_review("", "Pod", "CREATE", pod(&pinned)),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(
        trap.accept().is_err(),
        "the pod author's host was contacted"
    );
    // A known registry: resolved, recorded as break-glass, with its TTL.
    let denied_by_rule = format!("{host}/team/app:1.0");
    let r = post(
        &app,
        "/validate",
        &admission_review("", "Pod", "CREATE", pod(&denied_by_rule)),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    let all = ledger.all().unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let pinned_record = all
        .iter()
        .find(|a| a.reference.contains(&trap_host))
        .unwrap();
    assert!(pinned_record.break_glass && !pinned_record.verified);
    let resolved = all.iter().find(|a| a.digest == digest).unwrap();
    assert!(resolved.break_glass && resolved.verified);
    let ttl = resolved.expires_at_ms.unwrap() - resolved.admitted_at_ms;
    assert_eq!(ttl, 3_600_000);
}
