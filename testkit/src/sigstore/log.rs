//! Test transparency logs, as Sigstore runs them:
//!
//! - [`Log`] (Rekor v1): appends entries and answers each with a SET, an
//!   inclusion proof in the tree as it then stands, and a signed checkpoint;
//! - [`LogV2`] (Rekor v2, tile-based): an Ed25519 key named by its
//!   signed-note key id, v0.0.2 bodies, an inclusion proof and a checkpoint,
//!   and no integrated time, no SET (the time of signing comes from a
//!   timestamp authority). The proofs travel in the bundle and are checked
//!   offline, so the tiles themselves are not served.

use base64::{Engine, engine::general_purpose::STANDARD};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{Value, json};

use super::{KeyPair, hex, sha256};

/// A test transparency log: appends entries, and answers each with a SET,
/// an inclusion proof in the tree as it then stands, and a signed
/// checkpoint, as Rekor does.
pub struct Log {
    key: KeyPair,
    tree: Tree,
}

/// One logged entry, in a bundle's `tlogEntries` JSON form and cosign's
/// legacy bundle annotation form.
pub struct Logged {
    pub bundle_entry: Value,
    pub legacy_annotation: String,
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

/// A log's Merkle tree: its leaf hashes.
struct Tree {
    leaves: Vec<[u8; 32]>,
}

/// Where an appended leaf sits: what its inclusion proof says.
struct Appended {
    index: usize,
    size: usize,
    root: [u8; 32],
    hashes: Vec<[u8; 32]>,
}

impl Tree {
    /// A tree of `filler` unrelated leaves (so proofs have hashes to
    /// check), each the leaf of `"<label> <i>"`.
    fn with_filler(label: &str, filler: usize) -> Self {
        Self {
            leaves: (0..filler)
                .map(|i| leaf_hash(format!("{label} {i}").as_bytes()))
                .collect(),
        }
    }

    fn append(&mut self, body: &[u8]) -> Appended {
        self.leaves.push(leaf_hash(body));
        let index = self.leaves.len() - 1;
        Appended {
            index,
            size: self.leaves.len(),
            root: tree_hash(&self.leaves),
            hashes: path(index, &self.leaves),
        }
    }
}

/// RFC 9162's leaf hash: SHA-256 of 0x00 and the entry.
fn leaf_hash(body: &[u8]) -> [u8; 32] {
    sha256(&[&[0u8][..], body].concat())
}

impl Appended {
    /// The bundle's `inclusionProof`, with its signed `checkpoint`.
    fn proof(&self, checkpoint: &str) -> Value {
        json!({
            "logIndex": self.index.to_string(),
            "rootHash": STANDARD.encode(self.root),
            "treeSize": self.size.to_string(),
            "hashes": self.hashes.iter().map(|h| STANDARD.encode(h)).collect::<Vec<_>>(),
            "checkpoint": {"envelope": checkpoint}
        })
    }
}

impl Log {
    /// A log holding `filler` unrelated entries already (so proofs have
    /// hashes to check).
    pub fn new(filler: usize) -> Self {
        Self {
            key: KeyPair::generate(),
            tree: Tree::with_filler("filler", filler),
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
        // Rekor also stores the hash of the envelope as it canonicalized it
        // (which a verifier cannot recompute, and does not check).
        let envelope = json!({
            "payload": STANDARD.encode(payload),
            "payloadType": "application/vnd.in-toto+json",
            "signatures": [{"sig": STANDARD.encode(signature)}]
        })
        .to_string();
        serde_json::to_vec(&json!({
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "envelopeHash": {"algorithm": "sha256", "value": hex(&sha256(envelope.as_bytes()))},
                "payloadHash": {"algorithm": "sha256", "value": hex(&sha256(payload))},
                "signatures": [{
                    "signature": STANDARD.encode(signature),
                    "verifier": STANDARD.encode(certificate_pem)
                }]
            }
        }))
        .unwrap()
    }

    /// A `rekord` body (cosign before 1.5): the payload's hash, the
    /// signature, the certificate.
    pub fn rekord(payload: &[u8], signature: &[u8], certificate_pem: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "0.0.1",
            "kind": "rekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": hex(&sha256(payload))}},
                "signature": {
                    "format": "x509",
                    "content": STANDARD.encode(signature),
                    "publicKey": {"content": STANDARD.encode(certificate_pem)}
                }
            }
        }))
        .unwrap()
    }

    /// An `intoto` body of `version` 0.0.1 (`cosign attest` 1.x: the
    /// payload's hash and the key) or 0.0.2 (2.x: also the envelope's
    /// signature, which Rekor stores base64-encoded twice).
    pub fn intoto(
        version: &str,
        envelope: &[u8],
        payload: &[u8],
        signature: &[u8],
        certificate_pem: &str,
    ) -> Vec<u8> {
        let spec = match version {
            "0.0.1" => json!({
                "content": {
                    "hash": {"algorithm": "sha256", "value": hex(&sha256(envelope))},
                    "payloadHash": {"algorithm": "sha256", "value": hex(&sha256(payload))}
                },
                "publicKey": STANDARD.encode(certificate_pem)
            }),
            _ => json!({
                "content": {
                    "envelope": {
                        "payloadType": "application/vnd.in-toto+json",
                        "signatures": [{
                            "sig": STANDARD.encode(STANDARD.encode(signature)),
                            "publicKey": STANDARD.encode(certificate_pem)
                        }]
                    },
                    "hash": {"algorithm": "sha256", "value": hex(&sha256(envelope))},
                    "payloadHash": {"algorithm": "sha256", "value": hex(&sha256(payload))}
                }
            }),
        };
        serde_json::to_vec(&json!({"apiVersion": version, "kind": "intoto", "spec": spec})).unwrap()
    }

    /// Appends `body`, integrated at `time` (seconds since the epoch).
    pub fn append(&mut self, body: &[u8], time: i64) -> Logged {
        let appended = self.tree.append(body);
        let (index, size) = (appended.index, appended.size);
        let log_id = self.id();
        let canonical = serde_json::to_vec(&json!({
            "body": STANDARD.encode(body),
            "integratedTime": time,
            "logID": hex(&log_id),
            "logIndex": index,
        }))
        .unwrap();
        let set = self.key.sign(&canonical);
        // As Rekor v1 writes them: the origin names the host and the tree,
        // the signature the host (its baseUrl's, which verifiers match).
        let note = format!(
            "rekor.imagegate.test - 2605736670972794746\n{size}\n{}\n",
            STANDARD.encode(appended.root)
        );
        let mut signature = log_id[..4].to_vec();
        signature.extend(self.key.sign(note.as_bytes()));
        let checkpoint = format!(
            "{note}\n\u{2014} rekor.imagegate.test {}\n",
            STANDARD.encode(signature)
        );
        Logged {
            bundle_entry: json!({
                "logIndex": index.to_string(),
                "logId": {"keyId": STANDARD.encode(log_id)},
                "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                "integratedTime": time.to_string(),
                "inclusionPromise": {"signedEntryTimestamp": STANDARD.encode(&set)},
                "inclusionProof": appended.proof(&checkpoint),
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

/// A Rekor v2-shaped log.
pub struct LogV2 {
    key: Ed25519KeyPair,
    /// Its name, the checkpoints' first line.
    pub origin: String,
    tree: Tree,
}

impl LogV2 {
    /// A log named `origin` holding `filler` unrelated entries already.
    pub fn new(origin: &str, filler: usize) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        Self {
            key: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
            origin: origin.to_string(),
            tree: Tree::with_filler("v2 filler", filler),
        }
    }

    /// The DER SubjectPublicKeyInfo of its Ed25519 key.
    pub fn spki(&self) -> Vec<u8> {
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(self.key.public_key().as_ref());
        spki
    }

    /// Its log id: the signed-note key id, SHA-256 of the origin, a
    /// newline, the Ed25519 key type byte (1) and the key.
    pub fn id(&self) -> [u8; 32] {
        let mut input = self.origin.as_bytes().to_vec();
        input.push(b'\n');
        input.push(1);
        input.extend_from_slice(self.key.public_key().as_ref());
        sha256(&input)
    }

    /// A `hashedrekord` 0.0.2 body: `digest` is the SHA-256 of what was
    /// signed (for a DSSE envelope, of its PAE), the certificate verifies.
    pub fn hashedrekord(digest: &[u8], signature: &[u8], certificate_der: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "0.0.2",
            "kind": "hashedrekord",
            "spec": {"hashedRekordV002": {
                "data": {"algorithm": "SHA2_256", "digest": STANDARD.encode(digest)},
                "signature": {
                    "content": STANDARD.encode(signature),
                    "verifier": {
                        "x509Certificate": {"rawBytes": STANDARD.encode(certificate_der)},
                        "keyDetails": "PKIX_ECDSA_P256_SHA_256"
                    }
                }
            }}
        }))
        .unwrap()
    }

    /// A `dsse` 0.0.2 body: the payload's SHA-256 and the envelope's
    /// signature with its certificate.
    pub fn dsse(payload: &[u8], signature: &[u8], certificate_der: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "0.0.2",
            "kind": "dsse",
            "spec": {"dsseV002": {
                "payloadHash": {"algorithm": "SHA2_256", "digest": STANDARD.encode(sha256(payload))},
                "signatures": [{
                    "content": STANDARD.encode(signature),
                    "verifier": {
                        "x509Certificate": {"rawBytes": STANDARD.encode(certificate_der)},
                        "keyDetails": "PKIX_ECDSA_P256_SHA_256"
                    }
                }]
            }}
        }))
        .unwrap()
    }

    /// `note` (a checkpoint's text, ending in a newline) signed by this
    /// log: a whole signed note.
    pub fn sign_note(&self, note: &str) -> String {
        let mut signature = self.id()[..4].to_vec();
        signature.extend_from_slice(self.key.sign(note.as_bytes()).as_ref());
        format!(
            "{note}\n\u{2014} {} {}\n",
            self.origin,
            STANDARD.encode(signature)
        )
    }

    /// Appends `body` (of `kind`); returns the bundle's `tlogEntries` item.
    pub fn append(&mut self, kind: &str, body: &[u8]) -> Value {
        let appended = self.tree.append(body);
        let note = format!(
            "{}\n{}\n{}\n",
            self.origin,
            appended.size,
            STANDARD.encode(appended.root)
        );
        let checkpoint = self.sign_note(&note);
        json!({
            "logIndex": appended.index.to_string(),
            "logId": {"keyId": STANDARD.encode(self.id())},
            "kindVersion": {"kind": kind, "version": "0.0.2"},
            "inclusionProof": appended.proof(&checkpoint),
            "canonicalizedBody": STANDARD.encode(body)
        })
    }
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
