//! A plain HTTP/1.1 server for small read-only endpoints (the agent's
//! `/metrics` and `/healthz`) that no client can make hold memory or
//! connections: a bound on connections (in all and per address), a
//! deadline for request heads, a small head buffer, and idle connections
//! closed.

use std::{future::Future, time::Duration};

use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tracing::debug;

use crate::{connections::ConnectionSlots, idle::IdleTimeout};

#[derive(Clone, Copy, Debug)]
pub struct HttpBounds {
    pub connections: usize,
    pub per_address: usize,
    /// Time a client has to send a request head.
    pub header_timeout: Duration,
    /// A connection moving no byte this long is closed.
    pub idle: Duration,
}

impl HttpBounds {
    /// For Prometheus and probes: a handful of scrapers, short requests.
    pub const METRICS: Self = Self {
        connections: 32,
        per_address: 8,
        header_timeout: Duration::from_secs(5),
        idle: Duration::from_secs(60),
    };
}

/// Largest request head read.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    bounds: HttpBounds,
    shutdown: impl Future<Output = ()>,
) {
    let slots = ConnectionSlots::new(bounds.connections, bounds.per_address);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer, slot) = tokio::select! {
            accepted = slots.accept(&listener, "metrics") => accepted,
            _ = &mut shutdown => return,
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let io = TokioIo::new(IdleTimeout::new(tcp, bounds.idle));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_timeout)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(io, service);
            if let Err(e) = connection.await {
                debug!(%peer, "connection ended: {e}");
            }
        });
    }
}
