//! What the agent needs from its host: paths and capabilities. The agent
//! checks the paths at start-up (and says which is missing); the deploy
//! tests check that the DaemonSet mounts exactly these and grants these
//! capabilities, so manifest and binary cannot drift apart.

/// A host path the agent uses.
#[derive(Clone, Copy, Debug)]
pub struct HostPath {
    pub path: &'static str,
    /// Whether the agent writes there.
    pub writable: bool,
    pub why: &'static str,
}

/// The host paths, besides containerd's socket (a flag).
pub const HOST_PATHS: &[HostPath] = &[
    HostPath {
        path: "/sys/fs/bpf",
        writable: true,
        why: "bpffs, for the programs' maps",
    },
    HostPath {
        path: "/sys/kernel/tracing",
        writable: false,
        why: "tracefs: tracepoint ids and record formats",
    },
    HostPath {
        path: "/sys/fs/cgroup",
        writable: false,
        why: "the host's cgroup tree: cgroup ids to paths, processes of a cgroup",
    },
    HostPath {
        path: "/var/lib/imagegate",
        writable: true,
        why: "the state store (--state-dir)",
    },
];

/// Linux capabilities, without the `CAP_` prefix, as a pod spec names
/// them. `SYS_ADMIN` only on kernels before 5.8 (no `BPF`/`PERFMON`).
pub const CAPABILITIES: &[(&str, &str)] = &[
    ("BPF", "load programs and maps"),
    ("PERFMON", "attach tracepoints"),
    (
        "SYS_RESOURCE",
        "raise RLIMIT_MEMLOCK on kernels before 5.11",
    ),
    (
        "KILL",
        "enforce mode: kill a violating container's processes",
    ),
];

/// The host paths that are missing here, with why they are needed.
pub fn missing_paths() -> Vec<&'static HostPath> {
    HOST_PATHS
        .iter()
        .filter(|p| !std::path::Path::new(p.path).exists())
        .filter(|p| p.path != "/var/lib/imagegate")
        .collect()
}
