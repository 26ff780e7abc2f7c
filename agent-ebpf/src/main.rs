//! imagegate's eBPF programs. Kept thin: each entry point reads what the
//! kernel knows about the task, applies the one decision user space stored
//! for its cgroup (report, ignore, kill) and hands the event over. Every
//! other decision is made in user space.
//!
//! Built for `bpfel-unknown-none` by `cargo xtask build` (see README.md).
#![no_std]
#![no_main]

use core::ptr::{addr_of_mut, read_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        bpf_send_signal,
    },
    macros::{lsm, map, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{LsmContext, TracePointContext},
};
use imagegate_common::{
    CGROUP_PATH_CAP, CgroupEvent, ExecEvent, FILENAME_CAP, KernelLayout, action, filter_key,
    lost_slot,
};

/// Kernel layout facts, set by the agent from the running kernel's BTF and
/// tracefs before loading (`EbpfLoader::override_global`). The zeros are
/// placeholders the loader replaces; `read_volatile` stops the compiler from
/// folding them in.
#[unsafe(no_mangle)]
static KERNEL_LAYOUT: KernelLayout = KernelLayout {
    task_real_parent: 0,
    task_tgid: 0,
    task_cgroups: 0,
    task_thread_pid: 0,
    task_nsproxy: 0,
    css_set_subsys: 0,
    memory_cgrp_index: 0,
    css_cgroup: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    pid_level: 0,
    pid_numbers: 0,
    upid_size: 0,
    upid_ns: 0,
    pid_namespace_ns: 0,
    nsproxy_mnt_ns: 0,
    mnt_namespace_ns: 0,
    ns_common_inum: 0,
    exec_filename_loc: 0,
    mkdir_path_loc: 0,
    filter_key: 0,
    report_all: 0,
};

const SIGKILL: u32 = 9;
const EPERM: i32 = 1;

/// 1 MiB: about 3,000 exec events in flight before anything is dropped.
const EXEC_RING_BYTES: u64 = 1 << 20;
#[map(name = "EXEC_EVENTS")]
static EXEC_EVENTS: RingBuf = RingBuf::with_byte_size(EXEC_RING_BYTES as u32, 0);

/// 256 KiB: cgroups are created far less often than processes exec.
#[map(name = "CGROUP_EVENTS")]
static CGROUP_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 18, 0);

/// Per-CPU drop counters, one slot per ring buffer (`lost_slot`).
#[map(name = "LOST_EVENTS")]
static LOST_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// cgroup key -> `action::*`. LRU so that cgroups of long-gone containers
/// age out instead of filling the map; user space re-adds what it needs.
#[map(name = "CGROUP_ACTIONS")]
static CGROUP_ACTIONS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

fn layout() -> KernelLayout {
    // SAFETY: a plain read of a global the loader filled in.
    unsafe { read_volatile(&KERNEL_LAYOUT) }
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    match try_sched_process_exec(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_sched_process_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let layout = layout();
    let cgroup_id = current_cgroup_id();
    // Host execs are dropped after one map lookup: read nothing else first.
    let key = if layout.filter_key == filter_key::MEMORY_V1 {
        read_memcg_id(&layout).unwrap_or(0)
    } else {
        cgroup_id
    };

    let mut decided = action::NEW;
    if layout.report_all == 0 {
        // SAFETY: the value is copied out at once; the LRU may evict it later.
        match unsafe { CGROUP_ACTIONS.get(&key) }.copied() {
            None => {
                // Mark it so that user space is told once per burst, not
                // per exec, while it classifies the cgroup.
                let _ = CGROUP_ACTIONS.insert(&key, &action::PENDING, BPF_NOEXIST as u64);
            }
            Some(action::IGNORE) => return Ok(()),
            Some(action::KILL) => {
                // SAFETY: signals the current task, which is exec'ing in a
                // cgroup user space marked as violating.
                unsafe { bpf_send_signal(SIGKILL) };
                decided = action::KILL;
            }
            Some(other) => decided = other,
        }
    }

    let Some(mut entry) = EXEC_EVENTS.reserve::<ExecEvent>(0) else {
        count_lost(lost_slot::EXEC);
        return Ok(());
    };
    let memcg_id = read_memcg_id(&layout);
    let event = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `event` points to a reserved ring buffer slot of the right size
    // and alignment; every field is written before `submit`.
    unsafe {
        (*event).pid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).cgroup_id = cgroup_id;
        (*event).action = decided;
        (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let mut flags = 0;
        match read_ppid(&layout) {
            Some(ppid) => (*event).ppid = ppid,
            None => {
                (*event).ppid = 0;
                flags |= ExecEvent::FLAG_PPID_UNKNOWN;
            }
        }
        match memcg_id {
            Some(id) => (*event).memcg_id = id,
            None => {
                (*event).memcg_id = 0;
                flags |= ExecEvent::FLAG_MEMCG_UNKNOWN;
            }
        }
        match read_namespaces(&layout) {
            Some((pid_ns, mnt_ns)) => {
                (*event).pid_ns = pid_ns;
                (*event).mnt_ns = mnt_ns;
            }
            None => {
                (*event).pid_ns = 0;
                (*event).mnt_ns = 0;
                flags |= ExecEvent::FLAG_NS_UNKNOWN;
            }
        }
        let (len, loc_flags) = read_data_loc_str(
            ctx,
            layout.exec_filename_loc,
            &mut *addr_of_mut!((*event).filename),
        );
        (*event).filename_len = len;
        if loc_flags & LOC_TRUNCATED != 0 {
            flags |= ExecEvent::FLAG_FILENAME_TRUNCATED;
        }
        if loc_flags & LOC_UNREADABLE != 0 {
            flags |= ExecEvent::FLAG_FILENAME_UNREADABLE;
        }
        (*event).flags = flags;
    }
    // Execs in a container already under watch can wait for user space's
    // next periodic read: waking it for each one costs more than the exec.
    // A cgroup user space has not classified yet, or a kill, wakes it now.
    // A quarter full (a burst) wakes it too, long before anything is lost.
    let backlog = EXEC_EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let wakeup = if decided == action::WATCH && backlog < EXEC_RING_BYTES / 4 {
        BPF_RB_NO_WAKEUP
    } else {
        BPF_RB_FORCE_WAKEUP
    };
    entry.submit(wakeup as u64);
    Ok(())
}

#[tracepoint(category = "cgroup", name = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    match try_cgroup_mkdir(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_cgroup_mkdir(ctx: &TracePointContext) -> Result<(), i64> {
    let layout = layout();
    // The record: int root @8, int level @12, u64 id @16 (stable since 5.8;
    // the path's __data_loc offset comes from tracefs all the same).
    // SAFETY: reads inside the tracepoint record through bpf_probe_read.
    let (hierarchy, level, id) = unsafe {
        (
            ctx.read_at::<i32>(8)?,
            ctx.read_at::<i32>(12)?,
            ctx.read_at::<u64>(16)?,
        )
    };
    let Some(mut entry) = CGROUP_EVENTS.reserve::<CgroupEvent>(0) else {
        count_lost(lost_slot::CGROUP);
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: as in the exec program: a reserved slot, every field written.
    unsafe {
        (*event).id = id;
        (*event).hierarchy = hierarchy as u32;
        (*event).level = level as u32;
        let (len, loc_flags) = read_data_loc_str(
            ctx,
            layout.mkdir_path_loc,
            &mut *addr_of_mut!((*event).path),
        );
        (*event).path_len = len;
        let mut flags = 0;
        if loc_flags & LOC_TRUNCATED != 0 {
            flags |= CgroupEvent::FLAG_PATH_TRUNCATED;
        }
        if loc_flags & LOC_UNREADABLE != 0 {
            flags |= CgroupEvent::FLAG_PATH_UNREADABLE;
        }
        (*event).flags = flags;
    }
    entry.submit(0);
    Ok(())
}

/// Denies an exec in a KILL cgroup before it happens, where the kernel loads
/// BPF LSM programs (the agent probes at start-up and reports whether it is
/// in use; where it is not, the exec tracepoint's SIGKILL enforces).
#[lsm(hook = "bprm_check_security")]
pub fn deny_exec(_ctx: LsmContext) -> i32 {
    let layout = layout();
    let key = if layout.filter_key == filter_key::MEMORY_V1 {
        read_memcg_id(&layout).unwrap_or(0)
    } else {
        current_cgroup_id()
    };
    // SAFETY: the value is copied out at once.
    match unsafe { CGROUP_ACTIONS.get(&key) }.copied() {
        Some(action::KILL) => -EPERM,
        _ => 0,
    }
}

fn current_cgroup_id() -> u64 {
    // SAFETY: the helper takes no arguments and only reads the current task.
    unsafe { bpf_get_current_cgroup_id() }
}

/// `current->real_parent->tgid`.
fn read_ppid(layout: &KernelLayout) -> Option<u32> {
    // SAFETY: the task pointers are only dereferenced through
    // `bpf_probe_read_kernel`, which tolerates bad ones.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let parent: *const u8 =
            bpf_probe_read_kernel(task.add(layout.task_real_parent as usize).cast()).ok()?;
        let tgid: i32 = bpf_probe_read_kernel(parent.add(layout.task_tgid as usize).cast()).ok()?;
        Some(tgid as u32)
    }
}

/// `current->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id`: the task's
/// memory cgroup, which is what tells containers apart on cgroup v1.
fn read_memcg_id(layout: &KernelLayout) -> Option<u64> {
    if layout.memory_cgrp_index >= 64 {
        return None;
    }
    // SAFETY: as in `read_ppid`.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let css_set: *const u8 =
            bpf_probe_read_kernel(task.add(layout.task_cgroups as usize).cast()).ok()?;
        let slot = layout.css_set_subsys as usize + layout.memory_cgrp_index as usize * 8;
        let css: *const u8 = bpf_probe_read_kernel(css_set.add(slot).cast()).ok()?;
        let cgroup: *const u8 =
            bpf_probe_read_kernel(css.add(layout.css_cgroup as usize).cast()).ok()?;
        let kn: *const u8 =
            bpf_probe_read_kernel(cgroup.add(layout.cgroup_kn as usize).cast()).ok()?;
        bpf_probe_read_kernel(kn.add(layout.kernfs_node_id as usize).cast()).ok()
    }
}

/// Inodes of the task's pid namespace (`thread_pid->numbers[level].ns`) and
/// mount namespace (`nsproxy->mnt_ns`).
fn read_namespaces(layout: &KernelLayout) -> Option<(u32, u32)> {
    // SAFETY: as in `read_ppid`.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let pid: *const u8 =
            bpf_probe_read_kernel(task.add(layout.task_thread_pid as usize).cast()).ok()?;
        let level: u32 = bpf_probe_read_kernel(pid.add(layout.pid_level as usize).cast()).ok()?;
        // Pid namespaces nest at most 32 deep (MAX_PID_NS_LEVEL).
        let level = (level & 31) as usize;
        let upid = layout.pid_numbers as usize + level * layout.upid_size as usize;
        let pid_ns: *const u8 =
            bpf_probe_read_kernel(pid.add(upid + layout.upid_ns as usize).cast()).ok()?;
        let pid_inum: u32 = bpf_probe_read_kernel(
            pid_ns
                .add(layout.pid_namespace_ns as usize + layout.ns_common_inum as usize)
                .cast(),
        )
        .ok()?;
        let nsproxy: *const u8 =
            bpf_probe_read_kernel(task.add(layout.task_nsproxy as usize).cast()).ok()?;
        let mnt_ns: *const u8 =
            bpf_probe_read_kernel(nsproxy.add(layout.nsproxy_mnt_ns as usize).cast()).ok()?;
        let mnt_inum: u32 = bpf_probe_read_kernel(
            mnt_ns
                .add(layout.mnt_namespace_ns as usize + layout.ns_common_inum as usize)
                .cast(),
        )
        .ok()?;
        Some((pid_inum, mnt_inum))
    }
}

const LOC_TRUNCATED: u32 = 1;
const LOC_UNREADABLE: u32 = 2;

/// Copies a tracepoint's `__data_loc char[]` field at `loc_offset` into
/// `dest`; returns the bytes copied and `LOC_*` bits.
fn read_data_loc_str<const N: usize>(
    ctx: &TracePointContext,
    loc_offset: u32,
    dest: &mut [u8; N],
) -> (u32, u32) {
    // SAFETY: the offset comes from the tracepoint's own format file; the
    // read goes through `bpf_probe_read_kernel`.
    let loc: u32 = match unsafe { ctx.read_at(loc_offset as usize) } {
        Ok(loc) => loc,
        Err(_) => return (0, LOC_UNREADABLE),
    };
    // A __data_loc field holds the data's offset in its low 16 bits and its
    // length (with the NUL) in the high 16 bits.
    let data_offset = (loc & 0xffff) as usize;
    let data_len = (loc >> 16) as usize;
    // SAFETY: as above; the string read stops at `dest.len()`.
    let src = unsafe { (ctx.as_ptr() as *const u8).add(data_offset) };
    match unsafe { bpf_probe_read_kernel_str_bytes(src, dest) } {
        Ok(bytes) => {
            let flags = if data_len > N { LOC_TRUNCATED } else { 0 };
            (bytes.len() as u32, flags)
        }
        Err(_) => (0, LOC_UNREADABLE),
    }
}

fn count_lost(slot: u32) {
    if let Some(lost) = LOST_EVENTS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot is only touched by programs on its own CPU,
        // and a program is not preempted by itself.
        unsafe { *lost += 1 };
    }
}

// Keep the buffer sizes the user side decodes in one place.
const _: () = assert!(FILENAME_CAP == 256 && CGROUP_PATH_CAP == 512);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
