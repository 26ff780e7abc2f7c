//! TLS servers whose certificates follow their files: the webhook's HTTPS
//! listener and the agent's gRPC mTLS listener use this one
//! implementation. The certificate, key and (optionally) client CA are
//! read again every interval ([`crate::files::poll_files`]: a Secret
//! volume swaps them through a symlink); a set that works replaces the
//! configuration for new handshakes, open connections keep theirs, and a
//! set that does not work is reported and the previous one kept.

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
use tokio_rustls::TlsAcceptor;

use crate::files;

/// A certificate, key or CA that cannot be used.
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

/// Where the serving certificate, its key and the client CA are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates are checked against it when given.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert.clone(), self.key.clone()];
        paths.extend(self.client_ca.clone());
        paths
    }
}

/// Whether a client must show a certificate in the handshake (when a client
/// CA is given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    /// Checked when shown; whether one is needed is the server's question
    /// per request (the webhook requires them per path).
    Optional,
    Required,
}

/// How the configuration is built around the files.
#[derive(Clone, Debug)]
pub struct Settings {
    pub client_certs: ClientCerts,
    /// ALPN protocols, most preferred first.
    pub alpn: Vec<Vec<u8>>,
}

/// A server TLS configuration that follows its files.
pub struct ReloadingTls {
    files: TlsFiles,
    settings: Settings,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<ServerConfig>,
}

impl fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish()
    }
}

impl ReloadingTls {
    /// Loads the files; a set that cannot be used is an error (there is
    /// nothing to serve with). Also returns what was read, for
    /// [`ReloadingTls::follow`].
    pub async fn load(
        files: TlsFiles,
        settings: Settings,
        provider: Arc<CryptoProvider>,
    ) -> Result<(Arc<Self>, files::Contents), TlsError> {
        let paths = files.paths();
        let contents = files::read_all(&paths).await;
        let seen = files::seen(&contents);
        let config = build(&files, &settings, &provider, contents)?;
        Ok((
            Arc::new(Self {
                files,
                settings,
                provider,
                current: ArcSwap::from_pointee(config),
            }),
            seen,
        ))
    }

    /// The configuration new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// An acceptor with the configuration in force.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config())
    }

    /// The serving certificate's path, for logs.
    pub fn cert_path(&self) -> &Path {
        &self.files.cert
    }

    /// Reloads whenever a file changes (from `initial`, what
    /// [`ReloadingTls::load`] read), until `shutdown` flips; tells
    /// `reloaded` how each attempt went.
    pub async fn follow(
        self: Arc<Self>,
        initial: files::Contents,
        interval: Duration,
        shutdown: watch::Receiver<bool>,
        reloaded: impl Fn(Result<(), TlsError>),
    ) {
        let paths = self.files.paths();
        files::poll_files(paths, initial, interval, shutdown, |contents| {
            match build(&self.files, &self.settings, &self.provider, contents) {
                Ok(config) => {
                    self.current.store(Arc::new(config));
                    reloaded(Ok(()));
                }
                // Often a half-written set (certificate updated, key not
                // yet): the next change tries again.
                Err(e) => reloaded(Err(e)),
            }
        })
        .await;
    }
}

fn build(
    files: &TlsFiles,
    settings: &Settings,
    provider: &Arc<CryptoProvider>,
    contents: Vec<std::io::Result<Vec<u8>>>,
) -> Result<ServerConfig, TlsError> {
    let mut contents = files.paths().into_iter().zip(contents).map(|(path, read)| {
        read.map_err(|source| TlsError::Read {
            path: path.clone(),
            source,
        })
    });
    let mut next = || {
        contents.next().unwrap_or_else(|| {
            Err(TlsError::Invalid {
                path: PathBuf::new(),
                reason: "a file was not read".into(),
            })
        })
    };
    let (cert, key) = (next()?, next()?);
    let certified = certified_key(&cert, &key, &files.cert, &files.key, provider)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = client_roots(&next()?, path)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = match settings.client_certs {
                ClientCerts::Required => verifier,
                ClientCerts::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|e| TlsError::Invalid {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
    config.alpn_protocols = settings.alpn.clone();
    Ok(config)
}

/// One certificate for every handshake of a configuration (a reload makes
/// a new configuration).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The certificate chain and key, checked to belong together.
pub fn certified_key(
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

/// The CA certificates in `pem` (from `path`), at least one.
pub fn client_roots(pem: &[u8], path: &Path) -> Result<RootCertStore, TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.map_err(|e| invalid(e.to_string()))?)
            .map_err(|e| invalid(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}
