//! A stand-in for the parts of the kube-apiserver imagegate calls: the pod
//! list, for the webhook's rebuild of the admitted set, one pod by name
//! (the reporter's check for gone pods), and the objects it writes
//! ([`objects`]: Leases, Events, reports). `GET /api/v1/pods` over HTTPS with a bearer token,
//! answering a `PodList` as the apiserver serialises it (the items are
//! what the test's kubelet stand-in reports of the pods it really runs).
//! It answers at most [`PAGE`] items per call whatever `limit` asks, with
//! a `continue` token, which the apiserver may also do, so paging is
//! exercised. Nothing else of the API is served: no kube-apiserver can be
//! installed on this machine.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{
    Router,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::get,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use serde_json::{Value, json};

use rustls::pki_types::pem::PemObject;

use crate::ca::Ca;

pub mod objects;

/// Items per answer.
pub const PAGE: usize = 2;

#[derive(Default)]
pub struct Shared {
    /// What [`Apiserver::set_pods`] set (objects.rs reads one).
    pods: Mutex<Vec<Value>>,
    token: String,
    lists: AtomicUsize,
    pub objects: objects::Store,
}

pub struct Apiserver {
    pub address: SocketAddr,
    /// The CA its serving certificate chains to (PEM).
    pub ca_pem: String,
    pub token: String,
    shared: Arc<Shared>,
}

impl Apiserver {
    /// Serves on `ip` (a free port), with a certificate from `ca` valid for
    /// `ip` and `kubernetes.default.svc`.
    pub async fn start(ca: &Ca, ip: IpAddr) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let leaf = ca.server_for(
            "kube-apiserver",
            &[ip.to_string(), "kubernetes.default.svc".into()],
        );
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            token: format!("test-token-{}", std::process::id()),
            ..Default::default()
        });
        let app = Router::new()
            .route("/api/v1/pods", get(list))
            .merge(objects::routes())
            .with_state(shared.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let service = TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    }
                });
            }
        });
        Self {
            address,
            ca_pem: ca.pem(),
            token: shared.token.clone(),
            shared,
        }
    }

    /// What `GET /api/v1/pods` lists from now on.
    pub fn set_pods(&self, pods: Vec<Value>) {
        *self.shared.pods.lock().unwrap() = pods;
    }

    /// The objects of `kind` ("Lease", "Event") written so far.
    pub fn objects(&self, kind: &str) -> Vec<Value> {
        self.shared.objects.all(kind)
    }

    /// Serves the report kinds (their CRDs installed) or not.
    pub fn set_crds_installed(&self, installed: bool) {
        self.shared.objects.set_crds_installed(installed);
    }

    /// Writes refused as invalid, with the reason.
    pub fn refused(&self) -> Vec<String> {
        self.shared.objects.refused.lock().unwrap().clone()
    }

    /// How many list calls were answered (pages included).
    pub fn lists(&self) -> usize {
        self.shared.lists.load(Ordering::Relaxed)
    }

    /// A kubeconfig for this apiserver (its CA, the token), as
    /// `--kubeconfig` and `KUBECONFIG` read it.
    pub fn kubeconfig(&self) -> String {
        use base64::Engine;
        let ca_data = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    \
             server: https://{}\n    certificate-authority-data: {ca_data}\nusers:\n- name: \
             imagegate\n  user:\n    token: {}\ncontexts:\n- name: stand-in\n  context: \
             {{cluster: stand-in, user: imagegate}}\ncurrent-context: stand-in\n",
            self.address, self.token
        )
    }

    /// Files a pod finds under /var/run/secrets/kubernetes.io/serviceaccount.
    pub fn service_account_files(&self, namespace: &str) -> Vec<(String, Vec<u8>)> {
        vec![
            ("token".into(), self.token.clone().into_bytes()),
            ("ca.crt".into(), self.ca_pem.clone().into_bytes()),
            ("namespace".into(), namespace.as_bytes().to_vec()),
        ]
    }
}

async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> impl IntoResponse {
    let json = |code: StatusCode, body: Value| {
        (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
    };
    let authorised = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", shared.token));
    if !authorised {
        return json(
            StatusCode::UNAUTHORIZED,
            json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "Unauthorized", "reason": "Unauthorized", "code": 401
            }),
        );
    }
    shared.lists.fetch_add(1, Ordering::Relaxed);
    let pods = shared.pods.lock().unwrap().clone();
    let from: usize = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("continue="))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let page: Vec<Value> = pods.iter().skip(from).take(PAGE).cloned().collect();
    let next = from + page.len();
    let mut metadata = json!({"resourceVersion": "4242"});
    if next < pods.len() {
        metadata["continue"] = json!(next.to_string());
    }
    json(
        StatusCode::OK,
        json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": metadata,
            "items": page,
        }),
    )
}
