//! `sudo cargo xtask demo [-- --enforce]`: the whole product on this
//! machine, told as it happens. Everything it starts is stopped at the end,
//! also on Ctrl-C; it can run again right away.

use std::time::Duration;

use anyhow::{Context, Result};
use imagegate_e2e::{Stack, patched_image, unique};
use serde_json::Value;

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
    stack.start_webhook()?;
    let webhook = stack.webhook.as_ref().context("webhook")?;
    say(&format!(
        "   webhook pid {} on https://127.0.0.1:{}, pushing to the agent over mTLS",
        webhook.process.child.id(),
        webhook.port
    ));

    section(3, "Admission: the requests a kube-apiserver sends");
    let app = stack.images.app.reference.clone();
    let r = stack.admission_review("/validate", "web", &app).await?;
    say(&format!(
        "   AdmissionReview  Pod shop/web  {app}\n     -> allowed={}  resolved: {}",
        r["allowed"],
        r["auditAnnotations"]["resolved-digests"]
            .as_str()
            .unwrap_or("?")
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
            "     {}  {}  from {}",
            approval["digest"].as_str().unwrap_or(""),
            approval["reference"].as_str().unwrap_or(""),
            approval["source"].as_str().unwrap_or("")
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
    let miner_id = unique("miner");
    let miner = stack.images.miner.reference.clone();
    stack.containerd.pull("default", &miner);
    stack.containerd.run("default", &miner, &miner_id, &[]);
    say(&format!(
        "   ctr   run -d {miner} {miner_id}   (bypasses admission)"
    ));
    for (key, verdict) in [
        (format!("k8s.io/{}", pod.sandbox_id), "exempt"),
        (format!("k8s.io/{}", pod.container_id), "admitted"),
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

    section(6, "The violation");
    let (line, answer) = stack.grpcurl("ListViolations", "{}")?;
    say(&format!("   $ {line}"));
    say(&indent(&serde_json::to_string_pretty(&answer)?));

    section(
        7,
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
        8,
        "Cleaning up: containers, containerd, agent, webhook, registry",
    );
    drop(stack);
    say("   done; nothing the demo started is left running");
    Ok(())
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
