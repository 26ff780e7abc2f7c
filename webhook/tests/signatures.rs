//! Signature requirements against a real registry (Debian's
//! docker-registry on loopback, Basic auth) with signatures made three
//! independent ways: bundles by the real npm Sigstore signer, legacy
//! signatures by `openssl` in cosign's published layout, and keyless
//! signatures from a test Fulcio and a test transparency log listed in an
//! offline `trusted_root.json`. Each case goes through the whole admission
//! pipeline (`check::images`: policy, resolution, signatures, decision).
//!
//! Over 500 lines: one scenario per format and per way to fail, sharing the
//! registry helpers at the top.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use common::{
    metric,
    registry::Registry,
    signing::{
        COSIGN_SIGN, OIDC, PASSWORD, SUBJECT, USER, VULN, agree, assert_denied, decide,
        key_verdict, keyless_policy, keyless_verdict, policy, resolver, resolver_with_metrics,
    },
};
use imagegate_testkit::sigstore::{
    Fulcio, Issue, KeyPair, KeylessBundle, Log, LogTo, NpmSign, Signing, attach_bundle,
    attach_legacy, npm_sign, openssl_sign, put_tag_index, simple_signing_payload, trusted_root,
};
use imagegate_webhook::{policy::Policy, resolve::Resolver, server::metrics::Metrics};
use serde_json::{Value, json};

/// `signatures:` with one key requirement named `name` trusting `key_file`.
fn by_key(name: &str, key_file: &Path) -> String {
    format!(
        "    signatures:\n      - name: {name}\n        keys:\n          - name: {name}\n            file: {}\n",
        key_file.display()
    )
}

fn write_key(dir: &Path, name: &str, key: &KeyPair) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.pub"));
    std::fs::write(&path, &key.public_pem).unwrap();
    path
}

/// `sha256:<hex>` of a key's SubjectPublicKeyInfo: the hint the npm signer
/// is given, as `cosign` users name keys.
fn fingerprint(key: &KeyPair) -> String {
    imagegate_testkit::registry::sha256(&key.spki())
}

/// Signs and attaches with the npm signer; returns the bundle (JSON).
fn sign_with_npm(
    registry: &Registry,
    key: &KeyPair,
    repo: &str,
    digest: &str,
    subject: &str,
    predicate_type: &str,
    predicate: Value,
) -> Value {
    npm_sign(&NpmSign {
        key,
        hint: &fingerprint(key),
        registry: &registry.host,
        repo,
        digest,
        subject_digest: subject,
        predicate_type,
        predicate,
        credentials: (USER, PASSWORD),
    })["bundle"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_from_the_npm_signer_admit_with_the_right_key_only() {
    let registry = Registry::plain_basic(USER, PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let (release, other) = (KeyPair::generate(), KeyPair::generate());
    let release_file = write_key(dir.path(), "release", &release);
    let other_file = write_key(dir.path(), "other", &other);
    let signed = registry.push_image("shop/web", "1", "signed").await;
    let wrong_subject = registry.push_image("shop/web", "2", "wrong-subject").await;
    let unsigned = registry.push_image("shop/web", "3", "unsigned").await;
    let signed_bundle = sign_with_npm(
        &registry,
        &release,
        "shop/web",
        &signed,
        &signed,
        COSIGN_SIGN,
        json!({}),
    );
    // Attached to one image, about another.
    let wrong_subject_bundle = sign_with_npm(
        &registry,
        &release,
        "shop/web",
        &wrong_subject,
        &signed,
        COSIGN_SIGN,
        json!({}),
    );
    let resolver = resolver(&registry.host, true);
    let image = |tag: &str| format!("{}/shop/web:{tag}", registry.host);

    let trusts_release = policy(&registry.host, &by_key("release-2026", &release_file));
    let report = decide(&trusts_release, &resolver, &image("1")).await;
    assert!(report.allowed, "{report:?}");
    assert_eq!(report.resolved.as_deref(), Some(signed.as_str()));
    assert_eq!(report.signers.len(), 1, "{report:?}");
    let signer = &report.signers[0];
    assert_eq!(signer.requirement, "release-2026");
    assert!(
        signer.identity.starts_with("key \"release-2026\" (sha256:"),
        "{signer:?}"
    );
    // distribution 2.8 has no referrers API: @sigstore/oci wrote the tag
    // index, and imagegate found the bundle there.
    assert_eq!(signer.format, "sigstore-bundle-tag-index");
    let theirs = key_verdict(&signed_bundle, &release.public_pem, &signed);
    agree("release key", &report, &theirs, "@sigstore/verify");

    let trusts_other = policy(&registry.host, &by_key("other", &other_file));
    let report = decide(&trusts_other, &resolver, &image("1")).await;
    let theirs = key_verdict(&signed_bundle, &other.public_pem, &signed);
    agree("other key", &report, &theirs, "@sigstore/verify");
    let short = &fingerprint(&release)[..19];
    assert_denied(
        &report,
        &[
            &format!(
                "image \"{}/shop/web@{signed}\" denied by rule \"prod\"",
                registry.host
            ),
            "no signature by key \"other\"",
            &format!("found 1 signature: by key {short}…, not trusted here"),
        ],
    );

    // The same requirement in audit mode: admitted, with the reason as a
    // warning, and no signer recorded.
    let audited = policy(
        &registry.host,
        &format!("{}        mode: audit\n", by_key("other", &other_file)),
    );
    let report = decide(&audited, &resolver, &image("1")).await;
    assert!(report.allowed, "{report:?}");
    assert_eq!(report.verdict, "audit-denied");
    assert!(
        report.reason.contains("no signature by key \"other\""),
        "{report:?}"
    );
    assert!(report.signers.is_empty());

    let report = decide(&trusts_release, &resolver, &image("2")).await;
    assert_denied(
        &report,
        &["found 1 signature: one signs sha256:", "not this digest"],
    );
    let theirs = key_verdict(&wrong_subject_bundle, &release.public_pem, &wrong_subject);
    agree("another subject", &report, &theirs, "@sigstore/verify");

    let report = decide(&trusts_release, &resolver, &image("3")).await;
    assert_eq!(report.resolved.as_deref(), Some(unsigned.as_str()));
    assert_denied(
        &report,
        &["no signature by key \"release-2026\" (the image has no signature)"],
    );

    // The key written in the policy works as the key file does.
    let inline = format!(
        "    signatures:\n      - name: inline\n        keys:\n          - name: release\n            pem: |\n{}",
        release
            .public_pem
            .lines()
            .map(|l| format!("              {l}\n"))
            .collect::<String>()
    );
    let report = decide(&policy(&registry.host, &inline), &resolver, &image("1")).await;
    assert!(report.allowed, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_attached_as_oci_referrers_are_found_through_the_referrers_api() {
    let registry = Registry::plain_basic(USER, PASSWORD);
    // distribution 2.8 has no referrers API: the front adds it.
    let front = imagegate_testkit::referrers::ReferrersFront::start(&registry.host).await;
    let dir = tempfile::tempdir().unwrap();
    let release = KeyPair::generate();
    let release_file = write_key(dir.path(), "release", &release);
    let digest = registry.push_image("shop/api", "1", "referrer").await;
    npm_sign(&NpmSign {
        key: &release,
        hint: &fingerprint(&release),
        registry: &front.host,
        repo: "shop/api",
        digest: &digest,
        subject_digest: &digest,
        predicate_type: COSIGN_SIGN,
        predicate: json!({}),
        credentials: (USER, PASSWORD),
    });
    let resolver = resolver(&front.host, true);
    let trusts = policy(&front.host, &by_key("release", &release_file));
    let report = decide(&trusts, &resolver, &format!("{}/shop/api:1", front.host)).await;
    assert!(report.allowed, "{report:?}");
    // @sigstore/oci saw the API and wrote no tag index; imagegate read the
    // referrers list.
    assert_eq!(report.signers[0].format, "sigstore-bundle-referrer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_signatures_made_with_openssl_admit_and_count_towards_a_threshold() {
    let registry = Registry::plain_basic(USER, PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let (legacy, bundle) = (KeyPair::generate(), KeyPair::generate());
    let legacy_file = write_key(dir.path(), "legacy", &legacy);
    let bundle_file = write_key(dir.path(), "bundle", &bundle);
    let repository = format!("{}/team/api", registry.host);
    let digest = registry.push_image("team/api", "1", "legacy").await;
    let payload = simple_signing_payload(&repository, &digest);
    let signature = openssl_sign(&legacy, &payload);
    // A second layer: a signature over a payload naming another image.
    let elsewhere = simple_signing_payload(&repository, &format!("sha256:{}", "ab".repeat(32)));
    let elsewhere_signature = openssl_sign(&legacy, &elsewhere);
    attach_legacy(
        &registry,
        "team/api",
        &digest,
        &[
            (elsewhere, json!({"dev.cosignproject.cosign/signature": STANDARD.encode(&elsewhere_signature)})),
            (payload, json!({"dev.cosignproject.cosign/signature": STANDARD.encode(&signature)})),
        ],
    )
    .await;
    let resolver = resolver(&registry.host, true);
    let image = format!("{repository}:1");

    let report = decide(
        &policy(&registry.host, &by_key("legacy", &legacy_file)),
        &resolver,
        &image,
    )
    .await;
    assert!(report.allowed, "{report:?}");
    assert_eq!(report.signers.len(), 1);
    assert_eq!(report.signers[0].format, "cosign-legacy-tag");

    // Two signers required: the legacy one alone is not enough ...
    let both = format!(
        "    signatures:\n      - name: two-person\n        threshold: 2\n        keys:\n          - name: legacy\n            file: {}\n          - name: bundle\n            file: {}\n",
        legacy_file.display(),
        bundle_file.display()
    );
    let two = policy(&registry.host, &both);
    let report = decide(&two, &resolver, &image).await;
    assert_denied(
        &report,
        &["1 of the 2 signatures needed by keys \"legacy\", \"bundle\""],
    );
    // ... and with a bundle by the second key (the npm signer), both count.
    sign_with_npm(
        &registry,
        &bundle,
        "team/api",
        &digest,
        &digest,
        COSIGN_SIGN,
        json!({}),
    );
    let fresh = resolver_fresh(&registry);
    let report = decide(&two, &fresh, &image).await;
    assert!(report.allowed, "{report:?}");
    let formats: Vec<_> = report.signers.iter().map(|s| s.format.as_str()).collect();
    assert_eq!(report.signers.len(), 2, "{report:?}");
    assert!(
        formats.contains(&"cosign-legacy-tag") && formats.contains(&"sigstore-bundle-tag-index")
    );
}

/// A resolver with an empty cache (what a lookup finds is cached for the
/// TTL, as it is in the server).
fn resolver_fresh(registry: &Registry) -> Resolver {
    resolver(&registry.host, true)
}

/// A legacy keyless layer: a certificate for `subject` from `fulcio`
/// (valid 10 minutes from `not_before`), its signature over `payload`, and
/// the entry `log` made of it at `logged_at`.
fn keyless_legacy_layer(
    fulcio: &Fulcio,
    log: &mut Log,
    subject: &str,
    not_before: time::OffsetDateTime,
    logged_at: i64,
    payload: &[u8],
) -> (Vec<u8>, Value) {
    let certificate: Signing = fulcio.certificate(OIDC, subject, not_before, 10);
    let signature = certificate.key.sign(payload);
    let body = Log::hashedrekord(payload, &signature, &certificate.pem);
    let logged = log.append(&body, logged_at);
    (
        payload.to_vec(),
        json!({
            "dev.cosignproject.cosign/signature": STANDARD.encode(&signature),
            "dev.sigstore.cosign/certificate": certificate.pem,
            "dev.sigstore.cosign/chain": "",
            "dev.sigstore.cosign/bundle": logged.legacy_annotation,
        }),
    )
}

/// A keyless bundle v0.3: a DSSE statement about `digest`, signed with a
/// certificate from `fulcio`, logged in `log` (SET, inclusion proof,
/// checkpoint).
fn keyless_bundle(
    fulcio: &Fulcio,
    log: &mut Log,
    digest: &str,
    now: time::OffsetDateTime,
) -> Vec<u8> {
    KeylessBundle {
        fulcio,
        oidc_issuer: OIDC,
        subject: SUBJECT,
        certificate: Issue::at(now - time::Duration::minutes(1)),
        digest,
        predicate_type: COSIGN_SIGN,
        log: LogTo::V1(log, now.unix_timestamp()),
        stamps: Vec::new(),
        stamp_other: false,
    }
    .make()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_signatures_verify_offline_against_the_trusted_root() {
    let registry = Registry::plain_basic(USER, PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let (fulcio, stranger) = (Fulcio::new("test fulcio"), Fulcio::new("another ca"));
    let (mut log, mut unlisted_log) = (Log::new(6), Log::new(2));
    let root_file = dir.path().join("trusted_root.json");
    std::fs::write(&root_file, trusted_root(&[&fulcio], &[&log])).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let repository = format!("{}/ci/app", registry.host);
    let image = |tag: &str| format!("{repository}:{tag}");

    // 1: legacy format, certificate + Rekor bundle annotation.
    let legacy = registry.push_image("ci/app", "legacy", "legacy").await;
    let layer = keyless_legacy_layer(
        &fulcio,
        &mut log,
        SUBJECT,
        now - time::Duration::minutes(1),
        now.unix_timestamp(),
        &simple_signing_payload(&repository, &legacy),
    );
    attach_legacy(&registry, "ci/app", &legacy, &[layer]).await;
    // 2: bundle v0.3 with the certificate, SET, inclusion proof, checkpoint.
    let bundled = registry.push_image("ci/app", "bundle", "bundle").await;
    let bundle_bytes = keyless_bundle(&fulcio, &mut log, &bundled, now);
    attach_bundle(&registry, "ci/app", &bundled, &bundle_bytes).await;
    // 3: a certificate that had expired when the log saw the signature.
    let expired = registry.push_image("ci/app", "expired", "expired").await;
    let layer = keyless_legacy_layer(
        &fulcio,
        &mut log,
        SUBJECT,
        now - time::Duration::hours(2),
        now.unix_timestamp(),
        &simple_signing_payload(&repository, &expired),
    );
    attach_legacy(&registry, "ci/app", &expired, &[layer]).await;
    // 4: a certificate from a CA the trusted root does not list.
    let foreign = registry.push_image("ci/app", "foreign", "foreign").await;
    let layer = keyless_legacy_layer(
        &stranger,
        &mut log,
        SUBJECT,
        now - time::Duration::minutes(1),
        now.unix_timestamp(),
        &simple_signing_payload(&repository, &foreign),
    );
    attach_legacy(&registry, "ci/app", &foreign, &[layer]).await;
    // 5: logged in a log the trusted root does not list.
    let unlogged = registry
        .push_image("ci/app", "unlisted-log", "unlisted-log")
        .await;
    let layer = keyless_legacy_layer(
        &fulcio,
        &mut unlisted_log,
        SUBJECT,
        now - time::Duration::minutes(1),
        now.unix_timestamp(),
        &simple_signing_payload(&repository, &unlogged),
    );
    attach_legacy(&registry, "ci/app", &unlogged, &[layer]).await;

    let resolver = resolver(&registry.host, true);
    let trusted = keyless_policy(
        &registry.host,
        &root_file,
        OIDC,
        &format!("subject: {SUBJECT}"),
    );
    for (tag, format) in [
        ("legacy", "cosign-legacy-tag"),
        ("bundle", "sigstore-bundle-tag-index"),
    ] {
        let report = decide(&trusted, &resolver, &image(tag)).await;
        assert!(report.allowed, "{tag}: {report:?}");
        assert_eq!(
            report.signers[0].identity,
            format!("{SUBJECT} (issuer {OIDC})")
        );
        assert_eq!(report.signers[0].format, format);
    }
    let report = decide(&trusted, &resolver, &image("bundle")).await;
    let theirs = keyless_verdict(&bundle_bytes, &root_file, &bundled);
    agree("keyless bundle", &report, &theirs, "sigstore-python");
    // Sigstore's public Fulcio issues from an intermediate, which the
    // trusted root lists before its root.
    let tiered = Fulcio::with_intermediate("tiered fulcio");
    let tiered_root = dir.path().join("tiered_root.json");
    std::fs::write(&tiered_root, trusted_root(&[&tiered], &[&log])).unwrap();
    let from_intermediate = registry
        .push_image("ci/app", "intermediate", "intermediate")
        .await;
    let layer = keyless_legacy_layer(
        &tiered,
        &mut log,
        SUBJECT,
        now - time::Duration::minutes(1),
        now.unix_timestamp(),
        &simple_signing_payload(&repository, &from_intermediate),
    );
    attach_legacy(&registry, "ci/app", &from_intermediate, &[layer]).await;
    let tiered_policy = keyless_policy(
        &registry.host,
        &tiered_root,
        OIDC,
        &format!("subject: {SUBJECT}"),
    );
    let report = decide(&tiered_policy, &resolver, &image("intermediate")).await;
    assert!(report.allowed, "{report:?}");
    // The first root does not cover it, nor does the tiered root cover the
    // first one's certificates.
    assert_denied(
        &decide(&trusted, &resolver, &image("intermediate")).await,
        &["does not chain"],
    );
    assert_denied(
        &decide(&tiered_policy, &resolver, &image("legacy")).await,
        &["does not chain"],
    );

    let pattern = keyless_policy(
        &registry.host,
        &root_file,
        OIDC,
        "subjectRegExp: '.*@imagegate\\.test'",
    );
    assert!(decide(&pattern, &resolver, &image("bundle")).await.allowed);

    let wrong_subject = keyless_policy(
        &registry.host,
        &root_file,
        OIDC,
        "subject: someone@else.test",
    );
    let report = decide(&wrong_subject, &resolver, &image("legacy")).await;
    assert_denied(
        &report,
        &[
            "no signature by someone@else.test",
            &format!("subject \"{SUBJECT}\" is not someone@else.test"),
        ],
    );
    let wrong_issuer = keyless_policy(
        &registry.host,
        &root_file,
        "https://accounts.example",
        &format!("subject: {SUBJECT}"),
    );
    let report = decide(&wrong_issuer, &resolver, &image("bundle")).await;
    assert_denied(
        &report,
        &[&format!(
            "issuer \"{OIDC}\" is not the trusted \"https://accounts.example\""
        )],
    );
    let report = decide(&trusted, &resolver, &image("expired")).await;
    assert_denied(
        &report,
        &["(the transparency log's time), outside its certificate's validity"],
    );
    let report = decide(&trusted, &resolver, &image("foreign")).await;
    assert_denied(
        &report,
        &[
            "does not chain to the trusted root at the time of signing (issued by a CA the trusted root does not list)",
        ],
    );
    let report = decide(&trusted, &resolver, &image("unlisted-log")).await;
    assert_denied(&report, &["which the trusted root does not list"]);

    // A certificate for TLS servers, not code signing, from the trusted CA.
    let server_cert = registry
        .push_image("ci/app", "server-auth", "server-auth")
        .await;
    let certificate = fulcio.certificate_for(
        OIDC,
        SUBJECT,
        now - time::Duration::minutes(1),
        10,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let payload = simple_signing_payload(&repository, &server_cert);
    let signature = certificate.key.sign(&payload);
    let logged = log.append(
        &Log::hashedrekord(&payload, &signature, &certificate.pem),
        now.unix_timestamp(),
    );
    attach_legacy(
        &registry,
        "ci/app",
        &server_cert,
        &[(
            payload,
            json!({
                "dev.cosignproject.cosign/signature": STANDARD.encode(&signature),
                "dev.sigstore.cosign/certificate": certificate.pem,
                "dev.sigstore.cosign/bundle": logged.legacy_annotation,
            }),
        )],
    )
    .await;
    let report = decide(&trusted, &resolver, &image("server-auth")).await;
    assert_denied(
        &report,
        &[
            "does not chain to the trusted root",
            "not issued for code signing",
        ],
    );

    // A bundle whose log entry was altered (the SET no longer matches).
    let tampered = registry.push_image("ci/app", "tampered", "tampered").await;
    let mut bundle: Value =
        serde_json::from_slice(&keyless_bundle(&fulcio, &mut log, &tampered, now)).unwrap();
    bundle["verificationMaterial"]["tlogEntries"][0]["integratedTime"] =
        json!((now.unix_timestamp() + 60).to_string());
    attach_bundle(
        &registry,
        "ci/app",
        &tampered,
        &serde_json::to_vec(&bundle).unwrap(),
    )
    .await;
    let report = decide(&trusted, &resolver, &image("tampered")).await;
    assert_denied(&report, &["signed entry timestamp does not verify"]);
    let theirs = keyless_verdict(&serde_json::to_vec(&bundle).unwrap(), &root_file, &tampered);
    agree("tampered bundle", &report, &theirs, "sigstore-python");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestations_must_be_signed_and_meet_their_conditions() {
    let registry = Registry::plain_basic(USER, PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let scanner = KeyPair::generate();
    let scanner_file = write_key(dir.path(), "scanner", &scanner);
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let old = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() - Duration::from_secs(3 * 86_400),
    )
    .to_string();
    let scan = |finished: &str, severities: &[&str]| {
        json!({
            "scanner": {"uri": "pkg:github/aquasecurity/trivy", "result": {
                "vulnerabilities": severities.iter().map(|s| json!({"id": "CVE-1", "severity": s})).collect::<Vec<_>>()
            }},
            "metadata": {"scanStartedOn": finished, "scanFinishedOn": finished}
        })
    };
    let mut digests = Vec::new();
    for (tag, predicate) in [
        ("clean", scan(&now, &["LOW", "MEDIUM"])),
        ("stale", scan(&old, &["LOW"])),
        ("critical", scan(&now, &["LOW", "CRITICAL"])),
    ] {
        let digest = registry.push_image("shop/scan", tag, tag).await;
        sign_with_npm(
            &registry,
            &scanner,
            "shop/scan",
            &digest,
            &digest,
            VULN,
            predicate,
        );
        digests.push(digest);
    }
    let requirements = format!(
        "    attestations:\n      - name: scanned\n        predicateType: {VULN}\n        keys:\n          - name: scanner\n            file: {}\n        conditions:\n          - path: metadata.scanFinishedOn\n            maxAge: 24h\n          - path: scanner.result.vulnerabilities[].severity\n            denyValues: [CRITICAL, HIGH]\n",
        scanner_file.display()
    );
    let with_attestation = policy(&registry.host, &requirements);
    let resolver = resolver(&registry.host, true);
    let image = |tag: &str| format!("{}/shop/scan:{tag}", registry.host);
    let report = decide(&with_attestation, &resolver, &image("clean")).await;
    assert!(report.allowed, "{report:?}");
    assert_eq!(report.signers[0].requirement, "scanned");
    let report = decide(&with_attestation, &resolver, &image("stale")).await;
    assert_denied(
        &report,
        &[
            &format!("no attestation of type {VULN}"),
            "its metadata.scanFinishedOn is 3days",
        ],
    );
    let report = decide(&with_attestation, &resolver, &image("critical")).await;
    assert_denied(&report, &["includes \"CRITICAL\", which the policy denies"]);
    // An attestation is not an image signature.
    let report = decide(
        &policy(&registry.host, &by_key("scanner", &scanner_file)),
        &resolver,
        &image("clean"),
    )
    .await;
    assert_denied(&report, &["the image has no signature"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_artifacts_are_refused_within_bounds() {
    let registry = Registry::plain_basic(USER, PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate();
    let key_file = write_key(dir.path(), "release", &key);
    let trusts = policy(&registry.host, &by_key("release", &key_file));
    let resolver = resolver(&registry.host, true);
    let image = |tag: &str| format!("{}/bad/app:{tag}", registry.host);

    // A truncated bundle.
    let truncated = registry
        .push_image("bad/app", "truncated", "truncated")
        .await;
    let statement = serde_json::to_vec(&json!({"_type": "https://in-toto.io/Statement/v1", "subject": [{"digest": {"sha256": truncated.trim_start_matches("sha256:")}}], "predicateType": COSIGN_SIGN, "predicate": {}})).unwrap();
    let signature = key.sign(&imagegate_webhook::signature::formats::pae(
        "application/vnd.in-toto+json",
        &statement,
    ));
    let whole = serde_json::to_vec(&json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "k"}},
        "dsseEnvelope": {"payload": STANDARD.encode(&statement), "payloadType": "application/vnd.in-toto+json", "signatures": [{"sig": STANDARD.encode(&signature)}]}
    }))
    .unwrap();
    attach_bundle(&registry, "bad/app", &truncated, &whole[..whole.len() / 2]).await;
    let report = decide(&trusts, &resolver, &image("truncated")).await;
    assert_denied(&report, &["1 unreadable", "not a Sigstore bundle"]);

    // The same bundle whole (about its own image) is admitted: the
    // truncation is what denied.
    let whole_image = registry.push_image("bad/app", "whole", "whole").await;
    let statement2 = String::from_utf8(statement.clone()).unwrap().replace(
        truncated.trim_start_matches("sha256:"),
        whole_image.trim_start_matches("sha256:"),
    );
    let signature2 = key.sign(&imagegate_webhook::signature::formats::pae(
        "application/vnd.in-toto+json",
        statement2.as_bytes(),
    ));
    let bundle2 = serde_json::to_vec(&json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "k"}},
        "dsseEnvelope": {"payload": STANDARD.encode(&statement2), "payloadType": "application/vnd.in-toto+json", "signatures": [{"sig": STANDARD.encode(&signature2)}]}
    }))
    .unwrap();
    attach_bundle(&registry, "bad/app", &whole_image, &bundle2).await;
    assert!(decide(&trusts, &resolver, &image("whole")).await.allowed);

    // A bundle layer holding something else (a wrong media type).
    let wrong_type = registry
        .push_image("bad/app", "wrong-type", "wrong-type")
        .await;
    attach_bundle(
        &registry,
        "bad/app",
        &wrong_type,
        &simple_signing_payload("x", &wrong_type),
    )
    .await;
    let report = decide(&trusts, &resolver, &image("wrong-type")).await;
    assert_denied(&report, &["unreadable", "not a Sigstore bundle"]);

    // 1,000 signatures: a tag index listing 1,000 referrers and a legacy
    // manifest with 1,000 layers. Read up to the bounds, in bounded time.
    let many = registry.push_image("bad/app", "many", "many").await;
    let entry = attach_bundle(&registry, "bad/app", &many, &bundle2).await;
    put_tag_index(&registry, "bad/app", &many, vec![entry; 1000]).await;
    let payload = simple_signing_payload("x", &many);
    let layers: Vec<_> = (0..1000)
        .map(|i| (payload.clone(), json!({"dev.cosignproject.cosign/signature": STANDARD.encode(format!("not a signature {i}"))})))
        .collect();
    attach_legacy(&registry, "bad/app", &many, &layers[..1]).await;
    // The legacy manifest with 1,000 layers, pushed once (one blob).
    let empty = registry.push_blob("bad/app", b"{}").await;
    let blob = registry.push_blob("bad/app", &payload).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": empty, "size": 2},
        "layers": layers.iter().map(|(p, a)| json!({"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": blob, "size": p.len(), "annotations": a})).collect::<Vec<_>>()
    }))
    .unwrap();
    registry
        .put_manifest(
            "bad/app",
            &format!("{}.sig", many.replace(':', "-")),
            &manifest,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .await;
    let started = Instant::now();
    let report = decide(&trusts, &resolver, &image("many")).await;
    let took = started.elapsed();
    // The bundle (signed for another image) is read 32 times, the legacy
    // layers 32 times; none is by the trusted key for this digest.
    assert_denied(&report, &["more are attached than imagegate reads"]);
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // A referrers index that points back at the image itself.
    let looped = registry.push_image("bad/app", "loop", "loop").await;
    put_tag_index(
        &registry,
        "bad/app",
        &looped,
        vec![json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": looped, "size": 1, "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json"})],
    )
    .await;
    let report = decide(&trusts, &resolver, &image("loop")).await;
    assert_denied(&report, &["says it is a bundle but has no bundle layer"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_manifest_of_10_mb_is_not_read_past_its_bound() {
    let huge = imagegate_testkit::hostile::HugeRegistry::start(10 * 1024 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = write_key(dir.path(), "release", &KeyPair::generate());
    // The digest is taken as written (the stand-in serves nothing real);
    // the signatures are still looked up.
    let yaml = format!(
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nresolution:\n  verifyDigest: false\nrules:\n  - name: prod\n    registries: [\"{}\"]\n{}",
        huge.host,
        by_key("release", &key_file)
    );
    let policy = Policy::from_yaml(&yaml).unwrap();
    let resolver = resolver(&huge.host, false);
    let image = format!("{}/app@sha256:{}", huge.host, "cd".repeat(32));
    let report = decide(&policy, &resolver, &image).await;
    assert_denied(
        &report,
        &[
            "unreadable",
            "larger than the 4194304 bytes imagegate reads",
        ],
    );
    // Two bodies of 10 MB were offered (referrers, `.sig` tag): refused on
    // their declared length, hung up before either was sent whole (what
    // was sent sits in socket buffers, about 8 MB here).
    assert!(
        huge.bytes_sent() < 2 * 10 * 1024 * 1024,
        "imagegate was sent {} bytes",
        huge.bytes_sent()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_fails_the_lookup_decides_by_on_failure() {
    let registry = Registry::plain_basic(USER, PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let key_file = write_key(dir.path(), "release", &KeyPair::generate());
    registry.push_image("shop/web", "1", "down").await;
    let image = format!("{}/shop/web:1", registry.host);
    let (resolver, metrics) = resolver_with_metrics(&registry.host, true);
    // Resolved (and cached) while the registry answered ...
    let plain = policy(&registry.host, "");
    assert!(decide(&plain, &resolver, &image).await.allowed);
    drop(registry);
    // ... then the signature lookup finds it down.
    let deny = policy(&registry_host(&image), &by_key("release", &key_file));
    let report = decide(&deny, &resolver, &image).await;
    assert_denied(
        &report,
        &[
            "could not look up its signatures",
            "imagegate admits it once the registry answers",
        ],
    );
    let allow = policy(
        &registry_host(&image),
        &format!("{}        onFailure: allow\n", by_key("release", &key_file)),
    );
    let report = decide(&allow, &resolver, &image).await;
    assert!(report.allowed, "{report:?}");
    // A requirement in audit mode does not deny on a failed lookup either:
    // admitted, with the reason as a warning.
    let audit = policy(
        &registry_host(&image),
        &format!("{}        mode: audit\n", by_key("release", &key_file)),
    );
    let report = decide(&audit, &resolver, &image).await;
    assert!(report.allowed, "{report:?}");
    assert_eq!(report.verdict, "audit-denied");
    assert!(
        report.reason.contains("could not look up its signatures"),
        "{report:?}"
    );
    // One lookup went to the registry and failed; the two decisions after it
    // took the failure from the cache (negative TTL), not from the registry.
    assert_eq!(
        metric(
            &metrics,
            "imagegate_webhook_signature_lookups_total{outcome=\"failed\"}"
        ),
        1.0,
        "{}",
        metrics.render()
    );
    assert_eq!(
        metric(&metrics, "imagegate_webhook_signature_cache_hits_total"),
        2.0
    );
}

fn registry_host(image: &str) -> String {
    image.split('/').next().unwrap().to_string()
}

#[test]
fn invalid_requirements_are_refused_naming_the_field() {
    let problems = |requirements: &str| {
        Policy::from_yaml(&format!(
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: prod\n    registries: [r.test]\n{requirements}"
        ))
        .unwrap_err()
        .to_string()
    };
    let e = problems("    signatures:\n      - name: s\n");
    assert!(e.contains("rules[0].signatures[0]: trusts no one"), "{e}");
    let e = problems(
        "    signatures:\n      - name: s\n        keys:\n          - name: k\n            pem: nope\n",
    );
    assert!(
        e.contains("rules[0].signatures[0].keys[0] (\"k\"): not a PEM public key"),
        "{e}"
    );
    let e = problems(
        "    signatures:\n      - name: s\n        keyless:\n          issuer: https://i\n          subject: a@b\n",
    );
    assert!(
        e.contains("rules[0].signatures[0].trustedRoot: keyless signatures need a trusted root"),
        "{e}"
    );
    let e = problems(
        "    signatures:\n      - name: s\n        keyless:\n          issuer: https://i\n          subjectRegExp: '('\n        trustedRoot: /nonexistent\n",
    );
    assert!(
        e.contains("rules[0].signatures[0].keyless.subjectRegExp"),
        "{e}"
    );
    assert!(
        e.contains("rules[0].signatures[0].trustedRoot: cannot read /nonexistent"),
        "{e}"
    );
    let e = problems(
        "    attestations:\n      - name: a\n        keys:\n          - name: k\n            pem: x\n",
    );
    assert!(e.contains("rules[0].attestations[0].predicateType"), "{e}");
    let e = problems("    signatures:\n      - name: s\n        rekor: sometimes\n");
    assert!(e.contains("rules[0].signatures[0].rekor"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_file_reloads_the_policy() {
    use imagegate_webhook::policy_store::{PolicyMetrics, PolicyStore};
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (KeyPair::generate(), KeyPair::generate());
    let key_file = write_key(dir.path(), "release", &old);
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(
        &policy_file,
        format!(
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: prod\n    registries: [r.test]\n{}",
            by_key("release", &key_file)
        ),
    )
    .unwrap();
    let mut metrics = Metrics::new();
    let policy_metrics = PolicyMetrics::register(metrics.registry());
    let (store, initial) = PolicyStore::load(policy_file, Vec::new(), &policy_metrics).await;
    let fingerprint_in_force = || {
        store.current().unwrap().rules[0].requirements[0].keys[0]
            .fingerprint
            .clone()
    };
    assert_eq!(fingerprint_in_force(), fingerprint(&old));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(store.clone().watch(
        initial,
        Duration::from_millis(20),
        policy_metrics,
        stopped,
    ));
    // Rotated as a Secret volume does: the new file renamed over the old.
    let tmp = dir.path().join("release.pub.tmp");
    std::fs::write(&tmp, &new.public_pem).unwrap();
    std::fs::rename(&tmp, &key_file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while fingerprint_in_force() != fingerprint(&new) {
        assert!(
            Instant::now() < deadline,
            "the rotated key was not loaded: {}",
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A key file replaced by garbage is refused; the policy in force stays.
    std::fs::write(&tmp, "not a key").unwrap();
    std::fs::rename(&tmp, &key_file).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fingerprint_in_force(), fingerprint(&new));
    assert!(
        metrics
            .render()
            .contains("imagegate_webhook_policy_reloads_total{result=\"failure\"} 1"),
        "{}",
        metrics.render()
    );
    stop.send(true).unwrap();
    watcher.await.unwrap();
}
