//! `sudo cargo xtask demo [-- --enforce]`: the whole product on this
//! machine, told as it happens. Everything it starts is stopped at the end,
//! also on Ctrl-C; it can run again right away.

use std::time::Duration;

use anyhow::{Context, Result};
use base64::{Engine, engine::general_purpose::STANDARD};
use imagegate_e2e::{Image, Stack, patched_image, unique};
use imagegate_testkit::{
    registry::Registry,
    sigstore::{KeyPair, attach_legacy, openssl_sign, simple_signing_payload},
};
use serde_json::{Value, json};

fn say(text: &str) {
    println!("{text}");
}

fn section(n: u32, title: &str) {
    println!("\n== {n}. {title}");
}

fn short(digest: &str) -> String {
    digest
        .get(..19)
        .map(|d| format!("{d}..."))
        .unwrap_or_else(|| digest.to_string())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("     {l}\n")).collect()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let enforce = std::env::args().any(|a| a == "--enforce");
    // The story goes to standard output; the processes' own logs are kept,
    // not echoed (`--logs` echoes them on standard error).
    if !std::env::args().any(|a| a == "--logs") {
        imagegate_testkit::process::quiet();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "the demo loads eBPF programs and runs containerd: run it as root (sudo -E cargo xtask demo)"
        );
    }
    tokio::select! {
        result = run(enforce) => result,
        _ = tokio::signal::ctrl_c() => {
            // Dropping `run` drops the stack: containers, containerd, the
            // agent, the webhook and the registry are stopped by pid.
            println!("\ninterrupted: stopping everything the demo started");
            Ok(())
        }
    }
}

async fn run(enforce: bool) -> Result<()> {
    let mode = if enforce { "enforce" } else { "audit" };
    section(
        1,
        "A registry with TLS and basic auth, and three images (plus a pause image)",
    );
    let mut stack = Stack::start().await?;
    let i = &stack.images;
    say(&format!(
        "   registry {} (docker-registry, TLS from a demo CA, user demo)",
        stack.registry.host
    ));
    say(&format!("   app    {}  {}", i.app.reference, i.app.digest));
    say(&format!(
        "   miner  {}  {}",
        i.miner.reference, i.miner.digest
    ));
    say(&format!(
        "   multi  {}  index {}",
        i.multi.reference, i.multi.digest
    ));
    for (arch, digest) in ["amd64", "arm64"].iter().zip(&i.multi_platforms) {
        say(&format!("          {arch} manifest {digest}"));
    }
    // The release key signs app and multi as `cosign sign --key` does (the
    // legacy `.sig` tag); the miner stays unsigned.
    let key = KeyPair::generate();
    let key_file = stack.dir.path().join("release.pub");
    std::fs::write(&key_file, &key.public_pem)?;
    for (repository, image) in [("shop/app", &i.app), ("shop/multi", &i.multi)] {
        sign(&stack.registry, &key, repository, image).await;
    }
    say("   signed app and multi with the release key (cosign's .sig tag); the miner is unsigned");
    let policy = stack.policy(&format!(
        "    signatures:\n      - name: release\n        keys:\n          - name: release-2026\n            file: {}\n",
        key_file.display()
    ));
    std::fs::write(stack.dir.path().join("policy.yaml"), &policy)?;
    say("   policy: images of this registry, no :latest, signed by release-2026");

    section(
        2,
        &format!("containerd, the node agent ({mode} mode), the webhook"),
    );
    say(&format!(
        "   containerd: its own config and socket {}",
        stack.containerd.socket.display()
    ));
    stack.start_agent(mode)?;
    let agent_pid = stack
        .agent
        .as_ref()
        .map(|a| a.process.child.id())
        .unwrap_or(0);
    say(&format!(
        "   agent pid {agent_pid}: eBPF on sched_process_exec and cgroup_mkdir; gRPC on {}",
        stack.agent_address()
    ));
    stack.start_apiserver().await?;
    stack.start_webhook()?;
    let webhook = stack.webhook.as_ref().context("webhook")?;
    say(&format!(
        "   webhook pid {} on https://127.0.0.1:{}, pushing to the agent over mTLS",
        webhook.process.child.id(),
        webhook.port
    ));
    say(&format!(
        "   a stand-in kube-apiserver on {} (testkit's: no control plane can run here), where \
         the webhook holds the reporter Lease and writes Events and reports",
        stack.apiserver.as_ref().context("apiserver")?.address
    ));

    section(3, "Admission: the requests a kube-apiserver sends");
    let app = stack.images.app.reference.clone();
    let r = stack.admission_review("/validate", "web", &app).await?;
    say(&format!(
        "   AdmissionReview  Pod shop/web  {app}\n     -> allowed={}  resolved: {}\n        signed by {}",
        r["allowed"],
        r["auditAnnotations"]["resolved-digests"]
            .as_str()
            .unwrap_or("?"),
        r["auditAnnotations"]["signed-by"].as_str().unwrap_or("?")
    ));
    let miner = stack.images.miner.reference.clone();
    let r = stack
        .admission_review("/validate", "intruder", &miner)
        .await?;
    say(&format!(
        "   AdmissionReview  Pod shop/intruder  {miner}\n     -> allowed={}  {}",
        r["allowed"],
        r["status"]["message"].as_str().unwrap_or("")
    ));
    let multi = stack.images.multi.reference.clone();
    let s = stack.image_review(&[&multi]).await?;
    say(&format!(
        "   ImageReview      {multi}\n     -> allowed={}  {}",
        s["allowed"],
        s["reason"].as_str().unwrap_or("")
    ));
    let latest = app.replace(":1.0", ":latest");
    let r = stack.admission_review("/validate", "bad", &latest).await?;
    say(&format!(
        "   AdmissionReview  Pod shop/bad  {latest}\n     -> allowed={}  {}",
        r["allowed"],
        r["status"]["message"].as_str().unwrap_or("")
    ));
    let r = stack.admission_review("/mutate", "pinned", &app).await?;
    let pinned = patched_image(&r).unwrap_or_default();
    say(&format!(
        "   /mutate          Pod shop/pinned {app}\n     -> pinned to {pinned}"
    ));

    section(4, "The digests the webhook pushed to the agent");
    stack.wait_approval(&stack.images.app.digest)?;
    stack.wait_approval(&stack.images.multi.digest)?;
    let (line, answer) = stack.grpcurl("ListApprovals", "{}")?;
    say(&format!("   $ {line}"));
    for approval in answer["approvals"].as_array().cloned().unwrap_or_default() {
        say(&format!(
            "     {}  {}  from {}\n       signer: {}",
            approval["digest"].as_str().unwrap_or(""),
            approval["reference"].as_str().unwrap_or(""),
            approval["source"].as_str().unwrap_or(""),
            approval["signers"][0]["identity"]
                .as_str()
                .unwrap_or("none")
        ));
    }

    section(
        5,
        "Containers start: the admitted app through CRI, the miner with ctr on the node",
    );
    let pod = stack.containerd.cri_run_pod("shop", "web", &app).await;
    say(&format!(
        "   CRI   pod shop/web (kubelet-style cgroup parent), container {}",
        short(&pod.container_id)
    ));
    // Denied at admission, the miner still runs: as a pod the webhook never
    // saw (a static pod, or created while the webhook was unreachable and
    // failurePolicy Ignore let it through), and with ctr on the node.
    let intruder = stack
        .containerd
        .cri_run_pod("shop", "intruder", &miner)
        .await;
    say(&format!(
        "   CRI   pod shop/intruder, the miner image (never admitted), container {}",
        short(&intruder.container_id)
    ));
    let miner_id = unique("miner");
    stack.containerd.pull("default", &miner);
    stack.containerd.run("default", &miner, &miner_id, &[]);
    say(&format!(
        "   ctr   run -d {miner} {miner_id}   (bypasses admission)"
    ));
    for (key, verdict) in [
        (format!("k8s.io/{}", pod.sandbox_id), "exempt"),
        (format!("k8s.io/{}", pod.container_id), "admitted"),
        (
            format!("k8s.io/{}", intruder.container_id),
            "never-admitted",
        ),
        (format!("default/{miner_id}"), "never-admitted"),
    ] {
        let v = stack.wait_verdict(&key, verdict)?;
        say(&format!(
            "   {:<16} {}\n     {} ({:.1} ms after its first event)",
            verdict,
            short_key(&key),
            v["fields"]["reason"].as_str().unwrap_or(""),
            v["fields"]["latency_ms"].as_f64().unwrap_or(0.0)
        ));
    }
    let (_, running) = stack.grpcurl(
        "ListContainers",
        &format!(r#"{{"keyPrefix": "k8s.io/{}"}}"#, pod.container_id),
    )?;
    say(&format!(
        "   the node knows who signed what shop/web runs: {}",
        running["containers"][0]["signers"][0]["identity"]
            .as_str()
            .unwrap_or("?")
    ));
    if enforce {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let exit = stack.containerd.exit_status("default", &miner_id).await;
        say(&format!(
            "   enforce: the miner's task is {} (exit status {})",
            stack
                .containerd
                .task_status("default", &miner_id)
                .unwrap_or_default(),
            exit.map(|e| e.to_string()).unwrap_or_else(|| "?".into())
        ));
    }
    // What the stand-in apiserver knows of the pods: the reporter takes
    // out the results of pods it does not find.
    if let Some(apiserver) = &stack.apiserver {
        apiserver.set_pods(vec![
            pod_json("shop", "web", &pod.uid),
            pod_json("shop", "intruder", &intruder.uid),
        ]);
    }

    section(6, "The violation");
    let (line, answer) = stack.grpcurl("ListViolations", "{}")?;
    say(&format!("   $ {line}"));
    say(&indent(&serde_json::to_string_pretty(&answer)?));

    section(
        7,
        "What the cluster shows: `kubectl describe pod`, `kubectl get reports`",
    );
    let apiserver = stack.apiserver.as_ref().context("apiserver")?;
    let event = wait_for(|| {
        apiserver
            .objects("Event")
            .into_iter()
            .find(|e| e["involvedObject"]["name"] == "intruder")
    })
    .await
    .context("no Event on pod shop/intruder within 30 s")?;
    say("   $ kubectl -n shop describe pod intruder   (its Events)");
    say(&format!(
        "     Type     Reason         From       Message\n     {:<8} {:<14} {:<10} {}",
        event["type"].as_str().unwrap_or(""),
        event["reason"].as_str().unwrap_or(""),
        event["source"]["component"].as_str().unwrap_or(""),
        event["message"].as_str().unwrap_or("")
    ));
    // The admission decisions: each replica tells its own, on the object
    // they are about (the denied pods never existed).
    let decided = wait_for(|| {
        let told: Vec<_> = apiserver
            .objects("Event")
            .into_iter()
            .filter(|e| e["metadata"]["labels"]["imagegate.dev/decision"].is_string())
            .collect();
        (!told.is_empty()).then_some(told)
    })
    .await
    .context("no admission decision Event within 30 s")?;
    say("   $ kubectl get events -A -l imagegate.dev/decision   (admission decisions)");
    for event in decided {
        say(&format!(
            "     {:<8} {:<14} {}/{}  {}",
            event["type"].as_str().unwrap_or(""),
            event["reason"].as_str().unwrap_or(""),
            event["involvedObject"]["kind"]
                .as_str()
                .unwrap_or("")
                .to_lowercase(),
            event["involvedObject"]["name"].as_str().unwrap_or(""),
            event["message"].as_str().unwrap_or("")
        ));
    }
    let report = wait_for(|| {
        apiserver.objects("Report").into_iter().find(|r| {
            r["results"].as_array().is_some_and(|results| {
                results
                    .iter()
                    .any(|x| x["resources"][0]["name"] == "intruder")
            })
        })
    })
    .await
    .context("no Report result for shop/intruder within 30 s")?;
    say("   $ kubectl -n shop get report imagegate -o yaml   (summary and results)");
    say(&indent(&serde_json::to_string_pretty(&json!({
        "summary": report["summary"],
        "results": report["results"].as_array().cloned().unwrap_or_default().iter().map(|r| json!({
            "policy": r["policy"], "rule": r["rule"], "result": r["result"],
            "severity": r["severity"], "resource": r["resources"][0]["name"],
            "properties": r["properties"],
        })).collect::<Vec<_>>(),
    }))?));
    let cluster = wait_for(|| apiserver.objects("ClusterReport").into_iter().next())
        .await
        .context("no ClusterReport within 30 s")?;
    say("   $ kubectl get clusterreport imagegate   (containers of no pod)");
    for result in cluster["results"].as_array().cloned().unwrap_or_default() {
        say(&format!(
            "     {} {} {} on {}",
            result["rule"].as_str().unwrap_or(""),
            result["result"].as_str().unwrap_or(""),
            result["properties"]["container"].as_str().unwrap_or(""),
            result["properties"]["node"].as_str().unwrap_or("")
        ));
    }

    section(
        8,
        "Ask the agent yourself: what a user types, with its real output",
    );
    let (line, listed) = stack.grpcurl_list()?;
    say(&format!("   $ {line}"));
    say(&indent(&listed));
    let (line, answer) =
        stack.grpcurl("ListContainers", r#"{"verdict": "VERDICT_NEVER_ADMITTED"}"#)?;
    say(&format!("   $ {line}"));
    say(&indent(&serde_json::to_string_pretty(
        &compact_containers(&answer),
    )?));
    let (line, status) = stack.grpcurl("GetStatus", "{}")?;
    say(&format!("   $ {line}"));
    say(&indent(&serde_json::to_string_pretty(&status)?));

    section(
        9,
        "Cleaning up: containers, containerd, agent, webhook, registry, apiserver",
    );
    drop(stack);
    say("   done; nothing the demo started is left running");
    Ok(())
}

/// Signs `image` with `key` as `cosign sign --key` does (legacy tag).
async fn sign(registry: &Registry, key: &KeyPair, repository: &str, image: &Image) {
    let name = image
        .reference
        .rsplit_once(':')
        .map_or("", |(name, _)| name);
    let payload = simple_signing_payload(name, &image.digest);
    let signature = openssl_sign(key, &payload);
    attach_legacy(
        registry,
        repository,
        &image.digest,
        &[(
            payload,
            json!({"dev.cosignproject.cosign/signature": STANDARD.encode(&signature)}),
        )],
    )
    .await;
}

/// The pod the kubelet would have reported to the apiserver.
fn pod_json(namespace: &str, name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "uid": uid},
        "spec": {"containers": [{"name": "app", "image": "x"}]},
    })
}

/// `find` once it finds something, for at most 30 s.
async fn wait_for<T>(find: impl Fn() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = find() {
            return Some(found);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn short_key(key: &str) -> String {
    match key.split_once('/') {
        Some((ns, id)) if id.len() == 64 => format!("{ns}/{}", &id[..12]),
        _ => key.to_string(),
    }
}

/// The fields a person reads first.
fn compact_containers(answer: &Value) -> Value {
    let containers: Vec<Value> = answer["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            serde_json::json!({
                "key": c["key"], "image": c["image"], "digest": c["digest"],
                "verdict": c["verdict"], "reason": c["reason"],
            })
        })
        .collect();
    serde_json::json!({"containers": containers, "total": answer["total"]})
}
