//! One node of a cluster, as close as this machine allows: imagegate's
//! rendered Helm chart run as pods by the kubelet stand-in, on the real
//! containerd through CRI, with the images `cargo xtask images` built.
//!
//! What runs: a TLS registry with basic auth on the pod network's gateway
//! (imagegate's two images, a pause image, workloads), containerd with a
//! CNI bridge, the DNS stand-in for cluster DNS, the apiserver stand-in for
//! the pod list the webhook reads. What does not, because no control plane
//! can be installed here: a kube-apiserver calling the webhook (tests post
//! the AdmissionReviews a v1.28 apiserver sends), controllers, a scheduler,
//! the kubelet's own restarts and status reports (the test reports pods to
//! the apiserver stand-in from what CRI says).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use base64::Engine;
use imagegate_testkit::{
    apiserver::Apiserver,
    ca::Ca,
    containerd::TestContainerd,
    dns::Dns,
    grpcurl::Target,
    kubelet::{ApiserverAccess, Cluster, Kubelet, Objects, PodObject, RunningPod},
    network::PodNetwork,
    registry::Registry,
};
use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{Value, json};

pub const NAMESPACE: &str = "imagegate";
pub const USER: &str = "node";
pub const PASSWORD: &str = "node-pull-secret";
/// The name agents resolve for the webhook replicas' approval feed (the
/// chart's `--webhook-feed`), fully qualified.
pub const FEED_SERVICE: &str = "imagegate-webhook-feed.imagegate.svc.cluster.local";
/// The webhook Service's name, which its serving certificate carries.
pub const WEBHOOK_SERVICE: &str = "imagegate-webhook.imagegate.svc";
pub const AGENT_PLAINTEXT: &str = "127.0.0.1:50052";

/// Where `cargo xtask test` puts the images it built (`cargo xtask images
/// --debug`).
pub const IMAGES_ENV: &str = "IMAGEGATE_IMAGES_DIR";

/// An image in the node's registry.
#[derive(Clone, Debug)]
pub struct Image {
    pub reference: String,
    pub digest: String,
}

pub struct Images {
    pub pause: Image,
    /// A workload that ran before imagegate was installed.
    pub legacy: Image,
    /// A workload admitted through the webhook after the install.
    pub app: Image,
    /// Never admitted: started with `ctr run` on the node.
    pub miner: Image,
    /// imagegate's own, from `cargo xtask images`.
    pub webhook: Image,
    pub agent: Image,
}

pub struct Node {
    pub network: PodNetwork,
    pub registry_ca: Ca,
    pub registry: Registry,
    pub containerd: TestContainerd,
    pub dns: Dns,
    pub apiserver: Apiserver,
    pub images: Images,
    pub dir: tempfile::TempDir,
    /// What `imagegate-webhook certs` wrote.
    pub certs: PathBuf,
}

/// The images `cargo xtask images` built, or why the test cannot run.
pub fn images_dir() -> Result<PathBuf> {
    let dir = std::env::var_os(IMAGES_ENV).map(PathBuf::from).context(
        "IMAGEGATE_IMAGES_DIR is not set: the pod-shaped tests run imagegate's real images, \
         which `cargo xtask test` builds first; run the tests through it",
    )?;
    for name in ["webhook", "agent"] {
        if !dir.join(name).join("index.json").is_file() {
            bail!(
                "{} has no image layout: run `cargo xtask images --debug`",
                dir.join(name).display()
            );
        }
    }
    Ok(dir)
}

impl Node {
    /// Everything a node needs before imagegate is installed.
    pub async fn start() -> Result<Self> {
        let images_dir = images_dir()?;
        let network = PodNetwork::create();
        let gateway = IpAddr::V4(network.gateway);
        let registry_ca = Ca::new("node registry CA");
        let registry = Registry::tls_basic_on(gateway, &registry_ca, USER, PASSWORD);
        let host = registry.host.clone();
        let runnable = |repo: &'static str, tag: &'static str| {
            let registry = &registry;
            let host = host.clone();
            async move {
                Image {
                    digest: registry.push_runnable_image(repo, tag, repo).await,
                    reference: format!("{host}/{repo}:{tag}"),
                }
            }
        };
        let pause = runnable("pause", "3.9").await;
        let legacy = runnable("shop/legacy", "1.0").await;
        let app = runnable("shop/app", "2.0").await;
        let miner = runnable("tools/miner", "0.9").await;
        let tag = env!("CARGO_PKG_VERSION");
        let built = |name: &str| Image {
            digest: registry.push_layout(&images_dir.join(name), tag, &format!("imagegate/{name}")),
            reference: format!("{host}/imagegate/{name}:{tag}"),
        };
        let webhook = built("webhook");
        let agent = built("agent");
        let containerd = TestContainerd::start_on(&registry, &pause.reference, &network);
        let dns = Dns::start(SocketAddr::new(gateway, 53)).await;
        let apiserver_ca = Ca::new("kubernetes CA");
        let apiserver = Apiserver::start(&apiserver_ca, gateway).await;
        let dir = tempfile::Builder::new()
            .prefix("imagegate-node-")
            .tempdir()?;
        // The certificates the way a user makes them.
        let certs = dir.path().join("certs");
        let out = std::process::Command::new(crate::binary("imagegate-webhook"))
            .args(["certs", "--namespace", NAMESPACE, "--out"])
            .arg(&certs)
            .output()?;
        if !out.status.success() {
            bail!(
                "imagegate-webhook certs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self {
            network,
            registry_ca,
            registry,
            containerd,
            dns,
            apiserver,
            images: Images {
                pause,
                legacy,
                app,
                miner,
                webhook,
                agent,
            },
            dir,
            certs,
        })
    }

    pub fn kubelet(&self) -> Kubelet<'_> {
        Kubelet::new(
            &self.containerd,
            "node-1",
            Cluster {
                dns: self.network.gateway,
                apiserver: Some(ApiserverAccess {
                    address: self.apiserver.address,
                    files: self.apiserver.service_account_files(NAMESPACE),
                }),
            },
        )
    }

    /// The policy the install uses: the node registry's images, no latest.
    pub fn policy(&self) -> String {
        format!(
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmode: enforce\n\
             defaultVerdict: deny\nrules:\n  - name: node-registry\n    registries: ['{}']\n    \
             denyLatest: true\n",
            self.registry.host
        )
    }

    /// `helm template` of the chart with this node's values (image
    /// location, CA bundle, policy, registry CA and pull secret, the
    /// containerd socket and a state folder) and `sets`.
    pub fn render(&self, sets: &[&str]) -> Result<Rendered> {
        let ca = std::fs::read(self.certs.join("ca.crt"))?;
        let values = json!({
            "image": {"repository": format!("{}/imagegate", self.registry.host), "tag": env!("CARGO_PKG_VERSION")},
            "certs": {"caBundle": base64::engine::general_purpose::STANDARD.encode(&ca)},
            "policy": self.policy(),
            "registries": {
                "credentialsSecret": "pull",
                "ca": {self.registry.host.clone(): self.registry_ca.pem()},
            },
            "agent": {
                "runtimeSocket": self.containerd.socket.display().to_string(),
                "stateHostPath": self.dir.path().join("agent-state").display().to_string(),
            },
        });
        let file = self.dir.path().join("values.json");
        std::fs::write(&file, serde_json::to_vec_pretty(&values)?)?;
        let yaml = imagegate_deploy_check::helm_template(sets, &[&file])?;
        let objects = imagegate_deploy_check::documents(&yaml)?;
        for object in &objects {
            imagegate_deploy_check::validate(object)?;
        }
        Ok(Rendered { objects })
    }

    /// The Secrets and ConfigMaps the pods mount: the certificates as
    /// `kubectl create secret generic --from-file=certs` takes them (the
    /// files directly in the folder: the CA's key, in `private/`, stays
    /// with the user), the pull secret, and the rendered ConfigMaps.
    pub fn objects(&self, rendered: &Rendered) -> Result<Objects> {
        let mut objects = Objects::default();
        let mut certs = BTreeMap::new();
        for entry in std::fs::read_dir(&self.certs)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                certs.insert(name, std::fs::read(entry.path())?);
            }
        }
        assert!(
            !certs.contains_key("ca.key"),
            "the CA's key must not reach the cluster"
        );
        objects.secrets.insert("imagegate-certs".into(), certs);
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        objects.secrets.insert(
            "pull".into(),
            BTreeMap::from([(
                ".dockerconfigjson".to_string(),
                json!({"auths": {self.registry.host.clone(): {"auth": auth}}})
                    .to_string()
                    .into_bytes(),
            )]),
        );
        for object in rendered.objects.iter().filter(|o| o["kind"] == "ConfigMap") {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let data = object["data"]
                .as_object()
                .map(|d| {
                    d.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str().unwrap_or_default().as_bytes().to_vec(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            objects.config_maps.insert(name.to_string(), data);
        }
        Ok(objects)
    }

    /// A pod that is not imagegate's: one container of `image`.
    pub fn workload(&self, namespace: &str, name: &str, image: &Image) -> PodObject {
        let spec: PodSpec = serde_json::from_value(json!({
            "containers": [{"name": "main", "image": image.reference}]
        }))
        .expect("a pod spec");
        PodObject {
            namespace: namespace.into(),
            name: name.into(),
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
            annotations: BTreeMap::new(),
            spec,
        }
    }

    /// The agent's plaintext API inside its pod, as `kubectl port-forward`
    /// reaches it.
    pub async fn agent_api(&self, pod: &RunningPod) -> Result<Target> {
        let pid = self
            .containerd
            .task_pid("k8s.io", &pod.container("agent").id)
            .await
            .context("the agent container has no running task")?;
        Ok(Target::PodLoopback {
            pid,
            address: AGENT_PLAINTEXT.into(),
        })
    }

    /// POSTs an AdmissionReview for a Pod with `image` to a webhook pod's
    /// `/validate`, as the apiserver does through the Service; the answer's
    /// `response`.
    /// `GET /metrics` from a webhook pod, over HTTPS as a ServiceMonitor
    /// scrapes it (the serving CA, the Service's name).
    pub async fn webhook_metrics(&self, webhook: &RunningPod) -> Result<String> {
        let ca = std::fs::read_to_string(self.certs.join("ca.crt"))?;
        let (status, bytes) = imagegate_testkit::https::get_from(
            SocketAddr::new(IpAddr::V4(webhook.ip), 8443),
            WEBHOOK_SERVICE,
            "/metrics",
            &ca,
        )
        .await;
        if status != 200 {
            bail!("/metrics: HTTP {status}");
        }
        Ok(String::from_utf8(bytes)?)
    }

    pub async fn admit(&self, webhook: &RunningPod, name: &str, image: &str) -> Result<Value> {
        let mut review = crate::fixture("admissionreview-3.json")?;
        let request = &mut review["request"];
        request["uid"] = json!(format!("node-{name}"));
        request["name"] = json!(name);
        request["namespace"] = json!("shop");
        request["object"]["metadata"]["name"] = json!(name);
        request["object"]["metadata"]["namespace"] = json!("shop");
        request["object"]["spec"]["containers"] = json!([{"name": "main", "image": image}]);
        if let Some(spec) = request["object"]["spec"].as_object_mut() {
            spec.remove("initContainers");
        }
        let ca = std::fs::read_to_string(self.certs.join("ca.crt"))?;
        let (status, bytes) = imagegate_testkit::https::post_to(
            SocketAddr::new(IpAddr::V4(webhook.ip), 8443),
            WEBHOOK_SERVICE,
            "/validate",
            &ca,
            &serde_json::to_vec(&review)?,
        )
        .await;
        if status != 200 {
            bail!(
                "/validate: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let text = String::from_utf8_lossy(&bytes);
        let start = text.find('{').context("a JSON answer")?;
        let end = text.rfind('}').context("a JSON answer")?;
        let answer: Value = serde_json::from_str(&text[start..=end])?;
        Ok(answer["response"].clone())
    }
}

/// The chart, rendered and validated against the Kubernetes schemas.
pub struct Rendered {
    pub objects: Vec<Value>,
}

impl Rendered {
    fn object(&self, kind: &str, name: &str) -> &Value {
        imagegate_deploy_check::find(&self.objects, kind, name)
    }

    fn template(&self, kind: &str, name: &str, pod_name: &str) -> PodObject {
        let template = &self.object(kind, name)["spec"]["template"];
        let map = |v: &Value| -> BTreeMap<String, String> {
            serde_json::from_value(v.clone()).unwrap_or_default()
        };
        PodObject {
            namespace: NAMESPACE.into(),
            name: pod_name.into(),
            labels: map(&template["metadata"]["labels"]),
            annotations: map(&template["metadata"]["annotations"]),
            spec: serde_json::from_value(template["spec"].clone())
                .expect("the rendered pod template decodes as a PodSpec"),
        }
    }

    /// The DaemonSet's pod on this node.
    pub fn agent_pod(&self) -> PodObject {
        self.template("DaemonSet", "imagegate-agent", "imagegate-agent-node1")
    }

    /// The Deployment's `i`-th replica.
    pub fn webhook_pod(&self, i: usize) -> PodObject {
        self.template(
            "Deployment",
            "imagegate-webhook",
            &format!("imagegate-webhook-7d9f8-{i}"),
        )
    }

    /// How many replicas the Deployment asks for.
    pub fn webhook_replicas(&self) -> usize {
        self.object("Deployment", "imagegate-webhook")["spec"]["replicas"]
            .as_u64()
            .unwrap_or(1) as usize
    }
}

/// BPF map and program ids a process holds open (from `/proc/PID/fdinfo`):
/// what goes away with it unless something else keeps it.
pub fn bpf_ids(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let mut maps = Vec::new();
    let mut programs = Vec::new();
    let dir = Path::new("/proc").join(pid.to_string()).join("fdinfo");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some(id) = line.strip_prefix("map_id:") {
                maps.extend(id.trim().parse::<u32>().ok());
            }
            if let Some(id) = line.strip_prefix("prog_id:") {
                programs.extend(id.trim().parse::<u32>().ok());
            }
        }
    }
    maps.sort_unstable();
    maps.dedup();
    programs.sort_unstable();
    programs.dedup();
    (maps, programs)
}
