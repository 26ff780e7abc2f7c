//! The OCI 1.1 referrers API in front of a real registry. Debian's
//! docker-registry (distribution 2.8) predates it, and no registry that has
//! it (zot, distribution 3) installs here; this front adds it as the
//! distribution spec describes it, and forwards everything else to the real
//! registry untouched:
//!
//! - a manifest PUT whose body has a `subject` is recorded under that
//!   subject's digest, and answered with the `OCI-Subject` header (which
//!   tells clients such as `@sigstore/oci` not to write a tag index);
//! - `GET /v2/<name>/referrers/<digest>` answers an OCI index of the
//!   manifests recorded for it (empty when there are none), with their
//!   `artifactType` and annotations.
//!
//! Plain HTTP on 127.0.0.1. The registry must serve relative `Location`s
//! (`Registry::plain_basic` does), so uploads come back through the front.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    response::Response,
};
use serde_json::{Value, json};

pub struct ReferrersFront {
    pub host: String,
    _server: tokio::task::JoinHandle<()>,
}

type Recorded = Arc<Mutex<HashMap<(String, String), Vec<Value>>>>;

#[derive(Clone)]
struct Front {
    upstream: String,
    client: reqwest::Client,
    recorded: Recorded,
}

impl ReferrersFront {
    /// Starts a front for the registry at `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let front = Front {
            upstream: upstream.to_string(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            recorded: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/v2/{*rest}", axum::routing::any(handle))
            .route("/v2/", axum::routing::any(handle_root))
            .with_state(front);
        let (host, server) = crate::serve_on_loopback(app).await;
        Self {
            host,
            _server: server,
        }
    }
}

async fn handle_root(
    State(front): State<Front>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    forward(&front, method, &uri, headers, body).await.0
}

async fn handle(
    State(front): State<Front>,
    Path(rest): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some((name, digest)) = rest.split_once("/referrers/")
        && method == Method::GET
    {
        let listed = front
            .recorded
            .lock()
            .unwrap()
            .get(&(name.to_string(), digest.to_string()))
            .cloned()
            .unwrap_or_default();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": listed
        });
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/vnd.oci.image.index.v1+json")
            .body(Body::from(index.to_string()))
            .unwrap();
    }
    let manifest_put = method == Method::PUT && rest.contains("/manifests/");
    let (mut response, status) = forward(&front, method, &uri, headers, body.clone()).await;
    if manifest_put
        && status.is_success()
        && let Ok(manifest) = serde_json::from_slice::<Value>(&body)
        && let Some(subject) = manifest["subject"]["digest"].as_str()
    {
        let name = rest.split("/manifests/").next().unwrap_or_default();
        let digest = {
            let hash = ring::digest::digest(&ring::digest::SHA256, &body);
            format!(
                "sha256:{}",
                hash.as_ref()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        };
        let mut descriptor = json!({
            "mediaType": manifest["mediaType"],
            "digest": digest,
            "size": body.len(),
        });
        let artifact_type = manifest
            .get("artifactType")
            .cloned()
            .unwrap_or_else(|| manifest["config"]["mediaType"].clone());
        descriptor["artifactType"] = artifact_type;
        if let Some(annotations) = manifest.get("annotations") {
            descriptor["annotations"] = annotations.clone();
        }
        front
            .recorded
            .lock()
            .unwrap()
            .entry((name.to_string(), subject.to_string()))
            .or_default()
            .push(descriptor);
        if let Ok(value) = subject.parse() {
            response.headers_mut().insert("oci-subject", value);
        }
    }
    response
}

/// Sends the request on to the real registry and its answer back.
async fn forward(
    front: &Front,
    method: Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (Response, StatusCode) {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = front
        .client
        .request(method, format!("http://{}{path}", front.upstream))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(e) => {
            return (
                Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(Body::from(e.to_string()))
                    .unwrap(),
                StatusCode::BAD_GATEWAY,
            );
        }
    };
    let status = answer.status();
    let mut response = Response::builder().status(status);
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    (response.body(Body::from(bytes)).unwrap(), status)
}
