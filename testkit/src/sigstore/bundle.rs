//! Keyless Sigstore bundles (v0.3) as Sigstore's clients make them: an
//! in-toto statement about an image digest in a DSSE envelope, signed with
//! a certificate from the test [`Fulcio`], logged to a Rekor v1 or v2
//! test log, timestamped by test authorities.

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Value, json};

use super::{Fulcio, Issue, Log, LogV2, Tsa, sha256};

const IN_TOTO: &str = "application/vnd.in-toto+json";

/// Where the signature is logged.
pub enum LogTo<'a> {
    Nowhere,
    /// Rekor v1: a `dsse` 0.0.1 entry with a SET, integrated at this time
    /// (seconds since the epoch).
    V1(&'a mut Log, i64),
    /// Rekor v2: a `hashedrekord` 0.0.2 entry over the envelope's PAE
    /// (rekor-v2-spec §6.1.4).
    V2HashedRekord(&'a mut LogV2),
    /// Rekor v2: a `dsse` 0.0.2 entry.
    V2Dsse(&'a mut LogV2),
}

/// What a bundle is made of.
pub struct KeylessBundle<'a> {
    pub fulcio: &'a Fulcio,
    pub oidc_issuer: &'a str,
    pub subject: &'a str,
    pub certificate: Issue,
    /// The image digest the statement names.
    pub digest: &'a str,
    pub predicate_type: &'a str,
    pub log: LogTo<'a>,
    /// Timestamp authorities that stamp the signature.
    pub stamps: Vec<&'a Tsa>,
    /// Stamp another signature instead (a timestamp of something else).
    pub stamp_other: bool,
}

/// PAE, as DSSE signs. Written here again rather than taken from the
/// webhook: the bundles the tests make must not share a mistake with the
/// code that checks them.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

impl KeylessBundle<'_> {
    /// The bundle (JSON bytes).
    pub fn make(self) -> Vec<u8> {
        let certificate =
            self.fulcio
                .issue(self.oidc_issuer, self.subject, self.certificate.clone());
        let statement = serde_json::to_vec(&json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "image", "digest": {"sha256": self.digest.trim_start_matches("sha256:")}}],
            "predicateType": self.predicate_type,
            "predicate": {}
        }))
        .unwrap();
        let signed = pae(IN_TOTO, &statement);
        let signature = certificate.key.sign(&signed);
        let entries: Vec<Value> = match self.log {
            LogTo::Nowhere => Vec::new(),
            LogTo::V1(log, at) => vec![
                log.append(&Log::dsse(&statement, &signature, &certificate.pem), at)
                    .bundle_entry,
            ],
            LogTo::V2HashedRekord(log) => vec![log.append(
                "hashedrekord",
                &LogV2::hashedrekord(&sha256(&signed), &signature, &certificate.der),
            )],
            LogTo::V2Dsse(log) => vec![log.append(
                "dsse",
                &LogV2::dsse(&statement, &signature, &certificate.der),
            )],
        };
        let stamped = if self.stamp_other {
            b"another signature".to_vec()
        } else {
            signature.clone()
        };
        let timestamps: Vec<Value> = self
            .stamps
            .iter()
            .map(|tsa| json!({"signedTimestamp": STANDARD.encode(tsa.timestamp(&stamped, false))}))
            .collect();
        serde_json::to_vec(&json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "certificate": {"rawBytes": STANDARD.encode(&certificate.der)},
                "tlogEntries": entries,
                "timestampVerificationData": {"rfc3161Timestamps": timestamps}
            },
            "dsseEnvelope": {
                "payload": STANDARD.encode(&statement),
                "payloadType": IN_TOTO,
                "signatures": [{"sig": STANDARD.encode(&signature), "keyid": ""}]
            }
        }))
        .unwrap()
    }
}
