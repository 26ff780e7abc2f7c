//! imagegate's eBPF programs. Kept thin: each entry point fills an event and
//! hands it to user space, where every decision is made.
//!
//! Built for `bpfel-unknown-none` by `cargo xtask build` (see README.md).
#![no_std]
#![no_main]

use core::ptr::{addr_of_mut, read_volatile};

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
    },
    macros::{map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use imagegate_common::{ExecEvent, FILENAME_CAP};

// Kernel layout facts, set by the agent from the running kernel's BTF and
// tracefs before loading (`EbpfLoader::override_global`). The values below are
// only placeholders the loader replaces; `read_volatile` stops the compiler
// from folding them in.
#[unsafe(no_mangle)]
static TASK_REAL_PARENT_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static EXEC_FILENAME_LOC_OFFSET: u32 = 0;

/// 1 MiB: about 3,400 exec events in flight before anything is dropped.
#[map(name = "EXEC_EVENTS")]
static EXEC_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Slot 0 counts events dropped because the ring buffer was full.
#[map(name = "LOST_EVENTS")]
static LOST_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    match try_sched_process_exec(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_sched_process_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(mut entry) = EXEC_EVENTS.reserve::<ExecEvent>(0) else {
        count_lost();
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `event` points to a reserved ring buffer slot of the right size
    // and alignment; every field is written before `submit`.
    unsafe {
        (*event).pid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event)._reserved = 0;
        (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let mut flags = 0;
        match read_ppid() {
            Some(ppid) => (*event).ppid = ppid,
            None => {
                (*event).ppid = 0;
                flags |= ExecEvent::FLAG_PPID_UNKNOWN;
            }
        }
        flags |= read_filename(
            ctx,
            &mut *addr_of_mut!((*event).filename),
            &mut (*event).filename_len,
        );
        (*event).flags = flags;
    }
    entry.submit(0);
    Ok(())
}

/// `current->real_parent->tgid`, with offsets from BTF.
fn read_ppid() -> Option<u32> {
    // SAFETY: the globals are plain integers; the task pointers are only
    // dereferenced through `bpf_probe_read_kernel`, which tolerates bad ones.
    unsafe {
        let real_parent_off = read_volatile(&TASK_REAL_PARENT_OFFSET) as usize;
        let tgid_off = read_volatile(&TASK_TGID_OFFSET) as usize;
        let task = bpf_get_current_task() as *const u8;
        let parent: *const u8 = bpf_probe_read_kernel(task.add(real_parent_off).cast()).ok()?;
        let tgid: i32 = bpf_probe_read_kernel(parent.add(tgid_off).cast()).ok()?;
        Some(tgid as u32)
    }
}

/// Copies the tracepoint's `__data_loc char[] filename` into `dest`; returns
/// the `FLAG_FILENAME_*` bits that apply.
fn read_filename(ctx: &TracePointContext, dest: &mut [u8; FILENAME_CAP], len: &mut u32) -> u32 {
    *len = 0;
    // SAFETY: the offset comes from the tracepoint's own format file; the
    // read goes through `bpf_probe_read_kernel`.
    let loc: u32 = match unsafe { ctx.read_at(read_volatile(&EXEC_FILENAME_LOC_OFFSET) as usize) } {
        Ok(loc) => loc,
        Err(_) => return ExecEvent::FLAG_FILENAME_UNREADABLE,
    };
    // A __data_loc field holds the data's offset in its low 16 bits and its
    // length (with the NUL) in the high 16 bits.
    let data_offset = (loc & 0xffff) as usize;
    let data_len = (loc >> 16) as usize;
    // SAFETY: as above; the string read stops at `dest.len()`.
    let src = unsafe { (ctx.as_ptr() as *const u8).add(data_offset) };
    match unsafe { bpf_probe_read_kernel_str_bytes(src, dest) } {
        Ok(bytes) => {
            *len = bytes.len() as u32;
            if data_len > FILENAME_CAP {
                ExecEvent::FLAG_FILENAME_TRUNCATED
            } else {
                0
            }
        }
        Err(_) => ExecEvent::FLAG_FILENAME_UNREADABLE,
    }
}

fn count_lost() {
    if let Some(lost) = LOST_EVENTS.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot is only touched by programs on its own CPU,
        // and a program is not preempted by itself.
        unsafe { *lost += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
