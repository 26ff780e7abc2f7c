//! The HTTPS server: routes, handlers, metrics, TLS, reloads.

pub mod client_auth;
mod handlers;
pub mod listener;
pub mod metrics;
pub mod policy_store;
pub mod tls;
pub mod watch;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};

use metrics::Metrics;
use policy_store::PolicyStore;

/// The apiserver's own limit on request bodies: nothing larger can come
/// from it.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What every handler shares.
pub struct AppState {
    pub policy: Arc<PolicyStore>,
    pub metrics: Arc<Metrics>,
    /// Resolves allowed images to digests; `None` when resolution is off.
    pub resolver: Option<Arc<crate::resolve::Resolver>>,
    /// Where admitted digests are recorded; `None` when no ledger is kept.
    pub ledger: Option<Arc<crate::ledger::Ledger>>,
}

/// The webhook's routes. Public so tests drive it without a socket.
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
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
