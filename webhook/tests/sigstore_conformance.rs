//! Sigstore's conformance corpus for bundle verification (real bundles from
//! Sigstore's production and staging instances, and cases derived from
//! them; `tests/fixtures/sigstore-conformance`), through imagegate's
//! verification and through independent verifiers: sigstore-python for
//! keyless bundles, @sigstore/verify for bundles signed with keys. For
//! every case, imagegate's verdict must be the corpus's, and the
//! independent verifier's must be the same, except where it is named below
//! as known to differ from the corpus (and still differs).
//!
//! Needs `cargo xtask setup` (sigstore-python, the npm packages).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use imagegate_proto::digest::Digest;
use imagegate_testkit::independent::{self, Case};
use imagegate_webhook::signature::{
    formats,
    key::PublicKey,
    model::{ClaimKind, Found},
    requirement::{Keyless, Rekor, Requirement, Subject, What},
    trust_root::TrustedRoot,
    verify,
};

const IDENTITY: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
const ISSUER: &str = "https://token.actions.githubusercontent.com";

/// Cases where sigstore-python 4.5.1 is known to disagree with the corpus,
/// and why; imagegate follows the corpus (the specification's cases).
const SIGSTORE_PYTHON_DIFFERS: &[(&str, &str)] = &[
    (
        "intoto-with-custom-trust-root",
        "it takes a log entry's integrated time only for dsse and hashedrekord 0.0.1 entries, \
         not for intoto entries (cosign attest 1.x and 2.x wrote those)",
    ),
    (
        "trust-root-tsa-validity-end-inclusive",
        "it reads a timestamp authority's validFor end as exclusive; the trusted root's time \
         ranges are closed intervals",
    ),
];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sigstore-conformance")
}

struct Conformance {
    name: String,
    dir: PathBuf,
    expected: bool,
}

fn cases() -> Vec<Conformance> {
    let mut cases: Vec<_> = std::fs::read_dir(corpus())
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("bundle.sigstore.json").exists())
        .map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            Conformance {
                expected: !name.ends_with("_fail"),
                name,
                dir: e.path(),
            }
        })
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

fn read_text(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
}

/// imagegate's verdict: the bundle parsed for the blob, checked against a
/// requirement trusting the case's identity (or key) under its trusted
/// root, as a policy entry would.
fn imagegate(case: &Conformance, root: &Path, artifact: &[u8]) -> Result<(), String> {
    let bundle = std::fs::read(case.dir.join("bundle.sigstore.json")).unwrap();
    let root = TrustedRoot::parse(&std::fs::read_to_string(root).unwrap())?;
    let parsed = formats::bundle_for_blob(&bundle, artifact)?;
    let what = match &parsed.claim.kind {
        ClaimKind::ImageSignature => What::Signature,
        ClaimKind::Attestation { predicate_type, .. } => What::Attestation {
            predicate_type: predicate_type.clone(),
            conditions: Vec::new(),
        },
    };
    let (keys, keyless) = match read_text(&case.dir.join("key.pub")) {
        Some(pem) => (
            vec![PublicKey::from_pem("conformance", &pem).unwrap()],
            None,
        ),
        None => (
            Vec::new(),
            Some(Keyless {
                issuer: read_text(&case.dir.join("issuer")).unwrap_or(ISSUER.into()),
                subject: Subject::Exact(
                    read_text(&case.dir.join("identity")).unwrap_or(IDENTITY.into()),
                ),
            }),
        ),
    };
    let mut requirement =
        Requirement::new("conformance", what, keys, keyless, Some(Arc::new(root)));
    // Every bundle of the corpus is logged; a keyed one must be too.
    requirement.rekor = Rekor::Required;
    if requirement.keyless.is_none() {
        requirement.verified_times = 0;
    }
    let digest = Digest::parse(&format!(
        "sha256:{}",
        imagegate_webhook::signature::key::hex(&imagegate_webhook::signature::key::sha256(
            artifact
        ))
    ))
    .unwrap();
    let found = Found {
        id: 1,
        artifacts: vec![parsed],
        ..Found::default()
    };
    verify::evaluate(&requirement, &digest, &found, SystemTime::now()).map(|_| ())
}

#[test]
fn imagegate_and_the_independent_verifiers_agree_with_sigstores_conformance_corpus() {
    let production = independent::shipped_trusted_root("prod");
    let mut disagreements = Vec::new();
    let mut counted = (0, 0, 0);
    for case in cases() {
        let root = if case.dir.join("trusted_root.json").exists() {
            case.dir.join("trusted_root.json")
        } else {
            production.clone()
        };
        let artifact_path = if case.dir.join("artifact").exists() {
            case.dir.join("artifact")
        } else {
            corpus().join("a.txt")
        };
        let artifact = std::fs::read(&artifact_path).unwrap();
        let ours = imagegate(&case, &root, &artifact);
        let input = artifact_path.display().to_string();
        let check = Case {
            bundle: &case.dir.join("bundle.sigstore.json"),
            trusted_root: &root,
            input: &input,
        };
        let (verifier, theirs) = match read_text(&case.dir.join("key.pub")) {
            Some(pem) => (
                "@sigstore/verify",
                independent::sigstore_js_verify(
                    &check,
                    independent::Signer::Key(&pem),
                    independent::Thresholds {
                        tlog: 1,
                        timestamps: 0,
                        sct: 0,
                    },
                ),
            ),
            None => (
                "sigstore-python",
                independent::sigstore_python_verify(
                    &check,
                    &read_text(&case.dir.join("identity")).unwrap_or(IDENTITY.into()),
                    &read_text(&case.dir.join("issuer")).unwrap_or(ISSUER.into()),
                ),
            ),
        };
        eprintln!(
            "{:<60} expected {:<4} imagegate {:<4} {verifier} {:<4}  {}",
            case.name,
            if case.expected { "pass" } else { "fail" },
            if ours.is_ok() { "pass" } else { "fail" },
            if theirs.verified { "pass" } else { "fail" },
            ours.as_ref().err().map(String::as_str).unwrap_or("")
        );
        if ours.is_ok() != case.expected {
            disagreements.push(format!(
                "{}: imagegate says {:?}, the corpus {}",
                case.name,
                ours,
                if case.expected { "pass" } else { "fail" }
            ));
        }
        let known = SIGSTORE_PYTHON_DIFFERS
            .iter()
            .find(|(name, _)| *name == case.name);
        match known {
            Some((_, why)) => {
                if theirs.verified == case.expected {
                    disagreements.push(format!(
                        "{}: {verifier} now agrees with the corpus (it was known to differ: \
                         {why}); drop it from SIGSTORE_PYTHON_DIFFERS",
                        case.name
                    ));
                }
                counted.2 += 1;
            }
            None if theirs.verified != ours.is_ok() => disagreements.push(format!(
                "{}: imagegate says {ours:?}, {verifier} {} ({})",
                case.name,
                if theirs.verified { "pass" } else { "fail" },
                theirs.said
            )),
            None => {}
        }
        if case.expected {
            counted.0 += 1;
        } else {
            counted.1 += 1;
        }
    }
    eprintln!(
        "{} cases that must verify, {} that must not; {} where sigstore-python is known to differ",
        counted.0, counted.1, counted.2
    );
    assert!(
        counted.0 >= 20 && counted.1 >= 40,
        "the corpus is missing cases: {counted:?}"
    );
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}
