//! imagegate's node agent: watches process execs with eBPF.
//!
//! Modules, each owning one thing:
//! - [`kernel_offsets`]: struct offsets from the running kernel's BTF;
//! - [`tracefs`]: where tracefs is and the layout of tracepoint records;
//! - [`exec_probe`]: loads and attaches the exec program, reads its ring buffer;
//! - [`exec_event`]: the exec event as the rest of the agent sees it.

pub mod exec_event;
pub mod exec_probe;
pub mod kernel_offsets;
pub mod tracefs;
