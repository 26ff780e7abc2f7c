//! Signatures for tests, made three independent ways:
//!
//! - [`npm_sign`]: the real Sigstore signer from the npm registry
//!   (`@sigstore/sign` 4.1 + `@sigstore/bundle` + `@sigstore/oci` 0.6,
//!   installed by `cargo xtask setup` into `.tools/npm-sigstore`), which
//!   builds a bundle v0.3 and attaches it to the image itself;
//! - [`openssl_sign`]: the `openssl` command, for cosign's legacy format
//!   (the test writes the simple-signing payload and manifest by cosign's
//!   published spec);
//! - [`Fulcio`] and [`Log`]: a test certificate authority with Fulcio's
//!   extensions and a test transparency log (SETs, RFC 9162 inclusion
//!   proofs, signed checkpoints), listed in a `trusted_root.json`
//!   ([`trusted_root`]) as Sigstore's public-good instance would be.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair},
};
use serde_json::{Value, json};

use crate::registry::Registry;

/// Where the npm signer is installed.
pub fn npm_modules() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".tools/npm-sigstore/node_modules");
    assert!(
        path.join("@sigstore/oci").exists(),
        "{} is missing: run `cargo xtask setup` (npm @sigstore/sign, @sigstore/bundle, @sigstore/oci)",
        path.display()
    );
    path
}

/// A P-256 key pair: PKCS#8 private key PEM, SubjectPublicKeyInfo PEM.
pub struct KeyPair {
    pub private_pem: String,
    pub public_pem: String,
    pkcs8: Vec<u8>,
}

impl KeyPair {
    pub fn generate() -> Self {
        let key = rcgen::KeyPair::generate().expect("a P-256 key");
        Self {
            private_pem: key.serialize_pem(),
            public_pem: key.public_key_pem(),
            pkcs8: key.serialize_der(),
        }
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki(&self) -> Vec<u8> {
        let key = rcgen::KeyPair::try_from(self.pkcs8.as_slice()).unwrap();
        use rcgen::PublicKeyData;
        key.subject_public_key_info()
    }

    /// An ASN.1 DER ECDSA P-256 SHA-256 signature over `message` (ring).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.pkcs8, &rng)
            .expect("PKCS#8");
        pair.sign(&rng, message).unwrap().as_ref().to_vec()
    }
}

/// What [`npm_sign`] signs and where it attaches it.
pub struct NpmSign<'a> {
    pub key: &'a KeyPair,
    pub hint: &'a str,
    pub registry: &'a str,
    pub repo: &'a str,
    /// The image to attach to.
    pub digest: &'a str,
    /// What the statement names (the image's digest, unless testing a
    /// mismatch).
    pub subject_digest: &'a str,
    pub predicate_type: &'a str,
    pub predicate: Value,
    pub credentials: (&'a str, &'a str),
}

/// Signs and attaches with the npm Sigstore packages; returns what the
/// script printed: `{descriptor, bundle}`.
pub fn npm_sign(o: &NpmSign<'_>) -> Value {
    let options = json!({
        "keyPem": o.key.private_pem,
        "hint": o.hint,
        "registry": o.registry,
        "repo": o.repo,
        "digest": o.digest,
        "subjectDigest": o.subject_digest,
        "predicateType": o.predicate_type,
        "predicate": o.predicate,
        "user": o.credentials.0,
        "password": o.credentials.1,
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("sigstore/sign.js");
    let out = Command::new("node")
        .arg(script)
        .arg(options.to_string())
        .env("NODE_PATH", npm_modules())
        .output()
        .expect("node (the machine's Node.js)");
    assert!(
        out.status.success(),
        "the npm Sigstore signer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the signer prints JSON")
}

/// Signs `message` with the `openssl` command: ECDSA with SHA-256, DER, as
/// `cosign sign --key` does.
pub fn openssl_sign(key: &KeyPair, message: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key.pem"), &key.private_pem).unwrap();
    std::fs::write(dir.path().join("payload"), message).unwrap();
    let status = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("sig"))
        .arg(dir.path().join("payload"))
        .status()
        .expect("openssl");
    assert!(status.success());
    std::fs::read(dir.path().join("sig")).unwrap()
}

/// cosign's simple-signing payload for `repository@digest`.
pub fn simple_signing_payload(repository: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature"
        },
        "optional": null
    }))
    .unwrap()
}

/// Attaches `bundle` to `repo@digest` as @sigstore/oci does on a registry
/// without the referrers API: a manifest whose layer is the bundle, listed
/// in the `sha256-<hex>` tag index. Returns the tag index's entries so a
/// test can add more.
pub async fn attach_bundle(registry: &Registry, repo: &str, digest: &str, bundle: &[u8]) -> Value {
    let empty = registry.push_blob(repo, b"{}").await;
    let layer = registry.push_blob(repo, bundle).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "digest": layer, "size": bundle.len()}],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 1}
    }))
    .unwrap();
    let manifest_digest = registry
        .put_manifest(
            repo,
            &crate::registry::sha256(&manifest),
            &manifest,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .await;
    let entry = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest.len(),
        "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json"
    });
    put_tag_index(registry, repo, digest, vec![entry.clone()]).await;
    entry
}

pub async fn put_tag_index(registry: &Registry, repo: &str, digest: &str, entries: Vec<Value>) {
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries
    }))
    .unwrap();
    registry
        .put_manifest(
            repo,
            &digest.replace(':', "-"),
            &index,
            "application/vnd.oci.image.index.v1+json",
        )
        .await;
}

/// A legacy signature: `layers` (payload, annotations) under the
/// `sha256-<hex>.sig` tag, in cosign's layout.
pub async fn attach_legacy(
    registry: &Registry,
    repo: &str,
    digest: &str,
    layers: &[(Vec<u8>, Value)],
) {
    let empty = registry.push_blob(repo, b"{}").await;
    let mut descriptors = Vec::new();
    for (payload, annotations) in layers {
        let blob = registry.push_blob(repo, payload).await;
        descriptors.push(json!({
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": blob,
            "size": payload.len(),
            "annotations": annotations
        }));
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": empty, "size": 2},
        "layers": descriptors
    }))
    .unwrap();
    registry
        .put_manifest(
            repo,
            &format!("{}.sig", digest.replace(':', "-")),
            &manifest,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .await;
}

/// A test certificate authority that issues certificates as Fulcio does:
/// code signing, the OIDC issuer in extension 1.3.6.1.4.1.57264.1.8, the
/// subject as the SAN's email.
pub struct Fulcio {
    root: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// Sigstore's public Fulcio issues from an intermediate; a test CA may.
    intermediate: Option<rcgen::CertifiedIssuer<'static, rcgen::KeyPair>>,
}

/// A signing certificate and its key.
pub struct Signing {
    pub der: Vec<u8>,
    pub pem: String,
    pub key: KeyPair,
}

fn ca_params(name: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(365);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
    params
}

impl Fulcio {
    /// A root that issues signing certificates itself.
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        Self {
            root: rcgen::CertifiedIssuer::self_signed(ca_params(name), key).unwrap(),
            intermediate: None,
        }
    }

    /// A root and an intermediate under it that issues signing
    /// certificates, as Sigstore's public Fulcio is set up.
    pub fn with_intermediate(name: &str) -> Self {
        let mut fulcio = Self::new(name);
        let key = rcgen::KeyPair::generate().unwrap();
        fulcio.intermediate = Some(
            rcgen::CertifiedIssuer::signed_by(
                ca_params(&format!("{name} intermediate")),
                key,
                &fulcio.root,
            )
            .unwrap(),
        );
        fulcio
    }

    /// The chain a trusted root lists: the issuing intermediate (if any),
    /// then the root.
    pub fn chain_der(&self) -> Vec<Vec<u8>> {
        self.intermediate
            .iter()
            .chain(std::iter::once(&self.root))
            .map(|c| c.der().to_vec())
            .collect()
    }

    fn issuer(&self) -> &rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
        self.intermediate.as_ref().unwrap_or(&self.root)
    }

    /// A certificate for `subject` (an email) from OIDC `issuer`, valid
    /// from `not_before` for `minutes` (Fulcio's are valid 10 minutes).
    pub fn certificate(
        &self,
        oidc_issuer: &str,
        subject: &str,
        not_before: time::OffsetDateTime,
        minutes: i64,
    ) -> Signing {
        self.certificate_for(
            oidc_issuer,
            subject,
            not_before,
            minutes,
            rcgen::ExtendedKeyUsagePurpose::CodeSigning,
        )
    }

    /// As [`Fulcio::certificate`], for another extended key usage (a
    /// certificate a verifier must refuse for code signing).
    pub fn certificate_for(
        &self,
        oidc_issuer: &str,
        subject: &str,
        not_before: time::OffsetDateTime,
        minutes: i64,
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> Signing {
        let key = KeyPair::generate();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::Rfc822Name(
            subject.to_string().try_into().unwrap(),
        )];
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before;
        params.not_after = not_before + time::Duration::minutes(minutes);
        // A DER UTF8String, as Fulcio writes the issuer.
        let mut value = vec![0x0c, oidc_issuer.len() as u8];
        value.extend_from_slice(oidc_issuer.as_bytes());
        params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 57264, 1, 8],
            value,
        )];
        let signing_key = rcgen::KeyPair::try_from(key.pkcs8.as_slice()).unwrap();
        let cert = params.signed_by(&signing_key, self.issuer()).unwrap();
        Signing {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            key,
        }
    }
}

/// A test transparency log: appends entries, and answers each with a SET,
/// an inclusion proof in the tree as it then stands, and a signed
/// checkpoint, as Rekor does.
pub struct Log {
    key: KeyPair,
    leaves: Vec<[u8; 32]>,
}

/// One logged entry, in a bundle's `tlogEntries` JSON form and cosign's
/// legacy bundle annotation form.
pub struct Logged {
    pub bundle_entry: Value,
    pub legacy_annotation: String,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .unwrap()
}

fn node(left: &[u8], right: &[u8]) -> [u8; 32] {
    let mut input = vec![1];
    input.extend_from_slice(left);
    input.extend_from_slice(right);
    sha256(&input)
}

/// RFC 9162's tree hash of `leaves`.
fn tree_hash(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => sha256(b""),
        1 => leaves[0],
        n => {
            let k = n.next_power_of_two() / 2;
            node(&tree_hash(&leaves[..k]), &tree_hash(&leaves[k..]))
        }
    }
}

/// RFC 9162's inclusion path of leaf `m` in `leaves`.
fn path(m: usize, leaves: &[[u8; 32]]) -> Vec<[u8; 32]> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = n.next_power_of_two() / 2;
    if m < k {
        let mut p = path(m, &leaves[..k]);
        p.push(tree_hash(&leaves[k..]));
        p
    } else {
        let mut p = path(m - k, &leaves[k..]);
        p.push(tree_hash(&leaves[..k]));
        p
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Log {
    /// A log holding `filler` unrelated entries already (so proofs have
    /// hashes to check).
    pub fn new(filler: usize) -> Self {
        Self {
            key: KeyPair::generate(),
            leaves: (0..filler)
                .map(|i| {
                    let mut input = vec![0];
                    input.extend_from_slice(format!("filler {i}").as_bytes());
                    sha256(&input)
                })
                .collect(),
        }
    }

    pub fn id(&self) -> [u8; 32] {
        sha256(&self.key.spki())
    }

    pub fn spki(&self) -> Vec<u8> {
        self.key.spki()
    }

    /// A `hashedrekord` body (legacy signatures: the payload is signed).
    pub fn hashedrekord(payload: &[u8], signature: &[u8], certificate_pem: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": hex(&sha256(payload))}},
                "signature": {
                    "content": STANDARD.encode(signature),
                    "publicKey": {"content": STANDARD.encode(certificate_pem)}
                }
            }
        }))
        .unwrap()
    }

    /// A `dsse` body (bundles: the envelope's payload and signature).
    pub fn dsse(payload: &[u8], signature: &[u8], certificate_pem: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "payloadHash": {"algorithm": "sha256", "value": hex(&sha256(payload))},
                "signatures": [{
                    "signature": STANDARD.encode(signature),
                    "verifier": STANDARD.encode(certificate_pem)
                }]
            }
        }))
        .unwrap()
    }

    /// Appends `body`, integrated at `time` (seconds since the epoch).
    pub fn append(&mut self, body: &[u8], time: i64) -> Logged {
        let mut leaf = vec![0];
        leaf.extend_from_slice(body);
        self.leaves.push(sha256(&leaf));
        let index = self.leaves.len() - 1;
        let size = self.leaves.len();
        let root = tree_hash(&self.leaves);
        let hashes = path(index, &self.leaves);
        let log_id = self.id();
        let canonical = serde_json::to_vec(&json!({
            "body": STANDARD.encode(body),
            "integratedTime": time,
            "logID": hex(&log_id),
            "logIndex": index,
        }))
        .unwrap();
        let set = self.key.sign(&canonical);
        let note = format!("imagegate-test-log\n{size}\n{}\n", STANDARD.encode(root));
        let mut signature = log_id[..4].to_vec();
        signature.extend(self.key.sign(note.as_bytes()));
        let checkpoint = format!(
            "{note}\n\u{2014} imagegate-test-log {}\n",
            STANDARD.encode(signature)
        );
        Logged {
            bundle_entry: json!({
                "logIndex": index.to_string(),
                "logId": {"keyId": STANDARD.encode(log_id)},
                "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                "integratedTime": time.to_string(),
                "inclusionPromise": {"signedEntryTimestamp": STANDARD.encode(&set)},
                "inclusionProof": {
                    "logIndex": index.to_string(),
                    "rootHash": STANDARD.encode(root),
                    "treeSize": size.to_string(),
                    "hashes": hashes.iter().map(|h| STANDARD.encode(h)).collect::<Vec<_>>(),
                    "checkpoint": {"envelope": checkpoint}
                },
                "canonicalizedBody": STANDARD.encode(body)
            }),
            legacy_annotation: json!({
                "SignedEntryTimestamp": STANDARD.encode(&set),
                "Payload": {
                    "body": STANDARD.encode(body),
                    "integratedTime": time,
                    "logIndex": index,
                    "logID": hex(&log_id)
                }
            })
            .to_string(),
        }
    }
}

/// A `trusted_root.json` listing `authorities` and `logs`.
pub fn trusted_root(authorities: &[&Fulcio], logs: &[&Log]) -> String {
    json!({
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": logs.iter().map(|l| json!({
            "baseUrl": "https://rekor.imagegate.test",
            "hashAlgorithm": "SHA2_256",
            "publicKey": {
                "rawBytes": STANDARD.encode(l.spki()),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": {"start": "2020-01-01T00:00:00Z"}
            },
            "logId": {"keyId": STANDARD.encode(l.id())}
        })).collect::<Vec<_>>(),
        "certificateAuthorities": authorities.iter().map(|a| json!({
            "subject": {"organization": "imagegate.test", "commonName": "fulcio"},
            "uri": "https://fulcio.imagegate.test",
            "certChain": {"certificates": a.chain_der().iter().map(|d| json!({"rawBytes": STANDARD.encode(d)})).collect::<Vec<_>>()},
            "validFor": {"start": "2020-01-01T00:00:00Z"}
        })).collect::<Vec<_>>(),
        "ctlogs": [],
        "timestampAuthorities": []
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_roots_agree_with_a_hand_built_tree() {
        let l: Vec<[u8; 32]> = (0..5u8).map(|i| sha256(&[0, i])).collect();
        let root = node(&node(&node(&l[0], &l[1]), &node(&l[2], &l[3])), &l[4]);
        assert_eq!(tree_hash(&l), root);
        assert_eq!(path(2, &l), vec![l[3], node(&l[0], &l[1]), l[4]]);
    }
}
