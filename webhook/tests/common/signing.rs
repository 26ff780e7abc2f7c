//! Helpers shared by the signature tests: a registry-backed resolver, a
//! one-rule policy, the whole admission pipeline for one image.

use std::{path::Path, time::Duration};

use imagegate_testkit::independent::{self, Case, Signer, Thresholds, Verdict};
use imagegate_webhook::{
    check::{self, ImageReport},
    policy::Policy,
    resolve::{Resolver, Settings},
    server::metrics::Metrics,
};

pub const USER: &str = "signer";
pub const PASSWORD: &str = "s3cret";
pub const COSIGN_SIGN: &str = "https://sigstore.dev/cosign/sign/v1";
pub const VULN: &str = "https://cosign.sigstore.dev/attestation/vuln/v1";
pub const OIDC: &str = "https://issuer.imagegate.test";
pub const SUBJECT: &str = "release@imagegate.test";

pub fn resolver(host: &str, credentials: bool) -> Resolver {
    resolver_with_metrics(host, credentials).0
}

pub fn resolver_with_metrics(host: &str, with_credentials: bool) -> (Resolver, Metrics) {
    let mut settings = Settings::default();
    settings.plain_http.push(host.to_string());
    settings.timeout = Duration::from_secs(5);
    if with_credentials {
        settings.credentials = super::credentials(host, USER, PASSWORD);
    }
    super::resolver(settings)
}

/// A policy with one rule for `host` and the given `signatures` and
/// `attestations` (YAML lists, already indented for the rule).
pub fn policy(host: &str, requirements: &str) -> Policy {
    let yaml = format!(
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: prod\n    registries: [\"{host}\"]\n{requirements}"
    );
    Policy::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

pub async fn decide(policy: &Policy, resolver: &Resolver, image: &str) -> ImageReport {
    let mut reports = check::images(policy, Some(resolver), "shop", &[image.to_string()]).await;
    reports.pop().unwrap()
}

pub fn assert_denied(report: &ImageReport, needles: &[&str]) {
    assert!(!report.allowed, "expected a denial: {report:?}");
    assert!(report.signers.is_empty(), "{report:?}");
    for needle in needles {
        assert!(
            report.reason.contains(needle),
            "{needle:?} not in: {}",
            report.reason
        );
    }
}

/// A policy trusting one keyless identity under `root`; `subject` is the
/// YAML line naming it (`subject: x` or `subjectRegExp: ...`), `extra` more
/// lines of the requirement (each indented by 8).
pub fn keyless_policy_with(
    host: &str,
    root: &Path,
    issuer: &str,
    subject: &str,
    extra: &str,
) -> Policy {
    policy(
        host,
        &format!(
            "    signatures:\n      - name: ci\n        keyless:\n          issuer: {issuer}\n          {subject}\n        trustedRoot: {}\n{extra}",
            root.display()
        ),
    )
}

pub fn keyless_policy(host: &str, root: &Path, issuer: &str, subject: &str) -> Policy {
    policy(
        host,
        &format!(
            "    signatures:\n      - name: ci\n        keyless:\n          issuer: {issuer}\n          {subject}\n        trustedRoot: {}\n",
            root.display()
        ),
    )
}

/// imagegate's decision and an independent verifier's verdict agree.
pub fn agree(case: &str, ours: &ImageReport, theirs: &Verdict, verifier: &str) {
    assert_eq!(
        ours.allowed,
        theirs.verified,
        "{case}: imagegate {} ({}), {verifier} {} ({})",
        if ours.allowed { "admits" } else { "denies" },
        ours.reason,
        if theirs.verified {
            "verifies"
        } else {
            "refuses"
        },
        theirs.said
    );
}

/// @sigstore/verify's verdict on `bundle` (JSON) signed with `key_pem`,
/// for `digest`: no log, no timestamp (the npm signer's bundles carry
/// neither), an empty trusted root.
pub fn key_verdict(bundle: &serde_json::Value, key_pem: &str, digest: &str) -> Verdict {
    let dir = tempfile::tempdir().unwrap();
    let bundle_file = dir.path().join("bundle.json");
    std::fs::write(&bundle_file, bundle.to_string()).unwrap();
    let root = dir.path().join("trusted_root.json");
    std::fs::write(
        &root,
        r#"{"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [], "certificateAuthorities": [], "ctlogs": [], "timestampAuthorities": []}"#,
    )
    .unwrap();
    independent::sigstore_js_verify(
        &Case {
            bundle: &bundle_file,
            trusted_root: &root,
            input: digest,
        },
        Signer::Key(key_pem),
        Thresholds {
            tlog: 0,
            timestamps: 0,
            sct: 0,
        },
    )
}

/// sigstore-python's verdict on keyless `bundle` (bytes) for `digest`
/// under `root`, for the test identity.
pub fn keyless_verdict(bundle: &[u8], root: &Path, digest: &str) -> Verdict {
    let dir = tempfile::tempdir().unwrap();
    let bundle_file = dir.path().join("bundle.json");
    std::fs::write(&bundle_file, bundle).unwrap();
    independent::sigstore_python_verify(
        &Case {
            bundle: &bundle_file,
            trusted_root: root,
            input: digest,
        },
        SUBJECT,
        OIDC,
    )
}
