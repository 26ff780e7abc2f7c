//! Live events the engine publishes for `WatchEvents`: verdicts,
//! violations and execs in watched containers. A broadcast channel: a slow
//! watcher loses the oldest events (and is told), the engine never waits.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::model::ContainerRecord;

/// Events kept for a watcher that falls behind.
pub const CAPACITY: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Verdict,
    Violation,
    Exec,
    ExecKilled,
}

#[derive(Clone, Debug, Serialize)]
pub struct AgentEvent {
    pub kind: EventKind,
    pub at_ms: u64,
    pub container: ContainerRecord,
    pub pid: Option<u32>,
    pub filename: Option<String>,
}

pub type Sender = broadcast::Sender<AgentEvent>;

pub fn channel() -> Sender {
    broadcast::channel(CAPACITY).0
}
