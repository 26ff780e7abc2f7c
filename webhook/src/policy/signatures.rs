//! What the policy makes of signatures: compiling a rule's `signatures`
//! and `attestations` into requirements, which images are checked, and what
//! each check's outcome does to a decision. The lookup and the checks
//! themselves are `signature`'s.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use super::{ImageDecision, ImageVerdict, Mode, Policy, file};
use crate::signature::{
    Ask, Outcome, Requirement,
    key::PublicKey,
    requirement::{self as req, Condition, Keyless, Rekor, Sct, Subject, Test, What},
    trust_root::TrustedRoot,
};

/// Compiles `files` (a rule's `signatures` or `attestations`, at `at`),
/// pushing each problem with its field into `problems`.
pub fn compile(
    at: &str,
    files: Vec<file::SignatureFile>,
    attestation: bool,
    problems: &mut Vec<String>,
    read: &mut dyn FnMut(&Path) -> Result<Vec<u8>, String>,
) -> Vec<Arc<Requirement>> {
    let mut out = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        let at = format!("{at}[{i}]");
        let before = problems.len();
        if f.name.trim().is_empty() {
            problems.push(format!(
                "{at}.name: a requirement needs a name (denials and approvals name it)"
            ));
        }
        let mut keys = Vec::new();
        for (j, k) in f.keys.iter().enumerate() {
            let pem = match (&k.pem, &k.file) {
                (Some(pem), None) => Ok(pem.clone()),
                (None, Some(path)) => read(path)
                    .and_then(|b| String::from_utf8(b).map_err(|_| "not UTF-8 text".to_string())),
                _ => Err("give the key as `pem` or as `file`, one of them".to_string()),
            };
            match pem.and_then(|pem| PublicKey::from_pem(&k.name, &pem).map_err(|e| e.to_string()))
            {
                Ok(key) => keys.push(key),
                Err(e) => problems.push(format!("{at}.keys[{j}] ({:?}): {e}", k.name)),
            }
        }
        let keyless = match f.keyless {
            None => None,
            Some(k) => {
                let subject = match (k.subject, k.subject_reg_exp) {
                    (Some(s), None) => Some(Subject::Exact(s)),
                    (None, Some(p)) => match regex::Regex::new(&format!("^(?:{p})$")) {
                        Ok(r) => Some(Subject::Pattern(r)),
                        Err(e) => {
                            problems.push(format!("{at}.keyless.subjectRegExp: {e}"));
                            None
                        }
                    },
                    _ => {
                        problems.push(format!(
                            "{at}.keyless: name the certificate's subject as `subject` or `subjectRegExp`, one of them"
                        ));
                        None
                    }
                };
                if k.issuer.trim().is_empty() {
                    problems.push(format!("{at}.keyless.issuer: the OIDC issuer is required"));
                }
                subject.map(|subject| Keyless {
                    issuer: k.issuer,
                    subject,
                })
            }
        };
        let root = f.trusted_root.as_ref().and_then(|path| {
            read(path)
                .and_then(|bytes| {
                    let text =
                        String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
                    TrustedRoot::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
                })
                .map(Arc::new)
                .map_err(|e| problems.push(format!("{at}.trustedRoot: {e}")))
                .ok()
        });
        if keys.is_empty() && keyless.is_none() && problems.len() == before {
            problems.push(format!(
                "{at}: trusts no one; name `keys` or a `keyless` identity"
            ));
        }
        let rekor = f.rekor.unwrap_or(if keyless.is_some() {
            Rekor::Required
        } else {
            Rekor::Off
        });
        if keyless.is_some() && f.trusted_root.is_none() {
            problems.push(format!(
                "{at}.trustedRoot: keyless signatures need a trusted root (the certificate authorities and logs, offline)"
            ));
        }
        if rekor != Rekor::Off && f.trusted_root.is_none() && problems.len() == before {
            problems.push(format!(
                "{at}.rekor: verifying log entries needs a `trustedRoot` with the log's key; set `rekor: off` or name one"
            ));
        }
        if f.threshold == 0 {
            problems.push(format!("{at}.threshold: at least 1"));
        }
        if keyless.is_none() && (f.verified_times.is_some() || f.sct.is_some()) {
            problems.push(format!(
                "{at}: `verifiedTimes` and `sct` are about keyless certificates; this requirement \
                 trusts keys only"
            ));
        }
        let verified_times = f.verified_times.unwrap_or(1);
        if verified_times > crate::signature::timestamp::MAX_TIMESTAMPS + 1 {
            problems.push(format!(
                "{at}.verifiedTimes: at most {} (one log entry and the timestamps imagegate reads)",
                crate::signature::timestamp::MAX_TIMESTAMPS + 1
            ));
        }
        let what = match (attestation, f.predicate_type) {
            (false, None) if f.conditions.is_empty() => What::Signature,
            (false, _) => {
                problems.push(format!(
                    "{at}: `predicateType` and `conditions` belong under `attestations`"
                ));
                What::Signature
            }
            (true, None) => {
                problems.push(format!(
                    "{at}.predicateType: an attestation names its in-toto predicate type"
                ));
                What::Signature
            }
            (true, Some(predicate_type)) => What::Attestation {
                predicate_type,
                conditions: conditions(&at, f.conditions, problems),
            },
        };
        if problems.len() == before {
            out.push(Arc::new(Requirement {
                name: f.name,
                what,
                keys,
                keyless,
                root,
                rekor,
                verified_times,
                sct: f.sct.unwrap_or(Sct::Required),
                threshold: f.threshold,
                mode: f.mode,
                on_failure: f.on_failure,
                files: f
                    .keys
                    .iter()
                    .filter_map(|k| k.file.clone())
                    .chain(f.trusted_root.clone())
                    .collect(),
                verdicts: quick_cache::sync::Cache::new(req::VERDICTS_REMEMBERED),
            }));
        }
    }
    out
}

fn conditions(
    at: &str,
    files: Vec<file::ConditionFile>,
    problems: &mut Vec<String>,
) -> Vec<Condition> {
    let mut out = Vec::new();
    for (i, c) in files.into_iter().enumerate() {
        let at = format!("{at}.conditions[{i}]");
        if c.path.trim().is_empty() {
            problems.push(format!("{at}.path: which field of the predicate"));
        }
        match (c.max_age, c.deny_values.is_empty()) {
            (Some(max), true) => out.push(Condition {
                path: c.path,
                test: Test::MaxAge(max),
            }),
            (None, false) => out.push(Condition {
                path: c.path,
                test: Test::DenyValues(c.deny_values),
            }),
            _ => problems.push(format!("{at}: give one test, `maxAge` or `denyValues`")),
        }
    }
    out
}

impl Policy {
    /// What to check for `decision`'s image: the requirements of the rule
    /// that allowed it, for the digest it resolved to (or, with
    /// `verifyDigest: false`, the digest as written: a trusted signature on
    /// it says more than the registry would). Exemptions, break-glass,
    /// audit verdicts, unchanged images and unresolved ones are not checked
    /// (an unresolved image has no digest to check; its resolution failure
    /// already decided).
    pub fn signature_ask<'a>(&'a self, decision: &'a ImageDecision) -> Option<Ask<'a>> {
        if decision.verdict != ImageVerdict::Allowed {
            return None;
        }
        let rule = self.rule(&decision.rule)?;
        if rule.requirements.is_empty() {
            return None;
        }
        let reference = decision.reference.as_ref().ok()?;
        let resolved = decision.resolved.as_ref()?;
        Some(Ask {
            reference,
            digest: &resolved.digest,
            requirements: &rule.requirements,
        })
    }

    /// Applies the signature `outcomes` (one per image): the signers of
    /// satisfied requirements go with the decision (and on to the ledger);
    /// an unsatisfied one denies, or warns in audit mode; a failed lookup
    /// decides by the requirement's `onFailure`.
    pub fn apply_signatures(
        &self,
        images: &mut [Arc<ImageDecision>],
        outcomes: Vec<Outcome>,
        annotations: &mut BTreeMap<String, String>,
    ) {
        let mut signed = Vec::new();
        let mut unsigned = Vec::new();
        for (decision, outcome) in images.iter_mut().zip(outcomes) {
            if matches!(outcome, Outcome::Skipped) {
                continue;
            }
            let decision = Arc::make_mut(decision);
            let rule = self.rule(&decision.rule);
            let mode = rule.and_then(|r| r.mode).unwrap_or(self.mode);
            let what = match (&decision.reference, &decision.resolved) {
                (Ok(reference), Some(resolved)) => {
                    format!("{}@{}", reference.repository(), resolved.digest)
                }
                _ => decision.image.clone(),
            };
            let mut failures = Vec::new();
            match outcome {
                Outcome::Skipped => continue,
                Outcome::Failed(e) => {
                    unsigned.push(format!("{}: {e}", decision.image));
                    // Each requirement that denies on failure fails, in
                    // its own mode.
                    let why = format!(
                        "could not look up its signatures: {e}; imagegate admits it once the registry answers"
                    );
                    for requirement in rule.iter().flat_map(|r| &r.requirements) {
                        if requirement.on_failure == file::Fallback::Deny {
                            failures.push((requirement.mode.unwrap_or(mode), why.clone()));
                        }
                    }
                }
                Outcome::Checked(checked) => {
                    for (requirement, verdict) in checked {
                        match verdict {
                            Ok(signers) => {
                                for s in &signers {
                                    signed.push(format!(
                                        "{}={} ({})",
                                        decision.image, s.identity, s.requirement
                                    ));
                                }
                                decision.signers.extend(signers);
                            }
                            Err(why) => {
                                unsigned.push(format!("{}: {why}", decision.image));
                                failures.push((requirement.mode.unwrap_or(mode), why));
                            }
                        }
                    }
                }
            }
            // An enforced failure denies; audit-only failures warn.
            let enforced = failures.iter().any(|(m, _)| *m == Mode::Enforce);
            if let Some((_, why)) = failures
                .iter()
                .find(|(m, _)| !enforced || *m == Mode::Enforce)
            {
                decision.verdict = if enforced {
                    ImageVerdict::Denied
                } else {
                    ImageVerdict::AuditDenied
                };
                decision.reason =
                    format!("image {what:?} denied by rule {:?}: {why}", decision.rule);
            }
        }
        for (key, list) in [("signed-by", signed), ("unsigned-images", unsigned)] {
            if !list.is_empty() {
                annotations.insert(key.into(), list.join("; "));
            }
        }
    }
}
