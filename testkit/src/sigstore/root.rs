//! A `trusted_root.json` (Sigstore's trust root format) listing the test
//! services: certificate authorities (with their CT logs), Rekor v1 and v2
//! logs, timestamp authorities.

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Value, json};

use super::{Fulcio, Log, LogV2, Tsa};

/// What a trusted root lists; [`TrustedRoot::json`] writes it.
#[derive(Default)]
pub struct TrustedRoot<'a> {
    pub authorities: Vec<&'a Fulcio>,
    pub logs: Vec<&'a Log>,
    pub v2_logs: Vec<&'a LogV2>,
    pub timestamp_authorities: Vec<&'a Tsa>,
    /// Leave the authorities' CT logs out (a root that cannot vouch for
    /// SCTs).
    pub without_ct_logs: bool,
}

const SINCE: &str = "2020-01-01T00:00:00Z";

fn key(spki: &[u8], details: &str) -> Value {
    json!({"rawBytes": STANDARD.encode(spki), "keyDetails": details, "validFor": {"start": SINCE}})
}

fn chain(chain: &[Vec<u8>]) -> Value {
    json!({"certificates": chain.iter().map(|d| json!({"rawBytes": STANDARD.encode(d)})).collect::<Vec<_>>()})
}

impl TrustedRoot<'_> {
    pub fn json(&self) -> String {
        let mut tlogs: Vec<Value> = self
            .logs
            .iter()
            .map(|l| {
                json!({
                    "baseUrl": "https://rekor.imagegate.test",
                    "hashAlgorithm": "SHA2_256",
                    "publicKey": key(&l.spki(), "PKIX_ECDSA_P256_SHA_256"),
                    "logId": {"keyId": STANDARD.encode(l.id())}
                })
            })
            .collect();
        tlogs.extend(self.v2_logs.iter().map(|l| {
            json!({
                "baseUrl": format!("https://{}", l.origin),
                "hashAlgorithm": "SHA2_256",
                "publicKey": key(&l.spki(), "PKIX_ED25519"),
                "logId": {"keyId": STANDARD.encode(l.id())}
            })
        }));
        let ctlogs: Vec<Value> = if self.without_ct_logs {
            Vec::new()
        } else {
            self.authorities
                .iter()
                .map(|a| {
                    json!({
                        "baseUrl": "https://ctfe.imagegate.test",
                        "hashAlgorithm": "SHA2_256",
                        "publicKey": key(&a.ct.spki(), "PKIX_ECDSA_P256_SHA_256"),
                        "logId": {"keyId": STANDARD.encode(a.ct.id())}
                    })
                })
                .collect()
        };
        json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": tlogs,
            "certificateAuthorities": self.authorities.iter().map(|a| json!({
                "subject": {"organization": "imagegate.test", "commonName": "fulcio"},
                "uri": "https://fulcio.imagegate.test",
                "certChain": chain(&a.chain_der()),
                "validFor": {"start": SINCE}
            })).collect::<Vec<_>>(),
            "ctlogs": ctlogs,
            "timestampAuthorities": self.timestamp_authorities.iter().map(|t| json!({
                "subject": {"organization": "imagegate.test", "commonName": "imagegate-test-tsa"},
                "uri": "https://tsa.imagegate.test",
                "certChain": chain(&t.chain_der()),
                "validFor": {"start": SINCE}
            })).collect::<Vec<_>>()
        })
        .to_string()
    }
}

/// A `trusted_root.json` listing `authorities` (and their CT logs) and
/// `logs`.
pub fn trusted_root(authorities: &[&Fulcio], logs: &[&Log]) -> String {
    TrustedRoot {
        authorities: authorities.to_vec(),
        logs: logs.to_vec(),
        ..TrustedRoot::default()
    }
    .json()
}
