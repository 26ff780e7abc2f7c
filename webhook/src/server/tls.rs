//! TLS for the webhook: the serving certificate, reloaded when its files
//! change without touching open connections, and optional client
//! certificates (the apiserver's ImagePolicyWebhook kubeconfig presents one).

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tokio::sync::watch;
use tracing::{error, info};

use super::{metrics::Metrics, watch as files};

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("the private key does not belong to the certificate ({cert})")]
    KeyMismatch { cert: PathBuf },
}

/// Hands each new handshake the certificate in force.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert_path)
            .finish()
    }
}

impl CertStore {
    /// Loads the pair; fails if it cannot be used (there is nothing to serve
    /// with).
    pub async fn load(
        cert_path: PathBuf,
        key_path: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<(Arc<Self>, files::Contents), TlsError> {
        let paths = [cert_path.clone(), key_path.clone()];
        let contents = files::read_all(&paths).await;
        let initial = files::seen(&contents);
        let mut contents = contents.into_iter();
        let read = |r: Option<std::io::Result<Vec<u8>>>, path: &Path| {
            r.unwrap_or_else(|| Err(std::io::ErrorKind::NotFound.into()))
                .map_err(|source| TlsError::Read {
                    path: path.to_path_buf(),
                    source,
                })
        };
        let cert = read(contents.next(), &cert_path)?;
        let key = read(contents.next(), &key_path)?;
        let certified = certified_key(&cert, &key, &cert_path, &key_path, &provider)?;
        Ok((
            Arc::new(Self {
                cert_path,
                key_path,
                provider,
                current: ArcSwap::from_pointee(certified),
            }),
            initial,
        ))
    }

    /// The certificate chain in force (for tests and logs).
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Reloads when either file changes; a pair that does not work keeps the
    /// old one, logged and counted.
    pub async fn watch(
        self: Arc<Self>,
        initial: files::Contents,
        interval: Duration,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) {
        let paths = vec![self.cert_path.clone(), self.key_path.clone()];
        files::poll_files(paths, initial, interval, shutdown, |contents| {
            let mut contents = contents.into_iter();
            let result = match (contents.next(), contents.next()) {
                (Some(Ok(cert)), Some(Ok(key))) => {
                    certified_key(&cert, &key, &self.cert_path, &self.key_path, &self.provider)
                }
                (Some(Err(source)), _) => Err(TlsError::Read {
                    path: self.cert_path.clone(),
                    source,
                }),
                (_, Some(Err(source))) => Err(TlsError::Read {
                    path: self.key_path.clone(),
                    source,
                }),
                _ => return,
            };
            match result {
                Ok(certified) => {
                    self.current.store(Arc::new(certified));
                    info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                    Metrics::reload(&metrics.certificate_reloads, true);
                }
                Err(e) => {
                    // Often a half-written pair (cert updated, key not yet):
                    // the next change retries.
                    error!("new serving certificate not used, keeping the previous one: {e}");
                    Metrics::reload(&metrics.certificate_reloads, false);
                }
            }
        })
        .await;
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: cert_path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Invalid {
        path: key_path.to_path_buf(),
        reason: format!("no usable PEM private key: {e}"),
    })?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Invalid {
                path: key_path.to_path_buf(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|_| TlsError::KeyMismatch {
        cert: cert_path.to_path_buf(),
    })?;
    Ok(certified)
}

/// The server's TLS configuration: certificates from `certs`; with
/// `client_ca`, presented client certificates are checked against it, and
/// required in the handshake when `require_in_handshake` (otherwise
/// [`super::client_auth`] requires them per path).
pub fn server_config(
    certs: Arc<CertStore>,
    client_ca: Option<&Path>,
    require_in_handshake: bool,
    provider: Arc<CryptoProvider>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| TlsError::Invalid {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
                roots.add(cert).map_err(|e| TlsError::Invalid {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            }
            if roots.is_empty() {
                return Err(TlsError::NoCertificate {
                    path: path.to_path_buf(),
                });
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if require_in_handshake {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| TlsError::Invalid {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
