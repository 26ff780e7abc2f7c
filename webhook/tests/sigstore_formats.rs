//! Signatures as Sigstore issues them now, through the whole admission
//! pipeline against a real registry: keyless bundles whose time of signing
//! comes from a timestamp authority (RFC 3161, made by `openssl ts`), logged
//! to a Rekor v2-shaped log (Ed25519 checkpoints, v0.0.2 bodies, no SET),
//! with certificates whose SCTs a CT log signed; and cosign's formats
//! before bundles (`.att` attestation tags with `intoto` entries, `.sig`
//! with `rekord` entries, the chain and timestamp annotations).
//!
//! Every bundle's verdict is compared with an independent verifier's on the
//! same bundle, trusted root, identity and digest: sigstore-python where it
//! reads the bundle, @sigstore/verify where it does not (`dsse` 0.0.2 and
//! `intoto` entries, `sct: off`, two timestamps).

mod common;

use std::path::{Path, PathBuf};

use base64::{Engine, engine::general_purpose::STANDARD};
use common::{
    registry::Registry,
    signing::{
        COSIGN_SIGN, OIDC, PASSWORD, SUBJECT, USER, VULN, agree, assert_denied, decide,
        keyless_policy_with, policy, resolver,
    },
};
use imagegate_testkit::{
    independent::{self, Case, Signer, Thresholds, Verdict},
    sigstore::{
        Fulcio, Issue, KeylessBundle, Log, LogTo, LogV2, Signing, TrustedRoot, Tsa, attach_bundle,
        attach_legacy, attach_legacy_attestation, simple_signing_payload,
    },
};
use imagegate_webhook::{resolve::Resolver, signature::formats::pae};
use serde_json::{Value, json};

const IN_TOTO: &str = "application/vnd.in-toto+json";

/// Which body a Rekor v2 entry has.
#[derive(Clone, Copy)]
enum Body {
    /// `hashedrekord` 0.0.2 over the envelope's PAE (rekor-v2-spec §6.1.4).
    HashedRekord,
    /// `dsse` 0.0.2.
    Dsse,
}

/// How a test bundle is made.
struct Make<'a> {
    body: Option<Body>,
    /// Timestamp authorities that stamp the signature.
    stamps: Vec<&'a Tsa>,
    /// The certificate was logged to the CT log (its SCT embedded).
    logged_certificate: bool,
    /// Stamp another signature instead (a timestamp of something else).
    stamp_other: bool,
}

impl<'a> Make<'a> {
    fn new(tsa: &'a Tsa) -> Self {
        Self {
            body: Some(Body::HashedRekord),
            stamps: vec![tsa],
            logged_certificate: true,
            stamp_other: false,
        }
    }
}

/// A keyless bundle v0.3 over `digest` on the Rekor v2 log, as `make` says.
fn keyless_bundle(fulcio: &Fulcio, log: &mut LogV2, digest: &str, make: &Make<'_>) -> Vec<u8> {
    KeylessBundle {
        fulcio,
        oidc_issuer: OIDC,
        subject: SUBJECT,
        certificate: Issue {
            logged: make.logged_certificate,
            ..Issue::at(time::OffsetDateTime::now_utc() - time::Duration::minutes(1))
        },
        digest,
        predicate_type: COSIGN_SIGN,
        log: match make.body {
            Some(Body::HashedRekord) => LogTo::V2HashedRekord(log),
            Some(Body::Dsse) => LogTo::V2Dsse(log),
            None => LogTo::Nowhere,
        },
        stamps: make.stamps.clone(),
        stamp_other: make.stamp_other,
    }
    .make()
}

/// The registry, a trusted root listing the test services, a resolver.
struct World {
    registry: Registry,
    dir: tempfile::TempDir,
    root: PathBuf,
    resolver: Resolver,
}

impl World {
    async fn new(root: &TrustedRoot<'_>) -> Self {
        let registry = Registry::plain_basic(USER, PASSWORD);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trusted_root.json");
        std::fs::write(&path, root.json()).unwrap();
        let resolver = resolver(&registry.host, true);
        Self {
            registry,
            dir,
            root: path,
            resolver,
        }
    }

    /// A new image `ci/app:<tag>`; its digest.
    async fn push(&self, tag: &str) -> String {
        self.registry.push_image("ci/app", tag, tag).await
    }

    /// Attaches `bundle` to `digest` and keeps a copy for the independent
    /// verifiers; the copy's path.
    async fn attach(&self, tag: &str, digest: &str, bundle: &[u8]) -> PathBuf {
        attach_bundle(&self.registry, "ci/app", digest, bundle).await;
        let file = self.dir.path().join(format!("{tag}.sigstore.json"));
        std::fs::write(&file, bundle).unwrap();
        file
    }

    /// A new image `ci/app:<tag>` with a keyless bundle made as `make`
    /// says attached: its digest and the bundle's copy.
    async fn sign(
        &self,
        tag: &str,
        fulcio: &Fulcio,
        log: &mut LogV2,
        make: Make<'_>,
    ) -> (String, PathBuf) {
        let digest = self.push(tag).await;
        let bundle = keyless_bundle(fulcio, log, &digest, &make);
        let copy = self.attach(tag, &digest, &bundle).await;
        (digest, copy)
    }

    fn image(&self, tag: &str) -> String {
        format!("{}/ci/app:{tag}", self.registry.host)
    }

    /// A variant of the trusted root, changed by `edit`, written beside it.
    fn root_variant(&self, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
        let mut root: Value = serde_json::from_slice(&std::fs::read(&self.root).unwrap()).unwrap();
        edit(&mut root);
        let path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&path, root.to_string()).unwrap();
        path
    }
}

fn python(root: &Path, bundle: &Path, digest: &str) -> Verdict {
    independent::sigstore_python_verify(
        &Case {
            bundle,
            trusted_root: root,
            input: digest,
        },
        SUBJECT,
        OIDC,
    )
}

fn js(root: &Path, bundle: &Path, digest: &str, timestamps: usize, sct: usize) -> Verdict {
    independent::sigstore_js_verify(
        &Case {
            bundle,
            trusted_root: root,
            input: digest,
        },
        Signer::Identity {
            subject: SUBJECT,
            issuer: OIDC,
        },
        Thresholds {
            tlog: 1,
            timestamps,
            sct,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_bundles_on_rekor_v2_take_their_time_from_a_timestamp_authority() {
    let fulcio = Fulcio::new("test fulcio");
    let tsa = Tsa::valid_now("imagegate-test-tsa");
    let mut log = LogV2::new("log2026.rekor.imagegate.test", 5);
    let w = World::new(&TrustedRoot {
        authorities: vec![&fulcio],
        v2_logs: vec![&log],
        timestamp_authorities: vec![&tsa],
        ..TrustedRoot::default()
    })
    .await;
    let subject = format!("subject: {SUBJECT}");
    let policy = keyless_policy_with(&w.registry.host, &w.root, OIDC, &subject, "");

    // 1. hashedrekord 0.0.2 over the PAE, one timestamp: admitted, and
    //    sigstore-python agrees.
    let (v2_digest, v2_bundle) = w.sign("v2", &fulcio, &mut log, Make::new(&tsa)).await;
    let report = decide(&policy, &w.resolver, &w.image("v2")).await;
    assert!(report.allowed, "{report:?}");
    assert_eq!(
        report.signers[0].identity,
        format!("{SUBJECT} (issuer {OIDC})")
    );
    agree(
        "v2",
        &report,
        &python(&w.root, &v2_bundle, &v2_digest),
        "sigstore-python",
    );

    // 2. dsse 0.0.2: admitted; sigstore-python does not read dsse 0.0.2
    //    entries, @sigstore/verify does.
    let (dsse_digest, dsse_bundle) = w
        .sign(
            "v2-dsse",
            &fulcio,
            &mut log,
            Make {
                body: Some(Body::Dsse),
                ..Make::new(&tsa)
            },
        )
        .await;
    let report = decide(&policy, &w.resolver, &w.image("v2-dsse")).await;
    assert!(report.allowed, "{report:?}");
    agree(
        "v2-dsse",
        &report,
        &js(&w.root, &dsse_bundle, &dsse_digest, 1, 1),
        "@sigstore/verify",
    );

    // 3. No timestamp: a v2 entry says nothing of when it was signed.
    let (digest, bundle) = w
        .sign(
            "v2-no-time",
            &fulcio,
            &mut log,
            Make {
                stamps: vec![],
                ..Make::new(&tsa)
            },
        )
        .await;
    let report = decide(&policy, &w.resolver, &w.image("v2-no-time")).await;
    assert_denied(
        &report,
        &[
            "nothing says when it was signed",
            "Rekor v2 entries carry none",
        ],
    );
    agree(
        "v2-no-time",
        &report,
        &python(&w.root, &bundle, &digest),
        "sigstore-python",
    );

    // 4. A timestamp from an authority the trusted root does not list.
    let stranger = Tsa::valid_now("stranger-tsa");
    let (digest, bundle) = w
        .sign(
            "untrusted-tsa",
            &fulcio,
            &mut log,
            Make {
                stamps: vec![&stranger],
                ..Make::new(&tsa)
            },
        )
        .await;
    let report = decide(&policy, &w.resolver, &w.image("untrusted-tsa")).await;
    assert_denied(
        &report,
        &[
            "is not from a timestamp authority of the trusted root",
            "not signed by imagegate-test-tsa",
        ],
    );
    agree(
        "untrusted-tsa",
        &report,
        &python(&w.root, &bundle, &digest),
        "sigstore-python",
    );

    // 5. A timestamp over another signature (the wrong imprint).
    let (digest, bundle) = w
        .sign(
            "wrong-imprint",
            &fulcio,
            &mut log,
            Make {
                stamp_other: true,
                ..Make::new(&tsa)
            },
        )
        .await;
    let report = decide(&policy, &w.resolver, &w.image("wrong-imprint")).await;
    assert_denied(&report, &["its timestamp is of another signature"]);
    agree(
        "wrong-imprint",
        &report,
        &python(&w.root, &bundle, &digest),
        "sigstore-python",
    );

    // 6. The authority's trust ended before the timestamp.
    let ended_root = w.root_variant("ended_root", |root| {
        root["timestampAuthorities"][0]["validFor"]["end"] = json!("2021-01-01T00:00:00Z");
    });
    let ended_policy = keyless_policy_with(&w.registry.host, &ended_root, OIDC, &subject, "");
    let report = decide(&ended_policy, &w.resolver, &w.image("v2")).await;
    assert_denied(
        &report,
        &["at a time the trusted root does not trust it for"],
    );
    agree(
        "tsa-ended",
        &report,
        &python(&ended_root, &v2_bundle, &v2_digest),
        "sigstore-python",
    );

    // 7. A checkpoint signed by another log, for this log's tree.
    let other = LogV2::new("log2026.rekor.elsewhere.test", 0);
    let digest = w.push("foreign-checkpoint").await;
    let mut forged: Value = serde_json::from_slice(&keyless_bundle(
        &fulcio,
        &mut log,
        &digest,
        &Make::new(&tsa),
    ))
    .unwrap();
    let checkpoint = &mut forged["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"]
        ["envelope"];
    let text = checkpoint
        .as_str()
        .unwrap()
        .split_once("\n\n")
        .unwrap()
        .0
        .to_string();
    *checkpoint = json!(other.sign_note(&format!("{text}\n")));
    let bundle = w
        .attach(
            "foreign-checkpoint",
            &digest,
            &serde_json::to_vec(&forged).unwrap(),
        )
        .await;
    let report = decide(&policy, &w.resolver, &w.image("foreign-checkpoint")).await;
    assert_denied(
        &report,
        &["its checkpoint carries no signature by the log's key"],
    );
    agree(
        "foreign-checkpoint",
        &report,
        &python(&w.root, &bundle, &digest),
        "sigstore-python",
    );

    // 8. A certificate that was never logged to a CT log: denied by
    //    default, as cosign does; admitted with `sct: off`.
    let (digest, bundle) = w
        .sign(
            "no-sct",
            &fulcio,
            &mut log,
            Make {
                logged_certificate: false,
                ..Make::new(&tsa)
            },
        )
        .await;
    let report = decide(&policy, &w.resolver, &w.image("no-sct")).await;
    assert_denied(
        &report,
        &["carries no signed certificate timestamp", "set `sct: off`"],
    );
    agree(
        "no-sct",
        &report,
        &python(&w.root, &bundle, &digest),
        "sigstore-python",
    );
    // @sigstore/verify (which, unlike sigstore-python, can leave SCTs out)
    // reads v2 DSSE bundles as dsse 0.0.2 entries, not as hashedrekord
    // over the PAE.
    let sct_off = keyless_policy_with(
        &w.registry.host,
        &w.root,
        OIDC,
        &subject,
        "        sct: off\n",
    );
    let (digest, bundle) = w
        .sign(
            "no-sct-dsse",
            &fulcio,
            &mut log,
            Make {
                logged_certificate: false,
                body: Some(Body::Dsse),
                ..Make::new(&tsa)
            },
        )
        .await;
    let report = decide(&policy, &w.resolver, &w.image("no-sct-dsse")).await;
    assert_denied(&report, &["carries no signed certificate timestamp"]);
    agree(
        "no-sct-dsse",
        &report,
        &js(&w.root, &bundle, &digest, 1, 1),
        "@sigstore/verify",
    );
    let report = decide(&sct_off, &w.resolver, &w.image("no-sct-dsse")).await;
    assert!(report.allowed, "{report:?}");
    agree(
        "no-sct-dsse, sct: off",
        &report,
        &js(&w.root, &bundle, &digest, 1, 0),
        "@sigstore/verify",
    );
    let report = decide(&sct_off, &w.resolver, &w.image("no-sct")).await;
    assert!(report.allowed, "{report:?}");

    // 9. Two verified times asked: one timestamp is not enough, two from
    //    two authorities are.
    let second = Tsa::valid_now("second-tsa");
    let listed: Value = serde_json::from_str(
        &TrustedRoot {
            timestamp_authorities: vec![&second],
            ..TrustedRoot::default()
        }
        .json(),
    )
    .unwrap();
    let two_root = w.root_variant("two_tsa_root", |root| {
        root["timestampAuthorities"]
            .as_array_mut()
            .unwrap()
            .push(listed["timestampAuthorities"][0].clone());
    });
    let twice = keyless_policy_with(
        &w.registry.host,
        &two_root,
        OIDC,
        &subject,
        "        verifiedTimes: 2\n",
    );
    let report = decide(&twice, &w.resolver, &w.image("v2-dsse")).await;
    assert_denied(
        &report,
        &["1 verified time of signing, and the requirement needs 2"],
    );
    agree(
        "two times, one stamp",
        &report,
        &js(&two_root, &dsse_bundle, &dsse_digest, 2, 1),
        "@sigstore/verify",
    );
    let (digest, bundle) = w
        .sign(
            "two-stamps",
            &fulcio,
            &mut log,
            Make {
                stamps: vec![&tsa, &second],
                body: Some(Body::Dsse),
                ..Make::new(&tsa)
            },
        )
        .await;
    let report = decide(&twice, &w.resolver, &w.image("two-stamps")).await;
    assert!(report.allowed, "{report:?}");
    agree(
        "two stamps",
        &report,
        &js(&two_root, &bundle, &digest, 2, 1),
        "@sigstore/verify",
    );
}

/// A keyless DSSE envelope over a `predicate_type` statement about
/// `digest`: (envelope JSON, statement, signature, certificate).
fn keyless_envelope(
    fulcio: &Fulcio,
    digest: &str,
    predicate_type: &str,
) -> (Vec<u8>, Vec<u8>, Vec<u8>, Signing) {
    let certificate = fulcio.certificate(
        OIDC,
        SUBJECT,
        time::OffsetDateTime::now_utc() - time::Duration::minutes(1),
        10,
    );
    let statement = serde_json::to_vec(&json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "subject": [{"name": "app", "digest": {"sha256": digest.trim_start_matches("sha256:")}}],
        "predicateType": predicate_type,
        "predicate": {"scanner": {"result": {"vulnerabilities": []}}}
    }))
    .unwrap();
    let signature = certificate.key.sign(&pae(IN_TOTO, &statement));
    let envelope = serde_json::to_vec(&json!({
        "payloadType": IN_TOTO,
        "payload": STANDARD.encode(&statement),
        "signatures": [{"keyid": "", "sig": STANDARD.encode(&signature)}]
    }))
    .unwrap();
    (envelope, statement, signature, certificate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosign_formats_before_bundles_verify_as_cosign_verifies_them() {
    let fulcio = Fulcio::with_intermediate("tiered fulcio");
    let tsa = Tsa::valid_now("imagegate-test-tsa");
    let mut log = Log::new(4);
    // Sigstore's own root lists the intermediate; cosign also takes it from
    // the signature's chain annotation.
    let w = World::new(&TrustedRoot {
        authorities: vec![&fulcio],
        logs: vec![&log],
        timestamp_authorities: vec![&tsa],
        ..TrustedRoot::default()
    })
    .await;
    let subject = format!("subject: {SUBJECT}");
    let attested = |root: &Path| {
        policy(
            &w.registry.host,
            &format!(
                "    attestations:\n      - name: scanned\n        predicateType: {VULN}\n        keyless:\n          issuer: {OIDC}\n          {subject}\n        trustedRoot: {}\n",
                root.display()
            ),
        )
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    // 1. `cosign attest` 2.x: a `.att` layer, its entry `intoto` 0.0.2 with
    //    a SET. @sigstore/verify agrees on the same material as a bundle.
    let digest = w.push("att-v2").await;
    let (envelope, statement, signature, certificate) = keyless_envelope(&fulcio, &digest, VULN);
    let logged = log.append(
        &Log::intoto("0.0.2", &envelope, &statement, &signature, &certificate.pem),
        now,
    );
    attach_legacy_attestation(
        &w.registry,
        "ci/app",
        &digest,
        &[(
            envelope.clone(),
            json!({
                "dev.sigstore.cosign/certificate": certificate.pem,
                "dev.sigstore.cosign/chain": fulcio.intermediate_pem().unwrap(),
                "dev.sigstore.cosign/bundle": logged.legacy_annotation,
                "predicateType": VULN,
            }),
        )],
    )
    .await;
    let report = decide(&attested(&w.root), &w.resolver, &w.image("att-v2")).await;
    assert!(report.allowed, "{report:?}");
    assert_eq!(report.signers[0].format, "cosign-legacy-attestation-tag");
    let mut entry = logged.bundle_entry.clone();
    entry["kindVersion"] = json!({"kind": "intoto", "version": "0.0.2"});
    let as_bundle = w.dir.path().join("att-v2.sigstore.json");
    std::fs::write(
        &as_bundle,
        json!({
            "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.2",
            "verificationMaterial": {
                "x509CertificateChain": {"certificates": [{"rawBytes": STANDARD.encode(&certificate.der)}]},
                "tlogEntries": [entry]
            },
            "dsseEnvelope": serde_json::from_slice::<Value>(&envelope).unwrap()
        })
        .to_string(),
    )
    .unwrap();
    agree(
        "att-v2",
        &report,
        &js(&w.root, &as_bundle, &digest, 1, 1),
        "@sigstore/verify",
    );

    // 2. `cosign attest` 1.x: `intoto` 0.0.1, which stores no signature
    //    (only the payload's hash and the certificate). No independent
    //    verifier here reads 0.0.1 entries.
    let digest = w.push("att-v1").await;
    let (envelope, statement, signature, certificate) = keyless_envelope(&fulcio, &digest, VULN);
    let logged = log.append(
        &Log::intoto("0.0.1", &envelope, &statement, &signature, &certificate.pem),
        now,
    );
    let annotations = json!({
        "dev.sigstore.cosign/certificate": certificate.pem,
        "dev.sigstore.cosign/bundle": logged.legacy_annotation,
    });
    attach_legacy_attestation(
        &w.registry,
        "ci/app",
        &digest,
        &[(envelope.clone(), annotations)],
    )
    .await;
    let report = decide(&attested(&w.root), &w.resolver, &w.image("att-v1")).await;
    assert!(report.allowed, "{report:?}");

    // 3. The chain annotation: with a trusted root that lists only
    //    Fulcio's root, the intermediate comes from the signature (a
    //    candidate for the path, never an anchor); without it, the chain
    //    does not reach the root.
    let bare: Value = serde_json::from_slice(&std::fs::read(&w.root).unwrap()).unwrap();
    let root_only = w.root_variant("root_only", |root| {
        let chain = bare["certificateAuthorities"][0]["certChain"]["certificates"]
            .as_array()
            .unwrap();
        root["certificateAuthorities"][0]["certChain"]["certificates"] = json!([chain[1]]);
    });
    let report = decide(&attested(&root_only), &w.resolver, &w.image("att-v2")).await;
    assert!(
        report.allowed,
        "the chain annotation's intermediate: {report:?}"
    );
    let report = decide(&attested(&root_only), &w.resolver, &w.image("att-v1")).await;
    assert_denied(&report, &["issued by a CA the trusted root does not list"]);

    // 4. cosign before 1.5: a `.sig` layer whose entry is `rekord`. No
    //    independent verifier here reads rekord entries.
    let signed = policy(
        &w.registry.host,
        &format!(
            "    signatures:\n      - name: ci\n        keyless:\n          issuer: {OIDC}\n          {subject}\n        trustedRoot: {}\n",
            w.root.display()
        ),
    );
    let digest = w.push("rekord").await;
    let repository = format!("{}/ci/app", w.registry.host);
    let payload = simple_signing_payload(&repository, &digest);
    let certificate = fulcio.certificate(
        OIDC,
        SUBJECT,
        time::OffsetDateTime::now_utc() - time::Duration::minutes(1),
        10,
    );
    let signature = certificate.key.sign(&payload);
    let logged = log.append(&Log::rekord(&payload, &signature, &certificate.pem), now);
    attach_legacy(
        &w.registry,
        "ci/app",
        &digest,
        &[(
            payload.clone(),
            json!({
                "dev.cosignproject.cosign/signature": STANDARD.encode(&signature),
                "dev.sigstore.cosign/certificate": certificate.pem,
                "dev.sigstore.cosign/bundle": logged.legacy_annotation,
            }),
        )],
    )
    .await;
    let report = decide(&signed, &w.resolver, &w.image("rekord")).await;
    assert!(report.allowed, "{report:?}");
    assert_eq!(report.signers[0].format, "cosign-legacy-tag");

    // 5. cosign 2.x with `--timestamp-server-url` and no log: the time of
    //    signing from the RFC 3161 annotation. @sigstore/verify agrees on
    //    the same signature as a message-signature bundle of the payload.
    let stamped = policy(
        &w.registry.host,
        &format!(
            "    signatures:\n      - name: ci\n        keyless:\n          issuer: {OIDC}\n          {subject}\n        trustedRoot: {}\n        rekor: off\n",
            w.root.display()
        ),
    );
    let digest = w.push("tsa-annotation").await;
    let payload = simple_signing_payload(&repository, &digest);
    let certificate = fulcio.certificate(
        OIDC,
        SUBJECT,
        time::OffsetDateTime::now_utc() - time::Duration::minutes(1),
        10,
    );
    let signature = certificate.key.sign(&payload);
    let timestamp = tsa.timestamp(&signature, true);
    attach_legacy(
        &w.registry,
        "ci/app",
        &digest,
        &[(
            payload.clone(),
            json!({
                "dev.cosignproject.cosign/signature": STANDARD.encode(&signature),
                "dev.sigstore.cosign/certificate": certificate.pem,
                "dev.sigstore.cosign/rfc3161timestamp":
                    json!({"SignedRFC3161Timestamp": STANDARD.encode(&timestamp)}).to_string(),
            }),
        )],
    )
    .await;
    let report = decide(&stamped, &w.resolver, &w.image("tsa-annotation")).await;
    assert!(report.allowed, "{report:?}");
    let payload_file = w.dir.path().join("payload.json");
    std::fs::write(&payload_file, &payload).unwrap();
    let as_bundle = w.dir.path().join("tsa-annotation.sigstore.json");
    std::fs::write(
        &as_bundle,
        json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "certificate": {"rawBytes": STANDARD.encode(&certificate.der)},
                "tlogEntries": [],
                "timestampVerificationData": {"rfc3161Timestamps": [{"signedTimestamp": STANDARD.encode(&timestamp)}]}
            },
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": STANDARD.encode(imagegate_testkit::sigstore::sha256(&payload))},
                "signature": STANDARD.encode(&signature)
            }
        })
        .to_string(),
    )
    .unwrap();
    let theirs = independent::sigstore_js_verify(
        &Case {
            bundle: &as_bundle,
            trusted_root: &w.root,
            input: &payload_file.display().to_string(),
        },
        Signer::Identity {
            subject: SUBJECT,
            issuer: OIDC,
        },
        Thresholds {
            tlog: 0,
            timestamps: 1,
            sct: 1,
        },
    );
    agree("tsa-annotation", &report, &theirs, "@sigstore/verify");
    // Without a log, the timestamp is the only time: a policy that needs
    // two is not met.
    let twice = policy(
        &w.registry.host,
        &format!(
            "    signatures:\n      - name: ci\n        keyless:\n          issuer: {OIDC}\n          {subject}\n        trustedRoot: {}\n        rekor: off\n        verifiedTimes: 2\n",
            w.root.display()
        ),
    );
    let report = decide(&twice, &w.resolver, &w.image("tsa-annotation")).await;
    assert_denied(
        &report,
        &["1 verified time of signing, and the requirement needs 2"],
    );
}
