//! Transparency log entries (Rekor), verified offline against the trusted
//! root's log keys: the signed entry timestamp (SET, the log's promise to
//! include the entry, which also vouches for its time), the inclusion proof
//! up to a signed checkpoint, and that the entry's body is about this very
//! signature (otherwise any logged entry could be attached to anything).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::STANDARD};
use serde::Deserialize;

use super::{
    key::{hex, sha256},
    trust_root::TrustedRoot,
};

/// Most proof hashes read: a tree of 2^64 leaves needs 64.
const MAX_PROOF_HASHES: usize = 64;

/// One log entry, as a bundle or a legacy signature carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub log_index: i64,
    pub log_id: Vec<u8>,
    pub integrated_time: i64,
    /// The canonicalized body the log stored.
    pub body: Vec<u8>,
    /// Signed entry timestamp.
    pub set: Option<Vec<u8>>,
    pub proof: Option<Proof>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    pub log_index: i64,
    pub tree_size: i64,
    pub root_hash: Vec<u8>,
    pub hashes: Vec<Vec<u8>>,
    /// The signed note of the tree head, if the entry carries one.
    pub checkpoint: Option<String>,
}

/// What the entry must be about.
pub struct Binding<'a> {
    /// The bytes that were signed (a legacy payload) or the DSSE payload.
    pub payload: &'a [u8],
    pub signature: &'a [u8],
}

/// An entry whose log and proofs verified.
#[derive(Clone, Copy, Debug)]
pub struct Logged {
    /// When the log integrated it, if a SET vouches for it.
    pub time: Option<SystemTime>,
}

/// Checks `entry` against `root` and `binding`.
pub fn verify(root: &TrustedRoot, entry: &Entry, binding: &Binding<'_>) -> Result<Logged, String> {
    let log = root.log(&entry.log_id).ok_or_else(|| {
        format!(
            "its transparency log entry is from log {}, which the trusted root does not list",
            super::key::short(&format!("sha256:{}", hex(&entry.log_id)))
        )
    })?;
    bound_to(entry, binding)?;
    if entry.set.is_none() && entry.proof.is_none() {
        return Err("its transparency log entry has neither a signed entry timestamp nor an inclusion proof".into());
    }
    let mut time = None;
    if let Some(set) = &entry.set {
        // The log's canonical JSON: keys sorted, no spaces (serde_json's
        // map is sorted, without the preserve_order feature).
        let canonical = serde_json::json!({
            "body": STANDARD.encode(&entry.body),
            "integratedTime": entry.integrated_time,
            "logID": hex(&entry.log_id),
            "logIndex": entry.log_index,
        })
        .to_string()
        .into_bytes();
        if !log.key.verifies(&canonical, set) {
            return Err(
                "its transparency log entry's signed entry timestamp does not verify with the log's key".into(),
            );
        }
        let at = UNIX_EPOCH + Duration::from_secs(entry.integrated_time.max(0) as u64);
        if !log.valid.contains(at) {
            return Err(
                "its transparency log entry is from a time the log's key was not valid".into(),
            );
        }
        time = Some(at);
    }
    if let Some(proof) = &entry.proof {
        verify_inclusion(&entry.body, proof)?;
        if let Some(note) = &proof.checkpoint {
            verify_checkpoint(log, note, proof)?;
        }
    }
    Ok(Logged { time })
}

/// The entry's body names this signature and payload.
fn bound_to(entry: &Entry, binding: &Binding<'_>) -> Result<(), String> {
    #[derive(Deserialize)]
    struct Body {
        kind: String,
        spec: serde_json::Value,
    }
    let body: Body = serde_json::from_slice(&entry.body)
        .map_err(|e| format!("its transparency log entry's body is not JSON: {e}"))?;
    let signature = STANDARD.encode(binding.signature);
    let payload_hash = hex(&sha256(binding.payload));
    let text = |v: &serde_json::Value, pointer: &str| {
        v.pointer(pointer)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let bound = match body.kind.as_str() {
        "hashedrekord" => {
            text(&body.spec, "/signature/content").as_deref() == Some(&signature)
                && text(&body.spec, "/data/hash/value").as_deref() == Some(&payload_hash)
        }
        "dsse" => {
            text(&body.spec, "/payloadHash/value").as_deref() == Some(&payload_hash)
                && body
                    .spec
                    .pointer("/signatures")
                    .and_then(|s| s.as_array())
                    .is_some_and(|all| {
                        all.iter()
                            .any(|s| text(s, "/signature").as_deref() == Some(&signature))
                    })
        }
        other => {
            return Err(format!(
                "its transparency log entry is of kind {other:?}; imagegate reads hashedrekord and dsse entries"
            ));
        }
    };
    if bound {
        Ok(())
    } else {
        Err("its transparency log entry is about another signature or payload".into())
    }
}

fn node(left: &[u8], right: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(1 + left.len() + right.len());
    input.push(1);
    input.extend_from_slice(left);
    input.extend_from_slice(right);
    sha256(&input).to_vec()
}

/// The root an inclusion proof leads to (RFC 9162, 2.1.3.2).
pub fn root_from_proof(
    index: u64,
    size: u64,
    leaf_hash: &[u8],
    hashes: &[Vec<u8>],
) -> Result<Vec<u8>, String> {
    if index >= size {
        return Err(format!(
            "the entry's index {index} is outside a tree of {size}"
        ));
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = leaf_hash.to_vec();
    for p in hashes {
        if s == 0 {
            return Err("the inclusion proof has more hashes than the tree needs".into());
        }
        if f & 1 == 1 || f == s {
            r = node(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err("the inclusion proof has fewer hashes than the tree needs".into());
    }
    Ok(r)
}

fn verify_inclusion(body: &[u8], proof: &Proof) -> Result<(), String> {
    if proof.hashes.len() > MAX_PROOF_HASHES {
        return Err("its inclusion proof is longer than any tree needs".into());
    }
    let mut leaf = vec![0u8];
    leaf.extend_from_slice(body);
    let root = root_from_proof(
        proof.log_index.max(0) as u64,
        proof.tree_size.max(0) as u64,
        &sha256(&leaf),
        &proof.hashes,
    )
    .map_err(|e| format!("its inclusion proof does not verify: {e}"))?;
    if root != proof.root_hash {
        return Err("its inclusion proof does not lead to the root hash it names".into());
    }
    Ok(())
}

/// A checkpoint (a signed note): `origin\nsize\nroot\n...\n\n— name sig`,
/// signed by the log's key over the text before the blank line; it must
/// name the proof's size and root.
fn verify_checkpoint(
    log: &super::trust_root::LogKey,
    note: &str,
    proof: &Proof,
) -> Result<(), String> {
    let bad = |why: &str| format!("its checkpoint {why}");
    let (text, signatures) = note
        .split_once("\n\n")
        .ok_or_else(|| bad("is not a signed note"))?;
    let signed = format!("{text}\n");
    let mut lines = text.lines();
    let _origin = lines.next();
    let size: i64 = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| bad("has no tree size"))?;
    let root = lines
        .next()
        .and_then(|l| STANDARD.decode(l).ok())
        .ok_or_else(|| bad("has no root hash"))?;
    if size != proof.tree_size || root != proof.root_hash {
        return Err(bad("is of another tree than the inclusion proof"));
    }
    let hint = &log.key.id[..4];
    for line in signatures.lines() {
        let Some(b64) = line.rsplit(' ').next() else {
            continue;
        };
        let Ok(bytes) = STANDARD.decode(b64) else {
            continue;
        };
        if bytes.len() > 4
            && &bytes[..4] == hint
            && log.key.verifies(signed.as_bytes(), &bytes[4..])
        {
            return Ok(());
        }
    }
    Err(bad("is not signed by the log's key"))
}

/// An int64 that protobuf's JSON writes as a string (numbers accepted).
pub fn int64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Number(i64),
    }
    match Either::deserialize(d)? {
        Either::Number(n) => Ok(n),
        Either::Text(t) => t.parse().map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(data: &[u8]) -> Vec<u8> {
        let mut input = vec![0];
        input.extend_from_slice(data);
        sha256(&input).to_vec()
    }

    #[test]
    fn inclusion_proofs_lead_to_the_tree_root() {
        // A tree of five leaves, built by hand (RFC 9162's shape).
        let l: Vec<_> = (0..5u8).map(|i| leaf(&[i])).collect();
        let h01 = node(&l[0], &l[1]);
        let h23 = node(&l[2], &l[3]);
        let h0123 = node(&h01, &h23);
        let root = node(&h0123, &l[4]);
        assert_eq!(
            root_from_proof(2, 5, &l[2], &[l[3].clone(), h01.clone(), l[4].clone()]).unwrap(),
            root
        );
        assert_eq!(
            root_from_proof(4, 5, &l[4], std::slice::from_ref(&h0123)).unwrap(),
            root
        );
        assert_eq!(root_from_proof(0, 1, &l[0], &[]).unwrap(), l[0]);
        // A wrong sibling, a wrong index, a proof too short or too long.
        assert_ne!(
            root_from_proof(2, 5, &l[2], &[l[1].clone(), h01.clone(), l[4].clone()]).unwrap(),
            root
        );
        assert!(root_from_proof(5, 5, &l[4], std::slice::from_ref(&h0123)).is_err());
        assert!(root_from_proof(2, 5, &l[2], &[l[3].clone()]).is_err());
        assert!(root_from_proof(4, 5, &l[4], &[h0123.clone(), h01]).is_err());
    }
}
