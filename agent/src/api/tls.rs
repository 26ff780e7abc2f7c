//! The gRPC listener's TLS: the agent's serving certificate and the CA its
//! clients' certificates must chain to, reloaded when the files change (a
//! Secret volume swaps them through a symlink), and each connection's peer
//! certificate handed to the service, which checks who may push.

use std::{
    io,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::bounded::{self, Bounded, ListenerBounds};
use tonic::transport::server::Connected;
use tracing::{info, warn};

/// How often the files are read again.
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// A client has this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the certificate, key and client CA are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl TlsFiles {
    fn read(&self) -> Result<[Vec<u8>; 3], TlsError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })
        };
        Ok([read(&self.cert)?, read(&self.key)?, read(&self.client_ca)?])
    }

    fn config(&self, [cert, key, ca]: &[Vec<u8>; 3]) -> Result<ServerConfig, TlsError> {
        let invalid = |path: &PathBuf, reason: String| TlsError::Invalid {
            path: path.clone(),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(&self.cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(invalid(&self.cert, "no PEM certificate".into()));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid(&self.key, e.to_string()))?;
        let mut roots = RootCertStore::empty();
        for ca_cert in CertificateDer::pem_slice_iter(ca) {
            let ca_cert = ca_cert.map_err(|e| invalid(&self.client_ca, e.to_string()))?;
            roots
                .add(ca_cert)
                .map_err(|e| invalid(&self.client_ca, e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(invalid(&self.client_ca, "no PEM certificate".into()));
        }
        // Every client of this listener shows a certificate from the CA;
        // which of them may push is the service's question.
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| invalid(&self.client_ca, e.to_string()))?;
        let mut config = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| invalid(&self.cert, format!("certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// A TLS listener whose configuration follows its files.
pub struct ReloadingTls {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
}

impl ReloadingTls {
    /// Loads the files; an unusable set is an error at start (there is
    /// nothing to serve with).
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let contents = files.read()?;
        let config = files.config(&contents)?;
        let tls = Arc::new(Self {
            files,
            current: ArcSwap::from_pointee(config),
        });
        tokio::spawn(tls.clone().watch(contents));
        Ok(tls)
    }

    async fn watch(self: Arc<Self>, mut seen: [Vec<u8>; 3]) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        loop {
            tick.tick().await;
            let Ok(now) = self.files.read() else {
                continue;
            };
            if now == seen {
                continue;
            }
            match self.files.config(&now) {
                Ok(config) => {
                    self.current.store(Arc::new(config));
                    info!(cert = %self.files.cert.display(), "gRPC TLS: certificates reloaded");
                }
                Err(e) => {
                    warn!(error = %e, "gRPC TLS: new certificates unusable; keeping the old ones")
                }
            }
            seen = now;
        }
    }

    /// Accepts TCP connections, completes handshakes off the accept loop,
    /// and yields the TLS streams.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
        bounds: ListenerBounds,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<Bounded<TlsConnection>, io::Error>> {
        bounded::incoming(listener, bounds, "mTLS", move |tcp, peer| {
            let acceptor = TlsAcceptor::from(self.current.load_full());
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
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        let (_, session) = self.stream.get_ref();
        TlsPeer {
            certificate: session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|c| c.clone().into_owned()),
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
