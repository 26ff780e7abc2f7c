//! The rendered Helm chart's pods, run as a kubelet runs them (the kubelet
//! stand-in over CRI, on the real containerd, with the images `cargo xtask
//! images` built): what was found on a real cluster, tested here as close
//! as this machine allows. See e2e/src/cluster.rs for what only a real
//! cluster could show.

use std::time::{Duration, Instant};

use imagegate_e2e::cluster::{FEED_SERVICE, Node, Rendered, bpf_ids};
use imagegate_testkit::{
    grpcurl::{self, Target},
    kubelet::{Kubelet, RunningPod},
};
use serde_json::Value;

const SERVICE: &str = "imagegate.v1.AgentService";
const READY: Duration = Duration::from_secs(60);
const VERDICT: Duration = Duration::from_secs(30);
/// The agent resolves the feed's Service every 2 s until it finds a
/// replica, then opens a stream to each (an open that hangs is given up
/// after 15 s and retried): settling can take two such rounds.
const SETTLE: Duration = Duration::from_secs(60);

fn require_root() {
    imagegate_testkit::require_root("these tests run pods through containerd and load eBPF");
}

fn call(api: &Target, method: &str, data: &str) -> Value {
    grpcurl::call(api, &format!("{SERVICE}/{method}"), data)
}

/// Polls `ListContainers` until the container with CRI id `id` has
/// `verdict`; returns it.
async fn wait_verdict(api: &Target, id: &str, verdict: &str) -> Value {
    let deadline = Instant::now() + VERDICT;
    let filter = format!(r#"{{"keyPrefix": "k8s.io/{id}"}}"#);
    loop {
        let found = call(api, "ListContainers", &filter)["containers"]
            .as_array()
            .and_then(|c| c.first().cloned());
        if let Some(container) = &found
            && container["verdict"] == verdict
        {
            return container.clone();
        }
        assert!(
            Instant::now() < deadline,
            "container {id}: no verdict {verdict} within {VERDICT:?}; last seen: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The violations of containers this node's containerd knows. The eBPF
/// programs see every container on the machine: the other test's pods,
/// run by another containerd at the same time, are `unknown` here.
fn identified_violations(api: &Target) -> Vec<Value> {
    let all = call(api, "ListViolations", r#"{"pageSize": 1000}"#);
    all["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| !v["container"].as_str().unwrap().starts_with("cgroup:"))
        .cloned()
        .collect()
}

/// Waits for the agent's enforcement state; on failure shows what the
/// agent and the webhooks logged, the only account of a feed that never
/// delivered.
async fn wait_enforcement(api: &Target, state: &str, logs: impl Fn() -> String) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let status = call(api, "GetStatus", "{}");
        if status["enforcement"]["state"] == state {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "enforcement never {state}: {status}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The metric families deploy/'s alert rules and dashboard query (sample
/// suffixes taken off: `_total`, `_bucket`...).
fn monitored_metrics() -> std::collections::BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut text = String::new();
    for file in ["alerts.yaml", "dashboard.json"] {
        text +=
            &std::fs::read_to_string(root.join("deploy/helm/imagegate/files").join(file)).unwrap();
    }
    let mut names = std::collections::BTreeSet::new();
    for (at, _) in text.match_indices("imagegate_") {
        let name: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        // `imagegate_(webhook|agent)_certificate_expiry...`: a regex, both.
        if name == "imagegate_" {
            for component in ["webhook", "agent"] {
                names.insert(format!(
                    "imagegate_{component}_certificate_expiry_timestamp_seconds"
                ));
            }
            continue;
        }
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name)
            .to_string();
        names.insert(family);
    }
    assert!(names.len() > 10, "{names:?}");
    names
}

/// The first sample of the series starting with `prefix`.
fn sample(exported: &str, prefix: &str) -> f64 {
    exported
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix}... sample in {exported}"))
}

/// A certificate file's notAfter (Unix seconds), as openssl reads it.
fn openssl_not_after(path: &std::path::Path) -> i64 {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
        .arg(path)
        .output()
        .expect("openssl");
    let text = String::from_utf8(out.stdout).unwrap();
    let date = text.trim().strip_prefix("notAfter=").unwrap().to_string();
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &date, "+%s"])
        .output()
        .expect("date");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The reporter Lease's holder, once it is someone other than `not`.
async fn wait_lease_holder(node: &Node, not: Option<&str>) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let holder = node
            .apiserver
            .objects("Lease")
            .iter()
            .find(|l| l["metadata"]["name"] == "imagegate-reporter")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
            .filter(|h| !h.is_empty() && Some(h.as_str()) != not);
        if let Some(holder) = holder {
            return holder;
        }
        assert!(
            Instant::now() < deadline,
            "no reporter Lease holder (other than {not:?}): {:?}",
            node.apiserver.objects("Lease")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Event with `reason` on pod `pod`, once written.
async fn wait_event(node: &Node, pod: &str, reason: &str) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let events = node.apiserver.objects("Event");
        if let Some(event) = events
            .iter()
            .find(|e| e["involvedObject"]["name"] == pod && e["reason"] == reason)
        {
            return event.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} Event on {pod}: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The report of `kind` (namespace `namespace`, or cluster-wide) once it
/// holds a result for which `wanted` holds; that result.
async fn wait_result(
    node: &Node,
    kind: &str,
    namespace: Option<&str>,
    wanted: impl Fn(&Value) -> bool,
) -> (Value, Value) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let reports = node.apiserver.objects(kind);
        let found = reports
            .iter()
            .filter(|r| r["metadata"]["namespace"].as_str() == namespace)
            .find_map(|r| {
                r["results"]
                    .as_array()?
                    .iter()
                    .find(|result| wanted(result))
                    .map(|result| (r.clone(), result.clone()))
            });
        if let Some(found) = found {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no such result in a {kind} of {namespace:?}: {reports:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET /metrics` on `ip:port`, as Prometheus scrapes a pod.
async fn scrape(ip: std::net::Ipv4Addr, port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect((ip, port))
        .await
        .unwrap_or_else(|e| panic!("metrics on {ip}:{port}: {e}"));
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

async fn run_ready(
    kubelet: &Kubelet<'_>,
    pod: &imagegate_testkit::kubelet::PodObject,
    node: &Node,
    rendered: &Rendered,
    container: &str,
) -> RunningPod {
    let objects = node.objects(rendered).unwrap();
    let running = kubelet
        .run(pod, &objects)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", pod.name));
    if let Err(e) = kubelet.wait_ready(&running, container, READY).await {
        panic!(
            "{}: {e}\n--- its log:\n{}",
            pod.name,
            kubelet.logs(&running, running.container(container))
        );
    }
    running
}

/// Found on a real cluster: enforce mode killed imagegate's own webhook and
/// would have killed what ran before the install; the agent's pod could not
/// start (SYS_RESOURCE). Here: the chart's defaults plus enforce, installed
/// on a node that already runs a workload.
#[tokio::test(flavor = "multi_thread")]
async fn installed_in_enforce_mode_the_chart_harms_nothing_that_was_admitted() {
    require_root();
    let node = Node::start().await.unwrap();
    let kubelet = node.kubelet();

    // A workload that ran before imagegate was installed.
    let legacy = kubelet
        .run(
            &node.workload("shop", "legacy", &node.images.legacy),
            &Default::default(),
        )
        .await
        .unwrap();

    // The install: the chart's defaults, enforce mode.
    let rendered = node.render(&["agent.mode=enforce"]).unwrap();
    let mut agent = run_ready(&kubelet, &rendered.agent_pod(), &node, &rendered, "agent").await;
    kubelet.live(&agent, "agent").await.expect("agent liveness");
    // Probed and scraped on the pod's IP, where the chart binds them.
    let metrics = scrape(agent.ip, 9464).await;
    assert!(metrics.contains("imagegate_agent_approvals"), "{metrics}");
    assert!(
        metrics.contains("imagegate_agent_stops_waiting_for_feed_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("imagegate_agent_feed_streams_open 0"),
        "{metrics}"
    );
    let api = node.agent_api(&agent).await.unwrap();

    // No webhook yet: enforce mode settles, flagging but killing nothing.
    let status = call(&api, "GetStatus", "{}");
    assert_eq!(status["mode"], "enforce");
    // agent.runtime=auto: the pod asked the mounted socket, through CRI.
    assert_eq!(status["runtime"]["name"], "containerd", "{status}");
    assert_eq!(
        status["enforcement"]["state"], "STATE_SETTLING",
        "{}",
        status["enforcement"]
    );
    let legacy_id = &legacy.container("main").id;
    wait_verdict(&api, legacy_id, "VERDICT_NEVER_ADMITTED").await;
    assert_eq!(
        kubelet.state(legacy_id).await.state,
        1,
        "flagged, not killed"
    );

    // The webhook replicas start; the apiserver lists what runs.
    node.apiserver.set_pods(vec![
        kubelet.pod_json(&legacy).await,
        kubelet.pod_json(&agent).await,
    ]);
    let mut webhooks = Vec::new();
    for i in 0..rendered.webhook_replicas() {
        webhooks.push(
            run_ready(
                &kubelet,
                &rendered.webhook_pod(i),
                &node,
                &rendered,
                "webhook",
            )
            .await,
        );
    }
    assert!(webhooks.len() >= 2, "the chart runs two replicas");
    assert!(node.apiserver.lists() >= 2, "each replica listed the pods");
    // Cluster DNS lists the ready replicas under the feed's headless
    // Service; the agent follows each.
    node.dns
        .set(FEED_SERVICE, webhooks.iter().map(|w| w.ip).collect());

    // The rebuilt set arrives over the replicas' feeds: settled.
    let logs = || {
        std::iter::once(("agent", &agent, "agent"))
            .chain(webhooks.iter().map(|w| ("webhook", w, "webhook")))
            .map(|(what, pod, container)| {
                format!(
                    "--- {what} {} log:\n{}",
                    pod.ip,
                    kubelet.logs(pod, pod.container(container))
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let status = wait_enforcement(&api, "STATE_ENFORCING", logs).await;
    assert!(
        status["enforcement"]["reason"]
            .as_str()
            .unwrap()
            .contains("the cluster's admitted set arrived"),
        "{}",
        status["enforcement"]
    );
    let sources = status["sources"].as_array().unwrap();
    assert!(
        sources.iter().any(|s| !s["clusterSetGeneration"].is_null()),
        "{sources:?}"
    );

    // What ran before is adopted, admitted and alive.
    let approvals = call(
        &api,
        "ListApprovals",
        &format!(r#"{{"digest": "{}"}}"#, node.images.legacy.digest),
    );
    assert_eq!(
        approvals["approvals"][0]["origin"], "ORIGIN_ADOPTED",
        "{approvals}"
    );
    assert_eq!(approvals["approvals"][0]["rule"], "node-registry");
    wait_verdict(&api, legacy_id, "VERDICT_ADMITTED").await;

    // imagegate's own pods are exempt, never flagged, all running.
    for pod in webhooks.iter().chain([&agent]) {
        for container in &pod.containers {
            let seen = wait_verdict(&api, &container.id, "VERDICT_EXEMPT").await;
            assert!(
                seen["reason"].as_str().unwrap().contains("imagegate"),
                "{seen}"
            );
            assert_eq!(kubelet.state(&container.id).await.state, 1);
        }
    }
    let violations = call(&api, "ListViolations", r#"{"podNamespace": "imagegate"}"#);
    assert_eq!(grpcurl::count(&violations, "violations"), 0, "{violations}");

    // A new pod admitted through a webhook replica runs admitted.
    let answer = node
        .admit(&webhooks[1], "app", &node.images.app.reference)
        .await
        .unwrap();
    assert_eq!(answer["allowed"], true, "{answer}");
    let app = kubelet
        .run(
            &node.workload("shop", "app", &node.images.app),
            &Default::default(),
        )
        .await
        .unwrap();
    wait_verdict(&api, &app.container("main").id, "VERDICT_ADMITTED").await;

    // What Prometheus scrapes from the pods: every metric the chart's
    // alerts and dashboard query is one they export. (The replica that
    // decided: a family with no series yet is not exported.)
    let exported =
        scrape(agent.ip, 9464).await + &node.webhook_metrics(&webhooks[1]).await.unwrap();
    for name in monitored_metrics() {
        assert!(
            exported.contains(&format!("# TYPE {name} ")),
            "the alerts or the dashboard query {name}, which no pod exports; they export:\n{}",
            exported
                .lines()
                .filter(|l| l.starts_with("# TYPE"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // The expiry gauges read the mounted files: the agent's certificate
    // expires when openssl says it does.
    let not_after = openssl_not_after(&node.certs.join("agent.crt"));
    assert!(
        exported.contains(&format!(
            "imagegate_agent_certificate_expiry_timestamp_seconds{{certificate=\"grpc\"}} {not_after}\n"
        )),
        "{not_after}: {exported}"
    );
    // The webhook's ledger generation and the agent's held one meet.
    let generation = sample(&exported, "imagegate_webhook_ledger_generation{");
    let held = sample(&exported, "imagegate_agent_held_generation{");
    assert!(generation > 0.0 && held > 0.0, "{generation} {held}");

    // Someone on the node bypasses admission: flagged and killed.
    node.containerd
        .pull("default", &node.images.miner.reference);
    node.containerd
        .run("default", &node.images.miner.reference, "miner", &[]);
    let deadline = Instant::now() + VERDICT;
    let exit = loop {
        // Stopped first, then its status: a running task reports 0.
        if node.containerd.task_status("default", "miner").as_deref() == Some("STOPPED")
            && let Some(code) = node.containerd.exit_status("default", "miner").await
        {
            break code;
        }
        assert!(Instant::now() < deadline, "the miner was not stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        exit,
        137,
        "SIGKILL; the agent saw: {}\n--- its log:\n{}",
        call(&api, "ListContainers", r#"{"keyPrefix": "default/"}"#),
        kubelet.logs(&agent, agent.container("agent"))
    );
    for id in [legacy_id, &app.container("main").id]
        .into_iter()
        .chain(webhooks.iter().map(|w| &w.container("webhook").id))
    {
        assert_eq!(kubelet.state(id).await.state, 1, "{id} still runs");
    }
    let violations = call(&api, "ListViolations", "{}");
    assert!(
        violations["violations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["container"] == "default/miner" && v["enforced"] == true),
        "{violations}"
    );
    // What `kubectl describe pod` shows: the Lease holder among the
    // replicas wrote a Warning Event on the pod that ran unadmitted, read
    // from the agent's API at the address it follows the feed from. The
    // miner is no pod: it has none.
    let leader = wait_lease_holder(&node, None).await;
    assert!(
        webhooks.iter().any(|w| w.object.name == leader),
        "{leader} is not a replica"
    );
    let event = wait_event(&node, &legacy.object.name, "NeverAdmitted").await;
    assert_eq!(
        event["involvedObject"]["uid"],
        legacy.uid.as_str(),
        "{event}"
    );
    assert_eq!(event["type"], "Warning");
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .contains(&node.images.legacy.digest),
        "{event}"
    );
    assert!(
        node.apiserver.refused().is_empty(),
        "{:?}",
        node.apiserver.refused()
    );

    // The leader goes (a rolling update): it releases the Lease, the other
    // replica takes over at once and reports what happens next: a pod
    // whose image was never admitted, stopped in enforce mode.
    let (gone, staying): (Vec<_>, Vec<_>) = webhooks.iter().partition(|w| w.object.name == leader);
    kubelet
        .remove_container(&gone[0].container("webhook").id)
        .await;
    let next = wait_lease_holder(&node, Some(&leader)).await;
    assert_eq!(next, staying[0].object.name);
    let intruder = kubelet
        .run(
            &node.workload("shop", "intruder", &node.images.miner),
            &Default::default(),
        )
        .await
        .unwrap();
    // The apiserver knows the pod (the reporter takes out results of pods
    // it does not find).
    node.apiserver.set_pods(vec![
        kubelet.pod_json(&legacy).await,
        kubelet.pod_json(&agent).await,
        kubelet.pod_json(&intruder).await,
    ]);
    let event = wait_event(&node, &intruder.object.name, "Killed").await;
    assert!(
        event["message"].as_str().unwrap().contains("enforce mode"),
        "{event}"
    );
    // The namespace's OpenReports Report (checked against the CRD's schema
    // by the stand-in): the intruder's result written by the new leader,
    // the legacy pod's by the first one, carried on.
    let (report, killed) = wait_result(&node, "Report", Some("shop"), |r| {
        r["resources"][0]["uid"] == intruder.uid.as_str()
    })
    .await;
    assert_eq!(killed["rule"], "Killed", "{report}");
    assert_eq!(killed["result"], "fail");
    assert_eq!(
        killed["properties"]["digest"],
        node.images.miner.digest.as_str()
    );
    let (report, flagged) = wait_result(&node, "Report", Some("shop"), |r| {
        r["resources"][0]["uid"] == legacy.uid.as_str()
    })
    .await;
    assert_eq!(flagged["rule"], "NeverAdmitted", "{report}");
    let results = report["results"].as_array().unwrap().len() as u64;
    assert_eq!(
        report["summary"]["fail"].as_u64().unwrap() + report["summary"]["warn"].as_u64().unwrap(),
        results
    );
    // The miner ran without a pod: the cluster report.
    wait_result(&node, "ClusterReport", None, |r| {
        r["properties"]["container"] == "default/miner"
    })
    .await;
    assert!(
        node.apiserver.refused().is_empty(),
        "{:?}",
        node.apiserver.refused()
    );

    // A pod the policy denies (a registry it does not allow), asked of the
    // replica that stayed: that replica writes the Event, on the pod's
    // ReplicaSet (the pod never exists), and the leader files it in the
    // namespace's report from the Events it watches.
    let answer = node
        .admit(staying[0], "denied", "evil.example/miner:1")
        .await
        .unwrap();
    assert_eq!(answer["allowed"], false, "{answer}");
    let event = wait_event(&node, "d2-588fc765b5", "ImageDenied").await;
    assert_eq!(event["involvedObject"]["kind"], "ReplicaSet", "{event}");
    assert_eq!(event["reportingInstance"], staying[0].object.name.as_str());
    let (report, denied) = wait_result(&node, "Report", Some("shop"), |r| {
        r["rule"] == "ImageDenied"
    })
    .await;
    assert_eq!(denied["policy"], "imagegate-admission", "{report}");
    assert_eq!(denied["resources"][0]["name"], "d2-588fc765b5");
    assert_eq!(denied["properties"]["image"], "evil.example/miner:1");
    assert!(
        node.apiserver.refused().is_empty(),
        "{:?}",
        node.apiserver.refused()
    );

    let filed = identified_violations(&api);

    // The agent's container restarts (a rolling update): its state stays,
    // nothing is filed twice, it stays settled.
    let old = agent.container("agent").id.clone();
    kubelet.remove_container(&old).await;
    kubelet.start_container(&mut agent, "agent").await.unwrap();
    kubelet.wait_ready(&agent, "agent", READY).await.unwrap();
    let api = node.agent_api(&agent).await.unwrap();
    let status = call(&api, "GetStatus", "{}");
    assert_eq!(status["enforcement"]["state"], "STATE_ENFORCING");
    wait_verdict(&api, legacy_id, "VERDICT_ADMITTED").await;
    assert_eq!(
        identified_violations(&api),
        filed,
        "a restart files nothing twice"
    );

    // Removing the agent's container leaves nothing in the kernel: its
    // programs and maps (the kill actions among them) go with it.
    let pid = node
        .containerd
        .task_pid("k8s.io", &agent.container("agent").id)
        .await
        .unwrap();
    let (maps, programs) = bpf_ids(pid);
    assert!(
        !maps.is_empty() && !programs.is_empty(),
        "the running agent holds its maps and programs"
    );
    kubelet.remove_container(&agent.container("agent").id).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live_maps: Vec<u32> = aya::maps::loaded_maps()
            .filter_map(Result::ok)
            .map(|m| m.id())
            .filter(|id| maps.contains(id))
            .collect();
        let live_programs: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| programs.contains(id))
            .collect();
        if live_maps.is_empty() && live_programs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left in the kernel: maps {live_maps:?}, programs {live_programs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And with no agent, the node runs whatever starts.
    node.containerd
        .run("default", &node.images.miner.reference, "miner-2", &[]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        node.containerd.task_status("default", "miner-2").as_deref(),
        Some("RUNNING")
    );
}

/// The capabilities the rendered agent container is granted.
fn granted(pod: &imagegate_testkit::kubelet::PodObject) -> Vec<String> {
    pod.spec.containers[0]
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
}

/// Runs `pod` and expects its agent container to stop on its own with
/// `expected` in its log: a clear message, not a crash loop.
async fn fails_clearly(
    kubelet: &Kubelet<'_>,
    node: &Node,
    rendered: &Rendered,
    pod: &imagegate_testkit::kubelet::PodObject,
    what: &str,
    expected: &[&str],
) {
    let running = kubelet
        .run(pod, &node.objects(rendered).unwrap())
        .await
        .unwrap_or_else(|e| panic!("without {what}: the container did not even start: {e}"));
    let container = running.container("agent");
    let code = kubelet
        .wait_exit(&container.id, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("without {what}: the agent kept running"));
    let log = kubelet.logs(&running, container);
    assert_ne!(code, 0, "without {what}: exit status 0\n{log}");
    assert!(
        expected.iter().any(|e| log.contains(e)),
        "without {what}: the log does not say {expected:?}:\n{log}"
    );
    kubelet.remove_pod(&running).await;
}

/// Found on a real cluster: `runc create failed: unable to apply caps:
/// operation not permitted` (the chart always added SYS_RESOURCE). The
/// chart's capabilities, mounts and seccomp profile are exactly enough:
/// the agent starts with them, and without any one of them stops with a
/// message naming it.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_pod_gets_exactly_what_it_needs() {
    require_root();
    let node = Node::start().await.unwrap();
    let kubelet = node.kubelet();
    for mode in ["audit", "enforce"] {
        let rendered = node.render(&[&format!("agent.mode={mode}")]).unwrap();
        let pod = rendered.agent_pod();
        let security = pod.spec.containers[0].security_context.clone().unwrap();
        assert_eq!(
            security.seccomp_profile.map(|s| s.type_),
            Some("RuntimeDefault".to_string()),
            "the pod runs under the runtime's default seccomp profile"
        );
        let running = run_ready(&kubelet, &pod, &node, &rendered, "agent").await;
        kubelet.remove_pod(&running).await;
        let caps = granted(&pod);
        assert_eq!(
            caps.contains(&"KILL".to_string()),
            mode == "enforce",
            "{caps:?}"
        );
        for cap in &caps {
            let mut without = pod.clone();
            let add = without.spec.containers[0]
                .security_context
                .as_mut()
                .and_then(|s| s.capabilities.as_mut())
                .and_then(|c| c.add.as_mut())
                .unwrap();
            add.retain(|c| c != cap);
            fails_clearly(
                &kubelet,
                &node,
                &rendered,
                &without,
                &format!("CAP_{cap} ({mode} mode)"),
                &[&format!("CAP_{cap} is missing")],
            )
            .await;
        }
        if mode == "enforce" {
            continue;
        }
        for (mount, expected) in [
            ("tracefs", &["tracefs is not mounted"][..]),
            (
                "cgroup",
                &["not the host's tree", "no cgroup hierarchy"][..],
            ),
            (
                "runtime-socket",
                &["no container runtime socket folder"][..],
            ),
            ("state", &["state folder"][..]),
        ] {
            let mut without = pod.clone();
            without.spec.containers[0]
                .volume_mounts
                .as_mut()
                .unwrap()
                .retain(|m| m.name != mount);
            fails_clearly(
                &kubelet,
                &node,
                &rendered,
                &without,
                &format!("the {mount} mount"),
                expected,
            )
            .await;
        }
    }

    // What the chart used to add: on hosts whose bounding set lacks
    // CAP_SYS_RESOURCE (this VM's does), runc refuses the container.
    let bounding = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap();
    let rendered = node.render(&["agent.sysResource=true"]).unwrap();
    assert!(granted(&rendered.agent_pod()).contains(&"SYS_RESOURCE".to_string()));
    if bounding & (1 << 24) == 0 {
        let err = kubelet
            .run(&rendered.agent_pod(), &node.objects(&rendered).unwrap())
            .await
            .expect_err("runc refuses a capability outside the bounding set");
        assert!(err.contains("caps"), "{err}");
    } else {
        eprintln!(
            "this host's bounding set has CAP_SYS_RESOURCE: the refusal seen on the real \
             cluster cannot be shown here"
        );
    }
}
