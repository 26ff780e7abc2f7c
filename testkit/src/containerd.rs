//! A real containerd (Debian's 1.6 with runc) for tests: its own config,
//! root, state and socket under a temporary folder, killed on drop. Images
//! are pulled from a test [`Registry`](crate::registry::Registry) with TLS
//! and auth; containers are started the way people start them: with `ctr`
//! (containerd's own client, in a non-Kubernetes namespace) and through CRI
//! like the kubelet (host-network sandbox, kubelet-style cgroup parent).

use std::os::unix::process::CommandExt;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use k8s_cri::v1::{
    AuthConfig, ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PullImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest, image_service_client::ImageServiceClient,
    runtime_service_client::RuntimeServiceClient,
};

use crate::{network::PodNetwork, registry::Registry};

pub const CONTAINERD_BIN: &str = "/usr/bin/containerd";
pub const CTR_BIN: &str = "/usr/bin/ctr";

/// A running containerd; killed (with its shims and containers) on drop.
pub struct TestContainerd {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    hosts_dir: PathBuf,
    credentials: Option<(String, String)>,
    sandbox_image: String,
    /// Containers started with `ctr`, by namespace, to clean up.
    started: std::sync::Mutex<Vec<(String, String)>>,
    sandboxes: std::sync::Mutex<Vec<String>>,
}

/// A pod sandbox and its container, started through CRI.
pub struct CriPod {
    pub uid: String,
    pub sandbox_id: String,
    pub container_id: String,
}

impl TestContainerd {
    /// Starts containerd configured to pull from `registry` (its CA and
    /// credentials), with `sandbox_image` as the CRI pause image.
    pub fn start(registry: &Registry, sandbox_image: &str) -> Self {
        Self::start_with(registry, sandbox_image, None)
    }

    /// Like [`Self::start`], with CRI pod sandboxes on `network` (CNI
    /// bridge), so each pod gets an address of its own.
    pub fn start_on(registry: &Registry, sandbox_image: &str, network: &PodNetwork) -> Self {
        Self::start_with(registry, sandbox_image, Some(network))
    }

    fn start_with(registry: &Registry, sandbox_image: &str, network: Option<&PodNetwork>) -> Self {
        for bin in [CONTAINERD_BIN, CTR_BIN, "/usr/sbin/runc"] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: run `cargo xtask setup` (Debian packages containerd, runc)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("imagegate-containerd-")
            .tempdir()
            .unwrap();
        let root = dir.path();
        let socket = root.join("containerd.sock");
        let hosts_dir = root.join("certs.d");
        let host_dir = hosts_dir.join(&registry.host);
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::create_dir_all(root.join("cni")).unwrap();
        if let Some(network) = network {
            network.write_cni_config(&root.join("cni"));
        }
        let scheme = if registry.ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        let mut hosts = format!(
            "server = \"{scheme}://{host}\"\n[host.\"{scheme}://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            host = registry.host
        );
        if let Some(ca) = &registry.ca_file {
            hosts += &format!("  ca = \"{}\"\n", ca.display());
        }
        std::fs::write(host_dir.join("hosts.toml"), hosts).unwrap();
        // restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, and runc
        // fails to raise a CRI container's oom_score_adj without it.
        let config = format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{root}/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{hosts}"
"#,
            root = root.display(),
            socket = socket.display(),
            hosts = hosts_dir.display(),
        );
        std::fs::write(root.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(root.join("containerd.log")).unwrap();
        let child = Command::new(CONTAINERD_BIN)
            // Its own process group: a Ctrl-C reaches the demo, which then
            // stops the containers before containerd.
            .process_group(0)
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let containerd = Self {
            child,
            socket,
            hosts_dir,
            credentials: registry.credentials.clone(),
            sandbox_image: sandbox_image.to_string(),
            dir,
            started: Default::default(),
            sandboxes: Default::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if containerd.socket.exists()
                && containerd.ctr("default", &["version"]).status.success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 20 s; its log:\n{}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        containerd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr` against this containerd in `namespace`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new(CTR_BIN)
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", namespace])
            .args(args)
            .output()
            .expect("run ctr")
    }

    fn ctr_ok(&self, namespace: &str, args: &[&str]) -> String {
        let out = self.ctr(namespace, args);
        assert!(
            out.status.success(),
            "ctr -n {namespace} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr images pull` with the registry's CA and credentials.
    pub fn pull(&self, namespace: &str, reference: &str) {
        let hosts = self.hosts_dir.display().to_string();
        let mut args = vec!["images", "pull", "--hosts-dir", &hosts];
        let user;
        if let Some((u, p)) = &self.credentials {
            user = format!("{u}:{p}");
            args.extend(["--user", &user]);
        }
        args.push(reference);
        self.ctr_ok(namespace, &args);
    }

    /// `ctr images export` then `ctr images import` into `to`: an image
    /// that reached the node as a file, not from a registry.
    pub fn copy_by_file(&self, from: &str, to: &str, reference: &str) {
        let archive = self.dir.path().join(format!("{to}-export.tar"));
        let archive = archive.to_str().unwrap();
        self.ctr_ok(from, &["images", "export", archive, reference]);
        self.ctr_ok(to, &["images", "import", archive]);
    }

    /// `ctr run -d`: a container outside Kubernetes, running the image's
    /// default command (or `command`).
    pub fn run(&self, namespace: &str, reference: &str, id: &str, command: &[&str]) {
        let mut args = vec!["run", "-d", reference, id];
        args.extend(command);
        self.ctr_ok(namespace, &args);
        self.started
            .lock()
            .unwrap()
            .push((namespace.to_string(), id.to_string()));
    }

    /// `ctr run -d FLAGS IMAGE-OR-ROOTFS ID COMMAND`: as [`Self::run`], with
    /// `ctr`'s own flags (labels, `--rootfs`).
    pub fn run_with(
        &self,
        namespace: &str,
        flags: &[&str],
        image_or_rootfs: &str,
        id: &str,
        command: &[&str],
    ) {
        let mut args = vec!["run", "-d"];
        args.extend(flags);
        args.extend([image_or_rootfs, id]);
        args.extend(command);
        self.ctr_ok(namespace, &args);
        self.started
            .lock()
            .unwrap()
            .push((namespace.to_string(), id.to_string()));
    }

    /// A task's status as `ctr tasks ls` shows it (`RUNNING`, `STOPPED`).
    pub fn task_status(&self, namespace: &str, id: &str) -> Option<String> {
        let out = self.ctr_ok(namespace, &["tasks", "ls"]);
        out.lines()
            .skip(1)
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2).map(String::from))
    }

    /// `ctr tasks exec`: runs `command` in a running container; returns
    /// its exit status as ctr reports it.
    pub fn exec(&self, namespace: &str, id: &str, exec_id: &str, command: &[&str]) -> Output {
        let mut args = vec!["tasks", "exec", "--exec-id", exec_id, id];
        args.extend(command);
        self.ctr(namespace, &args)
    }

    /// A stopped task's exit status, from containerd's Tasks service.
    pub async fn exit_status(&self, namespace: &str, id: &str) -> Option<u32> {
        use containerd_client::services::v1::{GetRequest, tasks_client::TasksClient};
        let mut request = tonic::Request::new(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        });
        request
            .metadata_mut()
            .insert("containerd-namespace", namespace.parse().ok()?);
        let reply = TasksClient::new(self.channel().await)
            .get(request)
            .await
            .ok()?;
        reply.into_inner().process.map(|p| p.exit_status)
    }

    async fn channel(&self) -> tonic::transport::Channel {
        containerd_client::connect(&self.socket)
            .await
            .expect("connect to containerd's socket")
    }

    /// A channel to the CRI services on containerd's socket.
    pub async fn cri_channel(&self) -> tonic::transport::Channel {
        self.channel().await
    }

    /// The CRI pause image.
    pub fn sandbox_image(&self) -> &str {
        &self.sandbox_image
    }

    /// A sandbox someone else started through CRI, removed on drop.
    pub fn track_sandbox(&self, id: &str) {
        self.sandboxes.lock().unwrap().push(id.to_string());
    }

    /// The host pid of a running task's init process.
    pub async fn task_pid(&self, namespace: &str, id: &str) -> Option<u32> {
        use containerd_client::services::v1::{GetRequest, tasks_client::TasksClient};
        let mut request = tonic::Request::new(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        });
        request
            .metadata_mut()
            .insert("containerd-namespace", namespace.parse().ok()?);
        let reply = TasksClient::new(self.channel().await)
            .get(request)
            .await
            .ok()?;
        reply.into_inner().process.map(|p| p.pid)
    }

    /// Pulls `reference` through CRI (as the kubelet does, with the
    /// registry credentials from the pod's pull secret).
    pub async fn cri_pull(&self, reference: &str) -> String {
        let mut images = ImageServiceClient::new(self.channel().await);
        let auth = self.credentials.as_ref().map(|(u, p)| AuthConfig {
            username: u.clone(),
            password: p.clone(),
            ..Default::default()
        });
        images
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: reference.to_string(),
                    ..Default::default()
                }),
                auth,
                sandbox_config: None,
            })
            .await
            .unwrap_or_else(|e| panic!("CRI PullImage {reference}: {e}\n{}", self.log()))
            .into_inner()
            .image_ref
    }

    /// A host-network pod sandbox under a kubelet-style cgroup parent
    /// (`/kubepods/besteffort/pod<uid>`) with one container of `image`
    /// (pulled first through CRI), started.
    pub async fn cri_run_pod(&self, namespace: &str, name: &str, image: &str) -> CriPod {
        self.cri_run_pod_with(namespace, name, image, true).await
    }

    /// As [`Self::cri_run_pod`]; `pull: false` runs an image already on
    /// the node (imported from a file), as the kubelet does with
    /// `imagePullPolicy: Never`.
    pub async fn cri_run_pod_with(
        &self,
        namespace: &str,
        name: &str,
        image: &str,
        pull: bool,
    ) -> CriPod {
        let uid = pseudo_uuid(name);
        let mut runtime = RuntimeServiceClient::new(self.channel().await);
        let logs = self.dir.path().join("pods").join(&uid);
        std::fs::create_dir_all(&logs).unwrap();
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: uid.clone(),
                namespace: namespace.to_string(),
                attempt: 0,
            }),
            log_directory: logs.display().to_string(),
            labels: kubelet_labels(namespace, name, &uid, None),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: 2, // NODE: no CNI needed
                        pid: 0,
                        ipc: 0,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        // The kubelet pulls the pause image with the node's credentials
        // before the first sandbox; containerd alone would pull anonymously.
        self.cri_pull(&self.sandbox_image).await;
        let sandbox_id = runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("CRI RunPodSandbox: {e}\n{}", self.log()))
            .into_inner()
            .pod_sandbox_id;
        self.sandboxes.lock().unwrap().push(sandbox_id.clone());
        if pull {
            self.cri_pull(image).await;
        }
        let container_id = runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox_id.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: "main".into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: image.to_string(),
                        ..Default::default()
                    }),
                    log_path: "main.log".into(),
                    labels: kubelet_labels(namespace, name, &uid, Some("main")),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox_config),
            })
            .await
            .unwrap_or_else(|e| panic!("CRI CreateContainer: {e}\n{}", self.log()))
            .into_inner()
            .container_id;
        runtime
            .start_container(StartContainerRequest {
                container_id: container_id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("CRI StartContainer: {e}\n{}", self.log()));
        CriPod {
            uid,
            sandbox_id,
            container_id,
        }
    }
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        for (namespace, id) in self.started.lock().unwrap().drain(..) {
            let _ = self.ctr(&namespace, &["tasks", "kill", "-s", "SIGKILL", &id]);
            let _ = self.ctr(&namespace, &["tasks", "delete", "-f", &id]);
            let _ = self.ctr(&namespace, &["containers", "delete", &id]);
        }
        let sandboxes: Vec<String> = self.sandboxes.lock().unwrap().drain(..).collect();
        if !sandboxes.is_empty() {
            // A thread of its own: drop may run inside the test's runtime,
            // where blocking on another runtime is not allowed.
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    runtime.block_on(async {
                        let mut client = RuntimeServiceClient::new(self.channel().await);
                        for id in sandboxes {
                            let _ = client
                                .stop_pod_sandbox(StopPodSandboxRequest {
                                    pod_sandbox_id: id.clone(),
                                })
                                .await;
                            let _ = client
                                .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                                .await;
                        }
                    });
                });
            });
        }
        // SIGTERM lets containerd close its socket; its shims (one per
        // container, already told to stop above) exit with their tasks.
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The labels the kubelet puts on CRI sandboxes and containers.
fn kubelet_labels(
    namespace: &str,
    name: &str,
    uid: &str,
    container: Option<&str>,
) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        ("io.kubernetes.pod.name".to_string(), name.to_string()),
        (
            "io.kubernetes.pod.namespace".to_string(),
            namespace.to_string(),
        ),
        ("io.kubernetes.pod.uid".to_string(), uid.to_string()),
    ]);
    if let Some(container) = container {
        labels.insert("io.kubernetes.container.name".into(), container.into());
    }
    labels
}

/// A stable UUID-shaped id from a name (pod uids are UUIDs).
fn pseudo_uuid(name: &str) -> String {
    let hex = crate::registry::sha256(format!("{name}-{}", std::process::id()).as_bytes());
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
