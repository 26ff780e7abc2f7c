//! A signature or attestation requirement of a rule, compiled from the
//! policy file: whom it trusts (keys the policy names, or certificate
//! identities under the policy's trusted root), how the transparency log
//! is used, how many signers it takes, and for an attestation, its
//! predicate type and conditions.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use imagegate_proto::digest::Digest;
use quick_cache::sync::Cache;

use super::{
    key::PublicKey,
    model::{Found, Signer},
    trust_root::TrustedRoot,
    verify,
};
use crate::modes::{Fallback, Mode};

#[derive(Debug)]
pub struct Requirement {
    pub name: String,
    pub what: What,
    pub keys: Vec<PublicKey>,
    pub keyless: Option<Keyless>,
    pub root: Option<Arc<TrustedRoot>>,
    pub rekor: Rekor,
    /// Keyless: verified times of signing needed (SETs, RFC 3161
    /// timestamps); 0 checks the certificate at the present time when there
    /// is none.
    pub verified_times: usize,
    /// Keyless: whether the certificate's SCT must verify.
    pub sct: Sct,
    /// Distinct trusted signers needed.
    pub threshold: usize,
    /// Overrides the rule's mode for this requirement.
    pub mode: Option<Mode>,
    /// What a failed lookup (registry error, timeout) decides.
    pub on_failure: Fallback,
    /// The files it was read from (key files, the trusted root): a change
    /// to one reloads the policy.
    pub files: Vec<std::path::PathBuf>,
    /// Verdicts by (digest, lookup): a lookup's result is checked once,
    /// not on every review while it is cached.
    pub verdicts: Cache<(Digest, u64), Verdict>,
}

/// Most verdicts a requirement remembers.
pub const VERDICTS_REMEMBERED: usize = 16 * 1024;

/// The signers that satisfy a requirement, or why none do.
pub type Verdict = Result<Vec<Signer>, String>;

impl Requirement {
    /// A requirement with the policy's defaults for whom it trusts: what a
    /// policy entry naming only `keys`, `keyless` and `trustedRoot`
    /// compiles to (a log entry required for keyless, none for keys; one
    /// verified time of signing and an SCT for keyless; one signer).
    pub fn new(
        name: &str,
        what: What,
        keys: Vec<PublicKey>,
        keyless: Option<Keyless>,
        root: Option<Arc<TrustedRoot>>,
    ) -> Self {
        let rekor = if keyless.is_some() {
            Rekor::Required
        } else {
            Rekor::Off
        };
        Self {
            name: name.to_string(),
            what,
            keys,
            keyless,
            root,
            rekor,
            verified_times: 1,
            sct: Sct::Required,
            threshold: 1,
            mode: None,
            on_failure: Fallback::Deny,
            files: Vec::new(),
            verdicts: Cache::new(VERDICTS_REMEMBERED),
        }
    }

    /// [`verify::evaluate`], remembered per lookup.
    pub fn evaluate_cached(&self, digest: &Digest, found: &Found, now: SystemTime) -> Verdict {
        let key = (digest.clone(), found.id);
        if let Some(verdict) = self.verdicts.get(&key) {
            return verdict;
        }
        let verdict = verify::evaluate(self, digest, found, now);
        self.verdicts.insert(key, verdict.clone());
        verdict
    }
}

#[derive(Debug)]
pub enum What {
    Signature,
    Attestation {
        predicate_type: String,
        conditions: Vec<Condition>,
    },
}

/// Whom a keyless signature must come from.
#[derive(Debug)]
pub struct Keyless {
    pub issuer: String,
    pub subject: Subject,
}

#[derive(Debug)]
pub enum Subject {
    Exact(String),
    Pattern(regex::Regex),
}

impl Subject {
    pub fn matches(&self, subject: &str) -> bool {
        match self {
            Self::Exact(s) => s == subject,
            Self::Pattern(p) => p.is_match(subject),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(s) => write!(f, "{s}"),
            Self::Pattern(p) => write!(f, "/{}/", p.as_str()),
        }
    }
}

/// How the transparency log (Rekor) is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rekor {
    /// A verified log entry is needed (its time is the time of signing).
    Required,
    /// A log entry is verified when there is one.
    Optional,
    /// Log entries are not read; a certificate must be valid now.
    Off,
}

/// Certificate transparency of keyless signing certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sct {
    /// An SCT from a CT log of the trusted root must verify (cosign's
    /// default).
    Required,
    /// SCTs are not read (a private CA that does not log).
    Off,
}

/// A condition on an attestation's predicate.
#[derive(Debug)]
pub struct Condition {
    /// The dotted path it reads (`metadata.scanFinishedOn`); `[]` after a
    /// name reads every element of that array.
    pub path: String,
    pub test: Test,
}

#[derive(Debug)]
pub enum Test {
    /// The value is an RFC 3339 time no older than this.
    MaxAge(Duration),
    /// No value (case-insensitive) is one of these.
    DenyValues(Vec<String>),
}

impl Requirement {
    /// `key "release-2026"`, `keys "a", "b"`, or `subject (issuer …)`.
    pub fn trusted(&self) -> String {
        let mut parts = Vec::new();
        match self.keys.as_slice() {
            [] => {}
            [one] => parts.push(format!("key {:?}", one.name)),
            many => parts.push(format!(
                "keys {}",
                many.iter()
                    .map(|k| format!("{:?}", k.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
        if let Some(k) = &self.keyless {
            parts.push(format!("{} (issuer {})", k.subject, k.issuer));
        }
        parts.join(" or ")
    }
}
