//! The user's `trusted_root.json` (the Sigstore trust root format,
//! `application/vnd.dev.sigstore.trustedroot+json;version=0.1`): the
//! certificate authorities that issue signing certificates (Fulcio) and the
//! transparency logs' keys (Rekor). Read from a file the policy names; no
//! TUF fetch, no network: a cluster without a route to Sigstore verifies
//! with what its operator put there.

use std::time::SystemTime;

use base64::{Engine, engine::general_purpose::STANDARD};
use rustls::pki_types::{CertificateDer, TrustAnchor};
use serde::Deserialize;

use super::key::PublicKey;

#[derive(Debug)]
pub struct TrustedRoot {
    pub authorities: Vec<Authority>,
    pub logs: Vec<LogKey>,
}

/// A certificate authority: its root (the anchor), the intermediates
/// between it and signing certificates, and when it issued.
#[derive(Debug)]
pub struct Authority {
    pub anchor: TrustAnchor<'static>,
    pub intermediates: Vec<CertificateDer<'static>>,
    pub valid: Validity,
}

/// A transparency log's key, by log id.
#[derive(Debug)]
pub struct LogKey {
    pub key: PublicKey,
    pub valid: Validity,
}

#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub start: Option<SystemTime>,
    pub end: Option<SystemTime>,
}

impl Validity {
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
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TlogFile {
    public_key: PublicKeyFile,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublicKeyFile {
    raw_bytes: String,
    #[serde(default)]
    valid_for: Option<ValidForFile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorityFile {
    cert_chain: ChainFile,
    #[serde(default)]
    valid_for: Option<ValidForFile>,
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

fn validity(at: &str, valid_for: &Option<ValidForFile>) -> Result<Validity, String> {
    let Some(v) = valid_for else {
        return Ok(Validity {
            start: None,
            end: None,
        });
    };
    Ok(Validity {
        start: time(&format!("{at}.validFor.start"), &v.start)?,
        end: time(&format!("{at}.validFor.end"), &v.end)?,
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
        let mut logs = Vec::new();
        for (i, log) in file.tlogs.iter().enumerate() {
            let at = format!("tlogs[{i}]");
            let der = STANDARD
                .decode(&log.public_key.raw_bytes)
                .map_err(|e| format!("{at}.publicKey.rawBytes: not base64: {e}"))?;
            let key = PublicKey::from_spki("", &der)
                .map_err(|e| format!("{at}.publicKey.rawBytes: {e}"))?;
            logs.push(LogKey {
                key,
                valid: validity(&format!("{at}.publicKey"), &log.public_key.valid_for)?,
            });
        }
        let mut authorities = Vec::new();
        for (i, ca) in file.certificate_authorities.iter().enumerate() {
            let at = format!("certificateAuthorities[{i}]");
            let mut chain = Vec::new();
            for (j, cert) in ca.cert_chain.certificates.iter().enumerate() {
                let der = STANDARD.decode(&cert.raw_bytes).map_err(|e| {
                    format!("{at}.certChain.certificates[{j}].rawBytes: not base64: {e}")
                })?;
                chain.push(CertificateDer::from(der));
            }
            // The chain runs from the issuing certificate up to the root.
            let Some(root) = chain.pop() else {
                return Err(format!("{at}.certChain: no certificates"));
            };
            let anchor = webpki::anchor_from_trusted_cert(&root)
                .map_err(|e| format!("{at}.certChain: the root is not a certificate: {e}"))?
                .to_owned();
            authorities.push(Authority {
                anchor,
                intermediates: chain,
                valid: validity(&at, &ca.valid_for)?,
            });
        }
        if authorities.is_empty() && logs.is_empty() {
            return Err("it lists no certificate authority and no transparency log".into());
        }
        Ok(Self { authorities, logs })
    }

    /// The log whose id (SHA-256 of its key) is `id`.
    pub fn log(&self, id: &[u8]) -> Option<&LogKey> {
        self.logs.iter().find(|l| l.key.id.as_slice() == id)
    }
}
