//! Checkpoints: the signed tree heads a log's inclusion proofs lead to, in
//! the signed-note format (C2SP `signed-note` and `tlog-checkpoint`) that
//! Rekor v1 and v2 both write:
//!
//! ```text
//! <origin>\n<tree size>\n<root hash, base64>\n[<extension lines>\n]
//! \n
//! — <name> <base64(4-byte key id ‖ signature)>\n   (one line per signer)
//! ```
//!
//! The log's signature is over the text before the blank line; other
//! lines (witnesses' cosignatures) are allowed and not needed.

use base64::{Engine, engine::general_purpose::STANDARD};

use super::Proof;
use crate::signature::trust_root::LogKey;

/// Most signature lines read from one note (Rekor's are cosigned by a few
/// witnesses).
const MAX_SIGNATURES: usize = 32;

/// Checks that `note` is signed by `log` and is the tree `proof` leads to.
pub fn verify(log: &LogKey, note: &str, proof: &Proof) -> Result<(), String> {
    let bad = |why: &str| format!("its checkpoint {why}");
    let (text, signatures) = note
        .split_once("\n\n")
        .ok_or_else(|| bad("is not a signed note (no blank line before its signatures)"))?;
    let signed = format!("{text}\n");
    let mut lines = text.split('\n');
    let origin = lines.next().unwrap_or_default();
    if origin.is_empty() {
        return Err(bad("names no origin (the log it is from)"));
    }
    let size: i64 = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| bad("has no tree size"))?;
    let root = lines
        .next()
        .and_then(|l| STANDARD.decode(l).ok())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| bad("has no root hash"))?;
    if size != proof.tree_size || root != proof.root_hash {
        return Err(bad("is of another tree than the inclusion proof"));
    }
    let hint = &log.id[..4];
    let mut by_this_log = 0;
    for line in signatures.lines().take(MAX_SIGNATURES) {
        let Some(rest) = line.strip_prefix("\u{2014} ") else {
            continue;
        };
        let Some((_name, b64)) = rest.rsplit_once(' ') else {
            continue;
        };
        let Ok(bytes) = STANDARD.decode(b64) else {
            continue;
        };
        if bytes.len() <= 4 || &bytes[..4] != hint {
            continue;
        }
        by_this_log += 1;
        if log.key.verifies(signed.as_bytes(), &bytes[4..]) {
            return Ok(());
        }
    }
    Err(if by_this_log == 0 {
        bad("carries no signature by the log's key (none names its key id)")
    } else {
        bad("has a signature naming the log's key that does not verify with it")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{
        key::{
            PublicKey, sha256,
            tests::{p256, sign},
        },
        trust_root::Validity,
    };

    fn log() -> (LogKey, ring::signature::EcdsaKeyPair) {
        let (pair, pem) = p256();
        let key = PublicKey::from_pem("", &pem).unwrap();
        (
            LogKey {
                id: key.id.to_vec(),
                key,
                valid: Validity {
                    start: None,
                    end: None,
                },
                url: "https://log.test".into(),
            },
            pair,
        )
    }

    fn note(log: &LogKey, pair: &ring::signature::EcdsaKeyPair, text: &str) -> String {
        let mut signature = log.id[..4].to_vec();
        signature.extend(sign(pair, text.as_bytes()));
        format!(
            "{text}\n\u{2014} witness.test AAAAAAAA\n\u{2014} log.test {}\n",
            STANDARD.encode(signature)
        )
    }

    #[test]
    fn a_note_signed_by_the_log_for_the_proofs_tree_verifies_and_others_do_not() {
        let (log, pair) = log();
        let root = sha256(b"root").to_vec();
        let proof = Proof {
            log_index: 0,
            tree_size: 7,
            root_hash: root.clone(),
            hashes: vec![],
            checkpoint: None,
        };
        let text = format!("log.test\n7\n{}\n", STANDARD.encode(&root));
        verify(&log, &note(&log, &pair, &text), &proof).unwrap();
        // Another size or root; a text changed after signing; no origin.
        let other = format!("log.test\n8\n{}\n", STANDARD.encode(&root));
        let e = verify(&log, &note(&log, &pair, &other), &proof).unwrap_err();
        assert!(e.contains("another tree"), "{e}");
        let tampered = note(&log, &pair, &text).replace("log.test\n7", "log.tesT\n7");
        let e = verify(&log, &tampered, &proof).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        let no_origin = format!("\n7\n{}\n", STANDARD.encode(&root));
        let e = verify(&log, &note(&log, &pair, &no_origin), &proof).unwrap_err();
        assert!(e.contains("no origin"), "{e}");
        // Signed by another key: no line names this log's key.
        let (other_log, other_pair) = self::log();
        let e = verify(&log, &note(&other_log, &other_pair, &text), &proof).unwrap_err();
        assert!(e.contains("no signature by the log's key"), "{e}");
    }
}
