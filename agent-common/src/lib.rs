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
    /// Bytes of `filename` that hold the path, without the trailing NUL.
    pub filename_len: u32,
    /// Keeps `comm` 8-byte aligned without implicit padding.
    pub _reserved: u32,
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
}

/// Names of the read-only globals the agent sets before loading the programs.
/// They carry kernel struct offsets read from BTF at start-up, because Rust
/// eBPF has no CO-RE relocation of field offsets.
pub mod globals {
    /// Byte offset of `task_struct::real_parent`.
    pub const TASK_REAL_PARENT_OFFSET: &str = "TASK_REAL_PARENT_OFFSET";
    /// Byte offset of `task_struct::tgid`.
    pub const TASK_TGID_OFFSET: &str = "TASK_TGID_OFFSET";
    /// Byte offset, in the `sched_process_exec` tracepoint record, of the
    /// `__data_loc char[] filename` field (from the tracefs format file).
    pub const EXEC_FILENAME_LOC_OFFSET: &str = "EXEC_FILENAME_LOC_OFFSET";
}

/// Names of the maps and programs in the eBPF object.
pub mod names {
    /// Ring buffer of [`super::ExecEvent`].
    pub const EXEC_EVENTS: &str = "EXEC_EVENTS";
    /// Per-CPU array with one `u64`: events dropped because the ring was full.
    pub const LOST_EVENTS: &str = "LOST_EVENTS";
    /// The `sched/sched_process_exec` tracepoint program.
    pub const EXEC_PROGRAM: &str = "sched_process_exec";
}

// SAFETY: `ExecEvent` is `repr(C)`, `Copy`, made only of integers and byte
// arrays, and has no padding (asserted below), so any bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ExecEvent {}

const _: () = assert!(core::mem::size_of::<ExecEvent>() == 32 + COMM_LEN + FILENAME_CAP);
const _: () = assert!(core::mem::align_of::<ExecEvent>() == 8);
