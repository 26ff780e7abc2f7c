//! Getting approvals to every node agent, off the admission path. The
//! ledger is the queue: what an agent lacks is read from it, so nothing is
//! lost when an agent is slow, down or new, and the admission answer never
//! waits (the handler records to the ledger, the ledger wakes the rest).
//!
//! Two ways, one wire form ([`wire`]):
//! - the feed (what the chart runs): agents open one stream to each webhook
//!   replica ([`feed`]); one [`tail`] reads each new write once for all of
//!   them. The webhook neither discovers nor dials agents, so its work per
//!   write does not grow with DNS records or connection set-ups, and 5,000
//!   nodes are 5,000 streams on a few replicas;
//! - dialing (`--agent`, `--agent-service`): the webhook follows each agent
//!   it is given ([`link`], [`discovery`]). Kept for agents of releases
//!   before the feed, while a cluster upgrades, and for static set-ups of a
//!   few nodes. A headless Service's DNS answer cannot carry thousands of
//!   agents (a DNS message is at most 65,535 bytes: about 4,000 A records).

mod discovery;
mod encoded;
pub mod feed;
mod feed_service;
pub mod followers;
mod link;
mod recent_reads;
mod tail;
mod wire;

use std::{path::PathBuf, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

pub use discovery::run as discover;
pub use link::{AgentTls, agent_endpoint};
pub use tail::{ANSWER_FIRST, LIVE_BATCHES, LIVE_EVERY};

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
    /// Feed streams open now (agents following).
    pub followers: Gauge,
    /// Feed messages handed to streams.
    pub feed_messages: Counter,
    /// Feed streams caught up from the ledger (new, or fallen behind).
    pub feed_catch_ups: Counter,
    /// Catch-up messages sent from another catch-up's recent read.
    pub feed_shared_reads: Counter,
    /// Feed streams that fell behind the live batches.
    pub feed_lagged: Counter,
    /// Feed streams closed because the agent could not take a batch.
    pub feed_slow_closed: Counter,
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
        registry.register(
            "feed_followers",
            "Node agents following the approval feed now",
            metrics.followers.clone(),
        );
        registry.register(
            "feed_messages",
            "Approval batches sent over the feed",
            metrics.feed_messages.clone(),
        );
        registry.register(
            "feed_catch_ups",
            "Feed streams caught up from the ledger (new agents, or behind)",
            metrics.feed_catch_ups.clone(),
        );
        registry.register(
            "feed_shared_reads",
            "Catch-up messages sent as another catch-up read them lately, not read again",
            metrics.feed_shared_reads.clone(),
        );
        registry.register(
            "feed_lagged",
            "Feed streams that fell behind the live batches and caught up from the ledger",
            metrics.feed_lagged.clone(),
        );
        registry.register(
            "feed_slow_closed",
            "Feed streams closed because the agent could not take a batch in time",
            metrics.feed_slow_closed.clone(),
        );
        metrics
    }
}
