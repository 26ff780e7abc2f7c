//! The agent's figures for `cargo xtask bench agent` (which builds it in
//! release mode and runs it as root). Prints one JSON object on stdout.
//!
//! - exec overhead: the same `/bin/true` loop with and without the agent,
//!   alternating, from a host cgroup (filtered in the kernel) and from a
//!   watched container-like cgroup (every exec goes to user space);
//! - events sustained: two such loops at once in the watched cgroup, the
//!   events the agent counted and the events the kernel dropped;
//! - start -> verdict: pods started through CRI (as the kubelet does) and
//!   containers started with `ctr run`, from a loopback registry, approval
//!   present, the agent's first-event-to-verdict time; with a baseline
//!   agent binary (a third argument), the same for it, rounds alternating
//!   between the two so the machine's drift favours neither;
//! - the agent's CPU per exec event and its peak RSS with 100,000 approvals.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use imagegate_testkit::{containerd::TestContainerd, registry::Registry};
use serde_json::{Value, json};

struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    metrics: String,
    _state: tempfile::TempDir,
}

impl Agent {
    fn start(binary: &Path, socket: &Path, extra: &[&str]) -> Self {
        Self::start_as(binary, "--runtime-socket", socket, extra)
    }

    /// `socket_flag`: a baseline agent from before `--runtime-socket`
    /// takes `--containerd-socket`.
    fn start_as(binary: &Path, socket_flag: &str, socket: &Path, extra: &[&str]) -> Self {
        let state = tempfile::tempdir().unwrap();
        let mut child = Command::new(binary)
            .arg(socket_flag)
            .arg(socket)
            .arg("--state-dir")
            .arg(state.path())
            .args(["--metrics-address", "127.0.0.1:0", "--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        let mut agent = Self {
            child,
            lines,
            metrics: String::new(),
            _state: state,
        };
        let ready = agent.wait(Duration::from_secs(60), |l| {
            l["fields"]["message"] == "ready: watching container starts"
        });
        assert!(ready.is_some(), "the agent did not start");
        let metrics = agent
            .wait(Duration::from_secs(1), |l| {
                l["fields"]["message"] == "metrics: serving /metrics and /healthz"
            })
            .expect("metrics address");
        agent.metrics = metrics["fields"]["address"].as_str().unwrap().to_string();
        agent
    }

    fn wait(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(found) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return Some(found.clone());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }

    fn metric(&self, name: &str) -> f64 {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.metrics).unwrap();
        write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) of a process so far.
/// One agent binary's start -> verdict figures.
#[derive(Default)]
struct Latencies {
    /// The agent's latency_ms: first kernel event -> verdict.
    ctr: Vec<f64>,
    cri: Vec<f64>,
    /// Wall clock from the start request to the verdict seen.
    ctr_external: Vec<f64>,
    cri_external: Vec<f64>,
    cpu_seconds: f64,
    containers: usize,
}

impl Latencies {
    fn summary(mut self) -> Value {
        let stats = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            json!({
                "p50": percentile(v, 50.0),
                "p99": percentile(v, 99.0),
                "max": v.last().copied().unwrap_or(0.0),
            })
        };
        json!({
            "containers": self.containers,
            "ctr": stats(&mut self.ctr),
            "cri": stats(&mut self.cri),
            "ctr_external": stats(&mut self.ctr_external),
            "cri_external": stats(&mut self.cri_external),
            "agent_cpu_ms_per_container": self.cpu_seconds * 1000.0 / self.containers.max(1) as f64,
        })
    }
}

fn wait_verdict(agent: &Agent, container: &str) -> Value {
    let verdict = agent
        .wait(Duration::from_secs(20), |l| {
            l["fields"]["message"] == "verdict" && l["fields"]["container"] == container
        })
        .unwrap_or_else(|| panic!("no verdict for {container}"));
    assert_eq!(verdict["fields"]["verdict"], "admitted", "{verdict}");
    verdict
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// CPU seconds (user + system) of this process's reaped descendants.
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Like [`exec_loops`], but the CPU time the loops used (the shells and
/// every `/bin/true`): the cost an exec pays, with less of the noise other
/// tenants of a shared machine put into wall time.
fn exec_loops_cpu(execs: usize, cgroup: Option<&Path>) -> f64 {
    let before = children_cpu();
    exec_loops(1, execs, cgroup);
    children_cpu() - before
}

/// `loops` shells at once, each running `/bin/true` `execs` times, in
/// `cgroup` (a cgroup v2 folder) or where this process is; wall time.
fn exec_loops(loops: usize, execs: usize, cgroup: Option<&Path>) -> Duration {
    let join = cgroup
        .map(|c| format!("echo $$ > {}/cgroup.procs; ", c.display()))
        .unwrap_or_default();
    let script = format!("{join}i=0; while [ $i -lt {execs} ]; do /bin/true; i=$((i+1)); done");
    let started = Instant::now();
    let children: Vec<Child> = (0..loops)
        .map(|_| {
            Command::new("/bin/sh")
                .arg("-c")
                .arg(&script)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    started.elapsed()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 50.0)
}

fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .map(|f| PathBuf::from(f[1]))
        .expect("cgroup2 is mounted")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let agent_bin = PathBuf::from(
        args.next()
            .expect("usage: agent_bench AGENT [EXECS [BASELINE_AGENT]]"),
    );
    let execs: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let baseline = args.next().map(PathBuf::from);
    let rounds = 8;

    let registry = Registry::plain();
    let pause = format!("{}/pause:1", registry.host);
    registry.push_runnable_image("pause", "1", "pause").await;
    let app_digest = registry
        .push_runnable_image("bench/app", "1", "bench-app")
        .await;
    let app = format!("{}/bench/app:1", registry.host);
    let containerd = TestContainerd::start(&registry, &pause);
    containerd.pull("default", &app);

    // A container-looking cgroup (64-hex leaf) that containerd does not
    // know: the agent flags it `unknown` and watches every exec in it.
    let watched_parent = cgroup2_root().join(format!("imagegate-bench-{}", std::process::id()));
    let watched = watched_parent.join("0123456789abcdef".repeat(4));
    std::fs::create_dir_all(&watched).unwrap();

    // 1. Exec overhead, without and with the agent, in alternating order
    //    (ABBA) so a drift in the machine's speed does not favour one arm.
    //    Each arm's figure is the CPU time of its loop; an A/A pair (two
    //    runs without the agent) shows the noise floor.
    let mut host = (Vec::new(), Vec::new());
    let mut in_watched = (Vec::new(), Vec::new());
    let mut control = Vec::new();
    let mut agent_cpu = Vec::new();
    let mut events_per_round = Vec::new();
    for round in 0..rounds {
        let without = |host: &mut (Vec<f64>, Vec<f64>), in_watched: &mut (Vec<f64>, Vec<f64>)| {
            host.0.push(exec_loops_cpu(execs, None));
            in_watched.0.push(exec_loops_cpu(execs, Some(&watched)));
        };
        if round % 2 == 0 {
            without(&mut host, &mut in_watched);
        }
        control.push(exec_loops_cpu(execs, None));
        let agent = Agent::start(&agent_bin, &containerd.socket, &["--grace", "0s"]);
        // Let the agent classify the watched cgroup before measuring.
        exec_loops(1, 5, Some(&watched));
        std::thread::sleep(Duration::from_millis(300));
        host.1.push(exec_loops_cpu(execs, None));
        let before_cpu = cpu_seconds(agent.pid());
        let before = agent.metric("imagegate_agent_events_total{kind=\"exec\"}");
        in_watched.1.push(exec_loops_cpu(execs, Some(&watched)));
        std::thread::sleep(Duration::from_millis(300));
        let events = agent.metric("imagegate_agent_events_total{kind=\"exec\"}") - before;
        agent_cpu.push((cpu_seconds(agent.pid()) - before_cpu) / events.max(1.0) * 10_000.0);
        events_per_round.push(events);
        drop(agent);
        if round % 2 == 1 {
            without(&mut host, &mut in_watched);
        }
    }
    let per_exec_us = |v: &Vec<f64>| median(v.clone()) / execs as f64 * 1e6;

    // 2. Events sustained: two loops at once (this machine has 2 cores).
    let agent = Agent::start(&agent_bin, &containerd.socket, &["--grace", "0s"]);
    // The cgroup is identified on its first exec.
    exec_loops(1, 10, Some(&watched));
    std::thread::sleep(Duration::from_millis(500));
    let before = agent.metric("imagegate_agent_events_total{kind=\"exec\"}");
    let flood_execs = execs * 2;
    let flood = exec_loops(2, flood_execs, Some(&watched));
    std::thread::sleep(Duration::from_millis(1500));
    let received = agent.metric("imagegate_agent_events_total{kind=\"exec\"}") - before;
    let lost = agent.metric("imagegate_agent_lost_events{kind=\"exec\"}");
    drop(agent);

    // 3. Start -> verdict, approval present: CRI pods and `ctr run`
    //    containers, one at a time; rounds alternate between this agent
    //    and the baseline, if given.
    let dir = tempfile::tempdir().unwrap();
    let approvals = dir.path().join("approvals");
    std::fs::write(&approvals, format!("{app_digest}\n")).unwrap();
    let arms: Vec<(&str, &Path, &str)> =
        std::iter::once(("this", agent_bin.as_path(), "--runtime-socket"))
            .chain(
                baseline
                    .as_deref()
                    .map(|b| ("baseline", b, "--containerd-socket")),
            )
            .collect();
    let mut verdicts: std::collections::BTreeMap<&str, Latencies> = Default::default();
    let per_round = 10;
    for round in 0..3 {
        for (name, binary, flag) in &arms {
            let agent = Agent::start_as(
                binary,
                flag,
                &containerd.socket,
                &["--approvals-file", approvals.to_str().unwrap()],
            );
            let cpu_before = cpu_seconds(agent.pid());
            let arm = verdicts.entry(name).or_default();
            for i in 0..per_round {
                let id = format!("bench-{}-{name}-{round}-{i}", std::process::id());
                let started = Instant::now();
                containerd.run("default", &app, &id, &[]);
                let verdict = wait_verdict(&agent, &format!("default/{id}"));
                arm.ctr_external
                    .push(started.elapsed().as_secs_f64() * 1000.0);
                arm.ctr
                    .push(verdict["fields"]["latency_ms"].as_f64().unwrap());

                let pod = format!("bench-{name}-{round}-{i}");
                let started = Instant::now();
                let cri = containerd.cri_run_pod("bench", &pod, &app).await;
                let verdict = wait_verdict(&agent, &format!("k8s.io/{}", cri.container_id));
                arm.cri_external
                    .push(started.elapsed().as_secs_f64() * 1000.0);
                arm.cri
                    .push(verdict["fields"]["latency_ms"].as_f64().unwrap());
            }
            arm.cpu_seconds += cpu_seconds(agent.pid()) - cpu_before;
            arm.containers += 2 * per_round;
            drop(agent);
        }
    }
    let start_to_verdict: serde_json::Map<String, Value> = verdicts
        .into_iter()
        .map(|(name, arm)| (name.to_string(), arm.summary()))
        .collect();

    // 4. Peak RSS with 100,000 approvals.
    let many = 100_000;
    let text: String = (0..many)
        .map(|i: u64| format!("sha256:{:064x}\n", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    std::fs::write(&approvals, text).unwrap();
    let agent = Agent::start(
        &agent_bin,
        &containerd.socket,
        &["--approvals-file", approvals.to_str().unwrap()],
    );
    agent
        .wait(Duration::from_secs(120), |l| {
            l["fields"]["message"] == "approvals loaded"
        })
        .expect("approvals loaded");
    exec_loops(1, 200, None);
    std::thread::sleep(Duration::from_millis(300));
    let rss_100k = peak_rss_mib(agent.pid());
    let approvals_held = agent.metric("imagegate_agent_approvals");
    drop(agent);

    let _ = std::fs::remove_dir(&watched);
    let _ = std::fs::remove_dir(&watched_parent);

    let out = json!({
        "execs_per_loop": execs,
        "rounds": rounds,
        "host_exec_us": {"without": per_exec_us(&host.0), "with": per_exec_us(&host.1)},
        "host_overhead_ratio": median(host.1.clone()) / median(host.0.clone()),
        "control_ratio": median(control.clone()) / median(host.0.clone()),
        "watched_exec_us": {"without": per_exec_us(&in_watched.0), "with": per_exec_us(&in_watched.1)},
        "watched_overhead_ratio": median(in_watched.1.clone()) / median(in_watched.0.clone()),
        "watched_events_per_round": events_per_round,
        "agent_cpu_seconds_per_10k_events": median(agent_cpu),
        "flood": {
            "loops": 2,
            "execs": flood_execs * 2,
            "seconds": flood.as_secs_f64(),
            "execs_per_second": (flood_execs * 2) as f64 / flood.as_secs_f64(),
            "events_received": received,
            "events_lost": lost,
        },
        "start_to_verdict_ms": start_to_verdict,
        "rss_mib_with_100k_approvals": rss_100k,
        "approvals_held": approvals_held,
    });
    println!("{out}");
}
