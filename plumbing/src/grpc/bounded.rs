//! The bounds on a gRPC listener: connections open at once (in all and
//! from one address), each closed once it moves no byte for a while.
//! Anyone on the pod network can reach a listener before a certificate is
//! asked for, so none of this may grow with what a client opens.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use crate::{
    connections::{ConnectionSlots, Slot},
    idle::IdleTimeout,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// Connections open at once on one listener, and from one address.
#[derive(Clone, Copy, Debug)]
pub struct ListenerBounds {
    pub connections: usize,
    pub per_address: usize,
    /// A connection moving no byte this long is closed: one that never
    /// finishes its TLS handshake or sends a request, since HTTP/2
    /// keepalive pings (every 20 s) keep established ones moving.
    pub idle: Duration,
}

impl ListenerBounds {
    pub fn slots(&self) -> ConnectionSlots {
        ConnectionSlots::new(self.connections, self.per_address)
    }
}

/// A connection holding its slot, closed when idle.
pub struct Bounded<IO> {
    io: IdleTimeout<IO>,
    _slot: Slot,
}

impl<IO> Bounded<IO> {
    pub fn new(io: IO, slot: Slot, idle: Duration) -> Self {
        Self {
            io: IdleTimeout::new(io, idle),
            _slot: slot,
        }
    }
}

impl<IO: Connected> Connected for Bounded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.get_ref().connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Bounded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Bounded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Accepts on `listener` and takes a slot for each connection; `setup`
/// turns a TCP connection into what is served (a TLS handshake, or
/// nothing), or `None` to drop it. Connections past the bounds are closed
/// at once.
pub fn incoming<IO, F, Fut>(
    listener: TcpListener,
    bounds: ListenerBounds,
    name: &'static str,
    setup: F,
) -> ReceiverStream<Result<Bounded<IO>, io::Error>>
where
    IO: Send + 'static,
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Option<IO>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    let slots = bounds.slots();
    tokio::spawn(async move {
        loop {
            // The server dropped the stream (it stopped): stop accepting,
            // which closes the listening socket too.
            let (tcp, peer, slot) = tokio::select! {
                accepted = slots.accept(&listener, name) => accepted,
                _ = tx.closed() => return,
            };
            let (tx, setup) = (tx.clone(), setup.clone());
            tokio::spawn(async move {
                if let Some(io) = setup(tcp, peer).await {
                    let _ = tx.send(Ok(Bounded::new(io, slot, bounds.idle))).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
