//! The agent's gRPC API through the real grpcurl (no proto files: server
//! reflection), on its mTLS and plaintext listeners, with a real containerd
//! container to report on. Root: the agent loads eBPF.
//!
//! Over 500 lines: each test starts the real agent and asks it through the
//! real grpcurl; the scenarios share that set-up.

use std::{
    io::Read,
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use imagegate_testkit::{
    ca::Ca,
    containerd::TestContainerd,
    grpcurl::{self, Target},
    process::Process,
    registry::Registry,
};
use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_imagegate-agent");
const SERVICE: &str = "imagegate.v1.AgentService";

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

fn require_root() {
    imagegate_testkit::require_root("these tests load eBPF programs");
}

struct Agent {
    process: Process,
    plain: Target,
    tls_address: String,
}

/// The TLS files: the agent's identity, the webhook's, and an intruder's
/// (a certificate from the same CA for another name).
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("imagegate gRPC test CA");
        for name in ["imagegate-agent", "imagegate-webhook", "someone-else"] {
            ca.write(dir.path(), name, &ca.identity(name));
        }
        Self { dir, ca }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn client(&self, address: &str, name: &str) -> Target {
        Target::Tls {
            address: address.to_string(),
            ca: self.dir.path().join("ca.pem"),
            cert: self.dir.path().join(format!("{name}.crt")),
            key: self.dir.path().join(format!("{name}.key")),
            server_name: "imagegate-agent".into(),
        }
    }
}

impl Agent {
    fn start(pki: &Pki, socket: &Path, state: &Path) -> Self {
        Self::start_with(pki, socket, state, &[])
    }

    fn start_with(pki: &Pki, socket: &Path, state: &Path, extra: &[&str]) -> Self {
        let _ = &pki.ca;
        let mut process = Process::start(
            "agent",
            Path::new(AGENT),
            extra.iter().copied().chain([
                "--runtime-socket",
                socket.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
                "--metrics-address",
                "127.0.0.1:0",
                "--grace",
                "200ms",
                "--grpc-address",
                "127.0.0.1:0",
                "--grpc-tls-cert",
                &pki.file("imagegate-agent.crt"),
                "--grpc-tls-key",
                &pki.file("imagegate-agent.key"),
                "--grpc-client-ca",
                &pki.file("ca.pem"),
                "--grpc-plaintext-address",
                "127.0.0.1:0",
            ]),
        );
        let timeout = Duration::from_secs(30);
        process.wait_message("ready: watching container starts", timeout);
        let address = |message: &str| {
            process
                .find(|l| l["fields"]["message"] == message)
                .expect(message)["fields"]["address"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let plain = Target::Plaintext(address("gRPC: plaintext loopback listener (queries only)"));
        let tls_address = address("gRPC: mTLS listener (AgentService, health, reflection)");
        Self {
            process,
            plain,
            tls_address,
        }
    }
}

fn method(name: &str) -> String {
    format!("{SERVICE}/{name}")
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_describes_and_calls_every_method() {
    require_root();
    let registry = Registry::plain();
    registry.push_runnable_image("pause", "1", "pause").await;
    let rogue_digest = registry
        .push_runnable_image("team/rogue", "1", "grpc-rogue")
        .await;
    let rogue = format!("{}/team/rogue:1", registry.host);
    let containerd = TestContainerd::start(&registry, &format!("{}/pause:1", registry.host));
    containerd.pull("default", &rogue);
    let pki = Pki::new();
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::start(&pki, &containerd.socket, state.path());
    let plain = agent.plain.clone();
    let webhook = pki.client(&agent.tls_address, "imagegate-webhook");
    let intruder = pki.client(&agent.tls_address, "someone-else");

    // Reflection: list and describe, with no proto files.
    let out = grpcurl::run(&plain, &[], &["list"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    for service in [SERVICE, "grpc.health.v1.Health"] {
        assert!(listed.lines().any(|l| l == service), "{listed}");
    }
    let out = grpcurl::run(&plain, &[], &["describe", SERVICE]);
    let described = String::from_utf8_lossy(&out.stdout).into_owned();
    for rpc in [
        "PushApprovals",
        "SyncApprovals",
        "ListApprovals",
        "ListContainers",
        "ListViolations",
        "WatchEvents",
        "GetStatus",
    ] {
        assert!(
            described.contains(&format!("rpc {rpc} ")),
            "{rpc}: {described}"
        );
    }
    let out = grpcurl::run(&plain, &[], &["describe", "imagegate.v1.Approval"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("string digest = 1;"));
    // The mTLS listener answers reflection too.
    let out = grpcurl::run(&webhook, &[], &["list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let health = grpcurl::call(&plain, "grpc.health.v1.Health/Check", "{}");
    assert_eq!(health["status"], "SERVING");

    // Pushes: the webhook's identity, idempotent, platform digests kept.
    let push = format!(
        r#"{{"ledger": "l1", "generation": 2, "approvals": [
            {{"digest": "{}", "reference": "reg.test/team/app:1", "namespace": "shop"}},
            {{"digest": "{}", "platformDigests": ["{}"]}}]}}"#,
        digest(1),
        digest(2),
        digest(3)
    );
    let reply = grpcurl::call(&webhook, &method("PushApprovals"), &push);
    assert_eq!(
        (reply["added"].as_u64(), reply["generation"].as_str()),
        (Some(3), Some("2"))
    );
    let reply = grpcurl::call(&webhook, &method("PushApprovals"), &push);
    assert_eq!(
        reply["added"].as_u64(),
        Some(0),
        "a second push adds nothing"
    );

    // Sync: from a generation the agent does not hold is refused; from
    // the one it holds goes on.
    let (code, message) = grpcurl::error(
        &webhook,
        &method("SyncApprovals"),
        r#"{"ledger": "l1", "sinceGeneration": 5, "generation": 6}"#,
    );
    assert_eq!(code, "FailedPrecondition", "{message}");
    assert!(message.contains("sync from 2"), "{message}");
    let reply = grpcurl::call(
        &webhook,
        &method("SyncApprovals"),
        &format!(
            r#"{{"ledger": "l1", "sinceGeneration": 2, "generation": 3, "approvals": [{{"digest": "{}"}}]}}"#,
            digest(4)
        ),
    );
    assert_eq!(
        (reply["added"].as_u64(), reply["generation"].as_str()),
        (Some(1), Some("3"))
    );

    // Who may push, and bad input.
    let one = format!(
        r#"{{"ledger": "l1", "approvals": [{{"digest": "{}"}}]}}"#,
        digest(9)
    );
    let (code, _) = grpcurl::error(&plain, &method("PushApprovals"), &one);
    assert_eq!(code, "Unauthenticated");
    let (code, message) = grpcurl::error(&intruder, &method("SyncApprovals"), &one);
    assert_eq!(code, "PermissionDenied", "{message}");
    // A bad approval is refused alone and named; the others are kept and
    // the generation moves on (a poisoned record must never stall a push).
    for (body, field) in [
        (
            format!(
                r#"{{"ledger": "l1", "approvals": [{{"digest": "sha256:abc"}}, {{"digest": "{}"}}]}}"#,
                digest(11)
            ),
            "approvals[0].digest: ",
        ),
        (
            format!(
                r#"{{"ledger": "l1", "approvals": [{{"reference": "x"}}, {{"digest": "{}"}}]}}"#,
                digest(11)
            ),
            "approvals[0].digest is required",
        ),
        (
            format!(
                r#"{{"ledger": "l1", "approvals": [{{"digest": "sha512:{}"}}, {{"digest": "{}"}}]}}"#,
                "ab".repeat(32),
                digest(11)
            ),
            "a sha512 digest has 128 hex digits",
        ),
    ] {
        let answer = grpcurl::call(&webhook, &method("PushApprovals"), &body);
        let rejected = answer["rejected"].as_array().expect("refused approvals");
        assert_eq!(rejected.len(), 1, "{body}: {answer}");
        assert_eq!(rejected[0]["index"], 0, "{answer}");
        assert!(
            rejected[0]["reason"].as_str().unwrap().contains(field),
            "{body}: {answer}"
        );
    }
    let kept = grpcurl::call(
        &plain,
        &method("ListApprovals"),
        &format!(r#"{{"digest": "{}"}}"#, digest(11)),
    );
    assert_eq!(
        grpcurl::count(&kept, "approvals"),
        1,
        "the good approval of the batch: {kept}"
    );
    // What makes the whole request unusable is still an error.
    let body = format!(r#"{{"approvals": [{{"digest": "{}"}}]}}"#, digest(9));
    let (code, message) = grpcurl::error(&webhook, &method("PushApprovals"), &body);
    assert_eq!(code, "InvalidArgument", "{message}");
    assert!(message.contains("ledger is required"), "{message}");
    let many: Vec<String> = (0..10_001)
        .map(|_| format!(r#"{{"digest": "{}"}}"#, digest(9)))
        .collect();
    let oversized = format!(r#"{{"ledger": "l1", "approvals": [{}]}}"#, many.join(","));
    let (code, message) = grpcurl::error(&webhook, &method("PushApprovals"), &oversized);
    assert_eq!(code, "InvalidArgument", "{message}");
    assert!(message.contains("at most 10000"), "{message}");

    // Listing approvals: paging and filters.
    let page = grpcurl::call(&plain, &method("ListApprovals"), r#"{"pageSize": 3}"#);
    assert_eq!(page["approvals"].as_array().unwrap().len(), 3);
    assert_eq!(page["total"], "5");
    let token = page["nextPageToken"].as_str().unwrap().to_string();
    let rest = grpcurl::call(
        &plain,
        &method("ListApprovals"),
        &format!(r#"{{"pageSize": 3, "pageToken": "{token}"}}"#),
    );
    assert_eq!(rest["approvals"].as_array().unwrap().len(), 2);
    assert_eq!(rest["nextPageToken"], "");
    let by_repo = grpcurl::call(
        &plain,
        &method("ListApprovals"),
        r#"{"repository": "reg.test/team/app", "namespace": "shop"}"#,
    );
    assert_eq!(by_repo["approvals"][0]["digest"], digest(1).as_str());
    assert_eq!(by_repo["approvals"][0]["source"], "imagegate-webhook/l1");
    let by_digest = grpcurl::call(
        &plain,
        &method("ListApprovals"),
        &format!(r#"{{"digest": "{}"}}"#, digest(3)),
    );
    assert_eq!(
        grpcurl::count(&by_digest, "approvals"),
        1,
        "a platform digest is an approval of its own: {by_digest}"
    );
    assert!(
        by_digest.get("total").is_none(),
        "no total for a filtered list: {by_digest}"
    );
    let (code, message) = grpcurl::error(&plain, &method("ListApprovals"), r#"{"pageSize": 5000}"#);
    assert_eq!(code, "InvalidArgument");
    assert!(message.contains("page_size"), "{message}");

    // A stream of events, then a container that was never admitted.
    let mut watch = grpcurl::command(
        &plain,
        &[
            "-d",
            r#"{"kinds": ["KIND_VERDICT"], "keyPrefix": "default/"}"#,
        ],
        &[&method("WatchEvents")],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let streamed = Arc::new(Mutex::new(String::new()));
    let sink = streamed.clone();
    let mut stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let id = format!("grpc-rogue-{}", std::process::id());
    containerd.run("default", &rogue, &id, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = streamed.lock().unwrap().clone();
        if text.contains(&format!("\"key\": \"default/{id}\""))
            && text.contains("VERDICT_NEVER_ADMITTED")
        {
            assert!(text.contains("KIND_VERDICT"), "{text}");
            assert!(!text.contains("KIND_EXEC"), "filtered by kind: {text}");
            break;
        }
        assert!(Instant::now() < deadline, "no streamed verdict: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = watch.kill();
    let _ = watch.wait();

    let containers = grpcurl::call(
        &plain,
        &method("ListContainers"),
        r#"{"verdict": "VERDICT_NEVER_ADMITTED", "keyPrefix": "default/"}"#,
    );
    let listed: Vec<&Value> = containers["containers"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(listed.len(), 1, "{containers}");
    assert_eq!(listed[0]["digest"], rogue_digest.as_str());
    assert_eq!(listed[0]["image"], rogue.as_str());
    let violations = grpcurl::call(&plain, &method("ListViolations"), "{}");
    assert_eq!(violations["total"], "1", "{violations}");
    assert_eq!(
        violations["violations"][0]["container"],
        format!("default/{id}").as_str()
    );
    assert_eq!(
        violations["violations"][0]["verdict"],
        "VERDICT_NEVER_ADMITTED"
    );
    let none = grpcurl::call(&plain, &method("ListViolations"), r#"{"afterSeq": 1}"#);
    assert_eq!(grpcurl::count(&none, "violations"), 0, "{none}");
    assert!(none.get("total").is_none(), "no total after a seq: {none}");

    // Status, over mTLS this time.
    let status = grpcurl::call(&webhook, &method("GetStatus"), "{}");
    assert_eq!(status["mode"], "audit");
    assert_eq!(
        status["kernel"]["cgroupMode"]
            .as_str()
            .map(|m| !m.is_empty()),
        Some(true)
    );
    // The runtime, detected through CRI from the socket given.
    assert_eq!(status["runtime"]["name"], "containerd", "{status}");
    assert_eq!(
        status["runtime"]["socket"],
        containerd.socket.to_str().unwrap()
    );
    assert!(
        status["runtime"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{status}"
    );
    assert_eq!(
        status["runtime"]["apis"],
        serde_json::json!(["CRI runtime.v1", "containerd"])
    );
    assert_eq!(status["counters"]["approvals"], "5");
    assert_eq!(status["counters"]["neverAdmitted"], "1");
    assert_eq!(status["sources"][0]["source"], "imagegate-webhook/l1");
    assert_eq!(status["sources"][0]["generation"], "3");

    // A restart keeps approvals, history and the ledger's generation.
    agent.process.stop();
    let agent = Agent::start(&pki, &containerd.socket, state.path());
    let plain = agent.plain.clone();
    let page = grpcurl::call(&plain, &method("ListApprovals"), "{}");
    assert_eq!(page["total"], "5");
    let violations = grpcurl::call(&plain, &method("ListViolations"), "{}");
    assert_eq!(violations["total"], "1");
    let status = grpcurl::call(&plain, &method("GetStatus"), "{}");
    assert_eq!(status["sources"][0]["generation"], "3");
    drop(registry);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_reload_health_has_its_own_listener_and_plaintext_stays_on_loopback() {
    require_root();
    let pki = Pki::new();
    let state = tempfile::tempdir().unwrap();
    let mut process = Process::start(
        "agent",
        Path::new(AGENT),
        [
            "--runtime-socket",
            // containerd not running: its folder is there, the socket is not.
            "/tmp/imagegate-no-containerd.sock",
            "--state-dir",
            state.path().to_str().unwrap(),
            "--metrics-address",
            "off",
            "--grpc-address",
            "127.0.0.1:0",
            "--grpc-tls-cert",
            &pki.file("imagegate-agent.crt"),
            "--grpc-tls-key",
            &pki.file("imagegate-agent.key"),
            "--grpc-client-ca",
            &pki.file("ca.pem"),
            "--grpc-health-address",
            "127.0.0.1:0",
        ],
    );
    process.wait_message("ready: watching container starts", Duration::from_secs(30));
    let address = |message: &str| {
        process
            .find(|l| l["fields"]["message"] == message)
            .expect(message)["fields"]["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let tls = address("gRPC: mTLS listener (AgentService, health, reflection)");
    let health = Target::Plaintext(address("gRPC: health listener (grpc.health.v1 only)"));

    // The health listener answers health, and nothing else.
    assert_eq!(
        grpcurl::call(&health, "grpc.health.v1.Health/Check", "{}")["status"],
        "SERVING"
    );
    let out = grpcurl::run(&health, &[], &["list"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listed.contains("grpc.health.v1.Health"), "{listed}");
    assert!(
        !listed.contains(SERVICE),
        "no AgentService on the health listener: {listed}"
    );

    // A new serving certificate, from another CA, replaces the files: new
    // handshakes get it within the reload period.
    let status = grpcurl::run(&pki.client(&tls, "imagegate-webhook"), &[], &["list"]);
    assert!(status.status.success());
    let other = Ca::new("the next CA");
    let next = other.identity("imagegate-agent");
    let other_dir = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = other.write(other_dir.path(), "unused", &next);
    std::fs::write(
        pki.dir.path().join("imagegate-agent.crt.new"),
        &next.cert_pem,
    )
    .unwrap();
    std::fs::write(
        pki.dir.path().join("imagegate-agent.key.new"),
        &next.key_pem,
    )
    .unwrap();
    // Key first, then certificate, each by rename: a reader sees old or new.
    std::fs::rename(
        pki.dir.path().join("imagegate-agent.key.new"),
        pki.dir.path().join("imagegate-agent.key"),
    )
    .unwrap();
    std::fs::rename(
        pki.dir.path().join("imagegate-agent.crt.new"),
        pki.dir.path().join("imagegate-agent.crt"),
    )
    .unwrap();
    let trusting_next = Target::Tls {
        address: tls.clone(),
        ca: other_ca,
        cert: pki.dir.path().join("imagegate-webhook.crt"),
        key: pki.dir.path().join("imagegate-webhook.key"),
        server_name: "imagegate-agent".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if grpcurl::run(&trusting_next, &[], &["list"])
            .status
            .success()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        process
            .find(|l| l["fields"]["message"] == "gRPC TLS: certificates reloaded")
            .is_some()
    );
    drop(process);

    // The plaintext listener refuses any address but loopback.
    let out = std::process::Command::new(AGENT)
        .args([
            "--runtime-socket",
            "/tmp/imagegate-no-containerd.sock",
            "--metrics-address",
            "off",
        ])
        .arg("--state-dir")
        .arg(state.path())
        .args(["--grpc-plaintext-address", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a loopback address"), "{stderr}");
}

/// Polls `check` every 200 ms for up to 30 s; panics with `what` after.
fn eventually(what: &str, mut check: impl FnMut() -> Option<Value>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_drops_what_is_gone_and_expires_what_no_webhook_keeps() {
    require_root();
    let registry = Registry::plain();
    registry.push_runnable_image("pause", "1", "pause").await;
    let kept_digest = registry
        .push_runnable_image("team/kept", "1", "retention-kept")
        .await;
    registry
        .push_runnable_image("team/short", "1", "retention-short")
        .await;
    let (kept, short) = (
        format!("{}/team/kept:1", registry.host),
        format!("{}/team/short:1", registry.host),
    );
    let containerd = TestContainerd::start(&registry, &format!("{}/pause:1", registry.host));
    containerd.pull("default", &kept);
    containerd.pull("default", &short);
    let pki = Pki::new();
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::start_with(
        &pki,
        &containerd.socket,
        state.path(),
        &[
            "--prune-interval",
            "500ms",
            "--forget-interval",
            "500ms",
            "--record-retention",
            "3s",
        ],
    );
    let plain = agent.plain.clone();
    let webhook = pki.client(&agent.tls_address, "imagegate-webhook");

    // A webhook whose ledger keeps records 4 s approves the running image
    // and one no container uses.
    let push = format!(
        r#"{{"ledger": "l1", "generation": 2, "retentionSeconds": 4,
             "approvals": [{{"digest": "{kept_digest}"}}, {{"digest": "{}"}}]}}"#,
        digest(7)
    );
    grpcurl::call(&webhook, &method("PushApprovals"), &push);
    let suffix = std::process::id();
    let (kept_id, short_id) = (
        format!("retention-kept-{suffix}"),
        format!("retention-short-{suffix}"),
    );
    containerd.run("default", &kept, &kept_id, &[]);
    containerd.run("default", &short, &short_id, &[]);
    let verdict = |id: &str| {
        let answer = grpcurl::call(
            &plain,
            &method("ListContainers"),
            &format!(r#"{{"keyPrefix": "default/{id}"}}"#),
        );
        answer["containers"][0].clone()
    };
    eventually("both containers judged", || {
        let (k, s) = (verdict(&kept_id), verdict(&short_id));
        (k["verdict"] == "VERDICT_ADMITTED" && s["verdict"] == "VERDICT_NEVER_ADMITTED")
            .then_some(Value::Null)
    });
    let violations = grpcurl::call(&plain, &method("ListViolations"), "{}");
    assert_eq!(violations["total"], "1", "{violations}");

    // The unapproved container ends: marked gone, then dropped with its
    // violation once the record retention has passed.
    // (`delete -f` kills the task and removes it, and runc its cgroup, as
    // the kubelet does when a pod ends.)
    containerd.ctr("default", &["tasks", "delete", "-f", &short_id]);
    let gone = eventually("the ended container marked gone", || {
        let record = verdict(&short_id);
        (record["goneAtUnixMs"] != "0").then_some(record)
    });
    assert_eq!(verdict(&kept_id)["goneAtUnixMs"], "0", "the other one runs");
    assert_eq!(gone["verdict"], "VERDICT_NEVER_ADMITTED", "{gone}");
    eventually("the gone container dropped", || {
        verdict(&short_id).is_null().then_some(Value::Null)
    });
    eventually("its violation dropped", || {
        let violations = grpcurl::call(&plain, &method("ListViolations"), "{}");
        (violations["total"] == "0").then_some(violations)
    });

    // The approval no container uses expires after the ledger's retention;
    // the running container's does not.
    let status = eventually("the unused approval expired", || {
        let status = grpcurl::call(&plain, &method("GetStatus"), "{}");
        (status["counters"]["approvalsExpired"] == "1").then_some(status)
    });
    let held = grpcurl::call(&plain, &method("ListApprovals"), "{}");
    assert_eq!(held["total"], "1", "{held}");
    assert_eq!(
        held["approvals"][0]["digest"],
        kept_digest.as_str(),
        "{held}"
    );
    let counters = &status["counters"];
    assert_eq!(counters["containersPruned"], "1", "{status}");
    assert_eq!(counters["violationsPruned"], "1", "{status}");
    assert_eq!(
        verdict(&kept_id)["verdict"],
        "VERDICT_ADMITTED",
        "the running container is kept and still admitted"
    );
    let containers = grpcurl::call(&plain, &method("ListContainers"), "{}");
    assert_eq!(containers["total"], "1", "{containers}");
    drop(registry);
}
