//! What the policy makes of resolution's outcomes: which images are looked
//! up at all, and how a failure or an unverified digest changes a
//! decision. Resolution itself (`resolve`) only reports what it found.

use std::{collections::BTreeMap, sync::Arc};

use super::{ImageDecision, ImageVerdict, Mode, Policy, decide::RULE_RESOLUTION, file};
use crate::resolve::{Ask, Outcome, Resolved};

impl Policy {
    /// Whether, and how, `decision`'s image is resolved: only images the
    /// policy lets run; not the unchanged images of an UPDATE (resolved
    /// when admitted, so an UPDATE that adds no image never waits on a
    /// registry); break-glass only on a registry a rule names.
    pub fn resolution_ask<'a>(&self, decision: &'a ImageDecision) -> Ask<'a> {
        let Ok(reference) = &decision.reference else {
            return Ask::Skip;
        };
        if !decision.verdict.allows() || decision.verdict == ImageVerdict::Unchanged {
            return Ask::Skip;
        }
        if decision.verdict == ImageVerdict::BreakGlass && !self.knows_registry(reference) {
            return Ask::DoNotContact(reference);
        }
        Ask::Lookup(reference)
    }

    /// Applies resolution's `outcomes` (one per image) to the decisions,
    /// and says in `annotations` what was resolved, unverified or not
    /// resolved. A failure denies a plain allow when the policy says so
    /// (`resolution.onFailure`); exemptions, break-glass and audit verdicts
    /// stand, with the annotation.
    pub fn apply_resolution(
        &self,
        images: &mut [Arc<ImageDecision>],
        outcomes: Vec<Outcome>,
        annotations: &mut BTreeMap<String, String>,
    ) {
        let mut resolved = Vec::new();
        let mut unverified = Vec::new();
        let mut unresolved = Vec::new();
        for (decision, outcome) in images.iter_mut().zip(outcomes) {
            if matches!(outcome, Outcome::Skipped) {
                continue;
            }
            let decision = Arc::make_mut(decision);
            match outcome {
                Outcome::Skipped => {}
                // Not contacted: a digest written in the reference is
                // recorded as written, unverified; a tag alone is not
                // recorded, and agents flag it.
                Outcome::NotContacted(reference) => match reference.digest {
                    Some(digest) => {
                        decision.resolved = Some(Resolved {
                            digest,
                            children: Vec::new(),
                            verified: false,
                        });
                        unverified.push(decision.image.clone());
                    }
                    None => unresolved.push(format!(
                        "{}: break-glass on a registry no rule names is not looked up; pin it \
                         by digest for nodes to admit it",
                        decision.image
                    )),
                },
                Outcome::Resolved(r) => {
                    resolved.push(format!("{}={}", decision.image, r.digest));
                    if !r.verified {
                        unverified.push(decision.image.clone());
                        decision.reason = format!(
                            "{}; its digest is taken as written, not verified with the \
                             registry (resolution.verifyDigest: false)",
                            decision.reason
                        );
                    }
                    decision.resolved = Some(r);
                }
                Outcome::Failed(e) => {
                    let what = match &decision.reference {
                        Ok(r) => r.to_string(),
                        Err(_) => decision.image.clone(),
                    };
                    unresolved.push(format!("{}: {e}", decision.image));
                    if decision.verdict == ImageVerdict::Allowed
                        && self.on_resolution_failure == file::Fallback::Deny
                    {
                        decision.verdict = match self.mode {
                            Mode::Enforce => ImageVerdict::Denied,
                            Mode::Audit => ImageVerdict::AuditDenied,
                        };
                        decision.rule = RULE_RESOLUTION.to_string();
                        decision.reason = format!("could not resolve {what} to a digest: {e}");
                    }
                }
            }
        }
        for (key, list, separator) in [
            ("resolved-digests", resolved, ", "),
            ("unverified-digests", unverified, ", "),
            ("unresolved-images", unresolved, "; "),
        ] {
            if !list.is_empty() {
                annotations.insert(key.into(), list.join(separator));
            }
        }
    }
}
