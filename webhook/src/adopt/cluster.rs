//! The pods the apiserver holds, listed through kube-rs (the maintained
//! Kubernetes client: in-cluster service account or a kubeconfig, token
//! rotation, TLS with the process's ring provider). Only `list` on pods is
//! used, so that is all the chart's ClusterRole grants.

use std::path::Path;

use kube::{
    Client, Config,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::Deserialize;
use serde_json::Value;

/// Pods per page: big enough to need few calls, small enough that one page
/// of large pods stays a few MiB.
const PAGE: u32 = 500;

/// The cluster could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No in-cluster configuration and no `--kubeconfig`.
    #[error(
        "no Kubernetes API configuration: not in a pod with a service account token, and no \
         --kubeconfig ({0})"
    )]
    NoConfig(String),
    /// The kubeconfig file could not be used.
    #[error("--kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    /// The list call failed.
    #[error("listing pods: {0}{hint}", hint = hint(.0))]
    List(String),
}

fn hint(error: &str) -> &'static str {
    if error.contains("403") || error.contains("forbidden") {
        "; grant the webhook's service account `list` on pods cluster-wide (the chart's \
         ClusterRole imagegate-webhook does)"
    } else {
        ""
    }
}

/// Where pods come from: the apiserver, or a fake in unit tests.
pub trait PodSource: Send + Sync {
    /// Every pod in the cluster, as the apiserver serialises them.
    fn list(&self) -> impl Future<Output = Result<Vec<Value>, ClusterError>> + Send;
}

/// The apiserver, through kube-rs.
pub struct Apiserver {
    client: Client,
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Value>,
}

#[derive(Default, Deserialize)]
struct ListMeta {
    #[serde(rename = "continue", default)]
    continue_token: Option<String>,
}

impl Apiserver {
    /// In a pod: its service account. Elsewhere: `kubeconfig`, or what
    /// `KUBECONFIG` / `~/.kube/config` name.
    pub async fn connect(kubeconfig: Option<&Path>) -> Result<Self, ClusterError> {
        let config = match kubeconfig {
            Some(path) => {
                let fail = |reason: String| ClusterError::Kubeconfig {
                    path: path.display().to_string(),
                    reason,
                };
                let file = Kubeconfig::read_from(path).map_err(|e| fail(e.to_string()))?;
                Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| fail(e.to_string()))?
            }
            None => Config::infer()
                .await
                .map_err(|e| ClusterError::NoConfig(e.to_string()))?,
        };
        let client = Client::try_from(config).map_err(|e| ClusterError::NoConfig(e.to_string()))?;
        Ok(Self { client })
    }

    /// The client, for the other callers of the API (the reporter).
    pub fn client(&self) -> Client {
        self.client.clone()
    }
}

impl PodSource for Apiserver {
    async fn list(&self) -> Result<Vec<Value>, ClusterError> {
        let mut pods = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut params = ListParams::default().limit(PAGE);
            if let Some(token) = &token {
                params = params.continue_token(token);
            }
            let request = kube::core::Request::new("/api/v1/pods")
                .list(&params)
                .map_err(|e| ClusterError::List(e.to_string()))?;
            let page: PodList = self
                .client
                .request(request)
                .await
                .map_err(|e| ClusterError::List(imagegate_plumbing::errors::error_chain(&e)))?;
            pods.extend(page.items);
            match page.metadata.continue_token.filter(|t| !t.is_empty()) {
                Some(next) => token = Some(next),
                None => return Ok(pods),
            }
        }
    }
}
