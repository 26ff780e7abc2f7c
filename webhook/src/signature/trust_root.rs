//! The user's `trusted_root.json` (the Sigstore trust root format,
//! `application/vnd.dev.sigstore.trustedroot+json;version=0.1`): the
//! certificate authorities that issue signing certificates (Fulcio), the
//! transparency logs (Rekor v1 and v2), the certificate transparency logs
//! that sign SCTs, and the timestamp authorities (RFC 3161). Read from a
//! file the policy names; no TUF fetch, no network: a cluster without a
//! route to Sigstore verifies with what its operator put there.

use std::time::SystemTime;

use base64::{Engine, engine::general_purpose::STANDARD};
use rustls::pki_types::{CertificateDer, TrustAnchor};
use serde::Deserialize;

use super::key::{PublicKey, sha256};

#[derive(Debug)]
pub struct TrustedRoot {
    pub authorities: Vec<Authority>,
    /// Rekor logs (entries and checkpoints).
    pub logs: Vec<LogKey>,
    /// Certificate transparency logs (SCTs in signing certificates).
    pub ct_logs: Vec<LogKey>,
    pub timestamp_authorities: Vec<TimestampAuthority>,
}

/// A certificate authority: its root (the anchor), the intermediates
/// between it and signing certificates, and when it issued.
#[derive(Debug)]
pub struct Authority {
    pub anchor: TrustAnchor<'static>,
    pub intermediates: Vec<CertificateDer<'static>>,
    /// Every certificate of its chain, the root last (to find a signing
    /// certificate's issuer by name).
    pub chain: Vec<CertificateDer<'static>>,
    pub valid: Validity,
}

/// A log's key, by log id.
#[derive(Debug)]
pub struct LogKey {
    /// The id entries, SCTs and checkpoints name it by: as the trusted root
    /// lists it (a Rekor v1 or CT log's is the SHA-256 of its key; a Rekor
    /// v2 log's is its signed-note key id), else the SHA-256 of its key.
    pub id: Vec<u8>,
    pub key: PublicKey,
    pub valid: Validity,
    /// The log's `baseUrl` (for messages).
    pub url: String,
}

/// A timestamp authority: the certificate that signs its timestamps, the
/// intermediates, the root; and when it was trusted to sign.
#[derive(Debug)]
pub struct TimestampAuthority {
    pub name: String,
    pub signer: CertificateDer<'static>,
    pub intermediates: Vec<CertificateDer<'static>>,
    pub anchor: TrustAnchor<'static>,
    pub valid: Validity,
}

#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub start: Option<SystemTime>,
    pub end: Option<SystemTime>,
}

impl Validity {
    /// Whether `at` is within: both ends included, as Sigstore's clients
    /// read `validFor`.
    pub fn contains(&self, at: SystemTime) -> bool {
        self.start.is_none_or(|s| s <= at) && self.end.is_none_or(|e| at <= e)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    media_type: String,
    #[serde(default)]
    tlogs: Vec<TlogFile>,
    #[serde(default)]
    certificate_authorities: Vec<AuthorityFile>,
    #[serde(default)]
    ctlogs: Vec<TlogFile>,
    #[serde(default)]
    timestamp_authorities: Vec<AuthorityFile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TlogFile {
    #[serde(default)]
    base_url: String,
    public_key: PublicKeyFile,
    #[serde(default)]
    log_id: Option<LogIdFile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogIdFile {
    key_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublicKeyFile {
    raw_bytes: String,
    #[serde(default)]
    key_details: String,
    #[serde(default)]
    valid_for: Option<ValidForFile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorityFile {
    #[serde(default)]
    subject: Option<SubjectFile>,
    #[serde(default)]
    uri: String,
    cert_chain: ChainFile,
    #[serde(default)]
    valid_for: Option<ValidForFile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubjectFile {
    #[serde(default)]
    common_name: String,
}

#[derive(Debug, Deserialize)]
struct ChainFile {
    certificates: Vec<RawBytes>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

#[derive(Debug, Deserialize)]
struct ValidForFile {
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    end: Option<String>,
}

fn time(at: &str, text: &Option<String>) -> Result<Option<SystemTime>, String> {
    text.as_deref()
        .map(|t| {
            humantime::parse_rfc3339_weak(t)
                .map_err(|e| format!("{at}: {t:?} is not an RFC 3339 time: {e}"))
        })
        .transpose()
}

/// `validFor`, whose start Sigstore's format requires: a key or authority
/// without one is refused, not taken as valid since forever.
fn validity(at: &str, valid_for: &Option<ValidForFile>) -> Result<Validity, String> {
    let missing = || {
        format!(
            "{at}.validFor.start: missing; say since when it is trusted (an RFC 3339 time, \
             as Sigstore's trusted roots do)"
        )
    };
    let v = valid_for.as_ref().ok_or_else(missing)?;
    Ok(Validity {
        start: Some(time(&format!("{at}.validFor.start"), &v.start)?.ok_or_else(missing)?),
        end: time(&format!("{at}.validFor.end"), &v.end)?,
    })
}

fn log_keys(kind: &str, logs: &[TlogFile]) -> Result<Vec<LogKey>, String> {
    let mut keys = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let at = format!("{kind}[{i}]");
        let der = STANDARD
            .decode(&log.public_key.raw_bytes)
            .map_err(|e| format!("{at}.publicKey.rawBytes: not base64: {e}"))?;
        // PKIX_* keys are SubjectPublicKeyInfo; PKCS1_RSA_* are bare
        // PKCS#1 (an older staging CT log's).
        let key = if log.public_key.key_details.starts_with("PKCS1_RSA") {
            PublicKey::from_pkcs1_rsa("", &der)
        } else {
            PublicKey::from_spki("", &der)
        }
        .map_err(|e| format!("{at}.publicKey.rawBytes: {e}"))?;
        let id = match &log.log_id {
            Some(id) => STANDARD
                .decode(&id.key_id)
                .map_err(|e| format!("{at}.logId.keyId: not base64: {e}"))?,
            None => sha256(&der).to_vec(),
        };
        if id.len() < 4 {
            return Err(format!("{at}.logId.keyId: too short to be a log id"));
        }
        keys.push(LogKey {
            id,
            key,
            valid: validity(&format!("{at}.publicKey"), &log.public_key.valid_for)?,
            url: log.base_url.clone(),
        });
    }
    Ok(keys)
}

/// A chain as the trusted root lists it: the first certificate issues (or,
/// for a timestamp authority, signs), the root is last.
fn chain(at: &str, file: &ChainFile) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut chain = Vec::new();
    for (j, cert) in file.certificates.iter().enumerate() {
        let der = STANDARD
            .decode(&cert.raw_bytes)
            .map_err(|e| format!("{at}.certChain.certificates[{j}].rawBytes: not base64: {e}"))?;
        chain.push(CertificateDer::from(der));
    }
    if chain.is_empty() {
        return Err(format!("{at}.certChain: no certificates"));
    }
    Ok(chain)
}

fn anchor(at: &str, root: &CertificateDer<'_>) -> Result<TrustAnchor<'static>, String> {
    webpki::anchor_from_trusted_cert(root)
        .map(|a| a.to_owned())
        .map_err(|_| {
            format!("{at}.certChain: its last certificate (the root) is not a DER certificate")
        })
}

impl TrustedRoot {
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = serde_json::from_str(text)
            .map_err(|e| format!("not a Sigstore trusted root (JSON): {e}"))?;
        if !file
            .media_type
            .starts_with("application/vnd.dev.sigstore.trustedroot")
        {
            return Err(format!(
                "mediaType: {:?} is not application/vnd.dev.sigstore.trustedroot+json",
                file.media_type
            ));
        }
        let mut authorities = Vec::new();
        for (i, ca) in file.certificate_authorities.iter().enumerate() {
            let at = format!("certificateAuthorities[{i}]");
            let chain = chain(&at, &ca.cert_chain)?;
            let anchor = anchor(&at, &chain[chain.len() - 1])?;
            authorities.push(Authority {
                anchor,
                intermediates: chain[..chain.len() - 1].to_vec(),
                chain,
                valid: validity(&at, &ca.valid_for)?,
            });
        }
        let mut timestamp_authorities = Vec::new();
        for (i, tsa) in file.timestamp_authorities.iter().enumerate() {
            let at = format!("timestampAuthorities[{i}]");
            let chain = chain(&at, &tsa.cert_chain)?;
            let anchor = anchor(&at, &chain[chain.len() - 1])?;
            let name = tsa
                .subject
                .as_ref()
                .map(|s| s.common_name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| tsa.uri.clone());
            timestamp_authorities.push(TimestampAuthority {
                name,
                signer: chain[0].clone(),
                intermediates: chain[1..chain.len().saturating_sub(1)].to_vec(),
                anchor,
                valid: validity(&at, &tsa.valid_for)?,
            });
        }
        let logs = log_keys("tlogs", &file.tlogs)?;
        let ct_logs = log_keys("ctlogs", &file.ctlogs)?;
        if authorities.is_empty() && logs.is_empty() {
            return Err("it lists no certificate authority and no transparency log".into());
        }
        Ok(Self {
            authorities,
            logs,
            ct_logs,
            timestamp_authorities,
        })
    }

    /// The transparency log whose id is `id`.
    pub fn log(&self, id: &[u8]) -> Option<&LogKey> {
        self.logs.iter().find(|l| l.id == id)
    }

    /// The certificate transparency log whose id is `id`.
    pub fn ct_log(&self, id: &[u8]) -> Option<&LogKey> {
        self.ct_logs.iter().find(|l| l.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(validity: &str) -> String {
        let (_, pem) = crate::signature::key::tests::p256();
        let der = rustls::pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        use rustls::pki_types::pem::PemObject;
        serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{
                "baseUrl": "https://log.test",
                "hashAlgorithm": "SHA2_256",
                "publicKey": serde_json::from_str::<serde_json::Value>(&format!(
                    r#"{{"rawBytes": "{}", "keyDetails": "PKIX_ECDSA_P256_SHA_256"{validity}}}"#,
                    STANDARD.encode(&der)
                )).unwrap(),
                "logId": {"keyId": STANDARD.encode(sha256(&der))}
            }]
        })
        .to_string()
    }

    #[test]
    fn a_log_without_a_validity_start_is_refused_naming_the_field() {
        let e = TrustedRoot::parse(&root_with("")).unwrap_err();
        assert!(
            e.contains("tlogs[0].publicKey.validFor.start: missing"),
            "{e}"
        );
        let e = TrustedRoot::parse(&root_with(
            r#", "validFor": {"end": "2030-01-01T00:00:00Z"}"#,
        ))
        .unwrap_err();
        assert!(e.contains("validFor.start: missing"), "{e}");
        let root = TrustedRoot::parse(&root_with(
            r#", "validFor": {"start": "2020-01-01T00:00:00Z"}"#,
        ))
        .unwrap();
        assert_eq!(root.logs.len(), 1);
        assert_eq!(root.logs[0].url, "https://log.test");
    }

    #[test]
    fn validity_ends_are_inclusive() {
        let at = |s: &str| humantime::parse_rfc3339(s).unwrap();
        let v = Validity {
            start: Some(at("2020-01-01T00:00:00Z")),
            end: Some(at("2021-01-01T00:00:00Z")),
        };
        assert!(v.contains(at("2020-01-01T00:00:00Z")));
        assert!(v.contains(at("2021-01-01T00:00:00Z")));
        assert!(!v.contains(at("2021-01-01T00:00:01Z")));
        assert!(!v.contains(at("2019-12-31T23:59:59Z")));
    }
}
