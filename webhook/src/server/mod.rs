//! The HTTPS server: routes, handlers, metrics, TLS, reloads.

pub mod client_auth;
mod handlers;
pub mod limits;
pub mod listener;
pub mod metrics;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    middleware,
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
}

/// The webhook's routes. Public so tests drive it without a socket.
pub fn router(state: Arc<AppState>) -> Router {
    let budgets = state.budgets.clone();
    // Reviews are read whole by `limits::read_review`, within the budgets:
    // axum's own body limit would refuse what the apiserver legitimately
    // sends (a 3 MiB object, escaped, twice on UPDATE).
    let reviews = Router::new()
        .route("/image_policy", post(handlers::image_policy))
        .route("/validate", post(handlers::validate))
        .route("/mutate", post(handlers::mutate))
        // kube-image-bouncer's path: its users switch without touching
        // their webhook configuration.
        .route("/", post(handlers::validate))
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(move |request, next| {
            limits::read_review(budgets.clone(), request, next)
        }));
    Router::new()
        .merge(reviews)
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}
