//! Whether a log entry's body is about this very signature: its payload
//! (or what was signed), its signature and the key or certificate that
//! verifies it, in every body kind cosign and Sigstore's clients have
//! written:
//!
//! | kind | version | written by | binds |
//! |---|---|---|---|
//! | `hashedrekord` | 0.0.1 | cosign 1.5+ (`sign`, legacy tags), Sigstore clients (blobs) | payload hash, signature, key or certificate |
//! | `hashedrekord` | 0.0.2 | Rekor v2 logs (also for DSSE: the hash of PAE) | hash of what was signed, signature, key or certificate |
//! | `rekord` | 0.0.1 | cosign before 1.5 | payload hash, signature, key or certificate |
//! | `dsse` | 0.0.1 | Sigstore bundles v0.3 on Rekor v1 | payload hash, every signature and its certificate |
//! | `dsse` | 0.0.2 | Rekor v2 logs | payload hash, every signature and its verifier |
//! | `intoto` | 0.0.1 | `cosign attest` 1.x | payload hash, key or certificate (no signature stored) |
//! | `intoto` | 0.0.2 | `cosign attest` 2.x | payload hash, signatures (base64 twice), key or certificate |
//!
//! Bodies are untrusted JSON: every field read is checked, and a body that
//! does not name this signature is refused.

use base64::{Engine, engine::general_purpose::STANDARD};
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer, pem::PemObject};
use serde_json::Value;

use super::Entry;
use crate::signature::key::{Hash, hex, sha256};

/// What the entry must be about.
pub struct Binding<'a> {
    /// The payload: a legacy simple-signing payload, a DSSE payload, or a
    /// blob (message signatures).
    pub payload: &'a [u8],
    /// The bytes the signature is over: the payload itself, or DSSE's
    /// pre-authentication encoding.
    pub signed: &'a [u8],
    /// The signature being checked.
    pub signature: &'a [u8],
    /// Every signature of its DSSE envelope (`dsse` entries list them all);
    /// just the one signature otherwise.
    pub signatures: &'a [Vec<u8>],
    pub verifier: Verifier<'a>,
}

/// What verifies the signature.
#[derive(Clone, Copy)]
pub enum Verifier<'a> {
    /// A signing certificate (DER); `key_id` is the SHA-256 of its key.
    Certificate { der: &'a [u8], key_id: [u8; 32] },
    /// A public key, by the SHA-256 of its SubjectPublicKeyInfo.
    Key { key_id: [u8; 32] },
}

impl Verifier<'_> {
    /// Whether `pem_or_der` (a certificate or public key, as an entry
    /// stores it) is this verifier.
    fn is(&self, text: &[u8]) -> bool {
        let key_id = match self {
            Self::Certificate { key_id, .. } | Self::Key { key_id } => key_id,
        };
        if let Ok(cert) = CertificateDer::from_pem_slice(text) {
            return matches!(self, Self::Certificate { der, .. } if cert.as_ref() == *der);
        }
        if let Ok(spki) = SubjectPublicKeyInfoDer::from_pem_slice(text) {
            return sha256(spki.as_ref()) == *key_id;
        }
        match self {
            // Raw DER: a certificate, or a key.
            Self::Certificate { der, key_id } => text == *der || sha256(text) == *key_id,
            Self::Key { key_id } => sha256(text) == *key_id,
        }
    }
}

/// Checks that `entry`'s body is about `binding`.
pub fn bound_to(entry: &Entry, binding: &Binding<'_>) -> Result<(), String> {
    let body: Value = serde_json::from_slice(&entry.body)
        .map_err(|e| format!("its transparency log entry's body is not JSON: {e}"))?;
    let kind = text(&body, "/kind").unwrap_or_default();
    let version = text(&body, "/apiVersion").unwrap_or_default();
    let spec = body.get("spec").unwrap_or(&Value::Null);
    let bound = match (kind.as_str(), version.as_str()) {
        ("hashedrekord", "0.0.1") | ("rekord", "0.0.1") => hashedrekord_v1(spec, binding),
        ("hashedrekord", "0.0.2") => hashedrekord_v2(spec, binding),
        ("dsse", "0.0.1") => dsse_v1(spec, binding),
        ("dsse", "0.0.2") => dsse_v2(spec, binding),
        ("intoto", "0.0.1") => intoto_v1(spec, binding),
        ("intoto", "0.0.2") => intoto_v2(spec, binding),
        (kind, version) => {
            return Err(format!(
                "its transparency log entry is of kind {kind:?} version {version:?}; imagegate \
                 reads hashedrekord, rekord, dsse and intoto entries"
            ));
        }
    };
    if bound {
        Ok(())
    } else {
        Err(format!(
            "its transparency log entry ({kind} {version}) is about another signature, payload \
             or signer"
        ))
    }
}

fn text(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn b64(v: &Value, pointer: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text(v, pointer)?).ok()
}

/// `{"algorithm": "sha256", "value": "<hex>"}` naming `bytes`.
fn hex_hash_of(v: &Value, pointer: &str, bytes: &[u8]) -> bool {
    let algorithm = text(v, &format!("{pointer}/algorithm"));
    let value = text(v, &format!("{pointer}/value"));
    algorithm.as_deref() == Some("sha256") && value.as_deref() == Some(hex(&sha256(bytes)).as_str())
}

/// v2's `{"algorithm": "SHA2_256", "digest": "<base64>"}` naming `bytes`.
fn hash_of(v: &Value, pointer: &str, bytes: &[u8]) -> bool {
    let Some(hash) = text(v, &format!("{pointer}/algorithm")).and_then(|a| Hash::from_name(&a))
    else {
        return false;
    };
    b64(v, &format!("{pointer}/digest")).is_some_and(|d| d == hash.digest(bytes))
}

/// A v2 verifier: `{"x509Certificate": {"rawBytes"}}` or
/// `{"publicKey": {"rawBytes"}}`.
fn v2_verifier_is(v: &Value, binding: &Binding<'_>) -> bool {
    b64(v, "/x509Certificate/rawBytes")
        .or_else(|| b64(v, "/publicKey/rawBytes"))
        .is_some_and(|raw| binding.verifier.is(&raw))
}

/// A verifier stored as base64 of its PEM (v1 kinds).
fn pem_verifier_is(v: &Value, pointer: &str, binding: &Binding<'_>) -> bool {
    b64(v, pointer).is_some_and(|pem| binding.verifier.is(&pem))
}

fn signature_is(v: &Value, pointer: &str, binding: &Binding<'_>) -> bool {
    b64(v, pointer).is_some_and(|s| s == binding.signature)
}

/// `hashedrekord` and `rekord` 0.0.1: the payload's SHA-256 (or, for
/// `rekord`, the payload itself), the signature, its key or certificate.
fn hashedrekord_v1(spec: &Value, binding: &Binding<'_>) -> bool {
    let data = hex_hash_of(spec, "/data/hash", binding.payload)
        || b64(spec, "/data/content").is_some_and(|c| c == binding.payload);
    data && signature_is(spec, "/signature/content", binding)
        && pem_verifier_is(spec, "/signature/publicKey/content", binding)
}

/// `hashedrekord` 0.0.2 (Rekor v2): the digest of what was signed, with the
/// hash it names (for DSSE envelopes, of their PAE: rekor-v2-spec §6.1.4).
fn hashedrekord_v2(spec: &Value, binding: &Binding<'_>) -> bool {
    let Some(spec) = spec.get("hashedRekordV002") else {
        return false;
    };
    hash_of(spec, "/data", binding.signed)
        && signature_is(spec, "/signature/content", binding)
        && spec
            .pointer("/signature/verifier")
            .is_some_and(|v| v2_verifier_is(v, binding))
}

/// `dsse` 0.0.1: the payload's hash and the envelope's signatures, each
/// with its certificate, exactly.
fn dsse_v1(spec: &Value, binding: &Binding<'_>) -> bool {
    let Some(listed) = spec.get("signatures").and_then(Value::as_array) else {
        return false;
    };
    hex_hash_of(spec, "/payloadHash", binding.payload)
        && listed.len() == binding.signatures.len()
        && binding.signatures.iter().all(|signature| {
            listed.iter().any(|s| {
                b64(s, "/signature").is_some_and(|x| &x == signature)
                    && pem_verifier_is(s, "/verifier", binding)
            })
        })
}

/// `dsse` 0.0.2 (Rekor v2).
fn dsse_v2(spec: &Value, binding: &Binding<'_>) -> bool {
    let Some(spec) = spec.get("dsseV002") else {
        return false;
    };
    let Some(listed) = spec.get("signatures").and_then(Value::as_array) else {
        return false;
    };
    hash_of(spec, "/payloadHash", binding.payload)
        && listed.len() == binding.signatures.len()
        && binding.signatures.iter().all(|signature| {
            listed.iter().any(|s| {
                b64(s, "/content").is_some_and(|x| &x == signature)
                    && s.get("verifier")
                        .is_some_and(|v| v2_verifier_is(v, binding))
            })
        })
}

/// `intoto` 0.0.1: only the payload's hash and the key are stored (the
/// envelope is not), so the signature cannot be bound; the signature is
/// verified against the key or certificate the entry names.
fn intoto_v1(spec: &Value, binding: &Binding<'_>) -> bool {
    hex_hash_of(spec, "/content/payloadHash", binding.payload)
        && pem_verifier_is(spec, "/publicKey", binding)
}

/// `intoto` 0.0.2: the payload's hash and the envelope's signatures, each
/// with its key; Rekor stores each signature base64-encoded twice.
fn intoto_v2(spec: &Value, binding: &Binding<'_>) -> bool {
    let Some(listed) = spec
        .pointer("/content/envelope/signatures")
        .and_then(Value::as_array)
    else {
        return false;
    };
    hex_hash_of(spec, "/content/payloadHash", binding.payload)
        && listed.iter().any(|s| {
            let sig = b64(s, "/sig");
            let twice = sig.as_deref().and_then(|once| STANDARD.decode(once).ok());
            (sig.as_deref() == Some(binding.signature)
                || twice.as_deref() == Some(binding.signature))
                && pem_verifier_is(s, "/publicKey", binding)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PAYLOAD: &[u8] = b"{\"payload\":1}";
    const SIG: &[u8] = b"signature-bytes";

    fn key_pem() -> (String, [u8; 32]) {
        let (_, pem) = crate::signature::key::tests::p256();
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).unwrap();
        (pem, sha256(der.as_ref()))
    }

    fn entry(body: Value) -> Entry {
        Entry {
            log_index: 0,
            log_id: vec![],
            integrated_time: None,
            body: serde_json::to_vec(&body).unwrap(),
            set: None,
            proof: None,
            checkpoint_required: false,
        }
    }

    fn binding<'a>(signed: &'a [u8], signatures: &'a [Vec<u8>], key_id: [u8; 32]) -> Binding<'a> {
        Binding {
            payload: PAYLOAD,
            signed,
            signature: SIG,
            signatures,
            verifier: Verifier::Key { key_id },
        }
    }

    #[test]
    fn every_kind_binds_its_payload_signature_and_key_and_nothing_else() {
        let (pem, key_id) = key_pem();
        let (other_pem, _) = key_pem();
        let pae = crate::signature::formats::pae("application/vnd.in-toto+json", PAYLOAD);
        let signatures = vec![SIG.to_vec()];
        let b64 = |b: &[u8]| STANDARD.encode(b);
        let spki_der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).unwrap();
        let bodies = |pem: &str, sig: &[u8]| {
            let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).unwrap();
            vec![
                (
                    json!({"apiVersion": "0.0.1", "kind": "hashedrekord", "spec": {
                    "data": {"hash": {"algorithm": "sha256", "value": hex(&sha256(PAYLOAD))}},
                    "signature": {"content": b64(sig), "publicKey": {"content": b64(pem.as_bytes())}}}}),
                    PAYLOAD,
                ),
                (
                    json!({"apiVersion": "0.0.1", "kind": "rekord", "spec": {
                    "data": {"hash": {"algorithm": "sha256", "value": hex(&sha256(PAYLOAD))}},
                    "signature": {"format": "x509", "content": b64(sig), "publicKey": {"content": b64(pem.as_bytes())}}}}),
                    PAYLOAD,
                ),
                (
                    json!({"apiVersion": "0.0.2", "kind": "hashedrekord", "spec": {"hashedRekordV002": {
                    "data": {"algorithm": "SHA2_256", "digest": b64(&sha256(&pae))},
                    "signature": {"content": b64(sig), "verifier": {"publicKey": {"rawBytes": b64(spki.as_ref())}, "keyDetails": "PKIX_ECDSA_P256_SHA_256"}}}}}),
                    &pae[..],
                ),
                (
                    json!({"apiVersion": "0.0.1", "kind": "dsse", "spec": {
                    "payloadHash": {"algorithm": "sha256", "value": hex(&sha256(PAYLOAD))},
                    "signatures": [{"signature": b64(sig), "verifier": b64(pem.as_bytes())}]}}),
                    &pae[..],
                ),
                (
                    json!({"apiVersion": "0.0.2", "kind": "dsse", "spec": {"dsseV002": {
                    "payloadHash": {"algorithm": "SHA2_256", "digest": b64(&sha256(PAYLOAD))},
                    "signatures": [{"content": b64(sig), "verifier": {"publicKey": {"rawBytes": b64(spki.as_ref())}}}]}}}),
                    &pae[..],
                ),
                (
                    json!({"apiVersion": "0.0.1", "kind": "intoto", "spec": {
                    "content": {"payloadHash": {"algorithm": "sha256", "value": hex(&sha256(PAYLOAD))}},
                    "publicKey": b64(pem.as_bytes())}}),
                    &pae[..],
                ),
                (
                    json!({"apiVersion": "0.0.2", "kind": "intoto", "spec": {"content": {
                    "payloadHash": {"algorithm": "sha256", "value": hex(&sha256(PAYLOAD))},
                    "envelope": {"payloadType": "application/vnd.in-toto+json",
                        "signatures": [{"sig": b64(b64(sig).as_bytes()), "publicKey": b64(pem.as_bytes())}]}}}}),
                    &pae[..],
                ),
            ]
        };
        assert_eq!(sha256(spki_der.as_ref()), key_id);
        for (body, signed) in bodies(&pem, SIG) {
            let kind = format!("{} {}", body["kind"], body["apiVersion"]);
            bound_to(&entry(body), &binding(signed, &signatures, key_id))
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
        }
        // The same bodies for another key, or another signature, are
        // refused (intoto 0.0.1 stores no signature: only the key binds).
        for (body, signed) in bodies(&other_pem, SIG) {
            let e = bound_to(&entry(body), &binding(signed, &signatures, key_id)).unwrap_err();
            assert!(e.contains("about another"), "{e}");
        }
        for (body, signed) in bodies(&pem, b"another signature") {
            let unbindable = body["kind"] == "intoto" && body["apiVersion"] == "0.0.1";
            let result = bound_to(&entry(body), &binding(signed, &signatures, key_id));
            assert_eq!(result.is_ok(), unbindable, "{result:?}");
        }
        // Another payload.
        for (body, _) in bodies(&pem, SIG) {
            let other = crate::signature::formats::pae("application/vnd.in-toto+json", b"other");
            let mut b = binding(&other, &signatures, key_id);
            b.payload = b"other";
            assert!(bound_to(&entry(body), &b).is_err());
        }
    }

    #[test]
    fn unknown_kinds_and_garbage_are_refused_in_words() {
        let (_, key_id) = key_pem();
        let signatures = vec![SIG.to_vec()];
        let e = bound_to(
            &entry(json!({"kind": "alpine", "apiVersion": "0.0.1", "spec": {}})),
            &binding(PAYLOAD, &signatures, key_id),
        )
        .unwrap_err();
        assert!(
            e.contains("\"alpine\"") && e.contains("imagegate reads"),
            "{e}"
        );
        let mut garbage = entry(json!({}));
        garbage.body = b"{not json".to_vec();
        assert!(
            bound_to(&garbage, &binding(PAYLOAD, &signatures, key_id))
                .unwrap_err()
                .contains("not JSON")
        );
    }
}
