//! Pushing approvals to every node agent, off the admission path.
//!
//! The ledger is the queue: each agent has one task that follows the
//! ledger's generation and sends the agent what it lacks, so an agent's
//! backlog is bounded by the ledger itself and nothing is lost when an
//! agent is slow, down or new. On each (re)connection the task asks the
//! agent which generation of this ledger it holds and syncs from there;
//! after that it pushes each new write. The admission answer never waits:
//! the handler records to the ledger and the ledger wakes the tasks.
//!
//! Agents come from a static list and from the A/AAAA records of a
//! headless Service, re-resolved periodically: each record is one agent.

mod discovery;
mod link;

use std::{path::PathBuf, sync::Arc, time::Duration};

pub use discovery::run as discover;

use crate::ledger::Ledger;

/// Where agents are and how to reach them.
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// Agents by address (`host:port`).
    pub agents: Vec<String>,
    /// A headless Service name with port (`name.ns.svc:50051`), resolved
    /// again every `resolve_every`.
    pub service: Option<String>,
    pub resolve_every: Duration,
    /// CA the agents' serving certificates chain to.
    pub ca: PathBuf,
    /// This webhook's client certificate and key (its push identity).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The name the agents' certificates are issued for.
    pub server_name: String,
}

/// What the push tasks share.
pub struct Pusher {
    pub config: PushConfig,
    pub ledger: Arc<Ledger>,
    pub metrics: Arc<crate::server::metrics::Metrics>,
}
