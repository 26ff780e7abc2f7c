//! Accepting TLS connections and serving the routes on them, HTTP/1.1 and
//! HTTP/2, with graceful shutdown, within [`Limits`]: a bound on
//! connections, a handshake, header and idle deadline, and HTTP/2 streams
//! and windows that keep what one connection can make the webhook buffer
//! small.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use imagegate_plumbing::{connections::ConnectionSlots, idle::IdleTimeout, tls::ReloadingTls};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::{
    client_auth::ClientCertificate,
    limits::{H2_CONNECTION_WINDOW, H2_STREAM_WINDOW, Limits, MAX_HEADER_BYTES},
    routes::{Connection, Routes},
};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `routes` over TLS on `listener` until `shutdown` completes, then
/// lets open requests finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    routes: Routes,
    limits: &Limits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let slots = ConnectionSlots::new(limits.max_connections, limits.max_connections_per_address);
    let builder = Arc::new(builder(limits));
    let idle = limits.idle_timeout;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer, slot) = tokio::select! {
            accepted = slots.accept(&listener, "webhook") => accepted,
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let tcp = IdleTimeout::new(tcp, idle);
        // The configuration in force now: a reloaded certificate serves
        // new handshakes, open connections keep theirs.
        let acceptor = tls.acceptor();
        let routes = routes.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            // What the handshake verified, for the endpoints that require a
            // client certificate (client_auth).
            let connection = Connection {
                peer: peer.ip(),
                certificate: ClientCertificate {
                    presented: tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|chain| !chain.is_empty()),
                },
            };
            // A hyper service of its own, not through tower's adapter: one
            // boxed future and a `oneshot` less per request.
            let routes = routes.on(connection);
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let routes = routes.clone();
                async move { Ok::<_, Infallible>(routes.answer(request.map(Body::new)).await) }
            });
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(connection).await {
                debug!(%peer, "connection ended: {e}");
            }
        });
    }
    info!("shutting down: no new connections; letting open requests finish");
    drop(slots);
    tokio::select! {
        _ = graceful.shutdown() => info!("all connections closed"),
        _ = tokio::time::sleep(grace) => warn!("connections still open after {grace:?}; closing them"),
    }
}

/// The HTTP/1.1 and HTTP/2 settings that bound a connection.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // A response's head and body copied into one buffer before TLS,
        // rather than queued as slices for a vectored write: the TLS
        // stream encrypts them into one record either way, and the copy of
        // a few hundred bytes is cheaper than the queue (callgrind, per
        // review: ImageReview 37,629 -> 36,977, AdmissionReview 84,728 ->
        // 83,903; strace: still one `sendto` per response).
        .writev(false)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_send_buf_size(256 * 1024)
        .max_pending_accept_reset_streams(32)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}
