//! The webhook's CPU limit from the chart (`webhook.resources.limits.cpu:
//! "1"`), applied as the kubelet applies it: a CFS quota of one CPU per
//! period on a cgroup of its own. Under it the webhook's async runtime
//! sizes itself to one worker thread (std's `available_parallelism` reads
//! the quota), as it does in the chart's pods; unconstrained on this
//! 2-core machine it runs two, whose cross-thread wake-ups cost CPU the
//! deployed webhook does not spend.
//!
//! cgroup v1's `cpu` hierarchy where it is mounted (this machine's hybrid
//! layout), else cgroup v2 with the `cpu` controller enabled.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// The CFS period the kubelet uses, and a quota of one CPU in it.
const PERIOD_US: u64 = 100_000;

pub struct CpuLimit {
    path: PathBuf,
}

impl CpuLimit {
    /// A new cgroup limited to one CPU. Needs root.
    pub fn one_cpu(name: &str) -> Result<Self> {
        let leaf = format!("imagegate-bench-{name}-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let limit = if v1.join("cpu.cfs_quota_us").exists() {
            let path = v1.join(leaf);
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating {} (needs root)", path.display()))?;
            write(&path, "cpu.cfs_period_us", &PERIOD_US.to_string())?;
            write(&path, "cpu.cfs_quota_us", &PERIOD_US.to_string())?;
            Self { path }
        } else {
            let root = Path::new("/sys/fs/cgroup");
            let controllers =
                std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
            if !controllers.split_whitespace().any(|c| c == "cpu") {
                bail!(
                    "no cpu cgroup controller: neither cgroup v1's cpu hierarchy nor v2's cpu controller"
                );
            }
            let path = root.join(leaf);
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating {} (needs root)", path.display()))?;
            write(&path, "cpu.max", &format!("{PERIOD_US} {PERIOD_US}"))?;
            Self { path }
        };
        Ok(limit)
    }

    /// `bin` with `args`, started inside this cgroup: a shell joins it and
    /// execs the binary, so the pid measured is the server's.
    pub fn command(&self, bin: &Path) -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(self.path.join("cgroup.procs"))
            .arg(bin);
        command
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // Empty once its servers are gone; a cgroup directory is removed
        // with rmdir, not by deleting its files.
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let at = dir.join(file);
    std::fs::write(&at, value).with_context(|| format!("writing {value} to {}", at.display()))
}
