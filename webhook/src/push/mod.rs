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
//!
//! - `link`: one agent: connect, sync from its generation, push;
//! - `discovery`: the agents, from the static list and the headless
//!   Service's records.

mod discovery;
mod link;

use std::{path::PathBuf, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

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
    pub metrics: PushMetrics,
}

/// The push's metrics, registered into the webhook's registry.
#[derive(Clone, Default)]
pub struct PushMetrics {
    /// Agents the push tasks follow.
    pub agents: Gauge,
    /// Push and sync calls to agents, by result (ok, error).
    pub pushes: Family<PushLabels, Counter>,
    /// Approvals sent to agents (each agent counts).
    pub pushed_approvals: Counter,
    /// Approvals an agent refused (each agent counts).
    pub pushes_rejected: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    pub result: &'static str,
}

impl PushMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "agents",
            "Node agents approvals are pushed to",
            metrics.agents.clone(),
        );
        registry.register(
            "agent_pushes",
            "Push and sync calls to node agents, by result",
            metrics.pushes.clone(),
        );
        registry.register(
            "agent_pushed_approvals",
            "Approvals sent to node agents, each agent counted",
            metrics.pushed_approvals.clone(),
        );
        registry.register(
            "agent_rejected_approvals",
            "Approvals a node agent refused, each agent counted: alert on any",
            metrics.pushes_rejected.clone(),
        );
        metrics
    }
}
