//! A gRPC listener's mTLS: the serving certificate and the CA clients'
//! certificates must chain to, reloaded when the files change (a
//! Secret volume swaps them through a symlink), and each connection's peer
//! certificate handed to the service, which checks who may do what.

use std::{
    io,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

pub use crate::tls::TlsError;
use crate::tls::{ClientCerts, ReloadingTls, Settings, TlsFiles as Files};
use rustls::pki_types::CertificateDer;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::server::TlsStream;

use super::bounded::{self, Bounded, ListenerBounds};
use tonic::transport::server::Connected;
use tracing::{info, warn};

/// How often the files are read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// A client has this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the certificate, key and client CA are: all three are needed.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// The listener's TLS, following its files until `shutdown`: every client
/// shows a certificate from the client CA (which of them may push is the
/// service's question); HTTP/2 only.
pub async fn load(
    files: TlsFiles,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Arc<ReloadingTls>, TlsError> {
    let (tls, seen) = ReloadingTls::load(
        Files {
            cert: files.cert,
            key: files.key,
            client_ca: Some(files.client_ca),
        },
        Settings {
            client_certs: ClientCerts::Required,
            alpn: vec![b"h2".to_vec()],
        },
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .await?;
    tokio::spawn(
        tls.clone()
            .follow(seen, RELOAD_EVERY, shutdown, |reloaded| match reloaded {
                Ok(()) => info!("gRPC TLS: certificates reloaded"),
                Err(e) => {
                    warn!(error = %e, "gRPC TLS: new certificates unusable; keeping the old ones")
                }
            }),
    );
    Ok(tls)
}

/// Accepts TCP connections, completes handshakes off the accept loop, and
/// yields the TLS streams.
pub fn incoming(
    tls: Arc<ReloadingTls>,
    listener: TcpListener,
    bounds: ListenerBounds,
) -> tokio_stream::wrappers::ReceiverStream<Result<Bounded<TlsConnection>, io::Error>> {
    bounded::incoming(listener, bounds, "mTLS", move |tcp, peer| {
        let acceptor = tls.acceptor();
        async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => Some(TlsConnection { stream }),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "gRPC TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "gRPC TLS handshake timed out");
                    None
                }
            }
        }
    })
}

/// One accepted TLS connection.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
}

/// What the service learns about the peer of a TLS connection.
#[derive(Clone, Debug)]
pub struct TlsPeer {
    /// The client's leaf certificate (verified against the client CA).
    pub certificate: Option<CertificateDer<'static>>,
    /// The address the client connected from.
    pub remote: Option<std::net::SocketAddr>,
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        let (tcp, session) = self.stream.get_ref();
        TlsPeer {
            certificate: session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|c| c.clone().into_owned()),
            remote: tcp.peer_addr().ok(),
        }
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Whether `certificate` is valid for the DNS name `identity` (a SAN entry,
/// as `imagegate-webhook certs` issues it).
pub fn has_identity(certificate: &CertificateDer<'_>, identity: &str) -> bool {
    let Ok(name) = rustls::pki_types::ServerName::try_from(identity) else {
        return false;
    };
    webpki::EndEntityCert::try_from(certificate)
        .and_then(|cert| cert.verify_is_valid_for_subject_name(&name))
        .is_ok()
}
