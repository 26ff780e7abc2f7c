//! The real `imagegate-webhook serve` process over TLS with real clients:
//! client certificates, certificate reload under load (including a
//! Kubernetes Secret volume's `..data` symlink swap), policy hot reload,
//! graceful shutdown.
//!
//! Over 500 lines: each scenario runs the real binary with real clients; they
//! share the certificate and process helpers.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{Ca, EXAMPLE_POLICY, Leaf, fixture};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A running webhook; killed on drop.
struct Webhook {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Webhook {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_imagegate-webhook"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--reload-interval",
                "50ms",
            ])
            // Most of these tests reach no registry: decisions on references
            // only, unless the test turns resolution on itself.
            .args(if extra.contains(&"--digest-resolution") {
                &[][..]
            } else {
                &["--digest-resolution", "off"][..]
            })
            .arg("--cert")
            .arg(dir.join("tls.crt"))
            .arg("--key")
            .arg(dir.join("tls.key"))
            .arg("--policy")
            .arg(dir.join("policy.yaml"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start imagegate-webhook");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("webhook: {line}");
                if let Some(port) = line
                    .split_once("listen=127.0.0.1:")
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .and_then(|p| p.parse::<u16>().ok())
                {
                    let _ = port_tx.send(port);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let port = port_rx
            .recv_timeout(WAIT)
            .expect("the webhook reports its port");
        Self { child, port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// The certificate a new handshake gets.
    async fn served_certificate(&self, ca: &Ca) -> Vec<u8> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca, None)));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("handshake");
        tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_config(ca: &Ca, identity: Option<&Leaf>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match identity {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    }
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

fn https_client(ca: &Ca, identity: Option<&Leaf>) -> HttpsClient {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(ca, identity))
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn request(
    client: &HttpsClient,
    method: &str,
    url: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body.to_vec()))
}

async fn review(
    client: &HttpsClient,
    webhook: &Webhook,
    fixture_name: &str,
) -> Result<Value, String> {
    let (path, body) = fixture(fixture_name);
    let path = if path.starts_with("/imagepolicy") {
        "/image_policy".to_string()
    } else {
        path
    };
    let (status, bytes) = request(
        client,
        "POST",
        &webhook.url(&path),
        serde_json::to_vec(&body).unwrap(),
    )
    .await?;
    if status != 200 {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Writes a certificate pair the way the kubelet writes a Secret volume:
/// the files are symlinks through `..data`, which points to a timestamped
/// folder and is replaced atomically by a rename.
fn write_secret_volume(dir: &Path, version: &str, cert: &str, key: &str) {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("tls.crt"), cert).unwrap();
    std::fs::write(data.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key"] {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(PathBuf::from("..data").join(name), &link).unwrap();
        }
    }
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn setup(ca: &Ca, name: &str) -> (tempfile::TempDir, Leaf) {
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.server(name);
    write_secret_volume(dir.path(), "2026_11_22_a", &leaf.cert_pem, &leaf.key_pem);
    std::fs::write(dir.path().join("policy.yaml"), EXAMPLE_POLICY).unwrap();
    (dir, leaf)
}

#[tokio::test]
async fn serves_both_apis_and_requires_the_right_client_certificate() {
    let ca = Ca::new("imagegate test CA");
    let clients = Ca::new("apiserver client CA");
    let strangers = Ca::new("someone else");
    let (dir, _) = setup(&ca, "webhook");
    std::fs::write(dir.path().join("client-ca.pem"), clients.pem()).unwrap();
    let ca_flag = dir.path().join("client-ca.pem");
    let webhook = Webhook::start(dir.path(), &["--client-ca", ca_flag.to_str().unwrap()]);

    let apiserver = https_client(&ca, Some(&clients.client("kube-apiserver")));
    let answer = review(&apiserver, &webhook, "imagereview-1.json")
        .await
        .expect("answered");
    assert_eq!(answer["status"]["allowed"], false);
    let answer = review(&apiserver, &webhook, "imagereview-2.json")
        .await
        .expect("answered");
    assert_eq!(answer["status"]["allowed"], true);
    let answer = review(&apiserver, &webhook, "admissionreview-1.json")
        .await
        .expect("answered");
    assert_eq!(
        answer["response"]["uid"],
        "1b197fa5-a451-476e-b5d5-1301d7e602f2"
    );
    assert_eq!(answer["response"]["allowed"], false);

    let anonymous = https_client(&ca, None);
    let err = review(&anonymous, &webhook, "imagereview-2.json")
        .await
        .expect_err("no client certificate");
    assert!(!err.is_empty());
    let stranger = https_client(&ca, Some(&strangers.client("intruder")));
    review(&stranger, &webhook, "imagereview-2.json")
        .await
        .expect_err("a client certificate from another CA");

    // And a client that does not trust the webhook's CA refuses it.
    let distrustful = https_client(&strangers, Some(&clients.client("kube-apiserver")));
    review(&distrustful, &webhook, "imagereview-2.json")
        .await
        .expect_err("unknown server CA");
}

/// Found on a real cluster: the kube-apiserver presents a client
/// certificate on the ImagePolicyWebhook path but not on the
/// ValidatingWebhook path, so with `--client-ca` alone every AdmissionReview
/// failed the handshake. Required per path, both paths work.
#[tokio::test]
async fn client_certificates_can_be_required_on_one_path_only() {
    let ca = Ca::new("imagegate test CA");
    let clients = Ca::new("apiserver client CA");
    let strangers = Ca::new("someone else");
    let (dir, _) = setup(&ca, "webhook");
    std::fs::write(dir.path().join("client-ca.pem"), clients.pem()).unwrap();
    let ca_flag = dir.path().join("client-ca.pem");
    let webhook = Webhook::start(
        dir.path(),
        &[
            "--client-ca",
            ca_flag.to_str().unwrap(),
            "--client-cert-required-path",
            "/image_policy",
            "--client-cert-required-path",
            "/metrics",
        ],
    );
    let apiserver = https_client(&ca, Some(&clients.client("kube-apiserver")));
    let anonymous = https_client(&ca, None);

    // The ImageReview path: with the apiserver's certificate, answered.
    let answer = review(&apiserver, &webhook, "imagereview-2.json")
        .await
        .expect("answered");
    assert_eq!(answer["status"]["allowed"], true);
    // Without one: refused with what to do, never an allow.
    let (path, body) = fixture("imagereview-2.json");
    assert!(path.starts_with("/imagepolicy"), "{path}");
    let (status, bytes) = request(
        &anonymous,
        "POST",
        &webhook.url("/image_policy"),
        serde_json::to_vec(&body).unwrap(),
    )
    .await
    .expect("an HTTP answer");
    assert_eq!(status, 403);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("requires a client certificate"), "{text}");

    // The ValidatingWebhook path and the probes: no certificate needed.
    let answer = review(&anonymous, &webhook, "admissionreview-1.json")
        .await
        .expect("answered without a client certificate");
    assert_eq!(
        answer["response"]["uid"],
        "1b197fa5-a451-476e-b5d5-1301d7e602f2"
    );
    let (status, _) = request(&anonymous, "GET", &webhook.url("/readyz"), Vec::new())
        .await
        .expect("probe");
    assert_eq!(status, 200);
    // A path the router answers (the reviews are dispatched before it) is
    // held to the same requirement.
    let (status, bytes) = request(&anonymous, "GET", &webhook.url("/metrics"), Vec::new())
        .await
        .expect("an HTTP answer");
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&bytes));
    let (status, _) = request(&apiserver, "GET", &webhook.url("/metrics"), Vec::new())
        .await
        .expect("metrics");
    assert_eq!(status, 200);

    // A certificate that is presented is still checked, on every path.
    let stranger = https_client(&ca, Some(&strangers.client("intruder")));
    review(&stranger, &webhook, "admissionreview-1.json")
        .await
        .expect_err("a client certificate from another CA fails the handshake");
}

#[tokio::test]
async fn reloads_the_certificate_under_load_without_dropping_connections() {
    let ca = Ca::new("imagegate test CA");
    let (dir, first) = setup(&ca, "first");
    let webhook = Arc::new(Webhook::start(dir.path(), &[]));
    assert_eq!(webhook.served_certificate(&ca).await, first.der);

    // A connection opened before the swap, kept open across it.
    let (path, body) = fixture("admissionreview-3.json");
    let body = serde_json::to_vec(&body).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", webhook.port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_config(&ca, None)))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut old_connection, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let send_on_old = async |sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>| {
        let req = hyper::Request::post(path.as_str())
            .header("host", "localhost")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        sender.send_request(req).await.map(|r| r.status().as_u16())
    };
    assert_eq!(send_on_old(&mut old_connection).await.unwrap(), 200);

    // Load: 8 workers with keep-alive clients.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failed, webhook) =
            (stop.clone(), ok.clone(), failed.clone(), webhook.clone());
        let client = https_client(&ca, None);
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match review(&client, &webhook, "admissionreview-3.json").await {
                    Ok(answer) if answer["response"]["allowed"] == true => {
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(answer) => {
                        failed.lock().unwrap().push(answer.to_string());
                        0
                    }
                    Err(e) => {
                        failed.lock().unwrap().push(e);
                        0
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_swap = ok.load(Ordering::Relaxed);

    let second = ca.server("second");
    write_secret_volume(
        dir.path(),
        "2026_11_22_b",
        &second.cert_pem,
        &second.key_pem,
    );
    eventually("new handshakes get the second certificate", async || {
        webhook.served_certificate(&ca).await == second.der
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A pair that does not work is refused; the second stays in force.
    let third = ca.server("third");
    write_secret_volume(dir.path(), "2026_11_22_c", &third.cert_pem, &second.key_pem);
    eventually("the mismatched pair is refused", async || {
        webhook.logged("new serving certificate not used, keeping the previous one")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(webhook.served_certificate(&ca).await, second.der);

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failures = failed.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} requests failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    let total = ok.load(Ordering::Relaxed);
    eprintln!(
        "requests during the reloads: {before_swap} before the first swap, {total} in all, 0 failed"
    );
    assert!(
        before_swap > 0 && total > before_swap,
        "load ran: {before_swap} before, {total} in all"
    );
    // The connection opened before both swaps still works.
    assert_eq!(send_on_old(&mut old_connection).await.unwrap(), 200);

    let client = https_client(&ca, None);
    let (_, metrics) = request(&client, "GET", &webhook.url("/metrics"), Vec::new())
        .await
        .unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains(r#"imagegate_webhook_certificate_reloads_total{result="success"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"imagegate_webhook_certificate_reloads_total{result="failure"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_new_policy_applies_and_an_invalid_one_keeps_the_old() {
    let ca = Ca::new("imagegate test CA");
    let (dir, _) = setup(&ca, "webhook");
    let webhook = Webhook::start(dir.path(), &[]);
    let client = https_client(&ca, None);
    let allowed = async || {
        review(&client, &webhook, "imagereview-2.json")
            .await
            .unwrap()["status"]["allowed"]
            == true
    };
    assert!(allowed().await);

    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules: [{name: x, registrys: []}]\n").unwrap();
    eventually("the invalid policy is refused", async || {
        webhook.logged("keeping the policy loaded before")
    })
    .await;
    assert!(webhook.logged("rules[0]: unknown field `registrys`"));
    assert!(allowed().await, "the old policy is still in force");

    std::fs::write(
        &policy,
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\ndefaultVerdict: deny\n",
    )
    .unwrap();
    eventually("the new policy denies Docker Hub", async || {
        !allowed().await
    })
    .await;

    let (_, metrics) = request(&client, "GET", &webhook.url("/metrics"), Vec::new())
        .await
        .unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains(r#"imagegate_webhook_policy_reloads_total{result="failure"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"imagegate_webhook_policy_reloads_total{result="success"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn starts_unready_without_a_valid_policy_and_becomes_ready() {
    let ca = Ca::new("imagegate test CA");
    let (dir, _) = setup(&ca, "webhook");
    std::fs::write(dir.path().join("policy.yaml"), "mode: [").unwrap();
    let webhook = Webhook::start(dir.path(), &[]);
    let client = https_client(&ca, None);
    let ready = async || {
        request(&client, "GET", &webhook.url("/readyz"), Vec::new())
            .await
            .unwrap()
            .0
    };
    assert_eq!(ready().await, 503);
    let answer = review(&client, &webhook, "imagereview-2.json")
        .await
        .unwrap();
    assert_eq!(
        answer["status"]["allowed"], false,
        "fail closed without a policy"
    );
    std::fs::write(dir.path().join("policy.yaml"), EXAMPLE_POLICY).unwrap();
    eventually("ready once the policy is valid", async || {
        ready().await == 200
    })
    .await;
    let answer = review(&client, &webhook, "imagereview-2.json")
        .await
        .unwrap();
    assert_eq!(answer["status"]["allowed"], true);
}

#[tokio::test]
async fn sigterm_stops_it_cleanly() {
    let ca = Ca::new("imagegate test CA");
    let (dir, _) = setup(&ca, "webhook");
    let mut webhook = Webhook::start(dir.path(), &[]);
    let client = https_client(&ca, None);
    review(&client, &webhook, "imagereview-2.json")
        .await
        .unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(webhook.child.id() as i32, libc::SIGTERM) },
        0
    );
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = webhook.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert!(webhook.logged("SIGTERM received"));
    assert!(webhook.logged("shutting down"));
}

#[test]
fn a_certificate_that_does_not_work_at_start_is_a_clear_error() {
    let ca = Ca::new("imagegate test CA");
    let (dir, _) = setup(&ca, "webhook");
    let other = ca.server("other");
    std::fs::write(dir.path().join("other.key"), &other.key_pem).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imagegate-webhook"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--key")
        .arg(dir.path().join("other.key"))
        .arg("--policy")
        .arg(dir.path().join("policy.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the private key does not belong to the certificate"),
        "{stderr}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_imagegate-webhook"))
        .args([
            "serve",
            "--cert",
            "/nonexistent/tls.crt",
            "--key",
            "/nonexistent/tls.key",
            "--policy",
            "p.yaml",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/tls.crt"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_ledger_survives_a_restart_of_the_webhook() {
    use common::{admission_review, registry::Registry};
    use imagegate_webhook::ledger::Ledger;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = Ca::new("imagegate test CA");
    let (dir, _) = setup(&ca, "webhook");
    let registry = Registry::plain();
    let digest = registry.push_image("team/app", "1.0", "restart").await;
    std::fs::write(
        dir.path().join("policy.yaml"),
        format!(
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: local\n    registries: ['{}']\n",
            registry.host
        ),
    )
    .unwrap();
    let ledger_path = dir.path().join("state").join("ledger.redb");
    let ledger_arg = ledger_path.to_str().unwrap().to_string();
    let args = [
        "--digest-resolution",
        "on",
        "--plain-http-registry",
        registry.host.as_str(),
        "--ledger",
        ledger_arg.as_str(),
    ];
    let image = format!("{}/team/app:1.0", registry.host);
    let pod = serde_json::json!({"spec": {"containers": [{"name": "app", "image": image}]}});
    let body = serde_json::to_vec(&admission_review("", "Pod", "CREATE", pod)).unwrap();
    let client = https_client(&ca, None);

    let mut first = Webhook::start(dir.path(), &args);
    let (status, answer) = request(&client, "POST", &first.url("/validate"), body.clone())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert_eq!(
        answer["response"]["auditAnnotations"]["resolved-digests"],
        format!("{image}={digest}")
    );
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(first.child.id() as i32, libc::SIGTERM) },
        0
    );
    assert!(first.child.wait().unwrap().success());

    let second = Webhook::start(dir.path(), &args);
    assert!(
        second.logged("generation=1"),
        "the restarted webhook sees the approval"
    );
    drop(second);

    let ledger = Ledger::open(&ledger_path, std::time::Duration::from_secs(3600), 100).unwrap();
    let all = ledger.all().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].digest.as_str(), digest);
    assert_eq!(all[0].reference, image);
}

#[tokio::test]
async fn speaks_http2_when_the_client_offers_it() {
    let ca = Ca::new("imagegate test CA");
    let (dir, _) = setup(&ca, "webhook");
    let webhook = Webhook::start(dir.path(), &[]);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(&ca, None))
        .https_only()
        .enable_http2()
        .build();
    let client: HttpsClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let (_, body) = fixture("admissionreview-3.json");
    let req = hyper::Request::post(webhook.url("/validate"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap();
    let response = client.request(req).await.expect("an h2 answer");
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
}

#[tokio::test]
async fn sigterm_lets_a_request_in_flight_finish() {
    use common::admission_review;
    let ca = Ca::new("imagegate test CA");
    let (dir, _) = setup(&ca, "webhook");
    // A registry that accepts connections and never answers keeps the
    // request in flight for the whole resolution budget.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = format!("127.0.0.1:{}", hanging.local_addr().unwrap().port());
    std::fs::write(
        dir.path().join("policy.yaml"),
        format!("apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: slow\n    registries: ['{host}']\n"),
    )
    .unwrap();
    let args = [
        "--digest-resolution",
        "on",
        "--plain-http-registry",
        host.as_str(),
        "--registry-timeout",
        "1500ms",
    ];
    let mut webhook = Webhook::start(dir.path(), &args);
    let pod = serde_json::json!({"spec": {"containers": [{"name": "app", "image": format!("{host}/app:1")}]}});
    let body = serde_json::to_vec(&admission_review("", "Pod", "CREATE", pod)).unwrap();
    let client = https_client(&ca, None);
    let url = webhook.url("/validate");
    let in_flight = tokio::spawn(async move { request(&client, "POST", &url, body).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(webhook.child.id() as i32, libc::SIGTERM) },
        0
    );
    let (status, answer) = in_flight
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        answer["response"]["status"]["message"],
        format!("could not resolve {host}/app:1 to a digest: timed out after 1.5s")
    );
    let status = webhook.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(webhook.logged("letting open requests finish"));
    drop(hanging);
}
