//! Public keys the policy trusts (and the keys inside trusted certificates
//! and roots): parsed from PEM or DER SubjectPublicKeyInfo, named by their
//! SHA-256 fingerprint, and used to verify signatures with ring, the one
//! crypto provider the webhook links.

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rustls::pki_types::{SubjectPublicKeyInfoDer, pem::PemObject};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const P256: &str = "1.2.840.10045.3.1.7";
const P384: &str = "1.3.132.0.34";
const RSA: &str = "1.2.840.113549.1.1.1";
const ED25519: &str = "1.3.101.112";

/// A key that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM public key (\"-----BEGIN PUBLIC KEY-----\"): {0}")]
    Pem(String),
    #[error("not a DER SubjectPublicKeyInfo ({0})")]
    Der(String),
    #[error(
        "a key of type {0} is not supported; use ECDSA P-256 or P-384, RSA (2048 bits or more) or Ed25519"
    )]
    Unsupported(String),
}

/// The hash a signature scheme applies to the message before signing
/// (ECDSA and RSA; Ed25519 hashes in its own way and ignores it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    /// The digest of `bytes`.
    pub fn digest(self, bytes: &[u8]) -> Vec<u8> {
        let algorithm = match self {
            Self::Sha256 => &ring::digest::SHA256,
            Self::Sha384 => &ring::digest::SHA384,
            Self::Sha512 => &ring::digest::SHA512,
        };
        ring::digest::digest(algorithm, bytes).as_ref().to_vec()
    }

    /// From a hash algorithm's OID (NIST's SHA-2 arc).
    pub fn from_oid(oid: &str) -> Option<Self> {
        match oid {
            "2.16.840.1.101.3.4.2.1" => Some(Self::Sha256),
            "2.16.840.1.101.3.4.2.2" => Some(Self::Sha384),
            "2.16.840.1.101.3.4.2.3" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// From Sigstore's protobuf name (`SHA2_256`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "SHA2_256" => Some(Self::Sha256),
            "SHA2_384" => Some(Self::Sha384),
            "SHA2_512" => Some(Self::Sha512),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algorithm {
    EcdsaP256,
    EcdsaP384,
    Rsa,
    Ed25519,
}

/// A public key: what verifies, and the names it goes by.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// What the policy calls it (`release-2026`); the fingerprint when it
    /// has no name (a certificate's key).
    pub name: String,
    /// `sha256:<hex>` of the DER SubjectPublicKeyInfo, as `cosign
    /// public-key` users compare keys.
    pub fingerprint: String,
    /// SHA-256 of the DER SubjectPublicKeyInfo: a Rekor log's id.
    pub id: [u8; 32],
    algorithm: Algorithm,
    /// The key as ring takes it: the EC point, the RSAPublicKey DER, or the
    /// raw Ed25519 key.
    raw: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({} {})", self.name, self.fingerprint)
    }
}

impl PublicKey {
    /// The first `PUBLIC KEY` block of `pem`.
    pub fn from_pem(name: &str, pem: &str) -> Result<Self, KeyError> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| KeyError::Pem(e.to_string()))?;
        Self::from_spki(name, der.as_ref())
    }

    /// A DER SubjectPublicKeyInfo.
    pub fn from_spki(name: &str, der: &[u8]) -> Result<Self, KeyError> {
        let (_, spki) = SubjectPublicKeyInfo::from_der(der)
            .map_err(|_| KeyError::Der(format!("{} bytes that do not parse as one", der.len())))?;
        Self::from_parsed(name, &spki, der)
    }

    /// A PKCS#1 RSAPublicKey (DER), as Sigstore's trusted roots give some
    /// logs' keys (`PKCS1_RSA_PKCS1V5`). Its id and fingerprint are of the
    /// PKCS#1 bytes (the root names such logs by their listed id).
    pub fn from_pkcs1_rsa(name: &str, der: &[u8]) -> Result<Self, KeyError> {
        // ring reads the modulus when verifying; a quick shape check here
        // refuses what is not a DER SEQUENCE at all.
        if der.first() != Some(&0x30) {
            return Err(KeyError::Der("nor a PKCS#1 RSAPublicKey".into()));
        }
        Ok(Self::named(name, der, Algorithm::Rsa, der.to_vec()))
    }

    /// A key identified by `der` (its id and fingerprint are its SHA-256),
    /// called `name`, or its fingerprint when unnamed.
    fn named(name: &str, der: &[u8], algorithm: Algorithm, raw: Vec<u8>) -> Self {
        let id = sha256(der);
        let fingerprint = format!("sha256:{}", hex(&id));
        Self {
            name: if name.is_empty() {
                fingerprint.clone()
            } else {
                name.to_string()
            },
            fingerprint,
            id,
            algorithm,
            raw,
        }
    }

    /// A key parsed inside a certificate; `der` is its SubjectPublicKeyInfo.
    pub fn from_parsed(
        name: &str,
        spki: &SubjectPublicKeyInfo<'_>,
        der: &[u8],
    ) -> Result<Self, KeyError> {
        let oid = spki.algorithm.algorithm.to_id_string();
        let algorithm = match oid.as_str() {
            EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                match curve.as_str() {
                    P256 => Algorithm::EcdsaP256,
                    P384 => Algorithm::EcdsaP384,
                    other => return Err(KeyError::Unsupported(format!("ECDSA on curve {other}"))),
                }
            }
            RSA => Algorithm::Rsa,
            ED25519 => Algorithm::Ed25519,
            other => return Err(KeyError::Unsupported(other.to_string())),
        };
        Ok(Self::named(
            name,
            der,
            algorithm,
            spki.subject_public_key.data.to_vec(),
        ))
    }

    /// Whether `signature` is this key's over `message`. ECDSA signatures
    /// are ASN.1 DER (what cosign and Sigstore write), hashed with the
    /// curve's hash; RSA is PKCS#1 v1.5 with SHA-256.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.verifies_with(self.default_hash(), message, signature)
    }

    /// The hash signatures by this key use unless something says
    /// otherwise: the curve's (P-256: SHA-256, P-384: SHA-384), SHA-256
    /// for RSA, SHA-512 (inside Ed25519) for Ed25519.
    pub fn default_hash(&self) -> Hash {
        match self.algorithm {
            Algorithm::EcdsaP384 => Hash::Sha384,
            Algorithm::Ed25519 => Hash::Sha512,
            Algorithm::EcdsaP256 | Algorithm::Rsa => Hash::Sha256,
        }
    }

    /// Whether `signature` is this key's over `message` hashed with `hash`
    /// (a CMS signer, a certificate transparency log or a log entry names
    /// the hash separately: a P-384 key may sign SHA-256 digests). SHA-512
    /// with ECDSA is not offered by ring, and is refused.
    pub fn verifies_with(&self, hash: Hash, message: &[u8], signature: &[u8]) -> bool {
        let algorithm: &dyn VerificationAlgorithm = match (self.algorithm, hash) {
            (Algorithm::EcdsaP256, Hash::Sha256) => &signature::ECDSA_P256_SHA256_ASN1,
            (Algorithm::EcdsaP256, Hash::Sha384) => &signature::ECDSA_P256_SHA384_ASN1,
            (Algorithm::EcdsaP384, Hash::Sha256) => &signature::ECDSA_P384_SHA256_ASN1,
            (Algorithm::EcdsaP384, Hash::Sha384) => &signature::ECDSA_P384_SHA384_ASN1,
            (Algorithm::EcdsaP256 | Algorithm::EcdsaP384, Hash::Sha512) => return false,
            (Algorithm::Rsa, Hash::Sha256) => &signature::RSA_PKCS1_2048_8192_SHA256,
            (Algorithm::Rsa, Hash::Sha384) => &signature::RSA_PKCS1_2048_8192_SHA384,
            (Algorithm::Rsa, Hash::Sha512) => &signature::RSA_PKCS1_2048_8192_SHA512,
            (Algorithm::Ed25519, _) => &signature::ED25519,
        };
        UnparsedPublicKey::new(algorithm, &self.raw)
            .verify(message, signature)
            .is_ok()
    }

    pub fn is_ed25519(&self) -> bool {
        self.algorithm == Algorithm::Ed25519
    }

    /// The raw key bytes (for Ed25519: the 32-byte key that signed notes
    /// hash into their key ids).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// `sha256:ab12cd34…`: enough of the fingerprint for a message.
    pub fn short_fingerprint(&self) -> String {
        short(&self.fingerprint)
    }
}

/// The first 12 hex digits of a `sha256:<hex>` string, with an ellipsis.
pub fn short(fingerprint: &str) -> String {
    match fingerprint.split_once(':') {
        Some((algorithm, hex)) if hex.len() > 12 => format!("{algorithm}:{}…", &hex[..12]),
        _ => fingerprint.to_string(),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::{
        rand::SystemRandom,
        signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair},
    };

    /// A fresh P-256 key pair and its public key as PEM.
    pub fn p256() -> (EcdsaKeyPair, String) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        // SubjectPublicKeyInfo for a P-256 point: a fixed 26-byte prefix.
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        spki.extend_from_slice(pair.public_key().as_ref());
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&spki);
        (
            pair,
            format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"),
        )
    }

    pub fn sign(pair: &EcdsaKeyPair, message: &[u8]) -> Vec<u8> {
        pair.sign(&SystemRandom::new(), message)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn a_p256_key_verifies_its_own_signatures_only() {
        let (pair, pem) = p256();
        let key = PublicKey::from_pem("release", &pem).unwrap();
        assert_eq!(key.name, "release");
        assert!(key.fingerprint.starts_with("sha256:") && key.fingerprint.len() == 71);
        let signature = sign(&pair, b"payload");
        assert!(key.verifies(b"payload", &signature));
        assert!(!key.verifies(b"payload!", &signature));
        let (_, other) = p256();
        let other = PublicKey::from_pem("other", &other).unwrap();
        assert!(!other.verifies(b"payload", &signature));
        assert_ne!(key.fingerprint, other.fingerprint);
    }

    #[test]
    fn bad_keys_are_refused_with_what_to_use() {
        assert!(matches!(
            PublicKey::from_pem("k", "not a key"),
            Err(KeyError::Pem(_))
        ));
        let garbage = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            PublicKey::from_pem("k", garbage),
            Err(KeyError::Der(_))
        ));
        assert_eq!(short("sha256:0123456789abcdef"), "sha256:0123456789ab…");
    }
}
