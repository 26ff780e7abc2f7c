//! containerd's native API: which container a cgroup belongs to, which image
//! it runs and that image's digest, across every containerd namespace
//! (`k8s.io` for CRI, `default` for `ctr`, `moby` for Docker, ...).
//!
//! CRI lists only `k8s.io`; a container someone started on the node by hand
//! lives elsewhere, which is exactly what the agent must see.
//!
//! Labels are claims: anyone with containerd's socket can start a container
//! labelled `io.cri-containerd.kind=sandbox` or
//! `io.kubernetes.pod.namespace=kube-system`. What a container is to
//! Kubernetes is asked of CRI itself (on the same socket), which knows only
//! the sandboxes and containers it created: a sandbox is one CRI has a
//! record of, and a container's pod is the sandbox CRI created it in.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_cri::v1::{
    ContainerFilter, ListContainersRequest, PodSandboxStatusRequest,
    runtime_service_client::RuntimeServiceClient,
};

use containerd_client::services::v1::{
    GetContainerRequest, GetImageRequest, ListNamespacesRequest, ListTasksRequest,
    ReadContentRequest, containers_client::ContainersClient, content_client::ContentClient,
    images_client::ImagesClient, namespaces_client::NamespacesClient, tasks_client::TasksClient,
};
use imagegate_proto::{
    media_types::is_index,
    platform::{Platform, node_architecture},
};
use serde::Deserialize;
use tokio::sync::Mutex;
use tonic::{Code, Request, transport::Channel};

use imagegate_plumbing::errors::error_chain;

use crate::{
    digest::Digest,
    model::{ContainerIdentity, PodRef},
};

/// Every RPC gets this long; containerd answers in milliseconds.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// An index bigger than this is not read (real ones are a few KiB).
const MAX_INDEX_BYTES: usize = 4 << 20;

/// The containerd namespace CRI keeps its sandboxes and containers in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The label CRI puts on what it creates (`sandbox` or `container`): only
/// a hint of when to wait for CRI's own record, never trusted itself.
const CRI_KIND_LABEL: &str = "io.cri-containerd.kind";
/// How often CRI is asked again for the record of a container labelled as
/// CRI's (a sandbox is filed in CRI's store only once its pause process
/// runs, so the agent may ask first).
const CRI_RECORD_POLL: Duration = Duration::from_millis(50);

/// A running container's init process, from the start-up scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningTask {
    pub namespace: String,
    pub container_id: String,
    pub pid: u32,
}

/// What a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(Box<ContainerIdentity>),
    /// containerd has no such container in any namespace.
    NotFound,
}

/// containerd could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot reach containerd at {socket}: {reason}; check --containerd-socket and that \
         the socket is mounted into the agent"
    )]
    Connect { socket: PathBuf, reason: String },
    #[error("containerd {call}: {status}")]
    Rpc {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("containerd {call} took longer than {RPC_TIMEOUT:?}")]
    Timeout { call: &'static str },
}

/// A client of one containerd socket. Connects on first use and again
/// after a failure, so the agent can start before containerd does.
pub struct Containerd {
    socket: PathBuf,
    channel: Mutex<Option<Channel>>,
}

impl Containerd {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            channel: Mutex::new(None),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn channel(&self) -> Result<Channel, RuntimeError> {
        let mut slot = self.channel.lock().await;
        if let Some(channel) = slot.as_ref() {
            return Ok(channel.clone());
        }
        let connect = containerd_client::connect(&self.socket);
        let channel = tokio::time::timeout(RPC_TIMEOUT, connect)
            .await
            .map_err(|_| RuntimeError::Connect {
                socket: self.socket.clone(),
                reason: format!("no answer within {RPC_TIMEOUT:?}"),
            })?
            .map_err(|e| RuntimeError::Connect {
                socket: self.socket.clone(),
                reason: error_chain(&e),
            })?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// Forgets the channel after a transport failure.
    async fn reset(&self) {
        *self.channel.lock().await = None;
    }

    async fn call<T, F>(&self, call: &'static str, f: F) -> Result<T, RuntimeError>
    where
        F: AsyncFnOnce(Channel) -> Result<T, tonic::Status>,
    {
        let channel = self.channel().await?;
        match tokio::time::timeout(RPC_TIMEOUT, f(channel)).await {
            Err(_) => Err(RuntimeError::Timeout { call }),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(status)) => {
                if status.code() == Code::Unavailable || status.code() == Code::Unknown {
                    self.reset().await;
                }
                Err(RuntimeError::Rpc {
                    call,
                    status: Box::new(status),
                })
            }
        }
    }

    /// containerd's namespaces.
    pub async fn namespaces(&self) -> Result<Vec<String>, RuntimeError> {
        self.call("Namespaces.List", async |channel| {
            let reply = NamespacesClient::new(channel)
                .list(ListNamespacesRequest::default())
                .await?;
            Ok(reply
                .into_inner()
                .namespaces
                .into_iter()
                .map(|n| n.name)
                .collect())
        })
        .await
    }

    /// Finds container `id`, trying `first` (a namespace hint) before the
    /// others. A container labelled as CRI's is waited for in CRI's store
    /// until `cri_patience` at most (the caller passes the end of its grace
    /// window: a label buys no time an unlabelled container does not get).
    pub async fn find(
        &self,
        id: &str,
        first: Option<&str>,
        cri_patience: tokio::time::Instant,
    ) -> Result<Lookup, RuntimeError> {
        let mut namespaces = self.namespaces().await?;
        if let Some(first) = first {
            match namespaces.iter().position(|n| n == first) {
                Some(at) => namespaces.swap(0, at),
                // The hint names no namespace: a `/<ns>/<id>` look-alike.
                None => return Ok(Lookup::NotFound),
            }
        }
        for namespace in namespaces {
            if let Some(identity) = self.get(&namespace, id, cri_patience).await? {
                return Ok(Lookup::Found(Box::new(identity)));
            }
        }
        Ok(Lookup::NotFound)
    }

    /// Container `id` in `namespace`, with its image's digest (see
    /// [`Containerd::find`] for `cri_patience`).
    pub async fn get(
        &self,
        namespace: &str,
        id: &str,
        cri_patience: tokio::time::Instant,
    ) -> Result<Option<ContainerIdentity>, RuntimeError> {
        let request = GetContainerRequest { id: id.to_string() };
        let found = self
            .call(
                "Containers.Get",
                async |channel| match ContainersClient::new(channel)
                    .get(in_namespace(request, namespace))
                    .await
                {
                    Ok(reply) => Ok(reply.into_inner().container),
                    Err(status) if status.code() == Code::NotFound => Ok(None),
                    Err(status) => Err(status),
                },
            )
            .await?;
        let Some(container) = found else {
            return Ok(None);
        };
        let (digest, platform_digest) = self.image_digests(namespace, &container.image).await?;
        // Only CRI's own records say what a container is to Kubernetes, and
        // CRI keeps its containers in `k8s.io`.
        let claim = container.labels.get(CRI_KIND_LABEL);
        let ((pod, sandbox), unconfirmed_claim) = if namespace == CRI_NAMESPACE {
            // CRI files a sandbox in its store only once its pause process
            // runs, so the agent may ask first: a container that says it
            // is CRI's is asked for again, within the caller's patience.
            let mut found = self.cri_identity(&container.id).await?;
            while claim.is_some()
                && found.0.is_none()
                && tokio::time::Instant::now() + CRI_RECORD_POLL <= cri_patience
            {
                tokio::time::sleep(CRI_RECORD_POLL).await;
                found = self.cri_identity(&container.id).await?;
            }
            let unconfirmed = found.0.is_none().then_some(claim).flatten();
            (found, unconfirmed)
        } else {
            ((None, false), claim)
        };
        let unconfirmed_claim = unconfirmed_claim.map(|kind| {
            format!(
                "it is labelled {CRI_KIND_LABEL}={kind}, but CRI has no record of creating it, \
                 so it is judged as any container in containerd namespace {namespace}"
            )
        });
        Ok(Some(ContainerIdentity {
            namespace: namespace.to_string(),
            id: container.id,
            image: container.image,
            // containerd checks the digests it stores; one that does not
            // parse is no digest to judge (the verdict says unknown).
            digest: digest.and_then(|d| Digest::parse(&d).ok()),
            platform_digest: platform_digest.and_then(|d| Digest::parse(&d).ok()),
            pod,
            sandbox,
            unconfirmed_claim,
        }))
    }

    /// What CRI says of container `id`: a sandbox it created (with its
    /// pod), a container it created in a sandbox (with that pod), or
    /// nothing (`(None, false)`): then its labels are no more than claims.
    async fn cri_identity(&self, id: &str) -> Result<(Option<PodRef>, bool), RuntimeError> {
        if let Some(pod) = self.cri_sandbox(id).await? {
            return Ok((Some(pod), true));
        }
        let listed = self
            .call("CRI ListContainers", async |channel| {
                let reply = RuntimeServiceClient::new(channel)
                    .list_containers(ListContainersRequest {
                        filter: Some(ContainerFilter {
                            id: id.to_string(),
                            ..Default::default()
                        }),
                    })
                    .await?;
                Ok(reply.into_inner().containers)
            })
            .await?;
        let Some(container) = listed.into_iter().find(|c| c.id == id) else {
            return Ok((None, false));
        };
        let Some(mut pod) = self.cri_sandbox(&container.pod_sandbox_id).await? else {
            return Ok((None, false));
        };
        pod.container = container.metadata.map(|m| m.name);
        Ok((Some(pod), false))
    }

    /// The pod of sandbox `id`, if CRI created such a sandbox.
    async fn cri_sandbox(&self, id: &str) -> Result<Option<PodRef>, RuntimeError> {
        let status = self
            .call(
                "CRI PodSandboxStatus",
                async |channel| match RuntimeServiceClient::new(channel)
                    .pod_sandbox_status(PodSandboxStatusRequest {
                        pod_sandbox_id: id.to_string(),
                        verbose: false,
                    })
                    .await
                {
                    Ok(reply) => Ok(reply.into_inner().status),
                    Err(status) if status.code() == Code::NotFound => Ok(None),
                    Err(status) => Err(status),
                },
            )
            .await?;
        Ok(status.and_then(|s| s.metadata).map(|m| PodRef {
            namespace: m.namespace,
            name: m.name,
            uid: Some(m.uid).filter(|u| !u.is_empty()),
            container: None,
        }))
    }

    /// The image's target digest and, for an index, this platform's
    /// manifest digest. `(None, None)` when the image record is gone.
    async fn image_digests(
        &self,
        namespace: &str,
        image: &str,
    ) -> Result<(Option<String>, Option<String>), RuntimeError> {
        if image.is_empty() {
            return Ok((None, None));
        }
        let request = GetImageRequest {
            name: image.to_string(),
        };
        let found = self
            .call("Images.Get", async |channel| {
                match ImagesClient::new(channel)
                    .get(in_namespace(request, namespace))
                    .await
                {
                    Ok(reply) => Ok(reply.into_inner().image.and_then(|i| i.target)),
                    Err(status) if status.code() == Code::NotFound => Ok(None),
                    Err(status) => Err(status),
                }
            })
            .await?;
        let Some(target) = found else {
            return Ok((None, None));
        };
        let platform = if is_index(&target.media_type) {
            self.platform_manifest(namespace, &target.digest).await?
        } else {
            None
        };
        Ok((Some(target.digest), platform))
    }

    /// Reads an index from the content store and picks this node's
    /// platform manifest.
    async fn platform_manifest(
        &self,
        namespace: &str,
        index_digest: &str,
    ) -> Result<Option<String>, RuntimeError> {
        let request = ReadContentRequest {
            digest: index_digest.to_string(),
            offset: 0,
            size: 0,
        };
        let bytes = self
            .call("Content.Read", async |channel| {
                let mut stream = ContentClient::new(channel)
                    .read(in_namespace(request, namespace))
                    .await?
                    .into_inner();
                let mut bytes = Vec::new();
                while let Some(chunk) = stream.message().await? {
                    bytes.extend_from_slice(&chunk.data);
                    if bytes.len() > MAX_INDEX_BYTES {
                        return Err(tonic::Status::resource_exhausted("index too large"));
                    }
                }
                Ok(bytes)
            })
            .await;
        // Content may be garbage-collected or never fetched for an index
        // pulled by digest: then only the index digest is known.
        let Ok(bytes) = bytes else {
            return Ok(None);
        };
        Ok(pick_platform(&bytes, node_architecture()))
    }

    /// The init process of every running container, in every namespace.
    pub async fn running_tasks(&self) -> Result<Vec<RunningTask>, RuntimeError> {
        let mut running = Vec::new();
        for namespace in self.namespaces().await? {
            let tasks = self
                .call("Tasks.List", async |channel| {
                    let reply = TasksClient::new(channel)
                        .list(in_namespace(ListTasksRequest::default(), &namespace))
                        .await?;
                    Ok(reply.into_inner().tasks)
                })
                .await?;
            // Status 2 is RUNNING (and 4 PAUSED): both have live processes.
            for task in tasks
                .into_iter()
                .filter(|t| t.pid != 0 && matches!(t.status, 2 | 4))
            {
                // containerd 1.6 leaves `container_id` empty in Tasks.List
                // and puts the container's id in `id` (an init process's id
                // is its container's).
                let container_id = if task.container_id.is_empty() {
                    task.id
                } else {
                    task.container_id
                };
                running.push(RunningTask {
                    namespace: namespace.clone(),
                    container_id,
                    pid: task.pid,
                });
            }
        }
        Ok(running)
    }
}

fn in_namespace<T>(message: T, namespace: &str) -> Request<T> {
    let mut request = Request::new(message);
    // A namespace name is ASCII by containerd's own rules; one that is not
    // is sent as no namespace, and containerd refuses the call.
    if let Ok(value) = namespace.parse() {
        request.metadata_mut().insert("containerd-namespace", value);
    }
    request
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    platform: Option<Platform>,
}

/// The linux/`arch` manifest's digest in an index document.
pub fn pick_platform(index: &[u8], arch: &str) -> Option<String> {
    let index: Index = serde_json::from_slice(index).ok()?;
    index
        .manifests
        .into_iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| p.runs_on(arch)))
        .map(|m| m.digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_this_platform_from_an_index() {
        let index = br#"{"schemaVersion":2,"manifests":[
            {"digest":"sha256:aa","platform":{"architecture":"arm64","os":"linux"}},
            {"digest":"sha256:bb","platform":{"architecture":"amd64","os":"linux"}},
            {"digest":"sha256:cc","platform":{"architecture":"amd64","os":"windows"}}]}"#;
        assert_eq!(pick_platform(index, "amd64").as_deref(), Some("sha256:bb"));
        assert_eq!(pick_platform(index, "arm64").as_deref(), Some("sha256:aa"));
        assert_eq!(pick_platform(index, "s390x"), None);
        assert_eq!(pick_platform(b"not json", "amd64"), None);
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_clear_error() {
        let containerd = Containerd::new("/nonexistent/containerd.sock");
        let err = containerd.namespaces().await.unwrap_err();
        assert!(err.to_string().contains("--containerd-socket"), "{err}");
    }
}
