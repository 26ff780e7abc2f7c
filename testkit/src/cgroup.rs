//! A memory cgroup for one process under test: the limit the chart sets on
//! its pod, applied the way the kubelet applies it, so an attack that would
//! get the pod OOM-killed gets the test's process OOM-killed too.
//!
//! cgroup v1's memory controller where it is mounted (this machine's hybrid
//! layout), else cgroup v2 with the memory controller enabled. Swap is
//! limited with memory where the kernel accounts it, as the kubelet does.

use std::{
    ffi::CString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

pub struct MemoryCgroup {
    path: PathBuf,
    version: Version,
    pub limit_bytes: u64,
}

impl MemoryCgroup {
    /// A new cgroup named after `name` and this process, limited to
    /// `limit_bytes`. Needs root.
    pub fn new(name: &str, limit_bytes: u64) -> Self {
        crate::require_root("a memory cgroup for the process under test");
        let (root, version) = if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
            || Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists()
        {
            (PathBuf::from("/sys/fs/cgroup/memory"), Version::V1)
        } else {
            let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control")
                .unwrap_or_default();
            assert!(
                controllers.split_whitespace().any(|c| c == "memory"),
                "no memory cgroup controller: neither cgroup v1's memory hierarchy nor v2's \
                 memory controller is available"
            );
            (PathBuf::from("/sys/fs/cgroup"), Version::V2)
        };
        let path = root
            .join("imagegate-tests")
            .join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let group = Self {
            path,
            version,
            limit_bytes,
        };
        match version {
            Version::V1 => {
                group.write("memory.limit_in_bytes", limit_bytes);
                // Absent when the kernel does not account swap.
                if group.path.join("memory.memsw.limit_in_bytes").exists() {
                    group.write("memory.memsw.limit_in_bytes", limit_bytes);
                }
            }
            Version::V2 => {
                group.write("memory.max", limit_bytes);
                if group.path.join("memory.swap.max").exists() {
                    group.write("memory.swap.max", 0);
                }
            }
        }
        group
    }

    fn write(&self, file: &str, value: u64) {
        let at = self.path.join(file);
        std::fs::write(&at, value.to_string())
            .unwrap_or_else(|e| panic!("write {value} to {}: {e}", at.display()));
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path.join(file)).unwrap_or_default()
    }

    /// Makes `command` start inside this cgroup: the child joins it between
    /// fork and exec, so everything it ever allocates is charged here.
    pub fn run_inside(&self, command: &mut Command) {
        let procs = CString::new(
            self.path
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("no NUL in a cgroup path");
        // SAFETY: between fork and exec only async-signal-safe calls are
        // made (getpid, open, write, close) on memory prepared before the
        // fork; nothing allocates.
        unsafe {
            command.pre_exec(move || {
                let mut digits = [0u8; 20];
                let mut pid = libc::getpid() as u64;
                let mut at = digits.len();
                loop {
                    at -= 1;
                    digits[at] = b'0' + (pid % 10) as u8;
                    pid /= 10;
                    if pid == 0 {
                        break;
                    }
                }
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, digits[at..].as_ptr().cast(), digits.len() - at);
                let error = std::io::Error::last_os_error();
                libc::close(fd);
                if n < 0 {
                    return Err(error);
                }
                Ok(())
            });
        }
    }

    /// Bytes charged now (the process's memory and its page cache).
    pub fn usage_bytes(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        };
        self.read(file).trim().parse().unwrap_or(0)
    }

    /// The most ever charged.
    pub fn peak_bytes(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        };
        self.read(file).trim().parse().unwrap_or(0)
    }

    /// The most kernel memory ever charged (slab: dentries and inodes the
    /// process's lookups made, among others), where the kernel keeps it
    /// apart (cgroup v1's kmem accounting); `None` elsewhere.
    pub fn kernel_peak_bytes(&self) -> Option<u64> {
        match self.version {
            Version::V1 => self
                .read("memory.kmem.max_usage_in_bytes")
                .trim()
                .parse()
                .ok(),
            Version::V2 => None,
        }
    }

    /// Starts the peak over (where the kernel lets it be reset).
    pub fn reset_peak(&self) {
        let file = match self.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        };
        let _ = std::fs::write(self.path.join(file), "0");
        if self.version == Version::V1 {
            let _ = std::fs::write(self.path.join("memory.kmem.max_usage_in_bytes"), "0");
        }
    }

    /// Processes the kernel's OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        self.read(file)
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Whatever is left inside is killed, then the folder removed (a
        // cgroup with processes cannot be).
        for pid in self
            .read("cgroup.procs")
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
        {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A process's resident memory now and at its peak (`VmRSS`, `VmHWM` from
/// `/proc/<pid>/status`), in bytes.
pub fn rss_bytes(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
