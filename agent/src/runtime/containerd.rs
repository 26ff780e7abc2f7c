//! containerd's native API: which container an id is in any containerd
//! namespace (`k8s.io` for CRI, `default` for `ctr`, `moby` for Docker),
//! the image it was created from and that image's digests (the target,
//! and for an index this node's platform manifest, read from the content
//! store), and the running tasks of every namespace.
//!
//! CRI lists only what it created; a container someone started on the node
//! by hand lives elsewhere, which is exactly what the agent must see. What a
//! container is to Kubernetes is asked of CRI ([`super::cri`]); labels are
//! only claims.

use std::path::{Path, PathBuf};

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
use tonic::{Code, Request, transport::Channel};

use super::{
    ImageDigests, NativeContainer, NativeLookup, RunningTask, RuntimeError, socket::Socket,
};
use crate::digest::Digest;

/// An index bigger than this is not read (real ones are a few KiB).
const MAX_INDEX_BYTES: usize = 4 << 20;

/// The containerd namespace CRI keeps its sandboxes and containers in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The label containerd's CRI puts on what it creates (`sandbox` or
/// `container`): only a hint of when to wait for CRI's own record, never
/// trusted itself.
const CRI_KIND_LABEL: &str = "io.cri-containerd.kind";

/// A client of one containerd socket.
pub struct Containerd {
    socket: Socket,
}

impl Containerd {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: Socket::new(socket),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket.path
    }

    async fn call<T, F>(&self, call: &'static str, f: F) -> Result<T, RuntimeError>
    where
        F: AsyncFnOnce(Channel) -> Result<T, tonic::Status>,
    {
        self.socket.call(call, f).await
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
    /// others.
    pub async fn find(&self, id: &str, first: Option<&str>) -> Result<NativeLookup, RuntimeError> {
        let mut namespaces = self.namespaces().await?;
        if let Some(first) = first {
            match namespaces.iter().position(|n| n == first) {
                Some(at) => namespaces.swap(0, at),
                // The hint names no namespace: a `/<ns>/<id>` look-alike.
                None => return Ok(NativeLookup::NotFound),
            }
        }
        for namespace in namespaces {
            if let Some(container) = self.get(&namespace, id).await? {
                return Ok(NativeLookup::Found(Box::new(container)));
            }
        }
        Ok(NativeLookup::NotFound)
    }

    /// Container `id` in `namespace`, with its image's digests.
    pub async fn get(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<Option<NativeContainer>, RuntimeError> {
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
        let digests = self.image(namespace, &container.image).await?;
        Ok(Some(NativeContainer {
            namespace: namespace.to_string(),
            id: container.id,
            claims_cri: container.labels.get(CRI_KIND_LABEL).cloned(),
            image: container.image,
            digests,
        }))
    }

    /// Image `name`'s target digest in `namespace` and, for an index,
    /// this platform's manifest digest. `None` when there is no such image
    /// record (never was, or deleted).
    pub async fn image(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ImageDigests>, RuntimeError> {
        if name.is_empty() {
            return Ok(None);
        }
        let image = name;
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
            return Ok(None);
        };
        let platform = if is_index(&target.media_type) {
            self.platform_manifest(namespace, &target.digest).await?
        } else {
            None
        };
        // containerd checks the digests it stores; one that does not parse
        // is no digest to judge (the verdict says unknown).
        Ok(Some(ImageDigests {
            digest: Digest::parse(&target.digest).ok(),
            platform: platform.and_then(|p| Digest::parse(&p).ok()),
        }))
    }

    /// This node's platform manifest in the index `digest`, if containerd
    /// holds the index's content.
    pub async fn platform_of(
        &self,
        namespace: &str,
        digest: &Digest,
    ) -> Result<Option<Digest>, RuntimeError> {
        Ok(self
            .platform_manifest(namespace, digest.as_str())
            .await?
            .and_then(|p| Digest::parse(&p).ok()))
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
        assert!(err.to_string().contains("--runtime-socket"), "{err}");
    }
}
