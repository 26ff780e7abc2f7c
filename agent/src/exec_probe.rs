//! Loads the exec tracepoint program, attaches it and reads its events.
//!
//! One [`ExecProbe`] owns the loaded eBPF object: dropping it detaches the
//! program and frees its maps.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use imagegate_common::{globals, names};
use tokio::io::unix::AsyncFd;

use crate::{
    exec_event::{Exec, SizeMismatch},
    kernel_offsets::{OffsetError, TaskOffsets},
    tracefs::{self, FormatError},
};

/// The eBPF object built by `cargo xtask build`, embedded at compile time
/// (agent/build.rs copies it into OUT_DIR).
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imagegate-ebpf.o"));

const TRACEPOINT: (&str, &str) = ("sched", "sched_process_exec");

/// Why the exec probe could not start. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Kernel struct offsets were not found in BTF.
    #[error(transparent)]
    Offsets(#[from] OffsetError),
    /// The tracepoint's record layout could not be read.
    #[error("reading the sched/sched_process_exec tracepoint format: {0}")]
    Format(#[from] FormatError),
    /// The kernel refused the object or a map in it.
    #[error(
        "loading the eBPF object failed: {0}; the agent needs root (or CAP_BPF, CAP_PERFMON \
         and CAP_SYS_RESOURCE) and a kernel with BPF ring buffers (5.8 or later)"
    )]
    Load(#[from] aya::EbpfError),
    /// The kernel refused to load or attach the program.
    #[error(
        "attaching the sched/sched_process_exec tracepoint failed: {0}; check that tracefs \
         is mounted and the agent runs as root"
    )]
    Attach(#[from] aya::programs::ProgramError),
    /// A map the program needs is not usable.
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// The object does not hold what this agent expects (built from other sources).
    #[error("the embedded eBPF object has no {0}; rebuild with `cargo xtask build`")]
    Missing(&'static str),
    /// Waiting on the ring buffer failed.
    #[error("waiting for exec events: {0}")]
    Poll(#[from] std::io::Error),
    /// A record of the wrong size came out of the ring buffer.
    #[error(transparent)]
    Record(#[from] SizeMismatch),
}

/// Facts about the kernel the probe was loaded with, for the start-up report.
#[derive(Clone, Debug)]
pub struct KernelFacts {
    pub task_offsets: TaskOffsets,
    pub exec_filename_loc_offset: u32,
    pub tracefs: std::path::PathBuf,
}

/// The attached exec program and its ring buffer.
pub struct ExecProbe {
    // Keeps the program attached; dropped last.
    _ebpf: Ebpf,
    events: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    facts: KernelFacts,
}

impl ExecProbe {
    /// Reads kernel offsets, loads the object and attaches the tracepoint.
    /// Needs a tokio runtime (the ring buffer is polled through it).
    pub fn attach(btf_path: &Path) -> Result<Self, ProbeError> {
        let task_offsets = TaskOffsets::from_file(btf_path)?;
        let tracefs = tracefs::root()?;
        let format = tracefs::read_format(&tracefs, TRACEPOINT.0, TRACEPOINT.1)?;
        let exec_filename_loc_offset = tracefs::field_offset(&format, "filename")?;

        raise_memlock_limit();
        let mut ebpf = EbpfLoader::new()
            .override_global(
                globals::TASK_REAL_PARENT_OFFSET,
                &task_offsets.real_parent,
                true,
            )
            .override_global(globals::TASK_TGID_OFFSET, &task_offsets.tgid, true)
            .override_global(
                globals::EXEC_FILENAME_LOC_OFFSET,
                &exec_filename_loc_offset,
                true,
            )
            .load(EBPF_OBJECT)?;

        let program: &mut TracePoint = ebpf
            .program_mut(names::EXEC_PROGRAM)
            .ok_or(ProbeError::Missing(names::EXEC_PROGRAM))?
            .try_into()?;
        program.load()?;
        program.attach(TRACEPOINT.0, TRACEPOINT.1)?;

        let events = take_map(&mut ebpf, names::EXEC_EVENTS)
            .and_then(|m| RingBuf::try_from(m).map_err(map_err(names::EXEC_EVENTS)))?;
        let lost = take_map(&mut ebpf, names::LOST_EVENTS)
            .and_then(|m| PerCpuArray::try_from(m).map_err(map_err(names::LOST_EVENTS)))?;

        // SAFETY: the ring buffer owns its map fd, and `ExecProbe` keeps the
        // ring buffer (and so the fd) alive, unreplaced, for as long as the
        // AsyncFd registration exists.
        let events = unsafe { AsyncFd::register(events) }.map_err(std::io::Error::from)?;
        Ok(Self {
            _ebpf: ebpf,
            events,
            lost,
            facts: KernelFacts {
                task_offsets,
                exec_filename_loc_offset,
                tracefs,
            },
        })
    }

    /// What the kernel offered at attach time.
    pub fn facts(&self) -> &KernelFacts {
        &self.facts
    }

    /// Waits for exec events and appends every one that is ready to `out`.
    pub async fn recv(&mut self, out: &mut Vec<Exec>) -> Result<(), ProbeError> {
        loop {
            let mut guard = self.events.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let before = out.len();
            while let Some(item) = ring.next() {
                out.push(Exec::from_bytes(&item)?);
            }
            // Epoll is edge-like for ring buffers: clear readiness only once
            // the ring was seen empty, then wait again if nothing came.
            guard.clear_ready();
            if out.len() > before {
                return Ok(());
            }
        }
    }

    /// Events the program dropped because the ring buffer was full, summed
    /// over CPUs.
    pub fn lost_events(&self) -> Result<u64, ProbeError> {
        let per_cpu = self.lost.get(&0, 0).map_err(map_err(names::LOST_EVENTS))?;
        Ok(per_cpu.iter().sum())
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::Missing(name))
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, whose default
/// (64 KiB or 8 MiB) is smaller than the ring buffer. Newer kernels account
/// them to the cgroup and ignore this; failing to raise it is not fatal.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit only reads the struct passed to it.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK; fine on kernels 5.11 and later"
        );
    }
}
