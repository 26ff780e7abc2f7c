//! Resolution applied to decisions: every image the policy lets run gets its
//! digests; an allowed image that cannot be resolved is denied, or allowed
//! with an audit annotation, as the policy says.

use std::collections::{BTreeMap, HashMap};

use futures_util::future::join_all;

use super::{ResolveError, Resolver};
use crate::policy::{ImageDecision, Mode, Policy, Verdict, decide::RULE_RESOLUTION, file};
use crate::reference::Reference;

/// Distinct references one review may have looked up.
pub const MAX_LOOKUPS_PER_REVIEW: usize = 64;

/// What resolution does for one image.
enum Plan<'a> {
    Nothing,
    /// Break-glass on a registry no rule names.
    NotContacted(&'a Reference),
    /// Past the review's bound on lookups.
    OverBound,
    Lookup(&'a Reference),
}

/// Resolves, concurrently, each image whose verdict lets it run.
pub async fn resolve_decisions(
    resolver: &Resolver,
    policy: &Policy,
    images: &mut [ImageDecision],
    annotations: &mut BTreeMap<String, String>,
) {
    // Unchanged images of an UPDATE were resolved when admitted: nothing
    // to ask, so an UPDATE that adds no image never waits on a registry.
    // A break-glass image is looked up only on a registry a rule names:
    // otherwise the pod's author picks the host the webhook contacts.
    // One review asks about at most MAX_LOOKUPS_PER_REVIEW distinct
    // references: a pod spec listing thousands of tags cannot turn one
    // review into thousands of registry requests.
    let mut asked: HashMap<String, bool> = HashMap::new();
    let plans: Vec<Plan> = images
        .iter()
        .map(|d| {
            let Ok(reference) = &d.reference else {
                return Plan::Nothing;
            };
            if !d.verdict.allows() || d.verdict == Verdict::Unchanged {
                return Plan::Nothing;
            }
            if d.verdict == Verdict::BreakGlass && !policy.knows_registry(reference) {
                return Plan::NotContacted(reference);
            }
            let count = asked.len();
            let within = *asked
                .entry(reference.to_string())
                .or_insert(count < MAX_LOOKUPS_PER_REVIEW);
            if within {
                Plan::Lookup(reference)
            } else {
                Plan::OverBound
            }
        })
        .collect();
    let lookups = plans.into_iter().map(|plan| async move {
        match plan {
            Plan::Nothing => None,
            Plan::NotContacted(reference) => Some(Err(reference.clone())),
            Plan::OverBound => Some(Ok(Err(ResolveError::TooManyLookups {
                max: MAX_LOOKUPS_PER_REVIEW,
            }))),
            Plan::Lookup(reference) => {
                Some(Ok(resolver.resolve(reference, policy.verify_digest).await))
            }
        }
    });
    let outcomes = join_all(lookups).await;
    let mut resolved = Vec::new();
    let mut unverified = Vec::new();
    let mut unresolved = Vec::new();
    for (decision, outcome) in images.iter_mut().zip(outcomes) {
        match outcome {
            None => {}
            // Break-glass on a registry no rule names: not contacted. A
            // digest written in the reference is recorded as written,
            // unverified; a tag alone is not recorded, and agents flag it.
            Some(Err(reference)) => {
                if let Some(digest) = &reference.digest {
                    decision.resolved = Some(super::Resolved {
                        digest: digest.clone(),
                        children: Vec::new(),
                        verified: false,
                    });
                    unverified.push(decision.image.clone());
                } else {
                    unresolved.push(format!(
                        "{}: break-glass on a registry no rule names is not looked up; pin it \
                         by digest for nodes to admit it",
                        decision.image
                    ));
                }
            }
            Some(Ok(Ok(r))) => {
                resolved.push(format!("{}={}", decision.image, r.digest));
                if !r.verified {
                    unverified.push(decision.image.clone());
                    decision.reason = format!(
                        "{}; its digest is taken as written, not verified with the registry \
                         (resolution.verifyDigest: false)",
                        decision.reason
                    );
                }
                decision.resolved = Some(r);
            }
            Some(Ok(Err(e))) => {
                let what = match &decision.reference {
                    Ok(r) => r.to_string(),
                    Err(_) => decision.image.clone(),
                };
                let reason = format!("could not resolve {what} to a digest: {e}");
                unresolved.push(format!("{}: {e}", decision.image));
                // Only a plain allow is turned into a denial: exemptions,
                // break-glass and audit verdicts stand, with the annotation.
                if decision.verdict == Verdict::Allowed
                    && policy.on_resolution_failure == file::Verdict::Deny
                {
                    decision.verdict = match policy.mode {
                        Mode::Enforce => Verdict::Denied,
                        Mode::Audit => Verdict::AuditDenied,
                    };
                    decision.rule = RULE_RESOLUTION.to_string();
                    decision.reason = reason;
                }
            }
        }
    }
    if !resolved.is_empty() {
        annotations.insert("resolved-digests".into(), resolved.join(", "));
    }
    if !unverified.is_empty() {
        annotations.insert("unverified-digests".into(), unverified.join(", "));
    }
    if !unresolved.is_empty() {
        annotations.insert("unresolved-images".into(), unresolved.join("; "));
    }
}
