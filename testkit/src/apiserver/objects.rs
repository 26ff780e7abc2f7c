//! The objects imagegate writes, kept as the apiserver keeps them: Leases
//! (leader election), Events and policy reports. Each write is checked
//! against the Kubernetes API's types (k8s-openapi, generated from its
//! OpenAPI schemas; a field the schema lacks is refused, as a strict
//! apiserver refuses it) or, for the reports, against their CRDs'
//! `openAPIV3Schema` (the files the chart installs), and given a
//! resourceVersion; an update that names an older
//! resourceVersion is a 409 Conflict, a create of an existing name a 409
//! AlreadyExists, as the real apiserver answers. Merge patches (RFC 7386)
//! are applied, then checked. Events can be listed and watched across
//! namespaces with a label selector (`key` or `key=value`), from a
//! resourceVersion, as kube-runtime's watcher asks. Nothing expires.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Kind -> (namespace, name) -> object.
type Objects = BTreeMap<&'static str, BTreeMap<(String, String), Value>>;

#[derive(Default)]
pub struct Store {
    objects: Mutex<Objects>,
    /// The report CRDs were taken out ([`Store::set_crds_installed`]).
    crds_absent: std::sync::atomic::AtomicBool,
    version: Mutex<u64>,
    /// Every write, in order: (resourceVersion, kind, ADDED/MODIFIED,
    /// object), for watches.
    log: Mutex<Vec<(u64, &'static str, &'static str, Value)>>,
    /// The newest resourceVersion logged: watches wait on it.
    logged: std::sync::OnceLock<tokio::sync::watch::Sender<u64>>,
    /// Writes refused, with the apiserver's message.
    pub refused: Mutex<Vec<String>>,
}

#[derive(Clone, Copy)]
struct Kind {
    name: &'static str,
    api_version: &'static str,
    validate: fn(&Value) -> Result<(), String>,
    /// Served only while the CRDs are installed.
    custom: bool,
}

const LEASE: Kind = Kind {
    name: "Lease",
    api_version: "coordination.k8s.io/v1",
    validate: strict::<k8s_openapi::api::coordination::v1::Lease>,
    custom: false,
};
const EVENT: Kind = Kind {
    name: "Event",
    api_version: "v1",
    validate: strict::<k8s_openapi::api::core::v1::Event>,
    custom: false,
};

/// The report kinds: (kind, apiVersion, plural, namespaced).
pub const REPORT_KINDS: [(&str, &str, &str, bool); 4] = [
    ("Report", "openreports.io/v1alpha1", "reports", true),
    (
        "ClusterReport",
        "openreports.io/v1alpha1",
        "clusterreports",
        false,
    ),
    (
        "PolicyReport",
        "wgpolicyk8s.io/v1alpha2",
        "policyreports",
        true,
    ),
    (
        "ClusterPolicyReport",
        "wgpolicyk8s.io/v1alpha2",
        "clusterpolicyreports",
        false,
    ),
];

const fn report_kind(at: usize) -> Kind {
    Kind {
        name: REPORT_KINDS[at].0,
        api_version: REPORT_KINDS[at].1,
        validate: against_crd,
        custom: true,
    }
}

/// The CRDs the chart installs, read once.
fn crds() -> &'static [imagegate_deploy_check::crd::Crd] {
    static CRDS: std::sync::OnceLock<Vec<imagegate_deploy_check::crd::Crd>> =
        std::sync::OnceLock::new();
    CRDS.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/helm/imagegate/files/crds");
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|f| f.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
            .map(|path| imagegate_deploy_check::crd::Crd::load(&path).unwrap())
            .collect()
    })
}

fn against_crd(object: &Value) -> Result<(), String> {
    let crd = crds()
        .iter()
        .find(|c| c.defines(object))
        .ok_or("no CRD defines this apiVersion and kind")?;
    let violations = crd.violations(object).map_err(|e| e.to_string())?;
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations.join("; "))
    }
}

fn strict<T: DeserializeOwned>(object: &Value) -> Result<(), String> {
    let mut unknown = Vec::new();
    let _: T = serde_ignored::deserialize(object.clone(), |path| unknown.push(path.to_string()))
        .map_err(|e| e.to_string())?;
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!("unknown fields {unknown:?}"))
    }
}

pub type Shared = Arc<super::Shared>;

/// The routes for the kinds above, for the apiserver's router.
pub fn routes() -> Router<Shared> {
    let mut router = Router::new()
        .route("/api/v1/namespaces/{namespace}/pods/{name}", get(read_pod))
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
            post(|s, h, Path(ns): Path<String>, b| create(LEASE, s, h, ns, b)),
        )
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}",
            get(|s, h, Path(key): Path<(String, String)>| read(LEASE, s, h, key))
                .put(|s, h, Path(key): Path<(String, String)>, b| replace(LEASE, s, h, key, b)),
        )
        .route("/api/v1/events", get(list_or_watch_events))
        .route(
            "/api/v1/namespaces/{namespace}/events",
            post(|s, h, Path(ns): Path<String>, b| create(EVENT, s, h, ns, b)),
        )
        .route(
            "/api/v1/namespaces/{namespace}/events/{name}",
            get(|s, h, Path(key): Path<(String, String)>| read(EVENT, s, h, key))
                .patch(|s, h, Path(key): Path<(String, String)>, b| patch(EVENT, s, h, key, b)),
        );
    for (at, &(_, api_version, plural, namespaced)) in REPORT_KINDS.iter().enumerate() {
        let kind = report_kind(at);
        router = if namespaced {
            router
                .route(
                    &format!("/apis/{api_version}/namespaces/{{namespace}}/{plural}"),
                    post(move |s, h, Path(ns): Path<String>, b| create(kind, s, h, ns, b)),
                )
                .route(
                    &format!("/apis/{api_version}/namespaces/{{namespace}}/{plural}/{{name}}"),
                    get(move |s, h, Path(key): Path<(String, String)>| read(kind, s, h, key)).put(
                        move |s, h, Path(key): Path<(String, String)>, b| {
                            replace(kind, s, h, key, b)
                        },
                    ),
                )
        } else {
            router
                .route(
                    &format!("/apis/{api_version}/{plural}"),
                    post(move |s, h, b| create(kind, s, h, String::new(), b)),
                )
                .route(
                    &format!("/apis/{api_version}/{plural}/{{name}}"),
                    get(move |s, h, Path(name): Path<String>| {
                        read(kind, s, h, (String::new(), name))
                    })
                    .put(move |s, h, Path(name): Path<String>, b| {
                        replace(kind, s, h, (String::new(), name), b)
                    }),
                )
        };
    }
    for group_version in ["openreports.io/v1alpha1", "wgpolicyk8s.io/v1alpha2"] {
        router = router.route(
            &format!("/apis/{group_version}"),
            get(move |s| discovery(s, group_version)),
        );
    }
    router
}

/// The group's APIResourceList, as the apiserver serves it once the CRDs
/// are installed (and a 404 before).
async fn discovery(State(shared): State<Shared>, group_version: &'static str) -> Response {
    if !shared.objects.crds_installed() {
        return not_found();
    }
    let resources: Vec<Value> = REPORT_KINDS
        .iter()
        .filter(|(_, api_version, _, _)| *api_version == group_version)
        .map(|(kind, _, plural, namespaced)| {
            json!({
                "name": plural, "singularName": kind.to_ascii_lowercase(),
                "namespaced": namespaced, "kind": kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            })
        })
        .collect();
    answer(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": group_version, "resources": resources,
        }),
    )
}

/// What the apiserver answers for a resource it does not serve.
fn not_found() -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource".into(),
    )
}

/// A JSON answer (axum's `json` feature is not built for the tests).
fn answer(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    answer(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16()
        }),
    )
}

fn body_json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))
}

fn bad_request(message: String) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn unauthorised(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", shared.token));
    (!ok).then(|| {
        status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        )
    })
}

impl Store {
    /// Whether the report kinds are served, as if their CRDs were (not)
    /// installed; they are at the start.
    pub fn set_crds_installed(&self, installed: bool) {
        self.crds_absent
            .store(!installed, std::sync::atomic::Ordering::SeqCst);
    }

    fn crds_installed(&self) -> bool {
        !self.crds_absent.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn next_version(&self) -> String {
        let mut v = self.version.lock().unwrap();
        *v += 1;
        v.to_string()
    }

    /// Every object of `kind` ("Lease", "Event"), in name order.
    pub fn all(&self, kind: &str) -> Vec<Value> {
        self.objects
            .lock()
            .unwrap()
            .get(kind)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn refuse(&self, kind: Kind, message: String) -> Response {
        self.refused.lock().unwrap().push(message.clone());
        status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{} is invalid: {message}", kind.name),
        )
    }

    /// Checks and stores `object` under `key`, with a new resourceVersion.
    fn store(&self, kind: Kind, key: (String, String), mut object: Value) -> Response {
        if object["apiVersion"] != kind.api_version || object["kind"] != kind.name {
            return self.refuse(
                kind,
                format!(
                    "apiVersion/kind are {}/{}",
                    object["apiVersion"], object["kind"]
                ),
            );
        }
        if let Err(e) = (kind.validate)(&object) {
            return self.refuse(kind, e);
        }
        let version = self.next_version();
        object["metadata"]["resourceVersion"] = json!(version);
        if !key.0.is_empty() {
            object["metadata"]["namespace"] = json!(key.0);
        }
        let before = self
            .objects
            .lock()
            .unwrap()
            .entry(kind.name)
            .or_default()
            .insert(key, object.clone());
        let change = if before.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let rv: u64 = version.parse().unwrap_or(0);
        self.log
            .lock()
            .unwrap()
            .push((rv, kind.name, change, object.clone()));
        self.logged().send_replace(rv);
        answer(StatusCode::OK, &object)
    }

    fn logged(&self) -> &tokio::sync::watch::Sender<u64> {
        self.logged
            .get_or_init(|| tokio::sync::watch::Sender::new(0))
    }

    /// The changes to `kind` after resourceVersion `after` that `selector`
    /// selects.
    fn changes(&self, kind: &str, after: u64, selector: &Selector) -> Vec<(u64, Value)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(rv, k, _, object)| *rv > after && *k == kind && selector.selects(object))
            .map(|(rv, _, change, object)| (*rv, json!({"type": change, "object": object})))
            .collect()
    }

    fn get(&self, kind: Kind, key: &(String, String)) -> Option<Value> {
        self.objects
            .lock()
            .unwrap()
            .get(kind.name)
            .and_then(|m| m.get(key))
            .cloned()
    }
}

async fn create(
    kind: Kind,
    State(shared): State<Shared>,
    headers: HeaderMap,
    namespace: String,
    body: axum::body::Bytes,
) -> Response {
    if let Some(denied) = unauthorised(&shared, &headers) {
        return denied;
    }
    if kind.custom && !shared.objects.crds_installed() {
        return not_found();
    }
    let mut object = match body_json(&body) {
        Ok(object) => object,
        Err(e) => return bad_request(e),
    };
    let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
        return shared
            .objects
            .refuse(kind, "metadata.name: Required value".into());
    };
    let key = (namespace, name.clone());
    if shared.objects.get(kind, &key).is_some() {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} {name:?} already exists", kind.name),
        );
    }
    object["metadata"]["uid"] = json!(format!("uid-{}", shared.objects.next_version()));
    let response = shared.objects.store(kind, key, object);
    if response.status() == StatusCode::OK {
        let (mut parts, body) = response.into_parts();
        parts.status = StatusCode::CREATED;
        return Response::from_parts(parts, body);
    }
    response
}

/// `GET` of one pod of the list [`super::Apiserver::set_pods`] set.
async fn read_pod(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    if let Some(denied) = unauthorised(&shared, &headers) {
        return denied;
    }
    let pods = shared.pods.lock().unwrap();
    match pods.iter().find(|p| {
        p["metadata"]["namespace"] == namespace.as_str() && p["metadata"]["name"] == name.as_str()
    }) {
        Some(pod) => answer(StatusCode::OK, pod),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pods {name:?} not found"),
        ),
    }
}

async fn read(
    kind: Kind,
    State(shared): State<Shared>,
    headers: HeaderMap,
    (namespace, name): (String, String),
) -> Response {
    if let Some(denied) = unauthorised(&shared, &headers) {
        return denied;
    }
    if kind.custom && !shared.objects.crds_installed() {
        return not_found();
    }
    match shared.objects.get(kind, &(namespace, name.clone())) {
        Some(object) => answer(StatusCode::OK, &object),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} {name:?} not found", kind.name),
        ),
    }
}

async fn replace(
    kind: Kind,
    State(shared): State<Shared>,
    headers: HeaderMap,
    (namespace, name): (String, String),
    body: axum::body::Bytes,
) -> Response {
    if let Some(denied) = unauthorised(&shared, &headers) {
        return denied;
    }
    if kind.custom && !shared.objects.crds_installed() {
        return not_found();
    }
    let mut object = match body_json(&body) {
        Ok(object) => object,
        Err(e) => return bad_request(e),
    };
    let key = (namespace, name.clone());
    let Some(current) = shared.objects.get(kind, &key) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{name:?} not found"),
        );
    };
    // Optimistic concurrency: an update must name the version it read.
    if object["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; \
                 please apply your changes to the latest version and try again",
                kind.name
            ),
        );
    }
    object["metadata"]["uid"] = current["metadata"]["uid"].clone();
    shared.objects.store(kind, key, object)
}

async fn patch(
    kind: Kind,
    State(shared): State<Shared>,
    headers: HeaderMap,
    (namespace, name): (String, String),
    body: axum::body::Bytes,
) -> Response {
    if let Some(denied) = unauthorised(&shared, &headers) {
        return denied;
    }
    if kind.custom && !shared.objects.crds_installed() {
        return not_found();
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/merge-patch+json" {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the stand-in applies merge patches only, not {content_type:?}"),
        );
    }
    let patch = match body_json(&body) {
        Ok(patch) => patch,
        Err(e) => return bad_request(e),
    };
    let key = (namespace, name.clone());
    let Some(mut object) = shared.objects.get(kind, &key) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{name:?} not found"),
        );
    };
    merge(&mut object, &patch);
    shared.objects.store(kind, key, object)
}

/// RFC 7386.
fn merge(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().expect("an object");
    for (key, value) in fields {
        if value.is_null() {
            map.remove(key);
        } else {
            merge(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// A label selector: `key` (has the label) or `key=value`, comma-separated.
struct Selector(Vec<(String, Option<String>)>);

impl Selector {
    fn parse(text: &str) -> Self {
        Self(
            text.split(',')
                .filter(|t| !t.is_empty())
                .map(|t| match t.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (t.to_string(), None),
                })
                .collect(),
        )
    }

    fn selects(&self, object: &Value) -> bool {
        self.0.iter().all(|(key, value)| {
            let label = &object["metadata"]["labels"][key];
            match value {
                Some(value) => label == value.as_str(),
                None => label.is_string(),
            }
        })
    }
}

/// The query's parameters, percent-decoded.
fn query(uri: &axum::http::Uri) -> BTreeMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// `GET /api/v1/events`: the list (`EventList` with the newest
/// resourceVersion), or with `watch=true` the changes after
/// `resourceVersion`, one JSON object a line, until `timeoutSeconds`.
async fn list_or_watch_events(
    State(shared): State<Shared>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    if let Some(denied) = unauthorised(&shared, &headers) {
        return denied;
    }
    let params = query(&uri);
    let selector = Selector::parse(params.get("labelSelector").map_or("", String::as_str));
    if params.get("watch").map(String::as_str) != Some("true") {
        let items: Vec<Value> = shared
            .objects
            .all(EVENT.name)
            .into_iter()
            .filter(|e| selector.selects(e))
            .collect();
        let version = *shared.objects.version.lock().unwrap();
        return answer(
            StatusCode::OK,
            &json!({
                "kind": "EventList", "apiVersion": "v1",
                "metadata": {"resourceVersion": version.to_string()},
                "items": items,
            }),
        );
    }
    let after: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300u64);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
    let logged = shared.objects.logged().subscribe();
    let lines = futures_util::stream::unfold(
        (shared, selector, after, logged),
        move |(shared, selector, mut after, mut logged)| async move {
            loop {
                let changes = shared.objects.changes(EVENT.name, after, &selector);
                if let Some((rv, _)) = changes.last() {
                    after = *rv;
                    let mut chunk = String::new();
                    for (_, change) in &changes {
                        chunk.push_str(&change.to_string());
                        chunk.push('\n');
                    }
                    return Some((
                        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(chunk)),
                        (shared, selector, after, logged),
                    ));
                }
                // Nothing new: wait for a write, or end at the deadline
                // (the client watches again from where it got to).
                match tokio::time::timeout_at(deadline, logged.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return None,
                }
            }
        },
    );
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patches_as_rfc_7386_says() {
        let mut doc = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge(&mut doc, &json!({"a": null, "b": {"c": 4}, "e": [1]}));
        assert_eq!(doc, json!({"b": {"c": 4, "d": 3}, "e": [1]}));
    }

    #[test]
    fn strictness_refuses_unknown_fields_and_wrong_types() {
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "x"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}});
        assert!(strict::<k8s_openapi::api::coordination::v1::Lease>(&lease).is_ok());
        let mut typo = lease.clone();
        typo["spec"]["holder"] = json!("a");
        assert!(strict::<k8s_openapi::api::coordination::v1::Lease>(&typo).is_err());
        let mut wrong = lease;
        wrong["spec"]["leaseDurationSeconds"] = json!("15");
        assert!(strict::<k8s_openapi::api::coordination::v1::Lease>(&wrong).is_err());
    }
}
