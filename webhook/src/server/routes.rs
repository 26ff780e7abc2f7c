//! Which handler answers a request: the review endpoints straight, the
//! rest through axum's router.
//!
//! Why not the router for everything: on a review, its boxed services and
//! the request map that carried the connection's facts in extensions cost
//! 3,600 user-space instructions, 7.8% of an ImageReview (callgrind,
//! 46,542 -> 42,905; AdmissionReview 97,105 -> 93,008). A review endpoint
//! is one method and one path, so dispatching it is a match.

use std::{
    convert::Infallible,
    future::Future,
    net::{IpAddr, Ipv4Addr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    Router,
    body::{Body, Bytes, HttpBody},
    extract::Request,
    http::{HeaderValue, Method, StatusCode, header},
    response::Response,
    routing::{any, get},
};
use tower::ServiceExt;

use super::{
    AppState,
    client_auth::{self, ClientCertificate, Required},
    handlers,
    metrics::Endpoint,
};

/// What the listener knows of the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct Connection {
    /// The client's address, which per-address budgets count against.
    pub peer: IpAddr,
    pub certificate: ClientCertificate,
}

impl Default for Connection {
    /// A connection without an address or a certificate: how tests call
    /// the routes without a socket.
    fn default() -> Self {
        Self {
            peer: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            certificate: ClientCertificate { presented: false },
        }
    }
}

/// The webhook's endpoints, served to one connection (see
/// [`Routes::on`]); a `tower::Service`, so tests drive it without a socket.
#[derive(Clone)]
pub struct Routes {
    shared: Arc<Shared>,
    connection: Connection,
}

struct Shared {
    state: Arc<AppState>,
    /// Every endpoint but a review's `POST`: probes, metrics, and the
    /// review paths' answer to other methods.
    router: Router,
    /// The paths that need a client certificate, when the TLS handshake
    /// does not already require one everywhere.
    certificates: Option<Required>,
}

impl Routes {
    /// The endpoints, with client certificates required on `certificates`'
    /// paths (`None`: the handshake decides, or none is asked for).
    pub fn new(state: Arc<AppState>, certificates: Option<Required>) -> Self {
        let mut router = Router::new();
        // A review path answers only `POST`; that is dispatched before the
        // router (`answer`), which sees the other methods.
        for (path, _) in REVIEW_PATHS {
            router = router.route(path, any(method_not_allowed));
        }
        let mut router = router
            .route("/healthz", get(handlers::healthz))
            .route("/readyz", get(handlers::readyz))
            .route("/metrics", get(handlers::metrics))
            .with_state(state.clone());
        if let Some(required) = certificates.clone() {
            router = router.layer(axum::middleware::from_fn(move |request, next| {
                client_auth::enforce(required.clone(), request, next)
            }));
        }
        Self {
            shared: Arc::new(Shared {
                state,
                router,
                certificates,
            }),
            connection: Connection::default(),
        }
    }

    /// The same endpoints, for the requests of `connection`.
    pub fn on(&self, connection: Connection) -> Self {
        Self {
            shared: self.shared.clone(),
            connection,
        }
    }

    /// The answer to `request`.
    pub async fn answer(self, request: Request) -> Response {
        let shared = &self.shared;
        let Some(endpoint) = review_endpoint(request.method(), request.uri().path()) else {
            let mut request = request;
            request.extensions_mut().insert(self.connection.certificate);
            let Ok(response) = shared.router.clone().oneshot(request).await;
            return response;
        };
        if let Some(required) = &shared.certificates
            && let Some(refused) =
                client_auth::refusal(required, request.uri().path(), self.connection.certificate)
        {
            return refused;
        }
        handlers::review(&shared.state, endpoint, self.connection.peer, request).await
    }
}

/// The review endpoints and their paths: `/` is kube-image-bouncer's
/// path, so its users switch without touching their webhook configuration.
const REVIEW_PATHS: [(&str, Endpoint); 4] = [
    ("/image_policy", Endpoint::ImagePolicy),
    ("/validate", Endpoint::Validate),
    ("/mutate", Endpoint::Mutate),
    ("/", Endpoint::Validate),
];

/// The review a request is, by its method and path.
fn review_endpoint(method: &Method, path: &str) -> Option<Endpoint> {
    if method != Method::POST {
        return None;
    }
    REVIEW_PATHS
        .iter()
        .find(|(review_path, _)| *review_path == path)
        .map(|(_, endpoint)| *endpoint)
}

async fn method_not_allowed() -> Response {
    let mut response = Response::new(Body::from("reviews are sent with POST\n"));
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

impl<B> tower::Service<axum::http::Request<B>> for Routes
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let routes = self.clone();
        Box::pin(async move { Ok(routes.answer(request.map(Body::new)).await) })
    }
}
