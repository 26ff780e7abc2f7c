//! The HTTPS server: routes, handlers, limits and metrics.
//!
//! - [`limits`]: what a client may hold (connections, bodies, slots);
//! - [`listener`]: TLS connections, bounded, with graceful shutdown;
//! - [`routes`]: which handler answers a request;
//! - [`client_auth`]: client certificates required per path;
//! - [`metrics`]: the webhook's Prometheus registry;
//! - `handlers`: decode, run the pipeline (`crate::admit`), encode.

pub mod client_auth;
mod handlers;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod routes;

use std::sync::Arc;

use crate::policy_store::PolicyStore;
use metrics::Metrics;
pub use routes::{Connection, Routes};

/// What every handler shares.
pub struct AppState {
    pub policy: Arc<PolicyStore>,
    pub metrics: Arc<Metrics>,
    /// Resolves allowed images to digests; `None` when resolution is off.
    pub resolver: Option<Arc<crate::resolve::Resolver>>,
    /// Where admitted digests are recorded; `None` when no ledger is kept.
    pub ledger: Option<Arc<crate::ledger::Ledger>>,
    /// What reviews may hold: slots, body bytes, deadlines.
    pub budgets: limits::Budgets,
    /// Where decisions operators should see go (to become Events);
    /// `None` when admission Events are off.
    pub decisions: Option<crate::report::admission::DecisionQueue>,
    /// This replica's name, on its Events.
    pub replica: String,
}
