//! A burst of cgroups named like containers, as anyone with a writable
//! cgroup subtree on a node can make one: thousands created and removed
//! under the unified hierarchy in well under a second. Every name is one a
//! node agent must take for a container's: a runtime's 64-hex id
//! (`.../cri-containerd-<id>.scope`, `.../<id>` under `kubepods`) or
//! containerd's own `/<namespace>/<id>` layout in a namespace that exists.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    cgroup::{MemoryCgroup, rss_bytes},
    containerd::TestContainerd,
    metrics::{sample, scrape},
    process::Process,
    registry::Registry,
};

const MIB: f64 = 1024.0 * 1024.0;

/// Where cgroup2 is mounted on this machine (hybrid: `unified`).
pub fn unified_root() -> PathBuf {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.procs").exists() {
        return hybrid.to_path_buf();
    }
    let unified = Path::new("/sys/fs/cgroup");
    assert!(
        unified.join("cgroup.controllers").exists(),
        "no cgroup2 hierarchy is mounted"
    );
    unified.to_path_buf()
}

/// The cgroups one burst makes; removed on drop (whatever is left).
pub struct Burst {
    /// The parent folders the burst made, outermost first (removed last).
    parents: Vec<PathBuf>,
    made: Vec<PathBuf>,
}

/// How long a burst's two halves took.
#[derive(Clone, Copy, Debug)]
pub struct BurstTimes {
    pub created: usize,
    pub create: Duration,
    pub remove: Duration,
}

impl Burst {
    /// The names of `count` container-like cgroups under `root`, a third
    /// of each layout, none created yet. `tag` keeps two bursts apart.
    pub fn plan(root: &Path, tag: &str, count: usize) -> Self {
        let pid = std::process::id();
        let systemd = root.join(format!("imagegate-burst-{tag}-{pid}.slice"));
        let kubepods = root
            .join("kubepods")
            .join(format!("imagegate-burst-{tag}-{pid}"));
        // containerd's `default` namespace exists wherever `ctr run` ran:
        // `/<namespace>/<id>` paths in it are asked of containerd.
        let namespaced = root.join("default");
        // Parents, outermost first; those that exist already are kept.
        let mut parents = Vec::new();
        for parent in [
            root.join("kubepods"),
            kubepods.clone(),
            systemd.clone(),
            namespaced.clone(),
        ] {
            if !parent.exists() {
                parents.push(parent);
            }
        }
        let mut made = Vec::with_capacity(count);
        for n in 0..count {
            let hex = format!("{:032x}{:08x}{:024x}", 0xb0b5_u128, pid, n);
            made.push(match n % 3 {
                0 => systemd.join(format!("cri-containerd-{hex}.scope")),
                1 => kubepods.join(&hex),
                _ => namespaced.join(format!("burst-{tag}-{pid}-{n}")),
            });
        }
        Self { parents, made }
    }

    /// Creates every cgroup, then removes every one; returns how long each
    /// half took.
    pub fn run(&mut self) -> BurstTimes {
        let started = Instant::now();
        for parent in &self.parents {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
        }
        let mut created = 0;
        for path in &self.made {
            if std::fs::create_dir(path).is_ok() {
                created += 1;
            }
        }
        let create = started.elapsed();
        let started = Instant::now();
        for path in &self.made {
            let _ = std::fs::remove_dir(path);
        }
        BurstTimes {
            created,
            create,
            remove: started.elapsed(),
        }
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        for path in &self.made {
            let _ = std::fs::remove_dir(path);
        }
        for parent in self.parents.iter().rev() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// The memory the chart gives the agent's pod.
pub const CHART_MEMORY_LIMIT: u64 = 128 * 1024 * 1024;

/// What a burst is aimed at: a registry with a never-admitted runnable
/// image, containerd, and the agent binary running in a memory cgroup of
/// the chart's limit.
pub struct Stand {
    pub registry: Registry,
    pub containerd: TestContainerd,
    /// The never-admitted image, pulled into containerd's `default`.
    pub image: String,
    /// The agent's process (JSON log lines).
    pub agent: Process,
    pub metrics: String,
    pub cgroup: MemoryCgroup,
    _state: tempfile::TempDir,
}

impl Stand {
    /// Starts it all; `name` names the memory cgroup, `extra` are more
    /// agent flags.
    pub async fn start(binary: &Path, name: &str, extra: &[&str]) -> Self {
        let registry = Registry::plain();
        registry.push_runnable_image("pause", "1", "pause").await;
        registry
            .push_runnable_image("team/burst-rogue", "1", name)
            .await;
        let image = format!("{}/team/burst-rogue:1", registry.host);
        let containerd = TestContainerd::start(&registry, &format!("{}/pause:1", registry.host));
        containerd.pull("default", &image);
        let state = tempfile::tempdir().expect("a state folder");
        let cgroup = MemoryCgroup::new(name, CHART_MEMORY_LIMIT);
        let mut args = vec![
            "--runtime-socket".to_string(),
            containerd.socket.display().to_string(),
            "--state-dir".into(),
            state.path().display().to_string(),
            "--metrics-address".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut agent =
            Process::start_with("agent", binary, args, |command| cgroup.run_inside(command));
        agent.wait_message("ready: watching container starts", Duration::from_secs(30));
        let metrics = agent
            .find(|l| l["fields"]["message"] == "metrics: serving /metrics and /healthz")
            .and_then(|l| l["fields"]["address"].as_str().map(str::to_string))
            .expect("metrics address logged");
        Self {
            registry,
            containerd,
            image,
            agent,
            metrics,
            cgroup,
            _state: state,
        }
    }
}

/// What one burst did to the agent.
#[derive(Clone, Debug, Serialize)]
pub struct Round {
    pub cgroups: usize,
    pub created: usize,
    pub create_s: f64,
    pub remove_s: f64,
    pub rss_before_mib: f64,
    pub rss_peak_mib: f64,
    /// What the memory cgroup charged at most (RSS, page cache, kernel).
    pub cgroup_peak_mib: f64,
    /// The kernel memory in it (cgroup v1 only): dentries and inodes the
    /// agent's lookups made in cgroups someone else created, freed with
    /// them and reclaimable.
    pub kernel_peak_mib: Option<f64>,
    pub identifications_dropped: f64,
    pub rescans: f64,
    pub exec_events_lost: f64,
    pub cgroup_events_lost: f64,
    /// `ctr run` of a real, never-admitted container started 100 ms into
    /// the burst: until it returned, and until the agent's verdict.
    pub real_container_started_s: f64,
    pub real_container_judged_s: Option<f64>,
    /// Lookups still waiting once the burst was over and the agent had a
    /// few seconds.
    pub waiting_after: f64,
    pub oom_kills: u64,
    pub alive: bool,
}

/// Runs a burst of `count` cgroups against the stand's agent, with a real
/// container (its never-admitted image, in containerd namespace `default`)
/// started in the middle of it, and measures.
pub fn round(stand: &mut Stand, count: usize, tag: &str) -> Round {
    let Stand {
        containerd,
        image,
        agent,
        metrics,
        cgroup,
        ..
    } = stand;
    let metrics = metrics.as_str();
    let pid = agent.child.id();
    let rss_before = rss_bytes(pid).map_or(0, |(now, _)| now);
    cgroup.reset_peak();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = std::thread::spawn({
        let sampling = sampling.clone();
        move || {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(rss_bytes(pid).map_or(0, |(now, _)| now));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        }
    });
    let counters = |text: &str| {
        [
            "imagegate_agent_identifications_dropped_total",
            "imagegate_agent_rescans_total",
            "imagegate_agent_lost_events{kind=\"exec\"}",
            "imagegate_agent_lost_events{kind=\"cgroup\"}",
        ]
        .map(|name| sample(text, name))
    };
    let before = counters(&scrape(metrics));

    let mut burst = Burst::plan(&unified_root(), tag, count);
    let burster = std::thread::spawn(move || burst.run());
    std::thread::sleep(Duration::from_millis(100));
    let id = format!("burst-real-{tag}-{}", std::process::id());
    let started = Instant::now();
    containerd.run("default", image, &id, &[]);
    let real_container_started_s = started.elapsed().as_secs_f64();
    let judged = agent
        .wait_for(Duration::from_secs(60), |line| {
            line["fields"]["message"] == "verdict"
                && line["fields"]["container"] == format!("default/{id}")
                && line["fields"]["verdict"] == "never-admitted"
        })
        .map(|_| started.elapsed().as_secs_f64());
    let times = burster.join().expect("the burst thread");

    // What the burst left is drained in well under this.
    std::thread::sleep(Duration::from_secs(3));
    sampling.store(false, Ordering::Relaxed);
    let rss_peak = sampler.join().expect("the sampler");
    let text = scrape(metrics);
    let after = counters(&text);
    Round {
        cgroups: count,
        created: times.created,
        create_s: times.create.as_secs_f64(),
        remove_s: times.remove.as_secs_f64(),
        rss_before_mib: rss_before as f64 / MIB,
        rss_peak_mib: rss_peak as f64 / MIB,
        cgroup_peak_mib: cgroup.peak_bytes() as f64 / MIB,
        kernel_peak_mib: cgroup.kernel_peak_bytes().map(|b| b as f64 / MIB),
        identifications_dropped: after[0] - before[0],
        rescans: after[1] - before[1],
        exec_events_lost: after[2] - before[2],
        cgroup_events_lost: after[3] - before[3],
        real_container_started_s,
        real_container_judged_s: judged,
        waiting_after: sample(&text, "imagegate_agent_identifications_waiting"),
        oom_kills: cgroup.oom_kills(),
        alive: agent.child.try_wait().ok().flatten().is_none(),
    }
}
