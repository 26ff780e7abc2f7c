//! The signature formats, as cosign and Sigstore's clients write them,
//! turned into [`Artifact`]s:
//!
//! - the legacy simple-signing layer of a `sha256-<hex>.sig` tag, with its
//!   certificate, chain, Rekor bundle and RFC 3161 timestamp annotations;
//! - the DSSE envelope layer of a `sha256-<hex>.att` tag (`cosign attest`
//!   before v3), with the same annotations;
//! - the Sigstore bundle (v0.1 to v0.3): a DSSE envelope around an in-toto
//!   statement (images), or a message signature over a blob (given the
//!   blob), with Rekor v1 and v2 entries and RFC 3161 timestamps.
//!
//! Untrusted input: every field is checked, nothing here decides trust.

use base64::{Engine, engine::general_purpose::STANDARD};
use imagegate_proto::digest::Digest;
use serde::Deserialize;

use super::{
    key::sha256,
    model::{Artifact, COSIGN_SIGN_PREDICATE, Claim, ClaimKind, Format, Material},
    rekor, timestamp,
};

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Older bundle media types (`...bundle+json;version=0.1|0.2`).
pub const BUNDLE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
/// The media type of a `.att` layer: a DSSE envelope.
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";

pub const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
pub const ANNOTATION_CERTIFICATE: &str = "dev.sigstore.cosign/certificate";
pub const ANNOTATION_CHAIN: &str = "dev.sigstore.cosign/chain";
pub const ANNOTATION_BUNDLE: &str = "dev.sigstore.cosign/bundle";
pub const ANNOTATION_TIMESTAMP: &str = "dev.sigstore.cosign/rfc3161timestamp";

/// Whether a layer's or artifact's media type is a Sigstore bundle.
pub fn is_bundle(media_type: &str) -> bool {
    media_type.starts_with(BUNDLE_PREFIX)
}

/// A legacy signature: the simple-signing `payload` (a layer's blob) and
/// the layer's annotations.
pub fn legacy(
    manifest: &Digest,
    payload: &[u8],
    annotations: &std::collections::HashMap<String, String>,
) -> Result<Artifact, String> {
    #[derive(Deserialize)]
    struct Payload {
        critical: Critical,
    }
    #[derive(Deserialize)]
    struct Critical {
        image: Image,
        #[serde(rename = "type")]
        kind: String,
    }
    #[derive(Deserialize)]
    struct Image {
        #[serde(rename = "docker-manifest-digest")]
        digest: String,
    }
    let parsed: Payload = serde_json::from_slice(payload)
        .map_err(|e| format!("its simple-signing payload is not one: {e}"))?;
    if parsed.critical.kind != "cosign container image signature" {
        return Err(format!(
            "its simple-signing payload is of type {:?}, not a cosign container image signature",
            parsed.critical.kind
        ));
    }
    let subject = Digest::parse(&parsed.critical.image.digest).map_err(|_| {
        format!(
            "its payload names {:?}, which is not a digest",
            parsed.critical.image.digest
        )
    })?;
    let signature = annotations
        .get(ANNOTATION_SIGNATURE)
        .ok_or_else(|| format!("the layer has no {ANNOTATION_SIGNATURE} annotation"))?;
    let signature = STANDARD
        .decode(signature.trim())
        .map_err(|e| format!("its {ANNOTATION_SIGNATURE} annotation is not base64: {e}"))?;
    let annotated = Annotated::read(annotations)?;
    Ok(Artifact {
        format: Format::LegacyTag,
        manifest: manifest.clone(),
        signed: payload.to_vec(),
        payload: payload.to_vec(),
        signatures: vec![signature],
        material: annotated.material,
        chain: annotated.chain,
        tlog: annotated.tlog,
        timestamps: annotated.timestamps,
        claim: Claim {
            subjects: vec![subject],
            kind: ClaimKind::ImageSignature,
        },
    })
}

/// A `.att` layer (`cosign attest` before v3): `envelope` (the layer's
/// blob, a DSSE envelope) and the layer's annotations.
pub fn legacy_attestation(
    manifest: &Digest,
    envelope: &[u8],
    annotations: &std::collections::HashMap<String, String>,
) -> Result<Artifact, String> {
    let file: EnvelopeFile = serde_json::from_slice(envelope)
        .map_err(|e| format!("its layer is not a DSSE envelope: {e}"))?;
    let opened = open_envelope(file)?;
    let annotated = Annotated::read(annotations)?;
    Ok(Artifact {
        format: Format::LegacyAttestationTag,
        manifest: manifest.clone(),
        signed: opened.signed,
        payload: opened.payload,
        signatures: opened.signatures,
        material: match annotated.material {
            Material::Key { .. } => Material::Key { hint: opened.hint },
            certificate => certificate,
        },
        chain: annotated.chain,
        tlog: annotated.tlog,
        timestamps: annotated.timestamps,
        claim: opened.claim,
    })
}

/// What cosign's layer annotations carry besides the signature.
struct Annotated {
    material: Material,
    chain: Vec<Vec<u8>>,
    tlog: Vec<rekor::Entry>,
    timestamps: Vec<Vec<u8>>,
}

impl Annotated {
    fn read(annotations: &std::collections::HashMap<String, String>) -> Result<Self, String> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let material = match annotations.get(ANNOTATION_CERTIFICATE) {
            Some(pem) if !pem.trim().is_empty() => {
                let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
                    format!("its {ANNOTATION_CERTIFICATE} annotation is not a PEM certificate")
                })?;
                Material::Certificate { der: der.to_vec() }
            }
            _ => Material::Key { hint: None },
        };
        // Intermediates (and often the root) of the certificate's chain:
        // candidates for the path, never anchors.
        let chain = match annotations.get(ANNOTATION_CHAIN) {
            Some(pem) => CertificateDer::pem_slice_iter(pem.as_bytes())
                .take(super::certificate::MAX_EXTRA_INTERMEDIATES)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| format!("its {ANNOTATION_CHAIN} annotation is not PEM certificates"))?
                .into_iter()
                .map(|c| c.to_vec())
                .collect(),
            None => Vec::new(),
        };
        let tlog = match annotations.get(ANNOTATION_BUNDLE) {
            Some(text) => vec![legacy_bundle(text)?],
            None => Vec::new(),
        };
        let timestamps = match annotations.get(ANNOTATION_TIMESTAMP) {
            Some(text) => vec![legacy_timestamp(text)?],
            None => Vec::new(),
        };
        Ok(Self {
            material,
            chain,
            tlog,
            timestamps,
        })
    }
}

/// cosign's legacy Rekor bundle annotation: a SET and the entry it signs.
fn legacy_bundle(text: &str) -> Result<rekor::Entry, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Bundle {
        signed_entry_timestamp: String,
        payload: Payload,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Payload {
        body: String,
        integrated_time: i64,
        log_index: i64,
        #[serde(rename = "logID")]
        log_id: String,
    }
    let bad = |e: String| format!("its {ANNOTATION_BUNDLE} annotation: {e}");
    let bundle: Bundle = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    Ok(rekor::Entry {
        log_index: bundle.payload.log_index,
        log_id: from_hex(&bundle.payload.log_id).ok_or_else(|| bad("logID is not hex".into()))?,
        integrated_time: Some(bundle.payload.integrated_time),
        body: STANDARD
            .decode(&bundle.payload.body)
            .map_err(|e| bad(format!("body is not base64: {e}")))?,
        set: Some(
            STANDARD
                .decode(&bundle.signed_entry_timestamp)
                .map_err(|e| bad(format!("SignedEntryTimestamp is not base64: {e}")))?,
        ),
        proof: None,
        checkpoint_required: false,
    })
}

/// cosign's timestamp annotation: `{"SignedRFC3161Timestamp": base64}`.
fn legacy_timestamp(text: &str) -> Result<Vec<u8>, String> {
    #[derive(Deserialize)]
    struct Annotation {
        #[serde(rename = "SignedRFC3161Timestamp")]
        signed: String,
    }
    let bad = |e: String| format!("its {ANNOTATION_TIMESTAMP} annotation: {e}");
    let annotation: Annotation = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    STANDARD
        .decode(annotation.signed)
        .map_err(|e| bad(format!("not base64: {e}")))
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BundleFile {
    media_type: String,
    verification_material: MaterialFile,
    #[serde(default)]
    dsse_envelope: Option<EnvelopeFile>,
    #[serde(default)]
    message_signature: Option<MessageSignatureFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MaterialFile {
    #[serde(default)]
    public_key: Option<HintFile>,
    #[serde(default)]
    certificate: Option<RawBytesFile>,
    #[serde(default)]
    x509_certificate_chain: Option<ChainFile>,
    #[serde(default)]
    tlog_entries: Vec<TlogFile>,
    #[serde(default)]
    timestamp_verification_data: Option<TimestampDataFile>,
}

#[derive(Deserialize)]
struct HintFile {
    #[serde(default)]
    hint: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytesFile {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct ChainFile {
    certificates: Vec<RawBytesFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimestampDataFile {
    #[serde(default)]
    rfc3161_timestamps: Vec<SignedTimestampFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignedTimestampFile {
    signed_timestamp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TlogFile {
    #[serde(deserialize_with = "rekor::int64")]
    log_index: i64,
    log_id: KeyIdFile,
    /// Rekor v2 entries have none.
    #[serde(default, deserialize_with = "rekor::optional_int64")]
    integrated_time: Option<i64>,
    #[serde(default)]
    inclusion_promise: Option<PromiseFile>,
    #[serde(default)]
    inclusion_proof: Option<ProofFile>,
    canonicalized_body: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyIdFile {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromiseFile {
    signed_entry_timestamp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProofFile {
    #[serde(deserialize_with = "rekor::int64")]
    log_index: i64,
    root_hash: String,
    #[serde(deserialize_with = "rekor::int64")]
    tree_size: i64,
    #[serde(default)]
    hashes: Vec<String>,
    #[serde(default)]
    checkpoint: Option<CheckpointFile>,
}

#[derive(Deserialize)]
struct CheckpointFile {
    envelope: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeFile {
    payload: String,
    payload_type: String,
    signatures: Vec<SignatureFile>,
}

#[derive(Deserialize)]
struct SignatureFile {
    sig: String,
    #[serde(default)]
    keyid: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageSignatureFile {
    #[serde(default)]
    message_digest: Option<HashOutputFile>,
    signature: String,
}

#[derive(Deserialize)]
struct HashOutputFile {
    algorithm: String,
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatementFile {
    #[serde(rename = "_type")]
    kind: String,
    subject: Vec<SubjectFile>,
    predicate_type: String,
    #[serde(default)]
    predicate: serde_json::Value,
}

#[derive(Deserialize)]
struct SubjectFile {
    #[serde(default)]
    digest: std::collections::BTreeMap<String, String>,
}

/// Most DSSE signatures read from one envelope.
const MAX_ENVELOPE_SIGNATURES: usize = 16;
/// Most log entries read from one bundle.
const MAX_TLOG_ENTRIES: usize = 8;
/// Most statement subjects read.
const MAX_SUBJECTS: usize = 1024;

/// DSSE's pre-authentication encoding: what is signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
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

fn b64(what: &str, text: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(text)
        .map_err(|e| format!("{what} is not base64: {e}"))
}

/// A DSSE envelope around an in-toto statement, opened: what is signed,
/// the statement and what it claims.
struct Opened {
    signed: Vec<u8>,
    payload: Vec<u8>,
    signatures: Vec<Vec<u8>>,
    hint: Option<String>,
    claim: Claim,
}

fn open_envelope(envelope: EnvelopeFile) -> Result<Opened, String> {
    if envelope.payload_type != IN_TOTO {
        return Err(format!(
            "its DSSE payload is {:?}, not an in-toto statement ({IN_TOTO})",
            envelope.payload_type
        ));
    }
    if envelope.signatures.is_empty() || envelope.signatures.len() > MAX_ENVELOPE_SIGNATURES {
        return Err(format!(
            "its DSSE envelope carries {} signatures (imagegate reads 1 to {MAX_ENVELOPE_SIGNATURES})",
            envelope.signatures.len()
        ));
    }
    let payload = b64("dsseEnvelope.payload", &envelope.payload)?;
    let signatures = envelope
        .signatures
        .iter()
        .map(|s| b64("dsseEnvelope.signatures[].sig", &s.sig))
        .collect::<Result<Vec<_>, _>>()?;
    let hint = envelope
        .signatures
        .iter()
        .find_map(|s| s.keyid.clone())
        .filter(|h| !h.is_empty());
    let statement: StatementFile = serde_json::from_slice(&payload)
        .map_err(|e| format!("its DSSE payload is not an in-toto statement: {e}"))?;
    if !statement.kind.starts_with("https://in-toto.io/Statement/") {
        return Err(format!(
            "its statement's _type {:?} is not an in-toto statement",
            statement.kind
        ));
    }
    if statement.subject.len() > MAX_SUBJECTS {
        return Err(format!(
            "its statement names {} subjects, more than the {MAX_SUBJECTS} imagegate reads",
            statement.subject.len()
        ));
    }
    let subjects = statement
        .subject
        .iter()
        .flat_map(|s| &s.digest)
        .filter_map(|(algorithm, hex)| Digest::parse(&format!("{algorithm}:{hex}")).ok())
        .collect();
    let kind = if statement.predicate_type == COSIGN_SIGN_PREDICATE {
        ClaimKind::ImageSignature
    } else {
        ClaimKind::Attestation {
            predicate_type: statement.predicate_type,
            predicate: statement.predicate,
        }
    };
    Ok(Opened {
        signed: pae(&envelope.payload_type, &payload),
        payload,
        signatures,
        hint,
        claim: Claim { subjects, kind },
    })
}

/// A bundle's version from its media type: `...bundle+json;version=0.1`
/// or `...bundle.v0.3+json` (`(0, 0)` when unreadable).
fn bundle_version(media_type: &str) -> (u32, u32) {
    let version = media_type
        .split_once(";version=")
        .map(|(_, v)| v.to_string())
        .or_else(|| {
            media_type
                .strip_prefix("application/vnd.dev.sigstore.bundle.v")
                .and_then(|rest| rest.strip_suffix("+json"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// A Sigstore bundle found as `format` in manifest `manifest`: a DSSE
/// statement (a message signature signs a blob, not an image).
pub fn bundle(manifest: &Digest, format: Format, bytes: &[u8]) -> Result<Artifact, String> {
    parse_bundle(manifest, format, bytes, None)
}

/// A Sigstore bundle for `blob`: a DSSE statement naming its digest, or a
/// message signature over it (the conformance corpus; `sigstore sign`).
pub fn bundle_for_blob(bytes: &[u8], blob: &[u8]) -> Result<Artifact, String> {
    let digest = Digest::parse(&format!("sha256:{}", super::key::hex(&sha256(blob))))
        .map_err(|_| "the blob's digest".to_string())?;
    parse_bundle(&digest, Format::Bundle, bytes, Some(blob))
}

fn parse_bundle(
    manifest: &Digest,
    format: Format,
    bytes: &[u8],
    blob: Option<&[u8]>,
) -> Result<Artifact, String> {
    let file: BundleFile =
        serde_json::from_slice(bytes).map_err(|e| format!("not a Sigstore bundle: {e}"))?;
    if !is_bundle(&file.media_type) {
        return Err(format!(
            "its mediaType {:?} is not a Sigstore bundle's",
            file.media_type
        ));
    }
    let checkpoint_required = bundle_version(&file.media_type) >= (0, 2);
    let material = file.verification_material;
    let hint = material.public_key.as_ref().and_then(|k| k.hint.clone());
    let (certificate, chain) = match (material.certificate, material.x509_certificate_chain) {
        (Some(cert), _) => (
            Some(b64("verificationMaterial.certificate", &cert.raw_bytes)?),
            Vec::new(),
        ),
        (None, Some(chain)) => {
            let mut certificates = chain
                .certificates
                .iter()
                .take(1 + super::certificate::MAX_EXTRA_INTERMEDIATES)
                .map(|c| b64("verificationMaterial.x509CertificateChain", &c.raw_bytes));
            let leaf = certificates
                .next()
                .ok_or("its x509CertificateChain is empty")??;
            (Some(leaf), certificates.collect::<Result<Vec<_>, _>>()?)
        }
        (None, None) => (None, Vec::new()),
    };
    if material.tlog_entries.len() > MAX_TLOG_ENTRIES {
        return Err(format!(
            "it carries {} log entries, more than the {MAX_TLOG_ENTRIES} imagegate reads",
            material.tlog_entries.len()
        ));
    }
    let mut tlog = Vec::new();
    for entry in material.tlog_entries {
        let proof = match entry.inclusion_proof {
            Some(p) if p.hashes.len() <= rekor::MAX_PROOF_HASHES => Some(rekor::Proof {
                log_index: p.log_index,
                tree_size: p.tree_size,
                root_hash: b64("inclusionProof.rootHash", &p.root_hash)?,
                hashes: p
                    .hashes
                    .iter()
                    .map(|h| b64("inclusionProof.hashes", h))
                    .collect::<Result<_, _>>()?,
                checkpoint: p.checkpoint.map(|c| c.envelope),
            }),
            Some(_) => return Err("its inclusion proof is longer than any tree needs".into()),
            None => None,
        };
        tlog.push(rekor::Entry {
            log_index: entry.log_index,
            log_id: b64("logId.keyId", &entry.log_id.key_id)?,
            integrated_time: entry.integrated_time.filter(|t| *t != 0),
            body: b64("canonicalizedBody", &entry.canonicalized_body)?,
            set: entry
                .inclusion_promise
                .map(|p| {
                    b64(
                        "inclusionPromise.signedEntryTimestamp",
                        &p.signed_entry_timestamp,
                    )
                })
                .transpose()?,
            proof,
            checkpoint_required,
        });
    }
    let stamps = material
        .timestamp_verification_data
        .map(|t| t.rfc3161_timestamps)
        .unwrap_or_default();
    if stamps.len() > timestamp::MAX_TIMESTAMPS {
        return Err(format!(
            "it carries {} timestamps, more than the {} imagegate reads",
            stamps.len(),
            timestamp::MAX_TIMESTAMPS
        ));
    }
    let timestamps = stamps
        .iter()
        .map(|t| b64("rfc3161Timestamps[].signedTimestamp", &t.signed_timestamp))
        .collect::<Result<Vec<_>, _>>()?;
    let (signed, payload, signatures, envelope_hint, claim) =
        match (file.dsse_envelope, file.message_signature, blob) {
            (Some(envelope), _, _) => {
                let opened = open_envelope(envelope)?;
                (
                    opened.signed,
                    opened.payload,
                    opened.signatures,
                    opened.hint,
                    opened.claim,
                )
            }
            (None, Some(message), Some(blob)) => {
                if let Some(digest) = &message.message_digest {
                    let named = b64("messageSignature.messageDigest.digest", &digest.digest)?;
                    if digest.algorithm != "SHA2_256" || named != sha256(blob) {
                        return Err("its message digest is not the blob's".into());
                    }
                }
                (
                    blob.to_vec(),
                    blob.to_vec(),
                    vec![b64("messageSignature.signature", &message.signature)?],
                    None,
                    Claim {
                        subjects: vec![manifest.clone()],
                        kind: ClaimKind::ImageSignature,
                    },
                )
            }
            (None, Some(_), None) => {
                return Err(
                    "it signs a blob (messageSignature), not an image (a DSSE statement)".into(),
                );
            }
            (None, None, _) => return Err("it holds no DSSE envelope".into()),
        };
    let material_kind = match certificate {
        Some(der) => Material::Certificate { der },
        None => Material::Key {
            hint: hint.or(envelope_hint).filter(|h| !h.is_empty()),
        },
    };
    Ok(Artifact {
        format,
        manifest: manifest.clone(),
        signed,
        payload,
        signatures,
        material: material_kind,
        chain,
        tlog,
        timestamps,
        claim,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn pae_is_dsse_v1() {
        assert_eq!(
            pae("application/example", b"hello world"),
            b"DSSEv1 19 application/example 11 hello world"
        );
    }

    #[test]
    fn truncated_or_foreign_bundles_are_refused_with_a_reason() {
        let digest = Digest::parse(D).unwrap();
        let full = serde_json::json!({
            "mediaType": BUNDLE_V03,
            "verificationMaterial": {"publicKey": {"hint": "k"}},
            "dsseEnvelope": {
                "payload": STANDARD.encode(serde_json::to_vec(&serde_json::json!({
                    "_type": "https://in-toto.io/Statement/v1",
                    "subject": [{"name": "x", "digest": {"sha256": &D[7..]}}],
                    "predicateType": COSIGN_SIGN_PREDICATE, "predicate": {}
                })).unwrap()),
                "payloadType": IN_TOTO,
                "signatures": [{"sig": STANDARD.encode(b"sig"), "keyid": ""}]
            }
        })
        .to_string();
        let artifact = bundle(&digest, Format::BundleReferrer, full.as_bytes()).unwrap();
        assert_eq!(artifact.claim.subjects, vec![digest.clone()]);
        assert_eq!(artifact.claim.kind, ClaimKind::ImageSignature);
        assert_eq!(
            artifact.material,
            Material::Key {
                hint: Some("k".into())
            }
        );
        for cut in [1, full.len() / 2, full.len() - 1] {
            let e = bundle(&digest, Format::BundleReferrer, &full.as_bytes()[..cut]).unwrap_err();
            assert!(e.contains("not a Sigstore bundle"), "{e}");
        }
        let other = full.replace(BUNDLE_V03, "application/json");
        assert!(
            bundle(&digest, Format::BundleReferrer, other.as_bytes())
                .unwrap_err()
                .contains("mediaType")
        );
        let payload_type = full.replace(IN_TOTO, "text/plain");
        assert!(
            bundle(&digest, Format::BundleReferrer, payload_type.as_bytes())
                .unwrap_err()
                .contains("in-toto")
        );
    }

    #[test]
    fn legacy_payloads_name_the_digest_they_sign() {
        let digest = Digest::parse(D).unwrap();
        let payload = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r/x"}},"image":{{"docker-manifest-digest":"{D}"}},"type":"cosign container image signature"}},"optional":null}}"#
        );
        let mut annotations = std::collections::HashMap::new();
        let e = legacy(&digest, payload.as_bytes(), &annotations).unwrap_err();
        assert!(e.contains(ANNOTATION_SIGNATURE), "{e}");
        annotations.insert(ANNOTATION_SIGNATURE.to_string(), STANDARD.encode(b"s"));
        let artifact = legacy(&digest, payload.as_bytes(), &annotations).unwrap();
        assert_eq!(artifact.claim.subjects, vec![digest.clone()]);
        assert_eq!(artifact.signatures, vec![b"s".to_vec()]);
        let other_type = payload.replace("cosign container image signature", "atomic");
        assert!(legacy(&digest, other_type.as_bytes(), &annotations).is_err());
    }

    proptest::proptest! {
        /// Whatever a registry serves as a bundle or a legacy payload, the
        /// parsers answer a result, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let digest = Digest::parse(D).unwrap();
            let _ = bundle(&digest, Format::BundleReferrer, &bytes);
            let mut annotations = std::collections::HashMap::new();
            annotations.insert(ANNOTATION_SIGNATURE.to_string(), String::from_utf8_lossy(&bytes).to_string());
            annotations.insert(ANNOTATION_BUNDLE.to_string(), String::from_utf8_lossy(&bytes).to_string());
            let _ = legacy(&digest, &bytes, &annotations);
        }

        /// A signed bundle with one byte changed is refused, or fails
        /// verification, or still carries the very payload that was signed
        /// (the byte was in an unsigned part: the hint, the key id).
        #[test]
        fn a_changed_byte_never_yields_another_verified_payload(at in 0usize..4096, to in proptest::num::u8::ANY) {
            let digest = Digest::parse(D).unwrap();
            let (pair, pem) = crate::signature::key::tests::p256();
            let key = crate::signature::key::PublicKey::from_pem("k", &pem).unwrap();
            let payload = serde_json::to_vec(&serde_json::json!({
                "_type": "https://in-toto.io/Statement/v1",
                "subject": [{"name": "x", "digest": {"sha256": &D[7..]}}],
                "predicateType": COSIGN_SIGN_PREDICATE, "predicate": {}
            })).unwrap();
            let sig = crate::signature::key::tests::sign(&pair, &pae(IN_TOTO, &payload));
            let mut bytes = serde_json::to_vec(&serde_json::json!({
                "mediaType": BUNDLE_V03,
                "verificationMaterial": {"publicKey": {"hint": "k"}},
                "dsseEnvelope": {
                    "payload": STANDARD.encode(&payload),
                    "payloadType": IN_TOTO,
                    "signatures": [{"sig": STANDARD.encode(&sig), "keyid": ""}]
                }
            })).unwrap();
            let at = at % bytes.len();
            bytes[at] = to;
            if let Ok(artifact) = bundle(&digest, Format::BundleReferrer, &bytes) {
                let verified = artifact.signatures.iter().any(|s| key.verifies(&artifact.signed, s));
                proptest::prop_assert!(!verified || artifact.payload == payload);
                proptest::prop_assert_eq!(artifact.signed, pae(IN_TOTO, &artifact.payload));
            }
        }
    }
}
