//! The Kubernetes CRI API (`runtime.v1`), which containerd and CRI-O both
//! serve on their socket: only what the kubelet created through it is
//! there, so what it says of a container (its pod, its sandbox) is CRI's
//! own record, not a label anyone could write.

use std::path::Path;

use k8s_cri::v1::{
    ContainerFilter, ContainerStatusRequest, ImageSpec, ImageStatusRequest, ListContainersRequest,
    PodSandboxStatusRequest, VersionRequest, image_service_client::ImageServiceClient,
    runtime_service_client::RuntimeServiceClient,
};
use tonic::Code;

use super::{CriContainer, CriImage, RunningTask, RuntimeError, pod_of, socket::Socket};
use crate::model::PodRef;

/// What the runtime says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// `containerd`, `cri-o`.
    pub name: String,
    pub version: String,
}

pub struct Cri {
    socket: Socket,
}

impl Cri {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: Socket::new(socket),
        }
    }

    pub async fn version(&self) -> Result<Version, RuntimeError> {
        self.socket
            .call("CRI Version", async |channel| {
                let reply = RuntimeServiceClient::new(channel)
                    .version(VersionRequest {
                        version: "v1".into(),
                    })
                    .await?
                    .into_inner();
                Ok(Version {
                    name: reply.runtime_name,
                    version: reply.runtime_version,
                })
            })
            .await
    }

    /// Container `id`, if CRI created it.
    pub async fn container(&self, id: &str) -> Result<Option<CriContainer>, RuntimeError> {
        let listed = self
            .list(ContainerFilter {
                id: id.to_string(),
                ..Default::default()
            })
            .await?;
        // The filter may match by prefix: only the exact id counts.
        Ok(listed
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| CriContainer {
                id: c.id,
                sandbox_id: c.pod_sandbox_id,
                name: c.metadata.map(|m| m.name).unwrap_or_default(),
                image: c.image.map(|i| i.image).unwrap_or_default(),
                image_ref: c.image_ref,
                image_id: c.image_id,
            }))
    }

    async fn list(
        &self,
        filter: ContainerFilter,
    ) -> Result<Vec<k8s_cri::v1::Container>, RuntimeError> {
        self.socket
            .call("CRI ListContainers", async |channel| {
                let reply = RuntimeServiceClient::new(channel)
                    .list_containers(ListContainersRequest {
                        filter: Some(filter),
                    })
                    .await?;
                Ok(reply.into_inner().containers)
            })
            .await
    }

    /// The pod of sandbox `id`, if CRI created such a sandbox.
    pub async fn sandbox(&self, id: &str) -> Result<Option<PodRef>, RuntimeError> {
        let status = self
            .socket
            .call("CRI PodSandboxStatus", async |channel| {
                let reply = RuntimeServiceClient::new(channel)
                    .pod_sandbox_status(PodSandboxStatusRequest {
                        pod_sandbox_id: id.to_string(),
                        verbose: false,
                    })
                    .await;
                Ok(found(reply)?.and_then(|r| r.into_inner().status))
            })
            .await?;
        Ok(status.and_then(|s| pod_of(s.metadata)))
    }

    /// Image `image` (a reference or an id), if the runtime holds it.
    pub async fn image(&self, image: &str) -> Result<Option<CriImage>, RuntimeError> {
        let found = self
            .socket
            .call("CRI ImageStatus", async |channel| {
                let reply = ImageServiceClient::new(channel)
                    .image_status(ImageStatusRequest {
                        image: Some(ImageSpec {
                            image: image.to_string(),
                            ..Default::default()
                        }),
                        verbose: false,
                    })
                    .await;
                Ok(found(reply)?.and_then(|r| r.into_inner().image))
            })
            .await?;
        Ok(found.map(|i| CriImage {
            id: i.id,
            repo_digests: i.repo_digests,
        }))
    }

    /// The running containers' init processes, as CRI knows them (their
    /// pids from the verbose status both runtimes give), recorded under
    /// `namespace`.
    pub async fn running_tasks(&self, namespace: &str) -> Result<Vec<RunningTask>, RuntimeError> {
        let listed = self
            .list(ContainerFilter {
                // CONTAINER_RUNNING
                state: Some(k8s_cri::v1::ContainerStateValue { state: 1 }),
                ..Default::default()
            })
            .await?;
        let mut running = Vec::new();
        for container in listed {
            let info = self
                .socket
                .call("CRI ContainerStatus", async |channel| {
                    let reply = RuntimeServiceClient::new(channel)
                        .container_status(ContainerStatusRequest {
                            container_id: container.id.clone(),
                            verbose: true,
                        })
                        .await?;
                    Ok(reply.into_inner().info)
                })
                .await?;
            if let Some(pid) = info.get("info").and_then(|text| pid_in(text)) {
                running.push(RunningTask {
                    namespace: namespace.to_string(),
                    container_id: container.id,
                    pid,
                });
            }
        }
        Ok(running)
    }
}

/// NotFound is an answer (no such thing), not a failure.
fn found<T>(reply: Result<T, tonic::Status>) -> Result<Option<T>, tonic::Status> {
    match reply {
        Ok(reply) => Ok(Some(reply)),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(status),
    }
}

/// The `pid` in a verbose status' `info` JSON (containerd and CRI-O both
/// write one at its top level).
fn pid_in(text: &str) -> Option<u32> {
    let info: serde_json::Value = serde_json::from_str(text).ok()?;
    info["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pid_of_a_verbose_status() {
        assert_eq!(
            pid_in(r#"{"sandboxID":"x","pid":4242,"runtimeSpec":{}}"#),
            Some(4242)
        );
        assert_eq!(pid_in(r#"{"pid":0}"#), None);
        assert_eq!(pid_in("not json"), None);
    }
}
