//! imagegate's node agent: watches container starts with eBPF, finds each
//! container's image digest through the container runtime, and flags (or, in enforce
//! mode, stops) every container whose digest was never admitted.
//!
//! Modules, each owning one thing:
//! - [`model`]: the domain types (containers, approvals, verdicts, modes)
//!   every adapter converts to and from;
//! - [`kernel_offsets`]: struct offsets from the running kernel's BTF;
//! - [`tracefs`]: where tracefs is and the layout of tracepoint records;
//! - [`probe`]: loads and attaches the eBPF programs, reads their ring
//!   buffers, owns the kernel filter map;
//! - [`exec_event`]: the probe's events as the rest of the agent sees them;
//! - [`cgroups`]: the host's cgroup layout, ids to paths and back;
//! - [`container_ref`]: from a cgroup path to a container id;
//! - [`runtime`]: the container runtime through CRI (containerd, CRI-O),
//!   and containerd's own API where CRI cannot see;
//! - [`digest`]: checked content digests;
//! - [`verdict`]: admitted / never admitted / exempt / unknown;
//! - [`store`]: approvals, containers and violations on disk;
//! - [`approvals_file`]: approvals from a local file;
//! - [`retention`]: what the store keeps, and for how long;
//! - [`engine`]: the loop from events to verdicts to actions: a pure state
//!   machine, identification, the store's one writer, and the runner;
//! - [`events`]: verdicts, violations and execs published to `WatchEvents`;
//! - [`feed`]: following the webhooks' approval feeds (the agent dials);
//! - [`api`]: the gRPC API (`imagegate.v1.AgentService`), its listeners and
//!   their bounds;
//! - [`settle`]: when enforce mode may start killing;
//! - [`enforce`]: killing a violating container's processes;
//! - [`metrics`]: Prometheus metrics;
//! - [`requirements`]: the host paths and capabilities the agent needs.

pub mod api;
pub mod approvals_file;
pub mod cgroups;
pub mod container_ref;
pub mod digest;
pub mod enforce;
pub mod engine;
pub mod events;
pub mod exec_event;
pub mod feed;
pub mod kernel_offsets;
pub mod metrics;
pub mod model;
pub mod probe;
pub mod requirements;
pub mod retention;
pub mod runtime;
pub mod settle;
pub mod store;
pub mod tracefs;
pub mod verdict;
