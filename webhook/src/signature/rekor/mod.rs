//! Transparency log entries (Rekor v1 and v2), verified offline against
//! the trusted root's log keys:
//!
//! - v1: the signed entry timestamp (SET, the log's promise to include the
//!   entry, which also vouches for its time) and/or an inclusion proof up
//!   to a signed checkpoint;
//! - v2 (tile-based logs): an inclusion proof up to a signed checkpoint,
//!   and no time at all (the time of signing comes from a timestamp
//!   authority);
//!
//! and, either way, that the entry's body is about this very signature
//! ([`body`]; otherwise any logged entry could be attached to anything).

pub mod body;
pub mod checkpoint;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::STANDARD};
use serde::Deserialize;

use super::{
    key::{hex, sha256},
    trust_root::TrustedRoot,
};
pub use body::Binding;

/// Most proof hashes read: a tree of 2^64 leaves needs 64.
pub const MAX_PROOF_HASHES: usize = 64;

/// One log entry, as a bundle or a legacy signature carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub log_index: i64,
    pub log_id: Vec<u8>,
    /// When the log says it integrated the entry: v1 only, and trusted only
    /// when a SET signs it.
    pub integrated_time: Option<i64>,
    /// The canonicalized body the log stored.
    pub body: Vec<u8>,
    /// Signed entry timestamp (v1).
    pub set: Option<Vec<u8>>,
    pub proof: Option<Proof>,
    /// Bundles v0.2 and later must carry an inclusion proof with a signed
    /// checkpoint (a SET alone is not enough).
    pub checkpoint_required: bool,
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

/// An entry whose log and proofs verified.
#[derive(Clone, Copy, Debug)]
pub struct Logged {
    /// When the log integrated it, if a SET vouches for it.
    pub time: Option<SystemTime>,
}

/// Checks `entry` against `root` and `binding`; `now` bounds the time a
/// SET may vouch for (a log does not integrate entries in the future).
pub fn verify(
    root: &TrustedRoot,
    entry: &Entry,
    binding: &Binding<'_>,
    now: SystemTime,
) -> Result<Logged, String> {
    let log = root.log(&entry.log_id).ok_or_else(|| {
        format!(
            "its transparency log entry is from log {}, which the trusted root does not list",
            super::key::short(&format!("sha256:{}", hex(&entry.log_id)))
        )
    })?;
    if entry.log_index < 0 {
        return Err("its transparency log entry has a negative index".into());
    }
    body::bound_to(entry, binding)?;
    let anchored_proof = entry
        .proof
        .as_ref()
        .filter(|proof| proof.checkpoint.is_some());
    if entry.checkpoint_required && anchored_proof.is_none() {
        return Err(
            "its transparency log entry has no inclusion proof with a signed checkpoint, which \
             its bundle's version (0.2 and later) requires"
                .into(),
        );
    }
    if entry.set.is_none() && anchored_proof.is_none() {
        return Err(
            "its transparency log entry has neither a signed entry timestamp nor an inclusion \
             proof with a signed checkpoint"
                .into(),
        );
    }
    let mut time = None;
    if let Some(set) = &entry.set {
        let integrated = entry.integrated_time.ok_or(
            "its transparency log entry has a signed entry timestamp but no integrated time",
        )?;
        // The log's canonical JSON: keys sorted, no spaces (serde_json's
        // map is sorted, without the preserve_order feature).
        let canonical = serde_json::json!({
            "body": STANDARD.encode(&entry.body),
            "integratedTime": integrated,
            "logID": hex(&entry.log_id),
            "logIndex": entry.log_index,
        })
        .to_string()
        .into_bytes();
        if !log.key.verifies(&canonical, set) {
            return Err(
                "its transparency log entry's signed entry timestamp does not verify with the \
                 log's key"
                    .into(),
            );
        }
        let at = UNIX_EPOCH + Duration::from_secs(integrated.max(0) as u64);
        if !log.valid.contains(at) {
            return Err(
                "its transparency log entry is from a time the log's key was not valid".into(),
            );
        }
        if at > now + CLOCK_SKEW {
            return Err(format!(
                "its transparency log entry says it was integrated at {}, in the future",
                humantime::format_rfc3339_seconds(at)
            ));
        }
        time = Some(at);
    }
    // A proof present is checked even without a checkpoint: a wrong one is
    // tampering, whatever else vouches for the entry.
    if let Some(proof) = &entry.proof {
        if proof.log_index < 0 {
            return Err("its inclusion proof has a negative index".into());
        }
        verify_inclusion(&entry.body, proof)?;
        if let Some(note) = &proof.checkpoint {
            checkpoint::verify(log, note, proof)?;
        }
    }
    Ok(Logged { time })
}

/// How far ahead of this node's clock a log's time may be.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

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

/// [`int64`], absent allowed (Rekor v2 entries have no integrated time).
pub fn optional_int64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "int64")] i64);
    Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(n)| n))
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
