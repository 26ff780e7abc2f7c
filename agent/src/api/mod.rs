//! The agent's gRPC API: `imagegate.v1.AgentService`, `grpc.health.v1`
//! and server reflection (v1 and v1alpha: grpcurl 1.8 asks for v1alpha), on
//! an mTLS listener (the webhook pushes there; clients need a certificate
//! from the configured CA) and, optionally, a plaintext listener that only
//! binds loopback (for grpcurl on the node or through `kubectl
//! port-forward`; it cannot push).
//!
//! - [`service`]: the service itself (approvals in, state out);
//! - [`convert`]: wire types to the agent's [`crate::model`] and back;
//!
//! The listeners (bounded connections, mTLS knowing its peer) are
//! plumbing's, shared with the webhook's approval feed.

pub mod convert;
pub mod service;

use std::{net::SocketAddr, sync::Arc};

use imagegate_proto::v1::agent_service_server::AgentServiceServer;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::{
    Server,
    server::{Connected, Router},
};
use tracing::{info, warn};

use self::service::AgentApi;
pub use self::service::{FeedStatus, Shared};
use imagegate_plumbing::grpc::{
    bounded::{self, ListenerBounds},
    mtls as tls,
};

/// The mTLS listener: grpcurl, and webhook replicas of an older release
/// pushing (today's webhooks are dialed by the agent instead).
const MTLS: ListenerBounds = ListenerBounds {
    connections: 64,
    per_address: 16,
    idle: Duration::from_secs(30),
};
/// The health listener: the kubelet's probes, one short connection each.
const HEALTH: ListenerBounds = ListenerBounds {
    connections: 32,
    per_address: 16,
    idle: Duration::from_secs(30),
};
/// The loopback listener: grpcurl on the node.
const LOOPBACK: ListenerBounds = ListenerBounds {
    connections: 32,
    per_address: 32,
    idle: Duration::from_secs(30),
};

/// HTTP/2 streams one connection may have open (advertised in SETTINGS,
/// refused past it): `Health/Watch` and `WatchEvents` streams are cheap,
/// but not free.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// Largest request head.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// A tonic server with the bounds every listener has.
fn bounded_server() -> Server {
    Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_max_pending_accept_reset_streams(Some(32))
        .http2_max_local_error_reset_streams(Some(256))
        // Pings find dead peers, and keep live ones moving past the idle
        // bound.
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "--grpc-plaintext-address {0} is not a loopback address: the plaintext listener is for the node itself only"
    )]
    NotLoopback(SocketAddr),
    #[error("binding {what} {address}: {source}")]
    Bind {
        what: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("gRPC reflection: {0}")]
    Reflection(String),
}

/// Where to listen.
pub struct Listeners {
    /// mTLS, with the files to serve and verify with.
    pub tls: Option<(SocketAddr, tls::TlsFiles)>,
    /// Plaintext, loopback only.
    pub plaintext: Option<SocketAddr>,
    /// Plaintext, `grpc.health.v1` only, any address: for the kubelet's
    /// gRPC probes, which speak neither TLS nor client certificates.
    pub health: Option<SocketAddr>,
}

/// Binds the listeners and serves until `shutdown` resolves. Returns the
/// bound addresses once listening (port 0 picks a free port).
pub async fn serve(
    api: AgentApi,
    listeners: Listeners,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<SocketAddr>, ApiError> {
    if let Some(address) = listeners.plaintext
        && !address.ip().is_loopback()
    {
        return Err(ApiError::NotLoopback(address));
    }
    let api = Arc::new(api);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServiceServer<AgentApi>>().await;
    let descriptors = [
        imagegate_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ];
    let mut reflection_v1 = tonic_reflection::server::Builder::configure();
    let mut reflection_v1alpha = tonic_reflection::server::Builder::configure();
    for set in descriptors {
        reflection_v1 = reflection_v1.register_encoded_file_descriptor_set(set);
        reflection_v1alpha = reflection_v1alpha.register_encoded_file_descriptor_set(set);
    }
    let reflection_v1 = reflection_v1
        .build_v1()
        .map_err(|e| ApiError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection_v1alpha
        .build_v1alpha()
        .map_err(|e| ApiError::Reflection(e.to_string()))?;
    let router = || {
        bounded_server()
            .add_service(
                // What the webhook's batches are bounded by, with room to
                // spare: tonic's 4 MiB default is what they once outgrew.
                AgentServiceServer::from_arc(api.clone())
                    .max_decoding_message_size(imagegate_proto::MAX_MESSAGE_BYTES),
            )
            .add_service(health_service.clone())
            .add_service(reflection_v1.clone())
            .add_service(reflection_v1alpha.clone())
    };

    let mut bound = Vec::new();
    if let Some((address, files)) = listeners.tls {
        let (listener, local) = bind("--grpc-address", address).await?;
        let tls = tls::load(files, shutdown.clone()).await?;
        let incoming = tls::incoming(tls, listener, MTLS);
        spawn_server(router(), incoming, shutdown.clone(), "mTLS");
        info!(address = %local, "gRPC: mTLS listener (AgentService, health, reflection)");
        bound.push(local);
    }
    if let Some(address) = listeners.health {
        let (listener, local) = bind("--grpc-health-address", address).await?;
        // Reflection of the health service alone, so grpcurl can ask too.
        let health_reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| ApiError::Reflection(e.to_string()))?;
        let server = bounded_server()
            .add_service(health_service.clone())
            .add_service(health_reflection);
        spawn_server(
            server,
            plain(listener, HEALTH, "health"),
            shutdown.clone(),
            "health",
        );
        info!(address = %local, "gRPC: health listener (grpc.health.v1 only)");
        bound.push(local);
    }
    if let Some(address) = listeners.plaintext {
        let (listener, local) = bind("--grpc-plaintext-address", address).await?;
        spawn_server(
            router(),
            plain(listener, LOOPBACK, "plaintext"),
            shutdown.clone(),
            "plaintext",
        );
        info!(address = %local, "gRPC: plaintext loopback listener (queries only)");
        bound.push(local);
    }
    Ok(bound)
}

/// Plain TCP connections from `listener`, within `bounds`.
fn plain(
    listener: TcpListener,
    bounds: ListenerBounds,
    name: &'static str,
) -> impl tokio_stream::Stream<Item = Result<bounded::Bounded<tokio::net::TcpStream>, std::io::Error>>
{
    bounded::incoming(listener, bounds, name, |tcp, _| async move {
        let _ = tcp.set_nodelay(true);
        Some(tcp)
    })
}

/// Serves `router` on `incoming` until `stop` turns true.
fn spawn_server<I, IO, IE>(
    router: Router,
    incoming: I,
    mut stop: tokio::sync::watch::Receiver<bool>,
    listener: &'static str,
) where
    I: tokio_stream::Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        let done = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, done).await {
            warn!(error = %e, listener, "gRPC listener stopped");
        }
    });
}

/// Binds `address`; returns the listener and the address it got.
async fn bind(
    what: &'static str,
    address: SocketAddr,
) -> Result<(TcpListener, SocketAddr), ApiError> {
    let bind_err = |source| ApiError::Bind {
        what,
        address,
        source,
    };
    let listener = TcpListener::bind(address).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    Ok((listener, local))
}
