//! The whole product on one machine, started from nothing: a TLS registry
//! with auth holding three images, containerd, the node agent, the webhook
//! pushing to it over mTLS. `imagegate-demo` tells the story of one run;
//! `tests/whole_flow.rs` runs the same steps and asserts each one.
//!
//! Everything is started by this process, in process groups of their own,
//! and stopped by it (on drop: also when a Ctrl-C ends the demo).
//!
//! [`cluster`] runs the rendered Helm chart's pods on one node through CRI,
//! for the pod-shaped tests.

pub mod cluster;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use base64::Engine;
use imagegate_testkit::{
    apiserver::Apiserver,
    ca::Ca,
    containerd::TestContainerd,
    grpcurl::{self, Target},
    https,
    process::{Process, free_port},
    registry::Registry,
};
use serde_json::{Value, json};

pub const USER: &str = "demo";
pub const PASSWORD: &str = "demo-pull-secret";
const READY: Duration = Duration::from_secs(60);
pub const VERDICT: Duration = Duration::from_secs(30);
/// The agent's grace window and its wait for a closed feed after it.
pub const GRACE: Duration = Duration::from_secs(1);
pub const FEED_WAIT: Duration = Duration::from_secs(3);

/// Where the binaries are: next to this executable's folder (`target/X/`
/// for the demo binary, `target/X/deps/..` for tests).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let mut dir = exe.parent().expect("a folder").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// An image pushed to the registry.
#[derive(Clone, Debug)]
pub struct Image {
    pub reference: String,
    pub digest: String,
}

pub struct Images {
    pub pause: Image,
    /// Admitted by the webhook, started through CRI.
    pub app: Image,
    /// Never admitted, started with `ctr run`.
    pub miner: Image,
    /// A multi-arch image: the index and its platform manifests.
    pub multi: Image,
    pub multi_platforms: Vec<String>,
}

pub struct Agent {
    pub process: Process,
    pub plain: Target,
}

pub struct Webhook {
    pub process: Process,
    pub port: u16,
}

/// Everything running.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub registry: Registry,
    pub containerd: TestContainerd,
    pub images: Images,
    pub agent: Option<Agent>,
    pub webhook: Option<Webhook>,
    /// A stand-in kube-apiserver (testkit's) the webhook writes Events and
    /// policy reports to, once [`Stack::start_apiserver`] started it.
    pub apiserver: Option<Apiserver>,
    agent_tls_port: u16,
    agent_plain_port: u16,
    /// The webhook's approval feed, which the agent follows.
    feed_port: u16,
}

impl Stack {
    /// The registry with its images, and containerd; no agent or webhook yet.
    pub async fn start() -> Result<Self> {
        for bin in ["imagegate-agent", "imagegate-webhook"] {
            if !binary(bin).exists() {
                bail!(
                    "{} is not built: run `cargo xtask build`",
                    binary(bin).display()
                );
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("imagegate-demo-")
            .tempdir()?;
        let ca = Ca::new("imagegate demo CA");
        for name in ["imagegate-agent", "imagegate-webhook"] {
            ca.write(dir.path(), name, &ca.identity(name));
        }
        let serving = ca.server("webhook");
        std::fs::write(dir.path().join("webhook-tls.crt"), &serving.cert_pem)?;
        std::fs::write(dir.path().join("webhook-tls.key"), &serving.key_pem)?;

        let registry = Registry::tls_basic(&ca, USER, PASSWORD);
        let host = registry.host.clone();
        let push = |repo: &'static str, tag: &'static str| {
            let registry = &registry;
            async move {
                let digest = registry.push_runnable_image(repo, tag, repo).await;
                Image {
                    reference: format!("{}/{repo}:{tag}", registry.host),
                    digest,
                }
            }
        };
        let pause = push("pause", "3.9").await;
        let app = push("shop/app", "1.0").await;
        let miner = push("tools/miner", "0.9").await;
        let (index, platforms) = registry
            .push_runnable_index("shop/multi", "2.0", "multi")
            .await;
        let multi = Image {
            reference: format!("{host}/shop/multi:2.0"),
            digest: index,
        };
        let containerd = TestContainerd::start(&registry, &pause.reference);
        std::fs::write(
            dir.path().join("policy.yaml"),
            format!(
                "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmode: enforce\nrules:\n  - name: shop-registry\n    registries: ['{host}']\n    denyLatest: true\n"
            ),
        )?;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        std::fs::write(
            dir.path().join("registry-auth.json"),
            json!({"auths": {host.clone(): {"auth": auth}}}).to_string(),
        )?;
        Ok(Self {
            dir,
            ca,
            registry,
            containerd,
            images: Images {
                pause,
                app,
                miner,
                multi,
                multi_platforms: platforms,
            },
            agent: None,
            webhook: None,
            apiserver: None,
            agent_tls_port: free_port(),
            agent_plain_port: free_port(),
            feed_port: free_port(),
        })
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Starts the agent (`audit` or `enforce`); its state survives restarts.
    pub fn start_agent(&mut self, mode: &str) -> Result<()> {
        let state = self.path("agent-state");
        let mut process = Process::start(
            "agent",
            &binary("imagegate-agent"),
            [
                "--mode",
                mode,
                "--grace",
                &format!("{}s", GRACE.as_secs()),
                // One machine, no cluster: nothing ran before the demo's
                // containers, so enforce mode needs no settling (the
                // pod-shaped tests show it with a cluster's pods).
                "--settle",
                "0s",
                "--runtime-socket",
                &self.containerd.socket.display().to_string(),
                "--state-dir",
                &state,
                "--metrics-address",
                "127.0.0.1:0",
                "--grpc-address",
                &format!("127.0.0.1:{}", self.agent_tls_port),
                "--grpc-tls-cert",
                &self.path("imagegate-agent.crt"),
                "--grpc-tls-key",
                &self.path("imagegate-agent.key"),
                "--grpc-client-ca",
                &self.path("ca.pem"),
                "--grpc-plaintext-address",
                &format!("127.0.0.1:{}", self.agent_plain_port),
                "--webhook-feed",
                &format!("127.0.0.1:{}", self.feed_port),
                // How long a verdict waits for a feed that is not open,
                // after the grace window: short, so the stopped-webhook
                // steps stay quick (FEED_WAIT).
                "--feed-wait",
                &format!("{}s", FEED_WAIT.as_secs()),
            ],
        );
        process.wait_message("ready: watching container starts", READY);
        self.agent = Some(Agent {
            process,
            plain: Target::Plaintext(self.agent_address()),
        });
        Ok(())
    }

    /// Replaces the webhook's policy file and waits until it has loaded it
    /// (the `n`-th "policy loaded" of this webhook).
    pub fn set_policy(&self, yaml: &str, n: usize) -> Result<()> {
        let tmp = self.dir.path().join("policy.yaml.tmp");
        std::fs::write(&tmp, yaml)?;
        // Replaced by a rename: the webhook never reads half a file.
        std::fs::rename(&tmp, self.dir.path().join("policy.yaml"))?;
        let webhook = self
            .webhook
            .as_ref()
            .context("the webhook is not running")?;
        let deadline = std::time::Instant::now() + READY;
        while webhook
            .process
            .all(|l| l["fields"]["message"] == "policy loaded")
            .len()
            < n
        {
            if std::time::Instant::now() > deadline {
                bail!("the webhook did not load the new policy");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The policy the stack starts with, for the registry's images.
    pub fn policy(&self, extra: &str) -> String {
        format!(
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmode: enforce\nrules:\n  - name: shop-registry\n    registries: ['{}']\n    denyLatest: true\n{extra}",
            self.registry.host
        )
    }

    pub fn agent_address(&self) -> String {
        format!("127.0.0.1:{}", self.agent_plain_port)
    }

    /// SIGTERM and wait.
    pub fn stop_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.process.stop();
        }
    }

    /// Starts the stand-in apiserver; a webhook started after it reports
    /// violations there (Events on pods, OpenReports reports).
    pub async fn start_apiserver(&mut self) -> Result<()> {
        let apiserver = Apiserver::start(
            &Ca::new("stand-in apiserver CA"),
            std::net::IpAddr::from([127, 0, 0, 1]),
        )
        .await;
        std::fs::write(self.dir.path().join("kubeconfig"), apiserver.kubeconfig())?;
        self.apiserver = Some(apiserver);
        Ok(())
    }

    pub fn start_webhook(&mut self) -> Result<()> {
        let ca = self.ca_file();
        let mut args: Vec<String> = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &self.path("webhook-tls.crt"),
            "--key",
            &self.path("webhook-tls.key"),
            "--policy",
            &self.path("policy.yaml"),
            "--registry-credentials",
            &self.path("registry-auth.json"),
            "--registry-ca",
            &format!("{}={}", self.registry.host, ca.display()),
            "--ledger",
            &self.path("ledger.redb"),
            "--feed-listen",
            &format!("127.0.0.1:{}", self.feed_port),
            "--agent-ca",
            &self.path("ca.pem"),
            "--agent-client-cert",
            &self.path("imagegate-webhook.crt"),
            "--agent-client-key",
            &self.path("imagegate-webhook.key"),
        ]
        .map(String::from)
        .to_vec();
        if self.apiserver.is_some() {
            // The one replica holds the Lease and reads the agent's
            // violations on its mTLS port, at the address it follows from.
            args.extend(
                [
                    "--kubeconfig",
                    &self.path("kubeconfig"),
                    "--report-events",
                    "on",
                    "--admission-events",
                    "on",
                    "--report-format",
                    "openreports",
                    "--report-identity",
                    "imagegate-webhook-0",
                    "--agent-api-port",
                    &self.agent_tls_port.to_string(),
                ]
                .map(String::from),
            );
        }
        let mut process = Process::start("webhook", &binary("imagegate-webhook"), &args);
        let serving = process.wait_message(
            "serving /image_policy, /validate, /, /healthz, /readyz, /metrics over HTTPS",
            READY,
        );
        let port = serving["fields"]["listen"]
            .as_str()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .context("the webhook logs its port")?;
        self.webhook = Some(Webhook { process, port });
        Ok(())
    }

    pub fn stop_webhook(&mut self) {
        if let Some(webhook) = self.webhook.take() {
            webhook.process.stop();
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.registry.ca_file.clone().expect("a TLS registry")
    }

    fn webhook_port(&self) -> Result<u16> {
        Ok(self
            .webhook
            .as_ref()
            .context("the webhook is not running")?
            .port)
    }

    /// A Pod's AdmissionReview, shaped like the one a kube-apiserver
    /// v1.28 sent (webhook/tests/fixtures), with `image`. Returns the
    /// `response`.
    pub async fn admission_review(&self, path: &str, name: &str, image: &str) -> Result<Value> {
        let mut review = fixture("admissionreview-3.json")?;
        let request = &mut review["request"];
        request["uid"] = json!(format!("demo-{name}"));
        request["name"] = json!(name);
        request["namespace"] = json!("shop");
        request["object"]["metadata"]["name"] = json!(name);
        request["object"]["metadata"]["namespace"] = json!("shop");
        request["object"]["spec"]["containers"] = json!([{"name": "main", "image": image}]);
        if let Some(obj) = request["object"]["spec"].as_object_mut() {
            obj.remove("initContainers");
        }
        let answer = self.post(path, &review).await?;
        Ok(answer["response"].clone())
    }

    /// An ImageReview like the apiserver's ImagePolicyWebhook sends.
    pub async fn image_review(&self, images: &[&str]) -> Result<Value> {
        let mut review = fixture("imagereview-1.json")?;
        review["spec"]["containers"] = json!(
            images
                .iter()
                .map(|i| json!({"image": i}))
                .collect::<Vec<_>>()
        );
        review["spec"]["namespace"] = json!("shop");
        let answer = self.post("/image_policy", &review).await?;
        Ok(answer["status"].clone())
    }

    /// POSTs a whole review body to the webhook; its answer.
    pub async fn post_review(&self, path: &str, body: &Value) -> Result<Value> {
        self.post(path, body).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let (status, bytes) = https::post(
            self.webhook_port()?,
            path,
            &self.ca.pem(),
            &serde_json::to_vec(body)?,
        )
        .await;
        if status != 200 {
            bail!("{path}: HTTP {status}: {}", String::from_utf8_lossy(&bytes));
        }
        // hyper may answer in chunks: take the JSON between the outer braces.
        let text = String::from_utf8_lossy(&bytes);
        let start = text.find('{').context("a JSON answer")?;
        let end = text.rfind('}').context("a JSON answer")?;
        Ok(serde_json::from_str(&text[start..=end])?)
    }

    fn agent_ref(&self) -> Result<&Agent> {
        self.agent.as_ref().context("the agent is not running")
    }

    /// A grpcurl call to the agent's plaintext listener: the command line a
    /// person would type, and the JSON answer.
    pub fn grpcurl(&self, method: &str, data: &str) -> Result<(String, Value)> {
        let agent = self.agent_ref()?;
        let line = format!(
            "grpcurl -plaintext -d '{data}' {} imagegate.v1.AgentService/{method}",
            self.agent_address()
        );
        let answer = grpcurl::call(
            &agent.plain,
            &format!("imagegate.v1.AgentService/{method}"),
            data,
        );
        Ok((line, answer))
    }

    /// `grpcurl ... list`.
    pub fn grpcurl_list(&self) -> Result<(String, String)> {
        let agent = self.agent_ref()?;
        let out = grpcurl::run(&agent.plain, &[], &["list"]);
        Ok((
            format!("grpcurl -plaintext {} list", self.agent_address()),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// Waits until the agent holds `digest`.
    pub fn wait_approval(&self, digest: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + VERDICT;
        loop {
            let (_, answer) =
                self.grpcurl("ListApprovals", &format!(r#"{{"digest": "{digest}"}}"#))?;
            if grpcurl::count(&answer, "approvals") > 0 {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("the agent never received {digest}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's verdict line for the container `key` (`ns/id`), once it
    /// is `verdict`.
    pub fn wait_verdict(&self, key: &str, verdict: &str) -> Result<Value> {
        let agent = self.agent_ref()?;
        agent
            .process
            .wait_for(VERDICT, |l| {
                l["fields"]["message"] == "verdict"
                    && l["fields"]["container"] == key
                    && l["fields"]["verdict"] == verdict
            })
            .with_context(|| {
                let seen: Vec<Value> = agent.process.all(|l| {
                    l["fields"]["message"] == "verdict" && l["fields"]["container"] == key
                });
                format!("no `{verdict}` verdict for {key}; seen: {seen:?}")
            })
    }
}

/// A request body the apiserver sent, from webhook/tests/fixtures.
pub fn fixture(name: &str) -> Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../webhook/tests/fixtures/apiserver-v1.28")
        .join(name);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let value: Value = serde_json::from_str(&text)?;
    Ok(value.get("body").cloned().unwrap_or(value))
}

/// Unique container names, so the demo runs twice in a row.
pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The images of a JSONPatch from `/mutate`, decoded.
pub fn patched_image(response: &Value) -> Option<String> {
    let patch = response["patch"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .ok()?;
    let ops: Value = serde_json::from_slice(&bytes).ok()?;
    ops.as_array()?
        .iter()
        .find_map(|op| op["value"].as_str().map(str::to_string))
}
