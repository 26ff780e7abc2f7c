//! When the certificates in the files a component serves and dials with
//! stop being valid, read again every minute: renewed files (cert-manager,
//! a rotated Secret) show their new date without a restart. Exported as a
//! gauge so an alert can fire weeks before a certificate expires, which is
//! when someone can still act on it.

use std::{path::PathBuf, time::Duration};

use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::sync::watch;
use tracing::warn;
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

/// How often the files are read again.
pub const EVERY: Duration = Duration::from_secs(60);

/// One file to watch, and the name the gauge gives it.
#[derive(Clone, Debug)]
pub struct Watched {
    pub name: &'static str,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ExpiryError {
    #[error("{path}: {message}")]
    Unreadable { path: String, message: String },
}

/// The earliest `notAfter` (Unix seconds) among the PEM certificates of
/// `pem`: a chain is only as valid as its first link to expire.
pub fn earliest_not_after(pem: &[u8]) -> Result<i64, String> {
    let mut earliest: Option<i64> = None;
    for certificate in CertificateDer::pem_slice_iter(pem) {
        let der = certificate.map_err(|e| format!("not PEM: {e}"))?;
        let (_, parsed) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let not_after = parsed.validity().not_after.timestamp();
        earliest = Some(earliest.map_or(not_after, |e| e.min(not_after)));
    }
    earliest.ok_or_else(|| "no certificate in the file".to_string())
}

/// Reads every watched file now and then each [`EVERY`] until `stop`
/// turns true, handing each file's earliest `notAfter` to `record`. A file
/// that cannot be read is logged and keeps its last value: the TLS loaders
/// say what is wrong with it, and an expiry alert must not clear because
/// a file was briefly half-written.
pub async fn watch(
    files: Vec<Watched>,
    mut stop: watch::Receiver<bool>,
    record: impl Fn(&'static str, i64) + Send + 'static,
) {
    loop {
        for file in &files {
            match read(file) {
                Ok(not_after) => record(file.name, not_after),
                Err(e) => warn!(certificate = file.name, error = %e, "cannot read its expiry"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn read(file: &Watched) -> Result<i64, ExpiryError> {
    let unreadable = |message: String| ExpiryError::Unreadable {
        path: file.path.display().to_string(),
        message,
    };
    let pem = std::fs::read(&file.path).map_err(|e| unreadable(e.to_string()))?;
    earliest_not_after(&pem).map_err(unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(not_after: (i32, u8, u8)) -> String {
        let mut params = rcgen::CertificateParams::new(vec!["x.test".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_chain_expires_with_its_first_certificate_to_expire() {
        let leaf = certificate((2027, 3, 1));
        let ca = certificate((2036, 1, 1));
        // 2027-03-01T00:00:00Z
        assert_eq!(earliest_not_after(leaf.as_bytes()), Ok(1_803_859_200));
        let chain = format!("{ca}{leaf}");
        assert_eq!(earliest_not_after(chain.as_bytes()), Ok(1_803_859_200));
    }

    #[test]
    fn garbage_and_empty_files_are_errors_not_dates() {
        assert!(earliest_not_after(b"").is_err());
        assert!(
            earliest_not_after(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
