//! Signatures for tests, made three independent ways:
//!
//! - [`npm_sign`]: the real Sigstore signer from the npm registry
//!   (`@sigstore/sign` 4.1 + `@sigstore/bundle` + `@sigstore/oci` 0.6,
//!   installed by `cargo xtask setup` into `.tools/npm-sigstore`), which
//!   builds a bundle v0.3 and attaches it to the image itself;
//! - [`openssl_sign`]: the `openssl` command, for cosign's legacy format
//!   (the test writes the simple-signing payload and manifest by cosign's
//!   published spec);
//! - [`Fulcio`] (with its CT log), [`Log`] (Rekor v1: SETs, RFC 9162
//!   inclusion proofs, signed checkpoints), [`LogV2`] (Rekor v2: Ed25519
//!   checkpoints, v0.0.2 bodies, no time) and [`Tsa`] (RFC 3161 timestamps
//!   by `openssl ts`): Sigstore's services for keyless signatures, listed
//!   in a `trusted_root.json` ([`TrustedRoot`]) as Sigstore's public-good
//!   instance lists its own.

mod bundle;
mod fulcio;
mod log;
mod root;
mod tsa;

pub use bundle::{KeylessBundle, LogTo};
pub use fulcio::{CtLog, Fulcio, Issue, Signing};
pub use log::{Log, LogV2, Logged};
pub use root::{TrustedRoot, trusted_root};
pub use tsa::Tsa;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

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

    /// The PKCS#8 private key (DER).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
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
    attach_beside(
        registry,
        repo,
        digest,
        "sig",
        "application/vnd.dev.cosign.simplesigning.v1+json",
        layers,
    )
    .await;
}

/// Legacy attestations: `layers` (DSSE envelopes, annotations) under the
/// `sha256-<hex>.att` tag, as `cosign attest` wrote them before v3.
pub async fn attach_legacy_attestation(
    registry: &Registry,
    repo: &str,
    digest: &str,
    layers: &[(Vec<u8>, Value)],
) {
    attach_beside(
        registry,
        repo,
        digest,
        "att",
        "application/vnd.dsse.envelope.v1+json",
        layers,
    )
    .await;
}

async fn attach_beside(
    registry: &Registry,
    repo: &str,
    digest: &str,
    suffix: &str,
    media_type: &str,
    layers: &[(Vec<u8>, Value)],
) {
    let empty = registry.push_blob(repo, b"{}").await;
    let mut descriptors = Vec::new();
    for (payload, annotations) in layers {
        let blob = registry.push_blob(repo, payload).await;
        descriptors.push(json!({
            "mediaType": media_type,
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
            &format!("{}.{suffix}", digest.replace(':', "-")),
            &manifest,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .await;
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .unwrap()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
