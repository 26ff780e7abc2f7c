//! What signature lookup finds and verification decides, as domain types:
//! the registry's manifests and the formats' JSON are converted into these
//! at the edges (`formats`, `discover`).

use imagegate_proto::digest::Digest;

use super::rekor;

/// How a signature was attached to the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// cosign's `sha256-<hex>.sig` tag: simple-signing payloads.
    LegacyTag,
    /// A Sigstore bundle found through the OCI 1.1 referrers API.
    BundleReferrer,
    /// A Sigstore bundle listed in the `sha256-<hex>` tag index, where the
    /// registry has no referrers API.
    BundleTagIndex,
    /// cosign's `sha256-<hex>.att` tag (`cosign attest` before v3): DSSE
    /// envelopes as layers.
    LegacyAttestationTag,
    /// A bundle given directly (not found in a registry): the conformance
    /// corpus, `check` of a file.
    Bundle,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LegacyTag => "cosign-legacy-tag",
            Self::BundleReferrer => "sigstore-bundle-referrer",
            Self::BundleTagIndex => "sigstore-bundle-tag-index",
            Self::LegacyAttestationTag => "cosign-legacy-attestation-tag",
            Self::Bundle => "sigstore-bundle",
        }
    }
}

/// What verifies the signature, as the artifact carries it. Only a
/// certificate is used, and only after it chains to the policy's trusted
/// root; a key carried in the artifact is never trusted (the policy names
/// keys), only its hint is shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Material {
    Key { hint: Option<String> },
    Certificate { der: Vec<u8> },
}

/// What the signed payload claims.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    /// The digests it is about.
    pub subjects: Vec<Digest>,
    pub kind: ClaimKind,
}

/// `https://sigstore.dev/cosign/sign/v1`: the statement of an image
/// signature in cosign's bundle format.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

#[derive(Clone, Debug, PartialEq)]
pub enum ClaimKind {
    /// An image signature (a simple-signing payload, or an in-toto
    /// statement with [`COSIGN_SIGN_PREDICATE`]).
    ImageSignature,
    /// Any other in-toto statement.
    Attestation {
        predicate_type: String,
        predicate: serde_json::Value,
    },
}

/// One signed artifact found for an image.
#[derive(Clone, Debug, PartialEq)]
pub struct Artifact {
    pub format: Format,
    /// The manifest it came from, for messages.
    pub manifest: Digest,
    /// The bytes the signatures are over (a legacy payload, or DSSE's
    /// pre-authentication encoding).
    pub signed: Vec<u8>,
    /// The payload itself (what a log entry hashes).
    pub payload: Vec<u8>,
    pub signatures: Vec<Vec<u8>>,
    pub material: Material,
    /// Certificates the artifact carries besides the signing one
    /// (`dev.sigstore.cosign/chain`, a bundle's `x509CertificateChain`):
    /// candidates for the path to the trusted root, never anchors.
    pub chain: Vec<Vec<u8>>,
    pub tlog: Vec<rekor::Entry>,
    /// RFC 3161 timestamp responses (DER) over the signature.
    pub timestamps: Vec<Vec<u8>>,
    pub claim: Claim,
}

/// Everything found for one image digest.
#[derive(Clone, Debug, Default)]
pub struct Found {
    /// Which lookup found it (verdicts on it are remembered by this).
    pub id: u64,
    pub artifacts: Vec<Artifact>,
    /// Artifacts that could not be read, each with why.
    pub unreadable: Vec<String>,
    /// More were attached than imagegate reads; the rest were not looked at.
    pub truncated: bool,
}

/// Who satisfied a requirement: what is recorded and pushed to nodes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signer {
    /// The policy's signature or attestation requirement.
    pub requirement: String,
    /// `key release-2026 (sha256:…)`, or a certificate identity
    /// `subject (issuer …)`.
    pub identity: String,
    /// How it was attached ([`Format::as_str`]).
    pub format: String,
}
