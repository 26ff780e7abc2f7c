//! Independent verifiers, whose verdict the signature tests compare
//! imagegate's with, on the same bundle, trusted root, identity (or key)
//! and digest:
//!
//! - sigstore-python 4.5 (PyPI `sigstore`, installed by `cargo xtask setup`
//!   into `.tools/sigstore-python`): keyless bundles, offline;
//! - @sigstore/verify 3.1 (npm, beside the npm signer in
//!   `.tools/npm-sigstore`): bundles signed with keys, which sigstore-python
//!   does not verify.
//!
//! Also Sigstore's production and staging trusted roots, as sigstore-python
//! ships them in its package data.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::json;

/// sigstore-python's venv.
pub fn sigstore_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".tools/sigstore-python");
    assert!(
        venv.join("bin/sigstore").exists(),
        "{} is missing: run `cargo xtask setup` (sigstore-python from PyPI)",
        venv.display()
    );
    venv
}

/// A trusted root sigstore-python ships: `prod` or `staging`.
pub fn shipped_trusted_root(instance: &str) -> PathBuf {
    let host = match instance {
        "prod" => "tuf-repo-cdn.sigstore.dev",
        "staging" => "tuf-repo-cdn.sigstage.dev",
        other => panic!("no Sigstore instance {other:?}"),
    };
    let out = Command::new(sigstore_python().join("bin/python"))
        .args([
            "-c",
            "import os, sigstore; print(os.path.dirname(sigstore.__file__))",
        ])
        .output()
        .expect("sigstore-python's python");
    let package = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let path = package
        .join("_store")
        .join(format!("https%3A%2F%2F{host}"))
        .join("trusted_root.json");
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// What an independent verifier said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub verified: bool,
    /// Its last words (why it refused).
    pub said: String,
}

/// What is verified against what.
pub struct Case<'a> {
    pub bundle: &'a Path,
    pub trusted_root: &'a Path,
    /// A file (the signed blob, or the file a DSSE statement names), or
    /// `sha256:<hex>` (a DSSE statement's subject).
    pub input: &'a str,
}

/// sigstore-python's verdict on a keyless bundle, offline.
pub fn sigstore_python_verify(case: &Case<'_>, identity: &str, issuer: &str) -> Verdict {
    let dir = tempfile::tempdir().unwrap();
    let trusted_root: serde_json::Value =
        serde_json::from_slice(&std::fs::read(case.trusted_root).unwrap()).unwrap();
    // A client trust configuration: the root, and a signing configuration
    // that is never used (verification signs nothing).
    let config = json!({
        "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
        "trustedRoot": trusted_root,
        "signingConfig": {
            "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
            "caUrls": [{"url": "https://fulcio.invalid", "majorApiVersion": 1, "operator": "",
                        "validFor": {"start": "1970-01-01T00:00:00Z"}}],
            "oidcUrls": [],
            "rekorTlogUrls": [{"url": "https://rekor.invalid", "majorApiVersion": 1, "operator": "",
                               "validFor": {"start": "1970-01-01T00:00:00Z"}}],
            "tsaUrls": [],
            "rekorTlogConfig": {"selector": "ANY"},
            "tsaConfig": {"selector": "ANY"}
        }
    });
    let config_path = dir.path().join("trust_config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let out = Command::new(sigstore_python().join("bin/sigstore"))
        .arg("--trust-config")
        .arg(&config_path)
        .args(["verify", "identity", "--offline", "--bundle"])
        .arg(case.bundle)
        .args(["--cert-identity", identity, "--cert-oidc-issuer", issuer])
        .arg(case.input)
        .env("HOME", dir.path())
        .output()
        .expect("run sigstore-python");
    verdict(out)
}

/// Whom @sigstore/verify trusts.
pub enum Signer<'a> {
    /// A key (PEM).
    Key(&'a str),
    /// A keyless identity: the certificate's subject and OIDC issuer.
    Identity { subject: &'a str, issuer: &'a str },
}

/// How many of each @sigstore/verify requires: log entries, verified
/// timestamps (a SET's time counts), SCTs.
pub struct Thresholds {
    pub tlog: usize,
    pub timestamps: usize,
    pub sct: usize,
}

/// @sigstore/verify's verdict.
pub fn sigstore_js_verify(case: &Case<'_>, signer: Signer<'_>, thresholds: Thresholds) -> Verdict {
    let mut options = json!({
        "bundle": case.bundle,
        "trustedRoot": case.trusted_root,
        "tlogThreshold": thresholds.tlog,
        "timestampThreshold": thresholds.timestamps,
        "ctlogThreshold": thresholds.sct,
    });
    match signer {
        Signer::Key(pem) => options["keyPem"] = json!(pem),
        Signer::Identity { subject, issuer } => {
            options["identity"] = json!(subject);
            options["issuer"] = json!(issuer);
        }
    }
    if case.input.starts_with("sha256:") {
        options["digest"] = json!(case.input);
    } else {
        options["artifact"] = json!(case.input);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("sigstore/verify.js");
    let out = Command::new("node")
        .arg(script)
        .arg(options.to_string())
        .env("NODE_PATH", crate::sigstore::npm_modules())
        .output()
        .expect("node (the machine's Node.js)");
    verdict(out)
}

fn verdict(out: std::process::Output) -> Verdict {
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // Everything it said, on one line, but the hint to run it verbosely
    // (sigstore-python wraps its messages over several lines).
    let said = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("--verbose") && !l.contains("detailed error"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(" ");
    Verdict {
        verified: out.status.success(),
        said,
    }
}
