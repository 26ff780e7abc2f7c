//! Signing certificates (keyless): the chain up to a certificate authority
//! of the policy's trusted root, checked at the time of signing, and the
//! identity Fulcio wrote into it (the OIDC issuer in its extension, the
//! subject in the Subject Alternative Name).

use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use super::{key::PublicKey, trust_root::TrustedRoot};

/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), which Fulcio certificates carry.
const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
/// Fulcio's OIDC issuer extension, first form: the raw string.
const ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
/// Fulcio's OIDC issuer extension, second form: a DER UTF8String.
const ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";

/// Who signed, as the certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The OIDC issuer (`https://token.actions.githubusercontent.com`).
    pub issuer: String,
    /// The subject: an email or a URI (a workflow, a service account).
    pub subject: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (issuer {})", self.subject, self.issuer)
    }
}

/// A certificate's key and identity, before its chain is checked: enough
/// to say who an untrusted signature claims to be.
#[derive(Debug)]
pub struct Leaf {
    pub key: PublicKey,
    pub identity: Identity,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Reads a leaf certificate's key, identity and validity.
pub fn read_leaf(der: &[u8]) -> Result<Leaf, String> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("the signing certificate is not DER X.509: {e}"))?;
    let key = PublicKey::from_parsed("", cert.public_key(), cert.public_key().raw)
        .map_err(|e| format!("the signing certificate's key: {e}"))?;
    let identity = Identity {
        issuer: issuer(&cert).unwrap_or_default(),
        subject: subject(&cert).unwrap_or_default(),
    };
    let time = |t: x509_parser::time::ASN1Time| {
        UNIX_EPOCH + std::time::Duration::from_secs(t.timestamp().max(0) as u64)
    };
    Ok(Leaf {
        key,
        identity,
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
    })
}

fn issuer(cert: &X509Certificate<'_>) -> Option<String> {
    let mut v1 = None;
    for extension in cert.extensions() {
        match extension.oid.to_id_string().as_str() {
            ISSUER_V2 => {
                let (_, value) = x509_parser::der_parser::parse_der(extension.value).ok()?;
                return value.as_str().ok().map(str::to_string);
            }
            ISSUER_V1 => {
                v1 = std::str::from_utf8(extension.value)
                    .ok()
                    .map(str::to_string)
            }
            _ => {}
        }
    }
    v1
}

fn subject(cert: &X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::RFC822Name(email) => Some(email.to_string()),
        GeneralName::URI(uri) => Some(uri.to_string()),
        _ => None,
    })
}

/// Checks that `der` chains to one of `root`'s authorities, for code
/// signing, at `at` (the time of signing): within the certificate's
/// validity, its issuers', and the authority's `validFor`.
pub fn verify_chain(root: &TrustedRoot, der: &[u8], at: SystemTime) -> Result<(), String> {
    let cert = CertificateDer::from(der);
    let leaf = webpki::EndEntityCert::try_from(&cert)
        .map_err(|e| format!("the signing certificate cannot be read: {e}"))?;
    let since = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the time of signing is before 1970".to_string())?;
    let mut errors = Vec::new();
    for authority in &root.authorities {
        if !authority.valid.contains(at) {
            errors.push("an authority not valid at the time of signing".to_string());
            continue;
        }
        match leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&authority.anchor),
            &authority.intermediates,
            UnixTime::since_unix_epoch(since),
            // Code signing where an EKU is present, at every level: webpki
            // checks the intermediates' EKU too, and `required` would refuse
            // an intermediate without one, which Go's x509 (cosign) accepts.
            webpki::KeyUsage::required_if_present(CODE_SIGNING),
            None,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(e) => errors.push(describe(&e)),
        }
    }
    if root.authorities.is_empty() {
        return Err("the trusted root lists no certificate authority".into());
    }
    errors.dedup();
    Err(format!(
        "the signing certificate does not chain to the trusted root at the time of signing ({})",
        errors.join(", ")
    ))
}

/// A chain error in words, for the denial.
fn describe(error: &webpki::Error) -> String {
    #[allow(deprecated)]
    match error {
        webpki::Error::UnknownIssuer => "issued by a CA the trusted root does not list".into(),
        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
            "a certificate of the chain is not valid at the time of signing".into()
        }
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
            "not issued for code signing".into()
        }
        other => format!("{other:?}"),
    }
}
