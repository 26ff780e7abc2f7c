//! A kubelet stand-in: runs a Kubernetes pod spec on the real containerd
//! through CRI, the way the kubelet turns a pod into CRI calls. No kubelet
//! can be installed on this machine; this does, for the fields imagegate's
//! chart uses, what the kubelet does with them:
//!
//! - a sandbox per pod on the CNI pod network, with the kubelet's DNS
//!   config (cluster nameserver, search list, `ndots:5`), labels, cgroup
//!   parent by QoS class (`/kubepods[/burstable|/besteffort]/pod<uid>`),
//!   `hostPID`, the pod's seccomp profile;
//! - per container: image (pulled through CRI with the pull secret's
//!   credentials), command and args, env (values and the `fieldRef`s the
//!   chart uses, plus the `KUBERNETES_SERVICE_*` variables), user and group,
//!   `fsGroup` as a supplemental group, capabilities add/drop,
//!   `privileged`, `readOnlyRootFilesystem`, `allowPrivilegeEscalation:
//!   false` as no_new_privs, seccomp, the kubelet's masked and read-only
//!   /proc paths, CPU and memory limits;
//! - volumes: `hostPath` (with its type checked), `emptyDir`, `secret`,
//!   `configMap` and `projected` secrets written with the kubelet's atomic
//!   `..data` symlink layout, the service account token folder, and the
//!   kubelet-managed `/etc/hosts` and `/dev/termination-log`;
//! - probes (`httpGet` over HTTP or HTTPS without verification, `grpc`,
//!   `tcpSocket`) against the pod's address, as the kubelet runs them.
//!
//! What only a real kubelet does is not here: the API server's view of the
//! pod (the test reports status itself, see [`Kubelet::pod_json`]),
//! restarts by policy, eviction, image garbage collection, volume
//! ownership changes for `fsGroup` beyond the supplemental group.
//!
//! Over 500 lines: one stand-in for the kubelet's pod lifecycle (sandbox,
//! network, mounts, environment, probes); its parts share the pod's state.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_cri::v1::{
    Capability, ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest,
    DnsConfig, ImageSpec, Int64Value, KeyValue, LinuxContainerConfig, LinuxContainerResources,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, SecurityProfile,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
    runtime_service_client::RuntimeServiceClient,
};
use k8s_openapi::{
    api::core::v1::{Container, PodSpec, Probe, SecurityContext, Volume},
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};
use serde_json::{Value, json};

use crate::containerd::TestContainerd;

/// CRI's namespace modes.
const NS_POD: i32 = 0;
const NS_CONTAINER: i32 = 1;
const NS_NODE: i32 = 2;

/// The paths the kubelet masks and makes read-only in every
/// non-privileged container (k8s.io/kubernetes pkg/securitycontext).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A pod to run: a pod template's metadata and spec (from a Deployment or
/// DaemonSet) or a plain pod.
#[derive(Clone, Debug)]
pub struct PodObject {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: PodSpec,
}

/// What secret and configMap volumes hold, by object name.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub secrets: HashMap<String, BTreeMap<String, Vec<u8>>>,
    pub config_maps: HashMap<String, BTreeMap<String, Vec<u8>>>,
}

/// The cluster services a pod sees.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// Cluster DNS (the DNS stand-in on the pod network's gateway).
    pub dns: Ipv4Addr,
    pub apiserver: Option<ApiserverAccess>,
}

/// How pods reach the apiserver: its address (the `kubernetes` Service's
/// environment) and the service account files a pod with
/// `automountServiceAccountToken` gets.
#[derive(Clone, Debug)]
pub struct ApiserverAccess {
    pub address: SocketAddr,
    pub files: Vec<(String, Vec<u8>)>,
}

/// A container the stand-in started.
#[derive(Clone, Debug)]
pub struct RunningContainer {
    pub name: String,
    pub id: String,
    pub attempt: u32,
}

/// A pod whose sandbox runs.
#[derive(Clone, Debug)]
pub struct RunningPod {
    pub object: PodObject,
    pub uid: String,
    pub sandbox_id: String,
    pub ip: Ipv4Addr,
    pub containers: Vec<RunningContainer>,
    sandbox_config: PodSandboxConfig,
    dir: PathBuf,
}

impl RunningPod {
    /// The latest container of that name.
    pub fn container(&self, name: &str) -> &RunningContainer {
        self.containers
            .iter()
            .rev()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("pod {} has no container {name}", self.object.name))
    }
}

/// A container's state as CRI reports it.
#[derive(Clone, Debug)]
pub struct ContainerState {
    /// 0 created, 1 running, 2 exited, 3 unknown.
    pub state: i32,
    pub exit_code: i32,
    pub image_ref: String,
    pub reason: String,
}

pub struct Kubelet<'a> {
    containerd: &'a TestContainerd,
    pub node_name: String,
    cluster: Cluster,
    dir: tempfile::TempDir,
}

impl<'a> Kubelet<'a> {
    pub fn new(containerd: &'a TestContainerd, node_name: &str, cluster: Cluster) -> Self {
        Self {
            containerd,
            node_name: node_name.to_string(),
            cluster,
            dir: tempfile::Builder::new()
                .prefix("imagegate-kubelet-")
                .tempdir()
                .unwrap(),
        }
    }

    async fn runtime(&self) -> RuntimeServiceClient<tonic::transport::Channel> {
        RuntimeServiceClient::new(self.containerd.cri_channel().await)
    }

    /// Runs the pod's sandbox and starts each container, in order, as the
    /// kubelet does (no init containers in what the chart renders). A
    /// container CRI refuses to create or start is an error with CRI's
    /// message (runc's, for a capability outside the bounding set).
    pub async fn run(&self, object: &PodObject, objects: &Objects) -> Result<RunningPod, String> {
        let uid = pseudo_uuid(&format!("{}/{}", object.namespace, object.name));
        let dir = self
            .dir
            .path()
            .join(format!("{}_{}_{uid}", object.namespace, object.name));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let spec = &object.spec;
        let pod_security = spec.security_context.clone().unwrap_or_default();
        let host_pid = spec.host_pid.unwrap_or(false);
        let mut labels: HashMap<String, String> = object.labels.clone().into_iter().collect();
        labels.extend(kubelet_labels(object, &uid, None));
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: object.name.clone(),
                uid: uid.clone(),
                namespace: object.namespace.clone(),
                attempt: 0,
            }),
            hostname: object.name.clone(),
            log_directory: dir.join("logs").display().to_string(),
            dns_config: Some(DnsConfig {
                servers: vec![self.cluster.dns.to_string()],
                searches: vec![
                    format!("{}.svc.cluster.local", object.namespace),
                    "svc.cluster.local".into(),
                    "cluster.local".into(),
                ],
                options: vec!["ndots:5".into()],
            }),
            labels,
            annotations: object.annotations.clone().into_iter().collect(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent(spec, &uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NS_POD,
                        pid: if host_pid { NS_NODE } else { NS_POD },
                        ipc: NS_POD,
                        ..Default::default()
                    }),
                    run_as_user: pod_security.run_as_user.map(|value| Int64Value { value }),
                    run_as_group: pod_security.run_as_group.map(|value| Int64Value { value }),
                    supplemental_groups: pod_security.fs_group.into_iter().collect(),
                    seccomp: seccomp(
                        pod_security
                            .seccomp_profile
                            .as_ref()
                            .map(|s| s.type_.as_str()),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        // The kubelet pulls the pause image itself, with the node's
        // credentials; containerd alone would pull it anonymously.
        self.containerd
            .cri_pull(self.containerd.sandbox_image())
            .await;
        let mut runtime = self.runtime().await;
        let sandbox_id = runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|e| format!("RunPodSandbox {}: {}", object.name, e.message()))?
            .into_inner()
            .pod_sandbox_id;
        self.containerd.track_sandbox(&sandbox_id);
        let status = runtime
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: sandbox_id.clone(),
                verbose: false,
            })
            .await
            .map_err(|e| format!("PodSandboxStatus: {}", e.message()))?
            .into_inner();
        let ip: Ipv4Addr = status
            .status
            .and_then(|s| s.network)
            .and_then(|n| n.ip.parse().ok())
            .ok_or("the sandbox has no IPv4 address: is the CNI network configured?")?;
        // The kubelet-managed hosts file.
        std::fs::write(
            dir.join("etc-hosts"),
            format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{}\n",
                object.name
            ),
        )
        .unwrap();
        let mut pod = RunningPod {
            object: object.clone(),
            uid,
            sandbox_id,
            ip,
            containers: Vec::new(),
            sandbox_config,
            dir,
        };
        self.write_volumes(&pod, objects)?;
        for container in &object.spec.containers {
            self.start_container(&mut pod, &container.name).await?;
        }
        Ok(pod)
    }

    /// Creates and starts (a new attempt of) container `name` of `pod`,
    /// after the previous one, if any, was stopped and removed.
    pub async fn start_container(
        &self,
        pod: &mut RunningPod,
        name: &str,
    ) -> Result<String, String> {
        let container = pod
            .object
            .spec
            .containers
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("no container {name} in the pod spec"))?
            .clone();
        let attempt = pod.containers.iter().filter(|c| c.name == name).count() as u32;
        let image = container.image.clone().unwrap_or_default();
        self.containerd.cri_pull(&image).await;
        let config = self.container_config(pod, &container, attempt)?;
        let mut runtime = self.runtime().await;
        let id = runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.sandbox_config.clone()),
            })
            .await
            .map_err(|e| format!("CreateContainer {name}: {}", e.message()))?
            .into_inner()
            .container_id;
        pod.containers.push(RunningContainer {
            name: name.to_string(),
            id: id.clone(),
            attempt,
        });
        runtime
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(|e| format!("StartContainer {name}: {}", e.message()))?;
        Ok(id)
    }

    fn container_config(
        &self,
        pod: &RunningPod,
        container: &Container,
        attempt: u32,
    ) -> Result<ContainerConfig, String> {
        let spec = &pod.object.spec;
        let pod_security = spec.security_context.clone().unwrap_or_default();
        let security: SecurityContext = container.security_context.clone().unwrap_or_default();
        let privileged = security.privileged.unwrap_or(false);
        let capabilities = security.capabilities.clone().unwrap_or_default();
        let seccomp_type = security
            .seccomp_profile
            .as_ref()
            .or(pod_security.seccomp_profile.as_ref())
            .map(|s| s.type_.clone());
        let mut supplemental: Vec<i64> = pod_security.fs_group.into_iter().collect();
        supplemental.extend(pod_security.supplemental_groups.clone().unwrap_or_default());
        let linux = LinuxContainerConfig {
            resources: Some(resources(container)),
            security_context: Some(LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: capabilities.add.unwrap_or_default(),
                    drop_capabilities: capabilities.drop.unwrap_or_default(),
                    add_ambient_capabilities: Vec::new(),
                }),
                privileged,
                namespace_options: Some(NamespaceOption {
                    network: NS_POD,
                    pid: if spec.host_pid.unwrap_or(false) {
                        NS_NODE
                    } else {
                        NS_CONTAINER
                    },
                    ipc: NS_POD,
                    ..Default::default()
                }),
                run_as_user: security
                    .run_as_user
                    .or(pod_security.run_as_user)
                    .map(|value| Int64Value { value }),
                run_as_group: security
                    .run_as_group
                    .or(pod_security.run_as_group)
                    .map(|value| Int64Value { value }),
                readonly_rootfs: security.read_only_root_filesystem.unwrap_or(false),
                supplemental_groups: supplemental,
                no_new_privs: security.allow_privilege_escalation == Some(false),
                masked_paths: if privileged {
                    Vec::new()
                } else {
                    MASKED_PATHS.iter().map(|p| p.to_string()).collect()
                },
                readonly_paths: if privileged {
                    Vec::new()
                } else {
                    READONLY_PATHS.iter().map(|p| p.to_string()).collect()
                },
                seccomp: seccomp(seccomp_type.as_deref()),
                ..Default::default()
            }),
        };
        let mut labels: HashMap<String, String> = HashMap::new();
        labels.extend(kubelet_labels(&pod.object, &pod.uid, Some(&container.name)));
        let log_path = format!("{}/{attempt}.log", container.name);
        let envs = self.env(pod, container);
        std::fs::create_dir_all(pod.dir.join("logs").join(&container.name)).unwrap();
        Ok(ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: container.name.clone(),
                attempt,
            }),
            image: Some(ImageSpec {
                image: container.image.clone().unwrap_or_default(),
                ..Default::default()
            }),
            command: expand_all(container.command.as_deref(), &envs),
            args: expand_all(container.args.as_deref(), &envs),
            working_dir: container.working_dir.clone().unwrap_or_default(),
            envs,
            mounts: self.mounts(pod, container)?,
            labels,
            annotations: pod.object.annotations.clone().into_iter().collect(),
            log_path,
            linux: Some(linux),
            ..Default::default()
        })
    }

    fn env(&self, pod: &RunningPod, container: &Container) -> Vec<KeyValue> {
        let mut out = Vec::new();
        if let Some(ApiserverAccess { address, .. }) = &self.cluster.apiserver {
            // The kubelet's environment for the `kubernetes` Service.
            for (key, value) in [
                ("KUBERNETES_SERVICE_HOST", address.ip().to_string()),
                ("KUBERNETES_SERVICE_PORT", address.port().to_string()),
                ("KUBERNETES_PORT", format!("tcp://{address}")),
            ] {
                out.push(KeyValue {
                    key: key.into(),
                    value,
                });
            }
        }
        for var in container.env.clone().unwrap_or_default() {
            let value = match (&var.value, &var.value_from) {
                (Some(value), _) => value.clone(),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("spec.nodeName") => self.node_name.clone(),
                        Some("metadata.name") => pod.object.name.clone(),
                        Some("metadata.namespace") => pod.object.namespace.clone(),
                        Some("metadata.uid") => pod.uid.clone(),
                        Some("status.podIP") => pod.ip.to_string(),
                        other => panic!("the kubelet stand-in does not resolve {other:?}: add it"),
                    }
                }
                (None, None) => String::new(),
            };
            out.push(KeyValue {
                key: var.name,
                value,
            });
        }
        out
    }

    /// Folder of volume `name` of `pod`.
    fn volume_dir(pod: &RunningPod, name: &str) -> PathBuf {
        pod.dir.join("volumes").join(name)
    }

    /// Writes the pod's secret, configMap, projected and emptyDir volumes
    /// (and the service account token folder) as the kubelet lays them out.
    fn write_volumes(&self, pod: &RunningPod, objects: &Objects) -> Result<(), String> {
        for volume in pod.object.spec.volumes.clone().unwrap_or_default() {
            let dir = Self::volume_dir(pod, &volume.name);
            if volume.empty_dir.is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                set_mode(&dir, 0o777);
                continue;
            }
            let files = volume_files(&volume, objects)?;
            if let Some(files) = files {
                atomic_write(&dir, &files);
            }
        }
        if pod.object.spec.automount_service_account_token == Some(true)
            && let Some(ApiserverAccess { files, .. }) = &self.cluster.apiserver
        {
            let files: BTreeMap<String, Vec<u8>> = files
                .iter()
                .map(|(name, bytes)| {
                    let bytes = if name == "namespace" {
                        pod.object.namespace.clone().into_bytes()
                    } else {
                        bytes.clone()
                    };
                    (name.clone(), bytes)
                })
                .collect();
            atomic_write(&pod.dir.join("serviceaccount"), &files);
        }
        Ok(())
    }

    fn mounts(&self, pod: &RunningPod, container: &Container) -> Result<Vec<Mount>, String> {
        let volumes: HashMap<String, Volume> = pod
            .object
            .spec
            .volumes
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.name.clone(), v))
            .collect();
        let mut mounts = Vec::new();
        for mount in container.volume_mounts.clone().unwrap_or_default() {
            let volume = volumes
                .get(&mount.name)
                .ok_or_else(|| format!("volumeMount {} names no volume", mount.name))?;
            let host_path = match &volume.host_path {
                Some(host) => {
                    let path = PathBuf::from(&host.path);
                    match host.type_.as_deref() {
                        Some("DirectoryOrCreate") => std::fs::create_dir_all(&path).unwrap(),
                        Some("Directory") if !path.is_dir() => {
                            return Err(format!("hostPath {} is not a directory", host.path));
                        }
                        Some("Socket") if !path.exists() => {
                            return Err(format!("hostPath {} is not a socket", host.path));
                        }
                        _ => {}
                    }
                    path
                }
                None => Self::volume_dir(pod, &mount.name),
            };
            mounts.push(Mount {
                container_path: mount.mount_path.clone(),
                host_path: host_path.display().to_string(),
                readonly: mount.read_only.unwrap_or(false),
                ..Default::default()
            });
        }
        if pod.object.spec.automount_service_account_token == Some(true)
            && self.cluster.apiserver.is_some()
        {
            mounts.push(Mount {
                container_path: SERVICE_ACCOUNT_DIR.into(),
                host_path: pod.dir.join("serviceaccount").display().to_string(),
                readonly: true,
                ..Default::default()
            });
        }
        let termination_log = pod.dir.join(format!("termination-log-{}", container.name));
        std::fs::write(&termination_log, b"").unwrap();
        mounts.push(Mount {
            container_path: "/dev/termination-log".into(),
            host_path: termination_log.display().to_string(),
            ..Default::default()
        });
        mounts.push(Mount {
            container_path: "/etc/hosts".into(),
            host_path: pod.dir.join("etc-hosts").display().to_string(),
            ..Default::default()
        });
        Ok(mounts)
    }

    /// CRI's view of a container.
    pub async fn state(&self, container_id: &str) -> ContainerState {
        let status = self
            .runtime()
            .await
            .container_status(ContainerStatusRequest {
                container_id: container_id.to_string(),
                verbose: false,
            })
            .await
            .unwrap_or_else(|e| panic!("ContainerStatus {container_id}: {e}"))
            .into_inner()
            .status
            .expect("a status");
        ContainerState {
            state: status.state,
            exit_code: status.exit_code,
            image_ref: status.image_ref,
            reason: status.reason,
        }
    }

    /// Waits until the container exits; its exit code.
    pub async fn wait_exit(&self, container_id: &str, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let state = self.state(container_id).await;
            if state.state == 2 {
                return Some(state.exit_code);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// The container's output as the kubelet keeps it (`kubectl logs`):
    /// the CRI log file, timestamps and stream tags stripped.
    pub fn logs(&self, pod: &RunningPod, container: &RunningContainer) -> String {
        let path = pod
            .dir
            .join("logs")
            .join(&container.name)
            .join(format!("{}.log", container.attempt));
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| line.splitn(4, ' ').nth(3).unwrap_or(line))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops and removes a container (what `kubectl delete pod` starts, or
    /// a DaemonSet's rolling update does to the old one).
    pub async fn remove_container(&self, container_id: &str) {
        let mut runtime = self.runtime().await;
        let _ = runtime
            .stop_container(StopContainerRequest {
                container_id: container_id.to_string(),
                timeout: 10,
            })
            .await;
        let _ = runtime
            .remove_container(RemoveContainerRequest {
                container_id: container_id.to_string(),
            })
            .await;
    }

    /// Stops and removes the pod.
    pub async fn remove_pod(&self, pod: &RunningPod) {
        let mut runtime = self.runtime().await;
        let _ = runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
            })
            .await;
        let _ = runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
            })
            .await;
    }

    /// Runs container `name`'s readiness probe until it passes, as the
    /// kubelet marks the pod Ready; the last failure otherwise.
    pub async fn wait_ready(
        &self,
        pod: &RunningPod,
        name: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let container = pod
            .object
            .spec
            .containers
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("no container {name}"))?;
        let Some(probe) = &container.readiness_probe else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        loop {
            let outcome = run_probe(pod.ip, container, probe).await;
            match outcome {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("readiness probe of {name} failed: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Runs container `name`'s liveness probe once.
    pub async fn live(&self, pod: &RunningPod, name: &str) -> Result<(), String> {
        let container = pod
            .object
            .spec
            .containers
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("no container {name}"))?;
        match &container.liveness_probe {
            Some(probe) => run_probe(pod.ip, container, probe).await,
            None => Ok(()),
        }
    }

    /// The pod as the apiserver lists it once the kubelet has reported its
    /// status: metadata, spec (with `nodeName`), and the containers'
    /// statuses with the `imageID` CRI gives (`repo@sha256:...`).
    pub async fn pod_json(&self, pod: &RunningPod) -> Value {
        let mut statuses = Vec::new();
        for container in &pod.object.spec.containers {
            let running = pod.container(&container.name);
            let state = self.state(&running.id).await;
            statuses.push(json!({
                "name": container.name,
                "image": container.image,
                "imageID": state.image_ref,
                "containerID": format!("containerd://{}", running.id),
                "ready": state.state == 1,
                "started": state.state == 1,
                "restartCount": running.attempt,
                "state": if state.state == 1 { json!({"running": {}}) } else { json!({"terminated": {"exitCode": state.exit_code}}) },
            }));
        }
        let mut spec = serde_json::to_value(&pod.object.spec).unwrap();
        spec["nodeName"] = json!(self.node_name);
        json!({
            "metadata": {
                "name": pod.object.name,
                "namespace": pod.object.namespace,
                "uid": pod.uid,
                "labels": pod.object.labels,
                "annotations": pod.object.annotations,
            },
            "spec": spec,
            "status": {
                "phase": "Running",
                "podIP": pod.ip.to_string(),
                "containerStatuses": statuses,
            }
        })
    }
}

/// The files a secret, configMap or projected volume holds; `None` for
/// other volume types.
fn volume_files(
    volume: &Volume,
    objects: &Objects,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let pick = |data: &BTreeMap<String, Vec<u8>>,
                items: &Option<Vec<k8s_openapi::api::core::v1::KeyToPath>>|
     -> BTreeMap<String, Vec<u8>> {
        match items {
            None => data.clone(),
            Some(items) => items
                .iter()
                .filter_map(|item| data.get(&item.key).map(|b| (item.path.clone(), b.clone())))
                .collect(),
        }
    };
    let secret = |name: &str| {
        objects
            .secrets
            .get(name)
            .ok_or_else(|| format!("secret {name} does not exist"))
    };
    if let Some(source) = &volume.secret {
        let name = source.secret_name.clone().unwrap_or_default();
        return Ok(Some(pick(secret(&name)?, &source.items)));
    }
    if let Some(source) = &volume.config_map {
        let data = objects
            .config_maps
            .get(&source.name)
            .ok_or_else(|| format!("configMap {} does not exist", source.name))?;
        return Ok(Some(pick(data, &source.items)));
    }
    if let Some(projected) = &volume.projected {
        let mut files = BTreeMap::new();
        for source in projected.sources.clone().unwrap_or_default() {
            if let Some(s) = source.secret {
                files.extend(pick(secret(&s.name)?, &s.items));
            }
            if let Some(c) = source.config_map {
                let data = objects
                    .config_maps
                    .get(&c.name)
                    .ok_or_else(|| format!("configMap {} does not exist", c.name))?;
                files.extend(pick(data, &c.items));
            }
        }
        return Ok(Some(files));
    }
    Ok(None)
}

/// The kubelet's atomic writer: the files in a timestamped folder,
/// `..data` pointing at it, and each name a link through `..data`.
pub fn atomic_write(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    std::fs::create_dir_all(dir).unwrap();
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let target = dir.join(&stamp);
    std::fs::create_dir_all(&target).unwrap();
    for (name, bytes) in files {
        let path = target.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, bytes).unwrap();
        set_mode(&path, 0o644);
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in files.keys() {
        let top = name.split('/').next().unwrap();
        let link = dir.join(top);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{top}"), &link).unwrap();
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn seccomp(kind: Option<&str>) -> Option<SecurityProfile> {
    // Kubernetes defaults to Unconfined when nothing is said.
    let profile_type = match kind {
        Some("RuntimeDefault") => 0,
        Some("Localhost") => 2,
        _ => 1,
    };
    Some(SecurityProfile {
        profile_type,
        localhost_ref: String::new(),
    })
}

fn quantity_millis(q: &Quantity) -> Option<i64> {
    let text = q.0.as_str();
    if let Some(m) = text.strip_suffix('m') {
        return m.parse().ok();
    }
    text.parse::<f64>().ok().map(|v| (v * 1000.0) as i64)
}

fn quantity_bytes(q: &Quantity) -> Option<i64> {
    let text = q.0.as_str();
    for (suffix, unit) in [
        ("Ki", 1i64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ] {
        if let Some(n) = text.strip_suffix(suffix) {
            return n.parse::<i64>().ok().map(|n| n * unit);
        }
    }
    text.parse().ok()
}

/// CPU and memory limits as the kubelet sets them (CFS quota over a 100 ms
/// period, shares from the request).
fn resources(container: &Container) -> LinuxContainerResources {
    let r = container.resources.clone().unwrap_or_default();
    let limits = r.limits.unwrap_or_default();
    let requests = r.requests.unwrap_or_default();
    let cpu_limit = limits.get("cpu").and_then(quantity_millis);
    let cpu_request = requests.get("cpu").and_then(quantity_millis);
    LinuxContainerResources {
        cpu_period: cpu_limit.map_or(0, |_| 100_000),
        cpu_quota: cpu_limit.map_or(0, |m| m * 100),
        cpu_shares: cpu_request.map_or(2, |m| (m * 1024 / 1000).max(2)),
        memory_limit_in_bytes: limits.get("memory").and_then(quantity_bytes).unwrap_or(0),
        ..Default::default()
    }
}

/// The pod cgroup's parent by QoS class, as the kubelet's cgroupfs driver
/// names it.
fn cgroup_parent(spec: &PodSpec, uid: &str) -> String {
    let resources: Vec<_> = spec
        .containers
        .iter()
        .map(|c| c.resources.clone().unwrap_or_default())
        .collect();
    let none = resources.iter().all(|r| {
        r.limits.as_ref().is_none_or(|l| l.is_empty())
            && r.requests.as_ref().is_none_or(|q| q.is_empty())
    });
    let guaranteed = resources.iter().all(|r| {
        let (limits, requests) = (
            r.limits.clone().unwrap_or_default(),
            r.requests.clone().unwrap_or_default(),
        );
        ["cpu", "memory"].iter().all(|k| {
            limits.contains_key(*k) && requests.get(*k).is_none_or(|q| Some(q) == limits.get(*k))
        })
    });
    if none {
        format!("/kubepods/besteffort/pod{uid}")
    } else if guaranteed {
        format!("/kubepods/pod{uid}")
    } else {
        format!("/kubepods/burstable/pod{uid}")
    }
}

fn kubelet_labels(object: &PodObject, uid: &str, container: Option<&str>) -> Vec<(String, String)> {
    let mut labels = vec![
        ("io.kubernetes.pod.name".to_string(), object.name.clone()),
        (
            "io.kubernetes.pod.namespace".to_string(),
            object.namespace.clone(),
        ),
        ("io.kubernetes.pod.uid".to_string(), uid.to_string()),
    ];
    if let Some(container) = container {
        labels.push(("io.kubernetes.container.name".into(), container.into()));
    }
    labels
}

fn pseudo_uuid(name: &str) -> String {
    let hex = crate::registry::sha256(
        format!(
            "{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        )
        .as_bytes(),
    );
    let h = &hex["sha256:".len()..];
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A port as a probe names it: a number, or a container port's name.
fn port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => Ok(*n as u16),
        IntOrString::String(name) => container
            .ports
            .clone()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port as u16)
            .ok_or_else(|| format!("no container port named {name}")),
    }
}

/// One probe against the pod's address.
async fn run_probe(ip: Ipv4Addr, container: &Container, probe: &Probe) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let attempt = async {
        if let Some(http) = &probe.http_get {
            let address = SocketAddr::new(IpAddr::V4(ip), port(container, &http.port)?);
            let https = http.scheme.as_deref() == Some("HTTPS");
            let status = http_get(address, http.path.as_deref().unwrap_or("/"), https).await?;
            return if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("HTTP {status}"))
            };
        }
        if let Some(grpc) = &probe.grpc {
            let address = SocketAddr::new(IpAddr::V4(ip), grpc.port as u16);
            return grpc_health(address, grpc.service.clone().unwrap_or_default()).await;
        }
        if let Some(tcp) = &probe.tcp_socket {
            let address = SocketAddr::new(IpAddr::V4(ip), port(container, &tcp.port)?);
            return tokio::net::TcpStream::connect(address)
                .await
                .map(drop)
                .map_err(|e| e.to_string());
        }
        Err("the probe has no handler the stand-in runs".to_string())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("timed out after {timeout:?}"))?
}

/// `GET path` as the kubelet's HTTP prober does it: HTTPS without
/// verifying the certificate.
async fn http_get(address: SocketAddr, path: &str, https: bool) -> Result<u16, String> {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        address: SocketAddr,
        path: &str,
    ) -> Result<u16, String> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: kube-probe/1.28\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let line = String::from_utf8_lossy(&answer);
        line.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no HTTP answer: {line:.80}"))
    }
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    if !https {
        return exchange(tcp, address, path).await;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerification))
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::IpAddress(address.ip().into()),
            tcp,
        )
        .await
        .map_err(|e| e.to_string())?;
    exchange(tls, address, path).await
}

async fn grpc_health(address: SocketAddr, service: String) -> Result<(), String> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    // 1 is SERVING.
    if reply.status == 1 {
        Ok(())
    } else {
        Err(format!("health status {}", reply.status))
    }
}

/// The kubelet's HTTPS probes do not verify the server's certificate.
#[derive(Debug)]
struct NoVerification;

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `$(VAR)` in a command or its args, as the kubelet expands them: the
/// value of the container's variable `VAR`; `$$` is a literal `$`; a
/// reference to a variable that is not defined stays as written.
/// <https://kubernetes.io/docs/tasks/inject-data-application/define-interdependent-environment-variables/>
fn expand(text: &str, envs: &[KeyValue]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after
            .strip_prefix('(')
            .and_then(|inner| inner.split_once(')'))
        {
            match envs.iter().find(|kv| kv.key == name) {
                Some(kv) => out.push_str(&kv.value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn expand_all(items: Option<&[String]>, envs: &[KeyValue]) -> Vec<String> {
    items
        .unwrap_or_default()
        .iter()
        .map(|item| expand(item, envs))
        .collect()
}

#[cfg(test)]
mod expansion_tests {
    use super::*;

    #[test]
    fn variables_in_args_expand_as_the_kubelet_does() {
        let envs = vec![KeyValue {
            key: "POD_IP".into(),
            value: "10.1.0.7".into(),
        }];
        assert_eq!(expand("--x=$(POD_IP):9464", &envs), "--x=10.1.0.7:9464");
        assert_eq!(expand("$$(POD_IP)", &envs), "$(POD_IP)");
        assert_eq!(expand("$(MISSING)-$", &envs), "$(MISSING)-$");
    }
}
