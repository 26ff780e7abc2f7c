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

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request, State},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use tracing::Instrument;

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
        // Innermost: runs once the body is read, so the duration is the
        // decision's, as it always was.
        .layer(middleware::from_fn_with_state(state.clone(), observe))
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

/// Every review request, whatever its endpoint: counted and timed, and run
/// in a span that carries its endpoint and, once a handler has read it,
/// the review's uid (so every log line of one review can be found by it).
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let endpoint = match request.uri().path() {
        "/image_policy" => "image_policy",
        "/mutate" => "mutate",
        _ => "validate",
    };
    let span = tracing::info_span!("review", endpoint, uid = tracing::field::Empty);
    let started = Instant::now();
    let response = next.run(request).instrument(span).await;
    state
        .metrics
        .observe(endpoint, response.status().as_u16(), started.elapsed());
    response
}
