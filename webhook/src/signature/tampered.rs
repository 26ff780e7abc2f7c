//! Property tests on real artefacts (Sigstore's conformance corpus, in
//! `tests/fixtures`): whatever bytes arrive never panic a parser or a
//! check, and a signed artefact with one byte changed never verifies as
//! something other than what was signed: a timestamp never vouches for
//! another time, a checkpoint for another tree, an SCT for another
//! certificate, a bundle for another signature or signer.

use std::{sync::Arc, time::SystemTime};

use base64::{Engine, engine::general_purpose::STANDARD};
use proptest::prelude::*;

use super::{
    certificate, formats,
    model::Found,
    rekor::checkpoint,
    requirement::{Keyless, Requirement, Subject, What},
    sct, timestamp,
    trust_root::TrustedRoot,
    verify,
};

macro_rules! fixture {
    ($case:literal, $file:literal) => {
        include_bytes!(concat!(
            "../../tests/fixtures/sigstore-conformance/",
            $case,
            "/",
            $file
        ))
    };
}

/// Rekor v2 (hashedrekord 0.0.2), a timestamp authority, staging.
const V2_BUNDLE: &[u8] = fixture!("rekor2-happy-path", "bundle.sigstore.json");
const V2_ROOT: &[u8] = fixture!("rekor2-happy-path", "trusted_root.json");
const BLOB: &[u8] = include_bytes!("../../tests/fixtures/sigstore-conformance/a.txt");
const IDENTITY: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
const ISSUER: &str = "https://token.actions.githubusercontent.com";

fn root() -> Arc<TrustedRoot> {
    Arc::new(TrustedRoot::parse(std::str::from_utf8(V2_ROOT).unwrap()).unwrap())
}

fn bundle() -> serde_json::Value {
    serde_json::from_slice(V2_BUNDLE).unwrap()
}

fn requirement() -> Requirement {
    Requirement::new(
        "conformance",
        What::Signature,
        Vec::new(),
        Some(Keyless {
            issuer: ISSUER.into(),
            subject: Subject::Exact(IDENTITY.into()),
        }),
        Some(root()),
    )
}

fn timestamp_bytes() -> Vec<u8> {
    let b = bundle();
    let text = b["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"][0]
        ["signedTimestamp"]
        .as_str()
        .unwrap();
    STANDARD.decode(text).unwrap()
}

fn signature_bytes() -> Vec<u8> {
    STANDARD
        .decode(bundle()["messageSignature"]["signature"].as_str().unwrap())
        .unwrap()
}

/// Evaluates `bytes` as a bundle for the corpus's blob.
fn evaluate(bytes: &[u8]) -> (Result<(), String>, Option<super::model::Artifact>) {
    let parsed = formats::bundle_for_blob(bytes, BLOB);
    let Ok(artifact) = parsed else {
        return (Err("unreadable".into()), None);
    };
    let digest = artifact.manifest.clone();
    let found = Found {
        id: 1,
        artifacts: vec![artifact.clone()],
        ..Found::default()
    };
    (
        verify::evaluate(&requirement(), &digest, &found, SystemTime::now()).map(|_| ()),
        Some(artifact),
    )
}

#[test]
fn the_untouched_artefacts_verify() {
    let (verdict, _) = evaluate(V2_BUNDLE);
    verdict.unwrap();
    timestamp::verify(&root(), &timestamp_bytes(), &signature_bytes()).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// One byte changed anywhere in a Rekor v2 bundle: refused, or still
    /// the very signature, certificate and log entry that were signed (the
    /// byte was in something unsigned, such as a witness's cosignature).
    #[test]
    fn a_changed_byte_in_a_v2_bundle_never_verifies_as_another_signature(at in 0usize..65536, to in any::<u8>()) {
        let mut bytes = V2_BUNDLE.to_vec();
        let at = at % bytes.len();
        prop_assume!(bytes[at] != to);
        bytes[at] = to;
        let (original, _) = evaluate(V2_BUNDLE);
        prop_assert!(original.is_ok());
        let (verdict, artifact) = evaluate(&bytes);
        if verdict.is_ok() {
            let (_, untouched) = evaluate(V2_BUNDLE);
            let (a, b) = (artifact.unwrap(), untouched.unwrap());
            prop_assert_eq!(a.signatures, b.signatures);
            prop_assert_eq!(a.material, b.material);
            prop_assert_eq!(&a.tlog[0].body, &b.tlog[0].body);
        }
    }

    /// One byte changed in a real timestamp: refused, or the same time.
    #[test]
    fn a_changed_byte_in_a_timestamp_never_vouches_for_another_time(at in 0usize..8192, to in any::<u8>()) {
        let original = timestamp_bytes();
        let signature = signature_bytes();
        let root = root();
        let time = timestamp::verify(&root, &original, &signature).unwrap().time;
        let mut bytes = original.clone();
        let at = at % bytes.len();
        prop_assume!(bytes[at] != to);
        bytes[at] = to;
        if let Ok(stamped) = timestamp::verify(&root, &bytes, &signature) {
            prop_assert_eq!(stamped.time, time);
        }
    }

    /// Arbitrary bytes as a timestamp, a bundle, a certificate's SCTs or a
    /// checkpoint: an answer, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic_the_new_checks(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let root = root();
        let _ = timestamp::verify(&root, &bytes, b"signature");
        let _ = formats::bundle_for_blob(&bytes, BLOB);
        let _ = sct::verify(&root, &bytes, &bytes);
        let proof = super::rekor::Proof {
            log_index: 0,
            tree_size: 1,
            root_hash: vec![0; 32],
            hashes: vec![],
            checkpoint: None,
        };
        let _ = checkpoint::verify(&root.logs[0], &String::from_utf8_lossy(&bytes), &proof);
    }
}

/// The v2 case's certificate (staging Fulcio) carries an SCT from staging's
/// CT log: it verifies for that certificate, and for no certificate with a
/// byte of its TBS changed, nor under another issuer.
#[test]
fn an_sct_verifies_only_for_the_certificate_it_was_issued_for() {
    use der::{Decode, Encode};
    let root = root();
    let b = bundle();
    let der = STANDARD
        .decode(
            b["verificationMaterial"]["certificate"]["rawBytes"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let leaf = certificate::read_leaf(&der).unwrap();
    let issuer = certificate::verify_chain(&root, &der, &[], leaf.not_before).unwrap();
    sct::verify(&root, &der, &issuer.der).unwrap();
    let tbs_der = x509_cert::Certificate::from_der(&der)
        .unwrap()
        .tbs_certificate
        .to_der()
        .unwrap();
    let start = der
        .windows(tbs_der.len())
        .position(|w| w == tbs_der.as_slice())
        .unwrap();
    let mut tried = 0;
    for at in (start..start + tbs_der.len()).step_by(7) {
        let mut changed = der.clone();
        changed[at] ^= 0x01;
        tried += 1;
        assert!(
            sct::verify(&root, &changed, &issuer.der).is_err(),
            "an SCT verified for a certificate changed at byte {at}"
        );
    }
    assert!(tried > 100, "{tried}");
    assert!(
        sct::verify(&root, &der, &der).is_err(),
        "under another issuer"
    );
}
