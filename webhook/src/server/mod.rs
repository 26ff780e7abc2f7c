//! The HTTPS server: routes, handlers, limits and metrics.
//!
//! - [`limits`]: what a client may hold (connections, bodies, slots);
//! - [`listener`]: TLS connections, bounded, with graceful shutdown;
//! - [`client_auth`]: client certificates required per path;
//! - [`metrics`]: the webhook's Prometheus registry;
//! - `handlers`: decode, run the pipeline (`crate::admit`), encode.

pub mod client_auth;
mod handlers;
pub mod limits;
pub mod listener;
pub mod metrics;

use std::sync::Arc;

use axum::{
    Router,
    routing::{get, post},
};

use crate::policy_store::PolicyStore;
use metrics::Metrics;

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

/// The webhook's routes. Public so tests drive it without a socket.
///
/// A review route is one handler that reads the body within the budgets,
/// decides and records its metrics (`handlers::review`), not a stack of
/// middleware: each layer of the router costs a boxed future and a response
/// mapping on every review.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/image_policy", post(handlers::image_policy))
        .route("/validate", post(handlers::validate))
        .route("/mutate", post(handlers::mutate))
        // kube-image-bouncer's path: its users switch without touching
        // their webhook configuration.
        .route("/", post(handlers::validate))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .with_state(state)
}
