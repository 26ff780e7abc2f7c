//! What the agent needs from its host: capabilities and host paths, and the
//! start-up check that says exactly what is missing.
//!
//! The deploy tests check that the DaemonSet grants exactly these (for each
//! mode and kernel value), so manifest and binary cannot drift apart; the
//! pod-shaped tests remove each one and expect the message this module
//! writes, not a crash loop.

use std::{os::unix::fs::FileTypeExt, path::Path};

use crate::model::Mode;

/// A Linux capability, as a pod spec names it (without `CAP_`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    /// Its bit in `/proc/self/status`'s `CapEff`.
    pub bit: u32,
    pub why: &'static str,
}

pub const BPF: Capability = Capability {
    name: "BPF",
    bit: 39,
    why: "load the eBPF programs and maps",
};
pub const PERFMON: Capability = Capability {
    name: "PERFMON",
    bit: 38,
    why: "attach the tracepoint programs",
};
pub const KILL: Capability = Capability {
    name: "KILL",
    bit: 5,
    why: "enforce mode: kill a violating container's processes, whatever user they run as",
};
pub const SYS_RESOURCE: Capability = Capability {
    name: "SYS_RESOURCE",
    bit: 24,
    why: "raise RLIMIT_MEMLOCK for the eBPF maps (kernels before 5.11 charge BPF memory to it)",
};
pub const SYS_ADMIN: Capability = Capability {
    name: "SYS_ADMIN",
    bit: 21,
    why: "load and attach eBPF programs on kernels before 5.8, which have no CAP_BPF/CAP_PERFMON",
};

/// A kernel release as `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub u32, pub u32);

impl KernelVersion {
    /// Reads `uname -r` (`/proc/sys/kernel/osrelease`); `None` if unreadable.
    pub fn running() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
    }

    /// `6.18.0-1-amd64` -> 6.18.
    pub fn parse(release: &str) -> Option<Self> {
        let mut parts = release.trim().split(['.', '-']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self(major, minor))
    }
}

/// The capabilities the agent needs in `mode` on kernel `kernel`: what the
/// DaemonSet must add and nothing more. CAP_BPF and CAP_PERFMON exist since
/// 5.8; BPF memory is charged to the memory cgroup instead of
/// RLIMIT_MEMLOCK since 5.11.
pub fn capabilities_needed(mode: Mode, kernel: KernelVersion) -> Vec<Capability> {
    let mut needed = if kernel < KernelVersion(5, 8) {
        vec![SYS_ADMIN]
    } else {
        vec![BPF, PERFMON]
    };
    if kernel < KernelVersion(5, 11) {
        needed.push(SYS_RESOURCE);
    }
    if mode == Mode::Enforce {
        needed.push(KILL);
    }
    needed
}

/// The effective capability set of this process (`CapEff`).
pub fn effective_capabilities() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_cap_eff(&status).ok_or_else(|| std::io::Error::other("no CapEff in /proc/self/status"))
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// The capabilities of `needed` that `effective` lacks. CAP_SYS_ADMIN
/// stands in for CAP_BPF and CAP_PERFMON, as the kernel lets it.
pub fn missing_capabilities(needed: &[Capability], effective: u64) -> Vec<Capability> {
    let has = |c: &Capability| effective & (1 << c.bit) != 0;
    needed
        .iter()
        .filter(|c| !has(c))
        .filter(|c| !((**c == BPF || **c == PERFMON) && has(&SYS_ADMIN)))
        .copied()
        .collect()
}

/// A host path the agent uses.
#[derive(Clone, Copy, Debug)]
pub struct HostPath {
    pub path: &'static str,
    /// Whether the agent writes there.
    pub writable: bool,
    pub why: &'static str,
}

/// The host paths the DaemonSet mounts, besides containerd's socket folder
/// (from a flag). Nothing is pinned in bpffs, so it is not among them.
pub const HOST_PATHS: &[HostPath] = &[
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

/// What the agent was given to work with, for [`check`].
pub struct Environment<'a> {
    pub mode: Mode,
    /// Where the kernel's BTF is read from (`--btf`).
    pub btf: &'a Path,
    pub kernel: Option<KernelVersion>,
    pub effective: Option<u64>,
    /// Whether tracefs is mounted where the agent looks.
    pub tracefs: bool,
    /// The inode of the mount the cgroup filter keys on (1 when it is the
    /// host's root, not a container's own cgroup).
    pub cgroup_root_inode: Option<u64>,
    /// The runtime sockets looked for (the one named, or the defaults).
    pub runtime_sockets: &'a [std::path::PathBuf],
    pub state_dir: &'a Path,
}

/// What the start-up check found.
#[derive(Debug, Default)]
pub struct Report {
    /// What stops the agent: each line says what it is for and what to do.
    pub problems: Vec<String>,
    /// What it can live with for now (containerd not up yet).
    pub warnings: Vec<String>,
}

/// Everything missing; no problems when the agent can start.
pub fn check(env: &Environment) -> Report {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if !env.btf.is_file() {
        problems.push(format!(
            "the kernel's BTF is not at {}: needed to read kernel struct offsets; use a kernel \
             built with CONFIG_DEBUG_INFO_BTF=y, or point --btf at its BTF file",
            env.btf.display()
        ));
    }
    match (env.kernel, env.effective) {
        (Some(kernel), Some(effective)) => {
            for c in missing_capabilities(&capabilities_needed(env.mode, kernel), effective) {
                problems.push(format!(
                    "capability CAP_{} is missing: needed to {} (add {} to the container's \
                     securityContext.capabilities.add{})",
                    c.name,
                    c.why,
                    c.name,
                    match c.name {
                        "SYS_RESOURCE" => "; Helm: agent.sysResource=true",
                        "SYS_ADMIN" => "; Helm: agent.sysAdmin=true",
                        _ => "",
                    }
                ));
            }
        }
        _ => problems.push(
            "cannot read the kernel release or this process's capabilities from /proc".into(),
        ),
    }
    if !env.tracefs {
        problems.push(
            "tracefs is not mounted at /sys/kernel/tracing (nor /sys/kernel/debug/tracing): \
             needed to attach tracepoints; mount the host's /sys/kernel/tracing (hostPath)"
                .into(),
        );
    }
    match env.cgroup_root_inode {
        Some(1) => {}
        Some(_) => problems.push(
            "/sys/fs/cgroup is this container's own cgroup, not the host's tree: needed to map \
             cgroups to containers and to find their processes; mount the host's /sys/fs/cgroup \
             (hostPath) and share the host's cgroup namespace"
                .into(),
        ),
        None => problems.push(
            "no cgroup hierarchy the agent can use is mounted: mount the host's /sys/fs/cgroup \
             (hostPath)"
                .into(),
        ),
    }
    let socket = env.runtime_sockets.iter().find(|s| s.exists());
    let folder = env
        .runtime_sockets
        .iter()
        .find(|s| s.parent().is_some_and(Path::is_dir));
    let named = env
        .runtime_sockets
        .iter()
        .map(|s| s.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    match (socket, folder) {
        (Some(socket), _) => {
            if !std::fs::metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
                problems.push(format!(
                    "{} is not a socket: needed to ask the container runtime which image each \
                     container runs; check --runtime-socket",
                    socket.display()
                ));
            }
        }
        // The folder is there: the runtime is not up yet (or restarting);
        // the agent asks again until it answers.
        (None, Some(socket)) => warnings.push(format!(
            "the runtime's socket {} is not there yet: containers are identified once the \
             runtime answers",
            socket.display()
        )),
        (None, None) => problems.push(format!(
            "no container runtime socket folder is there (looked for {named}): needed to ask the \
             runtime (containerd or CRI-O) which image each container runs; mount the socket's \
             folder from the host (hostPath) or set --runtime-socket (k3s: \
             /run/k3s/containerd/containerd.sock)"
        )),
    }
    if let Err(e) = writable_dir(env.state_dir) {
        problems.push(format!(
            "the state folder {} is not writable ({e}): needed to keep approvals, containers and \
             violations across restarts; mount a writable host folder there (hostPath) or set \
             --state-dir",
            env.state_dir.display()
        ));
    }
    Report { problems, warnings }
}

/// Creates `dir` if needed and checks a file can be written in it.
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(".imagegate-write-check");
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(caps: &[Capability]) -> Vec<&'static str> {
        caps.iter().map(|c| c.name).collect()
    }

    #[test]
    fn what_each_kernel_and_mode_needs() {
        let new = KernelVersion(6, 18);
        assert_eq!(
            names(&capabilities_needed(Mode::Audit, new)),
            ["BPF", "PERFMON"]
        );
        assert_eq!(
            names(&capabilities_needed(Mode::Enforce, new)),
            ["BPF", "PERFMON", "KILL"]
        );
        assert_eq!(
            names(&capabilities_needed(Mode::Audit, KernelVersion(5, 10))),
            ["BPF", "PERFMON", "SYS_RESOURCE"]
        );
        assert_eq!(
            names(&capabilities_needed(Mode::Audit, KernelVersion(5, 4))),
            ["SYS_ADMIN", "SYS_RESOURCE"]
        );
    }

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(
            KernelVersion::parse("6.18.0-1-amd64\n"),
            Some(KernelVersion(6, 18))
        );
        assert_eq!(KernelVersion::parse("5.10"), Some(KernelVersion(5, 10)));
        assert_eq!(KernelVersion::parse("garbage"), None);
    }

    #[test]
    fn missing_capabilities_from_cap_eff() {
        let status = "Name:\tagent\nCapInh:\t0000000000000000\nCapEff:\t000000c000000020\n";
        let effective = parse_cap_eff(status).unwrap();
        let needed = capabilities_needed(Mode::Enforce, KernelVersion(6, 1));
        assert!(missing_capabilities(&needed, effective).is_empty());
        // Without PERFMON (bit 38).
        let without = effective & !(1 << 38);
        assert_eq!(names(&missing_capabilities(&needed, without)), ["PERFMON"]);
        // SYS_ADMIN stands in for BPF and PERFMON, not for KILL.
        assert_eq!(names(&missing_capabilities(&needed, 1 << 21)), ["KILL"]);
    }

    #[test]
    fn the_check_names_each_missing_thing_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fn environment<'a>(sockets: &'a [std::path::PathBuf], state: &'a Path) -> Environment<'a> {
            Environment {
                mode: Mode::Enforce,
                btf: Path::new("/sys/kernel/btf/vmlinux"),
                kernel: Some(KernelVersion(6, 18)),
                effective: Some((1 << 39) | (1 << 38)),
                tracefs: false,
                cgroup_root_inode: Some(4242),
                runtime_sockets: sockets,
                state_dir: state,
            }
        }
        let missing_mount = [
            dir.path().join("run-containerd/containerd.sock"),
            dir.path().join("run-crio/crio.sock"),
        ];
        let report = check(&environment(&missing_mount, &state));
        let text = report.problems.join("\n");
        assert_eq!(report.problems.len(), 4, "{text}");
        assert!(text.contains("CAP_KILL is missing"), "{text}");
        assert!(text.contains("tracefs is not mounted"), "{text}");
        assert!(text.contains("not the host's tree"), "{text}");
        assert!(
            text.contains("no container runtime socket folder"),
            "{text}"
        );
        assert!(text.contains("run-crio/crio.sock"), "{text}");
        // What is there is not reported.
        assert!(!text.contains("state folder"), "{text}");
        // The folder mounted, the socket not there yet: containerd may
        // still be starting, which is no reason to stop.
        let report = check(&environment(&[dir.path().join("containerd.sock")], &state));
        assert_eq!(report.problems.len(), 3, "{:?}", report.problems);
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    }
}
