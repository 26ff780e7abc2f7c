//! `cargo xtask demo`: what exists so far, shown for real. Today: the agent
//! reports the execs of a few commands this demo runs. It grows with the
//! product (registry, containerd, webhook) and never prints canned output.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{build, paths::Paths, setup};

/// Kills and reaps the agent however the demo ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(paths: &Paths) -> Result<()> {
    setup::run(paths)?;
    build::all(paths, false)?;
    let agent_bin = paths.target.join("debug").join("imagegate-agent");

    println!(
        "\n==> starting the agent: {} --print-events --event-format json",
        agent_bin.display()
    );
    let mut child = Command::new(&agent_bin)
        .args(["--print-events", "--event-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", agent_bin.display()))?;
    let stdout = child.stdout.take().context("agent stdout")?;
    let stderr = child.stderr.take().context("agent stderr")?;
    let mut agent = Running(child);

    let (ready_tx, ready_rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            println!("    agent log: {line}");
            if line.contains("ready: sched/sched_process_exec attached") {
                let _ = ready_tx.send(());
            }
        }
    });
    let (event_tx, events) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if event_tx.send(line).is_err() {
                break;
            }
        }
    });
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let status = agent.0.try_wait()?;
        bail!("the agent did not attach within 30s (exit status: {status:?}); see its log above");
    }

    println!("\n==> running a few commands; the agent should see each exec");
    let commands: [&[&str]; 3] = [
        &["/bin/echo", "hello from imagegate"],
        &["/bin/sh", "-c", "uname -r; busybox true"],
        &["/usr/bin/env", "true"],
    ];
    let mut ours = HashSet::new();
    for argv in commands {
        let mut child = Command::new(argv[0]).args(&argv[1..]).spawn()?;
        ours.insert(child.id());
        println!("    ran {:?} as pid {}", argv.join(" "), child.id());
        child.wait()?;
    }

    println!("\n==> exec events the agent printed for them (its own JSON lines)");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut others = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = events.recv_timeout(left) else {
            break;
        };
        let event: Value = serde_json::from_str(&line).context("agent printed a non-JSON line")?;
        let pid = event["pid"].as_u64().unwrap_or_default() as u32;
        let ppid = event["ppid"].as_u64().unwrap_or_default() as u32;
        // A command's own exec, or one its shell started.
        if ours.contains(&pid) || ours.contains(&ppid) {
            ours.insert(pid);
            println!("    {line}");
        } else {
            others += 1;
        }
    }
    println!("    ({others} other execs on this machine were seen in the same time)");
    drop(agent);
    println!("\n==> agent stopped");
    Ok(())
}
