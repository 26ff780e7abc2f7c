//! Loads the eBPF programs, attaches them and reads their events.
//!
//! One [`Probe`] owns the loaded eBPF object: dropping it detaches the
//! programs and frees their maps. The kernel filter ([`CgroupActions`]) is
//! handed out separately, because the verdict side writes it while the
//! event side reads the ring buffers.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{Lsm, TracePoint},
};
use imagegate_common::{KernelLayout, action, globals, lost_slot, names};
use tokio::io::unix::AsyncFd;

use imagegate_plumbing::errors::error_chain;

use crate::{
    exec_event::{Exec, NewCgroup, SizeMismatch},
    kernel_offsets::{self, OffsetError},
    model::Action,
    tracefs::{self, FormatError},
};

/// The eBPF object built by `cargo xtask build`, embedded at compile time
/// (agent/build.rs copies it into OUT_DIR).
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imagegate-ebpf.o"));

const EXEC_TRACEPOINT: (&str, &str) = ("sched", "sched_process_exec");
const MKDIR_TRACEPOINT: (&str, &str) = ("cgroup", "cgroup_mkdir");
const LSM_HOOK: &str = "bprm_check_security";
/// The exec program does not wake user space for execs in containers it
/// already watches; they are read this often.
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(25);

/// Why the probe could not start. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The binary was built without `IMAGEGATE_EBPF_OBJECT` (agent/build.rs).
    #[error(
        "this agent was built without its eBPF object (IMAGEGATE_EBPF_OBJECT was not set); \
         build it with `cargo xtask build` (or use the release image)"
    )]
    NoObject,
    /// Kernel struct offsets were not found in BTF.
    #[error(transparent)]
    Offsets(#[from] OffsetError),
    /// A tracepoint's record layout could not be read.
    #[error("reading a tracepoint format: {0}")]
    Format(#[from] FormatError),
    /// The kernel refused the object or a map in it.
    #[error(
        "loading the eBPF object failed: {0}; the agent needs root (or CAP_BPF, CAP_PERFMON \
         and CAP_SYS_RESOURCE) and a kernel with BPF ring buffers (5.8 or later)"
    )]
    Load(#[from] aya::EbpfError),
    /// The kernel refused to load or attach a tracepoint program.
    #[error(
        "attaching the {tracepoint} tracepoint failed: {source}; check that tracefs is \
         mounted and the agent runs as root"
    )]
    Attach {
        tracepoint: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map the programs need is not usable.
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// The object does not hold what this agent expects (built from other sources).
    #[error("the embedded eBPF object has no {0}; rebuild with `cargo xtask build`")]
    Missing(&'static str),
    /// Waiting on a ring buffer failed.
    #[error("waiting for events: {0}")]
    Poll(#[from] std::io::Error),
    /// A record of the wrong size came out of a ring buffer.
    #[error(transparent)]
    Record(#[from] SizeMismatch),
}

/// How to load the programs.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Kernel BTF to read struct offsets from.
    pub btf: PathBuf,
    /// One of `imagegate_common::filter_key`.
    pub filter_key: u32,
    /// Report every exec, ignoring the cgroup actions (`--print-events`).
    pub report_all: bool,
    /// Attach the BPF LSM program if the kernel loads it (enforce mode).
    pub attach_lsm: bool,
}

/// Whether exec can be denied before it runs on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LsmStatus {
    /// Loaded and attached: execs in KILL cgroups fail with EPERM.
    Attached,
    /// Loaded (so available) but not attached: audit mode needs no denial.
    Available,
    /// The kernel refused it; the reason as the kernel gave it.
    Unavailable(String),
}

/// What the kernel offered at attach time, for the start-up report.
#[derive(Clone, Debug)]
pub struct KernelFacts {
    pub layout: KernelLayout,
    pub tracefs: PathBuf,
    pub lsm: LsmStatus,
}

/// One event from either ring buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeEvent {
    Exec(Exec),
    NewCgroup(NewCgroup),
}

/// The attached programs and their ring buffers.
pub struct Probe {
    // Keeps the programs attached; dropped last.
    _ebpf: Ebpf,
    exec_events: AsyncFd<RingBuf<MapData>>,
    cgroup_events: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    actions: CgroupActions,
    facts: KernelFacts,
}

impl Probe {
    /// Reads kernel offsets, loads the object and attaches the programs.
    /// Needs a tokio runtime (the ring buffers are polled through it).
    pub fn attach(options: &ProbeOptions) -> Result<Self, ProbeError> {
        // Parsed kernel BTF takes tens of MiB: each parse is dropped before
        // the next, so the agent's peak memory holds one at a time.
        let mut layout = {
            let btf = kernel_offsets::read_btf(&options.btf)?;
            kernel_offsets::kernel_layout(&btf)?
        };
        let tracefs = tracefs::root()?;
        let exec_format = tracefs::read_format(&tracefs, EXEC_TRACEPOINT.0, EXEC_TRACEPOINT.1)?;
        layout.exec_filename_loc = tracefs::field_offset(&exec_format, "filename")?;
        let mkdir_format = tracefs::read_format(&tracefs, MKDIR_TRACEPOINT.0, MKDIR_TRACEPOINT.1)?;
        layout.mkdir_path_loc = tracefs::field_offset(&mkdir_format, "path")?;
        layout.filter_key = options.filter_key;
        layout.report_all = u32::from(options.report_all);

        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        raise_memlock_limit();
        // One parse of the kernel's BTF for aya: the loader (no CO-RE
        // relocations in our object, but aya checks the kernel's features
        // with it) and the LSM program's hook.
        let kernel_btf = Btf::from_sys_fs();
        let mut ebpf = EbpfLoader::new()
            .btf(kernel_btf.as_ref().ok())
            .override_global(globals::KERNEL_LAYOUT, &layout, true)
            .load(EBPF_OBJECT)?;

        attach_tracepoint(&mut ebpf, names::EXEC_PROGRAM, EXEC_TRACEPOINT)?;
        attach_tracepoint(&mut ebpf, names::MKDIR_PROGRAM, MKDIR_TRACEPOINT)?;
        let lsm = probe_lsm(&mut ebpf, kernel_btf.as_ref().ok(), options.attach_lsm);
        drop(kernel_btf);

        let exec_events = ring(&mut ebpf, names::EXEC_EVENTS)?;
        let cgroup_events = ring(&mut ebpf, names::CGROUP_EVENTS)?;
        let lost = take_map(&mut ebpf, names::LOST_EVENTS)
            .and_then(|m| PerCpuArray::try_from(m).map_err(map_err(names::LOST_EVENTS)))?;
        let actions = take_map(&mut ebpf, names::CGROUP_ACTIONS)
            .and_then(|m| HashMap::try_from(m).map_err(map_err(names::CGROUP_ACTIONS)))?;

        Ok(Self {
            _ebpf: ebpf,
            exec_events,
            cgroup_events,
            lost,
            actions: CgroupActions(Arc::new(Mutex::new(actions))),
            facts: KernelFacts {
                layout,
                tracefs,
                lsm,
            },
        })
    }

    /// What the kernel offered at attach time.
    pub fn facts(&self) -> &KernelFacts {
        &self.facts
    }

    /// The kernel filter, shared with whoever decides verdicts.
    pub fn actions(&self) -> CgroupActions {
        self.actions.clone()
    }

    /// Waits for events and appends every one that is ready to `out`.
    pub async fn recv(&mut self, out: &mut Vec<ProbeEvent>) -> Result<(), ProbeError> {
        loop {
            let before = out.len();
            tokio::select! {
                _ = tokio::time::sleep(DRAIN_EVERY) => {
                    // Events submitted without a wake-up.
                    while let Some(item) = self.exec_events.get_mut().next() {
                        out.push(ProbeEvent::Exec(Exec::from_bytes(&item)?));
                    }
                }
                guard = self.exec_events.readable_mut() => {
                    let mut guard = guard?;
                    while let Some(item) = guard.get_inner_mut().next() {
                        out.push(ProbeEvent::Exec(Exec::from_bytes(&item)?));
                    }
                    // Epoll is edge-like for ring buffers: clear readiness
                    // only once the ring was seen empty.
                    guard.clear_ready();
                }
                guard = self.cgroup_events.readable_mut() => {
                    let mut guard = guard?;
                    while let Some(item) = guard.get_inner_mut().next() {
                        out.push(ProbeEvent::NewCgroup(NewCgroup::from_bytes(&item)?));
                    }
                    guard.clear_ready();
                }
            }
            if out.len() > before {
                return Ok(());
            }
        }
    }

    /// Events the programs dropped because a ring buffer was full, summed
    /// over CPUs: (exec events, cgroup events).
    pub fn lost_events(&self) -> Result<(u64, u64), ProbeError> {
        let sum = |slot| -> Result<u64, ProbeError> {
            let per_cpu = self
                .lost
                .get(&slot, 0)
                .map_err(map_err(names::LOST_EVENTS))?;
            Ok(per_cpu.iter().sum())
        };
        Ok((sum(lost_slot::EXEC)?, sum(lost_slot::CGROUP)?))
    }
}

/// The exec program's per-cgroup decisions (`CGROUP_ACTIONS`).
#[derive(Clone)]
pub struct CgroupActions(Arc<Mutex<HashMap<MapData, u64, u32>>>);

impl CgroupActions {
    /// Stores the action for `key` (a cgroup v2 id or memory cgroup id, as
    /// the probe's filter key says).
    pub fn set(&self, key: u64, what: Action) -> Result<(), ProbeError> {
        let value = match what {
            Action::Ignore => action::IGNORE,
            Action::Watch => action::WATCH,
            Action::Kill => action::KILL,
        };
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(key, value, 0)
            .map_err(map_err(names::CGROUP_ACTIONS))
    }

    /// Forgets `key` (its cgroup is gone).
    pub fn remove(&self, key: u64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Already evicted by the LRU is as good as removed.
        let _ = map.remove(&key);
    }
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    (category, name): (&'static str, &'static str),
) -> Result<(), ProbeError> {
    let tracepoint = match program {
        names::EXEC_PROGRAM => "sched/sched_process_exec",
        _ => "cgroup/cgroup_mkdir",
    };
    let attach_err = |source| ProbeError::Attach { tracepoint, source };
    let program: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or(ProbeError::Missing(program))?
        .try_into()
        .map_err(attach_err)?;
    program.load().map_err(attach_err)?;
    program.attach(category, name).map_err(attach_err)?;
    Ok(())
}

/// Tries to load the LSM program (and attach it when asked). A refusal is
/// an answer, not an error: the exec tracepoint's SIGKILL still enforces.
fn probe_lsm(ebpf: &mut Ebpf, btf: Option<&Btf>, attach: bool) -> LsmStatus {
    let result = (|| -> Result<bool, String> {
        let btf = btf.ok_or("the kernel's BTF could not be read")?;
        let program: &mut Lsm = ebpf
            .program_mut(names::LSM_PROGRAM)
            .ok_or("the eBPF object has no LSM program")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        program.load(LSM_HOOK, btf).map_err(|e| error_chain(&e))?;
        if attach {
            program.attach().map_err(|e| error_chain(&e))?;
        }
        Ok(attach)
    })();
    match result {
        Ok(true) => LsmStatus::Attached,
        Ok(false) => LsmStatus::Available,
        Err(reason) => LsmStatus::Unavailable(reason),
    }
}

fn ring(ebpf: &mut Ebpf, name: &'static str) -> Result<AsyncFd<RingBuf<MapData>>, ProbeError> {
    let ring = take_map(ebpf, name).and_then(|m| RingBuf::try_from(m).map_err(map_err(name)))?;
    // SAFETY: the ring buffer owns its map fd, and `Probe` keeps the ring
    // buffer (and so the fd) alive, unreplaced, for as long as the AsyncFd
    // registration exists.
    Ok(unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?)
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
