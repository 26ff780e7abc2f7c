//! Types shared by the eBPF programs (`imagegate-ebpf`) and the node agent.
//!
//! Everything here crosses the kernel/user boundary as raw bytes, so every
//! struct is `#[repr(C)]`, uses fixed-width fields only (no `bool`) and has no
//! implicit padding: the verifier rejects reads of uninitialised padding, and
//! both sides must agree on the layout byte for byte. The layout is pinned by
//! the size assertions at the bottom of this file.
#![no_std]

/// Length of `task_struct::comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Bytes of the exec'd path kept per event. Longer paths are cut and flagged
/// with [`ExecEvent::FLAG_FILENAME_TRUNCATED`].
pub const FILENAME_CAP: usize = 256;

/// Bytes of a new cgroup's path kept per event (kubelet's systemd-driver
/// paths run to about 200 bytes).
pub const CGROUP_PATH_CAP: usize = 512;

/// One `sched/sched_process_exec` tracepoint hit, as sent through the ring
/// buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    /// Thread id of the task that exec'd (the kernel's `pid`).
    pub pid: u32,
    /// Process id (the kernel's `tgid`); equal to `pid` after exec.
    pub tgid: u32,
    /// Process id of the real parent.
    pub ppid: u32,
    /// Bit set of `FLAG_*` values.
    pub flags: u32,
    /// cgroup v2 id of the task (inode of its folder in the unified hierarchy).
    pub cgroup_id: u64,
    /// Id of the task's cgroup in the v1 memory hierarchy (its kernfs node id,
    /// the folder's inode); equal to `cgroup_id` when memory is on cgroup v2.
    pub memcg_id: u64,
    /// Inode of the task's pid namespace (as `/proc/PID/ns/pid` shows).
    pub pid_ns: u32,
    /// Inode of the task's mount namespace.
    pub mnt_ns: u32,
    /// Bytes of `filename` that hold the path, without the trailing NUL.
    pub filename_len: u32,
    /// What the exec program did with this exec: one of `ACTION_*`.
    pub action: u32,
    /// The task's command name after exec, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// The path passed to execve, as the kernel saw it (not NUL-terminated
    /// past `filename_len`).
    pub filename: [u8; FILENAME_CAP],
}

impl ExecEvent {
    /// The real parent could not be read; `ppid` is 0.
    pub const FLAG_PPID_UNKNOWN: u32 = 1 << 0;
    /// The path was longer than [`FILENAME_CAP`] and was cut.
    pub const FLAG_FILENAME_TRUNCATED: u32 = 1 << 1;
    /// The path could not be read; `filename_len` is 0.
    pub const FLAG_FILENAME_UNREADABLE: u32 = 1 << 2;
    /// The memory cgroup could not be read; `memcg_id` is 0.
    pub const FLAG_MEMCG_UNKNOWN: u32 = 1 << 3;
    /// The namespaces could not be read; `pid_ns` and `mnt_ns` are 0.
    pub const FLAG_NS_UNKNOWN: u32 = 1 << 4;
}

/// One `cgroup/cgroup_mkdir` tracepoint hit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupEvent {
    /// The new cgroup's id (its kernfs node id, the folder's inode).
    pub id: u64,
    /// Hierarchy id (`root` in the tracepoint): 0 for cgroup v2, else the
    /// v1 hierarchy's number from `/proc/cgroups`.
    pub hierarchy: u32,
    /// Depth below the hierarchy's root.
    pub level: u32,
    /// Bytes of `path` that hold the path, without the trailing NUL.
    pub path_len: u32,
    /// Bit set of `FLAG_*` values.
    pub flags: u32,
    /// The cgroup's path inside its hierarchy, as the kernel printed it.
    pub path: [u8; CGROUP_PATH_CAP],
}

impl CgroupEvent {
    /// The path was longer than [`CGROUP_PATH_CAP`] and was cut.
    pub const FLAG_PATH_TRUNCATED: u32 = 1 << 0;
    /// The path could not be read.
    pub const FLAG_PATH_UNREADABLE: u32 = 1 << 1;
}

/// What the exec program does with execs in a cgroup, by the value stored
/// for the cgroup's key in [`names::CGROUP_ACTIONS`].
pub mod action {
    /// First seen by the kernel: reported; the program stored
    /// [`PENDING`] so user space knows the kernel has met it.
    pub const NEW: u32 = 0;
    /// Not yet classified by user space: reported.
    pub const PENDING: u32 = 1;
    /// A host cgroup, or an admitted or exempt container: dropped in the kernel.
    pub const IGNORE: u32 = 2;
    /// A container under watch (identifying, in its grace window, unknown,
    /// or flagged in audit mode): every exec reported.
    pub const WATCH: u32 = 3;
    /// A violating container in enforce mode: the task is killed with
    /// SIGKILL as its exec completes, and reported.
    pub const KILL: u32 = 4;
}

/// Which id keys [`names::CGROUP_ACTIONS`]: hosts with cgroup v2 (unified or
/// hybrid) use the v2 id; pure v1 hosts, where every task's v2 id is the
/// root's, use the memory cgroup's id.
pub mod filter_key {
    pub const CGROUP_V2: u32 = 0;
    pub const MEMORY_V1: u32 = 1;
}

/// Kernel layout facts, read from the running kernel's BTF at start-up and
/// passed to the programs as one read-only global, because Rust eBPF has no
/// CO-RE relocation of field offsets. Every field is a byte offset unless
/// named otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_cgroups: u32,
    pub task_thread_pid: u32,
    pub task_nsproxy: u32,
    pub css_set_subsys: u32,
    /// Index of the memory controller in `css_set.subsys`, or `u32::MAX`
    /// when the kernel has no memory controller.
    pub memory_cgrp_index: u32,
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    /// `sizeof(struct upid)`.
    pub upid_size: u32,
    pub upid_ns: u32,
    pub pid_namespace_ns: u32,
    pub nsproxy_mnt_ns: u32,
    pub mnt_namespace_ns: u32,
    pub ns_common_inum: u32,
    /// Offset, in the `sched_process_exec` record, of `__data_loc filename`.
    pub exec_filename_loc: u32,
    /// Offset, in the `cgroup_mkdir` record, of `__data_loc path`.
    pub mkdir_path_loc: u32,
    /// One of [`filter_key`].
    pub filter_key: u32,
    /// Non-zero: report every exec, ignoring [`names::CGROUP_ACTIONS`]
    /// (`--print-events` and tests of the raw probe).
    pub report_all: u32,
}

/// Names of the read-only globals the agent sets before loading the programs.
pub mod globals {
    /// The [`super::KernelLayout`].
    pub const KERNEL_LAYOUT: &str = "KERNEL_LAYOUT";
}

/// Names of the maps and programs in the eBPF object.
pub mod names {
    /// Ring buffer of [`super::ExecEvent`].
    pub const EXEC_EVENTS: &str = "EXEC_EVENTS";
    /// Ring buffer of [`super::CgroupEvent`].
    pub const CGROUP_EVENTS: &str = "CGROUP_EVENTS";
    /// Per-CPU array with two `u64`s: exec and cgroup events dropped because
    /// their ring buffer was full.
    pub const LOST_EVENTS: &str = "LOST_EVENTS";
    /// LRU hash, cgroup key (`u64`) to one of [`super::action`].
    pub const CGROUP_ACTIONS: &str = "CGROUP_ACTIONS";
    /// The `sched/sched_process_exec` tracepoint program.
    pub const EXEC_PROGRAM: &str = "sched_process_exec";
    /// The `cgroup/cgroup_mkdir` tracepoint program.
    pub const MKDIR_PROGRAM: &str = "cgroup_mkdir";
    /// The BPF LSM program on `bprm_check_security` (denies execs in KILL
    /// cgroups where the kernel loads BPF LSM programs).
    pub const LSM_PROGRAM: &str = "deny_exec";
}

/// Slots of [`names::LOST_EVENTS`].
pub mod lost_slot {
    pub const EXEC: u32 = 0;
    pub const CGROUP: u32 = 1;
}

// SAFETY: these types are `repr(C)`, `Copy`, made only of integers and byte
// arrays, and have no padding (asserted below), so any bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ExecEvent {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for CgroupEvent {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for KernelLayout {}

const _: () = assert!(core::mem::size_of::<ExecEvent>() == 48 + COMM_LEN + FILENAME_CAP);
const _: () = assert!(core::mem::align_of::<ExecEvent>() == 8);
const _: () = assert!(core::mem::size_of::<CgroupEvent>() == 24 + CGROUP_PATH_CAP);
const _: () = assert!(core::mem::size_of::<KernelLayout>() == 22 * 4);
