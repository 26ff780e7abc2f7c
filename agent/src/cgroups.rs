//! The host's cgroup layout and what a cgroup id or a process says about
//! where it lives.
//!
//! Three layouts exist in the wild: cgroup v2 only (`/sys/fs/cgroup` is
//! cgroup2), hybrid (v1 controllers plus cgroup2 at
//! `/sys/fs/cgroup/unified`, as on this machine) and v1 only. The exec
//! program keys its filter on the v2 id where cgroup2 is mounted and on the
//! memory cgroup's id otherwise; this module says which, and maps ids back
//! to paths.

use std::{
    fs,
    io::{self, BufRead},
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::{Path, PathBuf},
};

use imagegate_common::filter_key;
use serde::Serialize;

/// Which cgroup versions the host mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// cgroup2 only.
    Unified,
    /// v1 controllers and cgroup2 side by side.
    Hybrid,
    /// v1 only.
    Legacy,
}

/// Where the hierarchies the agent uses are mounted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub mode: Mode,
    /// Mount point of cgroup2, if mounted.
    pub v2_root: Option<PathBuf>,
    /// Mount point of the v1 memory hierarchy, if mounted.
    pub memory_root: Option<PathBuf>,
    /// The v1 memory hierarchy's id (`/proc/cgroups`), to match
    /// `cgroup_mkdir` events against.
    pub memory_hierarchy: Option<u32>,
}

/// The host mounts no cgroup hierarchy the agent can use.
#[derive(Debug, thiserror::Error)]
#[error(
    "no usable cgroup hierarchy is mounted (neither cgroup2 nor the v1 memory controller, \
     looked in {0}); in a pod, mount the host's /sys/fs/cgroup"
)]
pub struct NoCgroups(String);

impl Layout {
    /// Reads the mount table (`/proc/self/mountinfo`) and `/proc/cgroups`.
    pub fn detect() -> Result<Self, NoCgroups> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let proc_cgroups = fs::read_to_string("/proc/cgroups").unwrap_or_default();
        Self::from_tables(&mountinfo, &proc_cgroups)
            .ok_or_else(|| NoCgroups("/proc/self/mountinfo".into()))
    }

    /// The layout described by a mountinfo table and a `/proc/cgroups` table.
    pub fn from_tables(mountinfo: &str, proc_cgroups: &str) -> Option<Self> {
        let mut v2_root = None;
        let mut memory_root = None;
        for line in mountinfo.lines() {
            // "36 25 0:31 / /sys/fs/cgroup/memory rw,... - cgroup cgroup rw,memory"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split(' ').nth(4);
            let mut right = right.split(' ');
            let fstype = right.next();
            let super_options = right.nth(1).unwrap_or("");
            match (fstype, mount_point) {
                (Some("cgroup2"), Some(point)) if v2_root.is_none() => {
                    v2_root = Some(PathBuf::from(unescape(point)));
                }
                (Some("cgroup"), Some(point))
                    if memory_root.is_none() && super_options.split(',').any(|o| o == "memory") =>
                {
                    memory_root = Some(PathBuf::from(unescape(point)));
                }
                _ => {}
            }
        }
        let memory_hierarchy = proc_cgroups.lines().find_map(|line| {
            // "memory  4  120  1": name, hierarchy, cgroups, enabled.
            let mut fields = line.split_whitespace();
            (fields.next() == Some("memory"))
                .then(|| fields.next()?.parse().ok())
                .flatten()
                .filter(|&h| h != 0)
        });
        let mode = match (&v2_root, &memory_root) {
            (Some(_), Some(_)) => Mode::Hybrid,
            (Some(_), None) => Mode::Unified,
            (None, Some(_)) => Mode::Legacy,
            (None, None) => return None,
        };
        Some(Self {
            mode,
            v2_root,
            memory_root,
            memory_hierarchy: memory_hierarchy.filter(|_| mode != Mode::Unified),
        })
    }

    /// The key the exec program filters on (`imagegate_common::filter_key`).
    pub fn filter_key(&self) -> u32 {
        match self.mode {
            Mode::Legacy => filter_key::MEMORY_V1,
            Mode::Unified | Mode::Hybrid => filter_key::CGROUP_V2,
        }
    }

    /// The mount point of the hierarchy the filter key comes from.
    pub fn key_root(&self) -> &Path {
        match self.mode {
            Mode::Legacy => self.memory_root.as_deref(),
            Mode::Unified | Mode::Hybrid => self.v2_root.as_deref(),
        }
        .expect("detect() guarantees the key hierarchy is mounted")
    }

    /// Whether a `cgroup_mkdir` event from `hierarchy` created a cgroup of
    /// the filter key's hierarchy (cgroup2 is hierarchy 0).
    pub fn is_key_hierarchy(&self, hierarchy: u32) -> bool {
        match self.mode {
            Mode::Legacy => Some(hierarchy) == self.memory_hierarchy,
            Mode::Unified | Mode::Hybrid => hierarchy == 0,
        }
    }

    /// The filter key of a cgroup path in the key hierarchy: the inode of
    /// its folder, which is the kernel's cgroup id.
    pub fn key_of_path(&self, path: &str) -> io::Result<u64> {
        Ok(fs::metadata(join(self.key_root(), path))?.ino())
    }

    /// The path of `key` in the key hierarchy, found by walking it (the
    /// caller caches). `None` if no such cgroup exists (any more).
    pub fn path_of_key(&self, key: u64) -> Option<String> {
        let root = self.key_root();
        if fs::metadata(root).ok()?.ino() == key {
            return Some("/".into());
        }
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if !kind.is_dir() {
                    continue;
                }
                if entry.ino() == key {
                    let relative = entry.path().strip_prefix(root).ok()?.to_path_buf();
                    return Some(format!("/{}", relative.display()));
                }
                stack.push(entry.path());
            }
        }
        None
    }

    /// The process ids in a cgroup of the key hierarchy.
    pub fn processes(&self, path: &str) -> io::Result<Vec<u32>> {
        let file = fs::File::open(join(self.key_root(), path).join("cgroup.procs"))?;
        let mut pids = Vec::new();
        for line in io::BufReader::new(file).lines() {
            if let Ok(pid) = line?.trim().parse() {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// A process's path in the key hierarchy, from `/proc/PID/cgroup`.
    pub fn path_of_process(&self, pid: u32) -> io::Result<String> {
        let table = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let wanted = |controllers: &str| match self.mode {
            Mode::Legacy => controllers.split(',').any(|c| c == "memory"),
            Mode::Unified | Mode::Hybrid => controllers.is_empty(),
        };
        table
            .lines()
            .find_map(|line| {
                // "4:memory:/default/app" or "0::/kubepods/..."
                let mut parts = line.splitn(3, ':');
                let _id = parts.next()?;
                let controllers = parts.next()?;
                let path = parts.next()?;
                wanted(controllers).then(|| path.to_string())
            })
            .ok_or_else(|| {
                io::Error::other(format!(
                    "/proc/{pid}/cgroup has no line for the key hierarchy"
                ))
            })
    }
}

fn join(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = (bytes[i] == b'\\' && i + 4 <= bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 4]).ok())
            .flatten()
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match code {
            Some(code) => {
                out.push(code);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
32 25 0:27 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
33 32 0:28 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
36 32 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
37 32 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
";
    const PROC_CGROUPS: &str = "\
#subsys_name\thierarchy\tnum_cgroups\tenabled
cpu\t2\t1\t1
memory\t4\t120\t1
";

    #[test]
    fn reads_a_hybrid_host() {
        let layout = Layout::from_tables(HYBRID, PROC_CGROUPS).unwrap();
        assert_eq!(layout.mode, Mode::Hybrid);
        assert_eq!(
            layout.v2_root.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            layout.memory_root.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(layout.memory_hierarchy, Some(4));
        assert_eq!(layout.filter_key(), filter_key::CGROUP_V2);
        assert!(layout.is_key_hierarchy(0) && !layout.is_key_hierarchy(4));
    }

    #[test]
    fn reads_a_v2_only_host() {
        let table = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let layout = Layout::from_tables(table, "memory\t0\t80\t1\n").unwrap();
        assert_eq!(layout.mode, Mode::Unified);
        assert_eq!(layout.memory_hierarchy, None);
        assert_eq!(layout.key_root(), Path::new("/sys/fs/cgroup"));
    }

    #[test]
    fn a_v1_only_host_keys_on_the_memory_cgroup() {
        let table = "36 32 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let layout = Layout::from_tables(table, PROC_CGROUPS).unwrap();
        assert_eq!(layout.mode, Mode::Legacy);
        assert_eq!(layout.filter_key(), filter_key::MEMORY_V1);
        assert!(layout.is_key_hierarchy(4) && !layout.is_key_hierarchy(0));
    }

    #[test]
    fn no_cgroup_mounts_is_none() {
        assert_eq!(
            Layout::from_tables("25 30 0:23 / /sys rw - sysfs sysfs rw\n", ""),
            None
        );
    }

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn this_host_maps_its_own_cgroup_both_ways() {
        let layout = Layout::detect().expect("this machine mounts cgroups");
        let own = layout.path_of_process(std::process::id()).unwrap();
        let key = layout.key_of_path(&own).unwrap();
        assert_eq!(layout.path_of_key(key).as_deref(), Some(own.as_str()));
        assert!(
            layout
                .processes(&own)
                .unwrap()
                .contains(&std::process::id())
        );
    }
}
