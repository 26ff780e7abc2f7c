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
        .map_err(|_| "the signing certificate does not parse as DER X.509".to_string())?;
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

/// The certificate that issued a signing certificate, as the trusted root
/// (or the artifact's chain) holds it: what its SCTs are checked against.
pub struct Issuer {
    pub der: Vec<u8>,
}

/// Most intermediates taken from an artifact (`dev.sigstore.cosign/chain`,
/// a bundle's `x509CertificateChain`). They are only candidates for the
/// path: the root must be one the trusted root lists.
pub const MAX_EXTRA_INTERMEDIATES: usize = 8;

/// Checks that `der` chains to one of `root`'s authorities, for code
/// signing, at `at` (the time of signing): within the certificate's
/// validity, its issuers', and the authority's `validFor`. `extra` are
/// intermediates the artifact carries (never anchors). Returns the
/// certificate's issuer.
pub fn verify_chain(
    root: &TrustedRoot,
    der: &[u8],
    extra: &[Vec<u8>],
    at: SystemTime,
) -> Result<Issuer, String> {
    let cert = CertificateDer::from(der);
    let leaf = webpki::EndEntityCert::try_from(&cert)
        .map_err(|_| "the signing certificate cannot be read (not DER X.509)".to_string())?;
    let since = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the time of signing is before 1970".to_string())?;
    if root.authorities.is_empty() {
        return Err("the trusted root lists no certificate authority".into());
    }
    let extra: Vec<CertificateDer<'_>> = extra
        .iter()
        .take(MAX_EXTRA_INTERMEDIATES)
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    let mut errors = Vec::new();
    for authority in &root.authorities {
        if !authority.valid.contains(at) {
            errors.push("its authority was not trusted at the time of signing".to_string());
            continue;
        }
        let intermediates: Vec<CertificateDer<'_>> = authority
            .intermediates
            .iter()
            .cloned()
            .chain(extra.iter().cloned())
            .collect();
        match leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&authority.anchor),
            &intermediates,
            UnixTime::since_unix_epoch(since),
            // Code signing where an EKU is present, at every level: webpki
            // checks the intermediates' EKU too, and `required` would refuse
            // an intermediate without one, which Go's x509 (cosign) accepts.
            webpki::KeyUsage::required_if_present(CODE_SIGNING),
            None,
            None,
        ) {
            Ok(path) => {
                let issuer = path
                    .intermediate_certificates()
                    .next()
                    .map(|c| c.der().to_vec())
                    .or_else(|| issuer_in(&authority.chain, der))
                    .ok_or("the signing certificate's issuer is not in the trusted root")?;
                return Ok(Issuer { der: issuer });
            }
            Err(e) => errors.push(describe(&e, "at the time of signing", "code signing")),
        }
    }
    errors.sort();
    errors.dedup();
    Err(format!(
        "the signing certificate does not chain to the trusted root at the time of signing ({})",
        errors.join("; ")
    ))
}

/// The certificate of `chain` whose subject is `der`'s issuer.
fn issuer_in(chain: &[CertificateDer<'static>], der: &[u8]) -> Option<Vec<u8>> {
    let (_, leaf) = X509Certificate::from_der(der).ok()?;
    chain.iter().find_map(|candidate| {
        let (_, c) = X509Certificate::from_der(candidate).ok()?;
        (c.subject().as_raw() == leaf.issuer().as_raw()).then(|| candidate.to_vec())
    })
}

/// A chain error in words, for a denial: what is wrong with the chain, and
/// so what the operator can check. `when` says at what time it was checked
/// (`at the time of signing`), `usage` what the chain is for (`code
/// signing`).
pub fn describe(error: &webpki::Error, when: &str, usage: &str) -> String {
    use webpki::Error as E;
    #[allow(deprecated)]
    match error {
        E::UnknownIssuer => "issued by a CA the trusted root does not list".into(),
        E::CertExpired { .. } | E::CertNotValidYet { .. } => {
            format!("a certificate of the chain is not valid {when}")
        }
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => {
            format!("a certificate of the chain is not issued for {usage}")
        }
        E::InvalidSignatureForPublicKey | E::SignatureAlgorithmMismatch => {
            "a certificate of the chain carries a signature its issuer's key does not verify".into()
        }
        E::UnsupportedSignatureAlgorithm
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            "a certificate of the chain is signed with an algorithm imagegate does not verify"
                .into()
        }
        E::CaUsedAsEndEntity => "the signing certificate is a CA certificate".into(),
        E::EndEntityUsedAsCa => {
            "a certificate that is not a CA's appears as an issuer in the chain".into()
        }
        E::PathLenConstraintViolated | E::MaximumPathDepthExceeded => {
            "the chain is longer than its CAs allow".into()
        }
        E::NameConstraintViolation => "a CA of the chain may not issue for this name".into(),
        E::UnsupportedCriticalExtension => {
            "a certificate of the chain has a critical extension imagegate does not know".into()
        }
        E::BadDer
        | E::BadDerTime
        | E::TrailingData(_)
        | E::MalformedExtensions
        | E::ExtensionValueInvalid
        | E::UnsupportedCertVersion
        | E::InvalidSerialNumber => "a certificate of the chain is not well-formed DER".into(),
        E::InvalidCertValidity => {
            "a certificate of the chain has an invalid validity period".into()
        }
        E::MaximumSignatureChecksExceeded | E::MaximumPathBuildCallsExceeded => {
            "the chain took more checks than imagegate allows (too many candidate certificates)"
                .into()
        }
        _ => "the chain does not verify".into(),
    }
}
