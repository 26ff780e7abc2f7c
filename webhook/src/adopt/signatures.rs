//! Adopted images meet the signature and attestation requirements that
//! admitted ones do: otherwise a tag moved under a running pod to an
//! unsigned image would become admitted at the next rebuild. The digest
//! checked is the one the node runs (the pod status' imageID), as
//! admission checks the digest resolution found; when that is a platform
//! manifest and its signature is on the index that lists it (a multi-arch
//! image signed as cosign signs it), the index the pod's tag resolves to
//! now is checked instead, if it lists that manifest.
//!
//! What fails in enforce mode is not adopted (agents flag it, and stop it
//! once settled, as they would a container admission denied); in audit
//! mode it is adopted with a warning. Signers are recorded with the
//! approval, as for admission.

use std::sync::Arc;

use crate::{
    ledger::Approval,
    policy::{ImageDecision, ImageVerdict, Policy},
    resolve::{Resolved, Resolver},
    review::ObjectId,
};

/// An approval adoption would make, and the policy's decision on its image.
pub struct Candidate {
    pub pod: String,
    /// The pod's identity, when the listed pod carries its uid.
    pub object: Option<ObjectId>,
    /// The container running the image.
    pub container: String,
    pub approval: Approval,
    pub decision: ImageDecision,
}

/// A running image whose signatures or attestations do not meet its rule
/// (now): told as an `Unverified` decision on its pod.
#[derive(Clone, Debug)]
pub struct Unverified {
    pub namespace: String,
    pub object: Option<ObjectId>,
    pub container: String,
    /// The digest the node runs.
    pub digest: String,
    /// The signature stage's decision (denied, or audit-denied).
    pub decision: ImageDecision,
}

/// What the check left: adopted candidates (with their signers), and the
/// lines to report.
#[derive(Default)]
pub struct Checked {
    pub adopted: Vec<Approval>,
    /// `pod: image: reason`, not adopted (enforce mode).
    pub unsigned: Vec<String>,
    /// `pod: image: reason`, adopted in audit mode although unsigned.
    pub audit_unsigned: Vec<String>,
    /// Both of the above, for the Events and reports.
    pub unverified: Vec<Unverified>,
}

/// Checks every candidate's requirements against its running digest.
pub async fn check(policy: &Policy, resolver: &Resolver, candidates: Vec<Candidate>) -> Checked {
    let mut checked = Checked::default();
    if !policy.requires_signatures {
        checked.adopted = candidates.into_iter().map(|c| c.approval).collect();
        return checked;
    }
    // The policy's decisions as they were before any signature was asked.
    let originals: Vec<ImageDecision> = candidates.iter().map(|c| c.decision.clone()).collect();
    let on_running: Vec<ImageDecision> = candidates
        .iter()
        .zip(&originals)
        .map(|(c, d)| with_digest(d, resolved_of(&c.approval)))
        .collect();
    let mut judged = judge(policy, resolver, on_running).await;
    // A platform manifest signed through its index: ask the index the
    // pod's reference resolves to now, if it lists what the node runs.
    let mut retried = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        if judged[i].verdict != ImageVerdict::Denied {
            continue;
        }
        let Ok(reference) = &originals[i].reference else {
            continue;
        };
        if reference.tag.is_none() || reference.digest.is_some() {
            continue;
        }
        if let Ok(index) = resolver.resolve(reference, true).await
            && index.digest != c.approval.digest
            && index.children.iter().any(|d| d.digest == c.approval.digest)
        {
            retried.push((i, with_digest(&originals[i], index)));
        }
    }
    if !retried.is_empty() {
        let (at, decisions): (Vec<usize>, Vec<ImageDecision>) = retried.into_iter().unzip();
        for (i, decision) in at.into_iter().zip(judge(policy, resolver, decisions).await) {
            if decision.verdict != ImageVerdict::Denied {
                judged[i] = decision;
            }
        }
    }
    for (c, decision) in candidates.into_iter().zip(judged) {
        let line = format!("{}: {}: {}", c.pod, decision.image, decision.reason);
        if matches!(
            decision.verdict,
            ImageVerdict::Denied | ImageVerdict::AuditDenied
        ) {
            checked.unverified.push(Unverified {
                namespace: c.approval.namespace.clone(),
                object: c.object.clone(),
                container: c.container.clone(),
                digest: c.approval.digest.to_string(),
                decision: decision.clone(),
            });
        }
        match decision.verdict {
            ImageVerdict::Denied => checked.unsigned.push(line),
            verdict => {
                if verdict == ImageVerdict::AuditDenied {
                    checked.audit_unsigned.push(line);
                }
                let mut approval = c.approval;
                approval.signers = decision.signers;
                checked.adopted.push(approval);
            }
        }
    }
    checked
}

fn resolved_of(approval: &Approval) -> Resolved {
    Resolved {
        digest: approval.digest.clone(),
        children: approval.children.clone(),
        verified: approval.verified,
    }
}

fn with_digest(decision: &ImageDecision, resolved: Resolved) -> ImageDecision {
    let mut decision = decision.clone();
    decision.resolved = Some(resolved);
    decision
}

/// The signature stage of the admission pipeline, on `decisions`.
async fn judge(
    policy: &Policy,
    resolver: &Resolver,
    decisions: Vec<ImageDecision>,
) -> Vec<ImageDecision> {
    let outcomes = {
        let asks: Vec<_> = decisions.iter().map(|d| policy.signature_ask(d)).collect();
        resolver.signatures().check_each(&asks).await
    };
    let mut annotations = Default::default();
    let mut decisions: Vec<Arc<ImageDecision>> = decisions.into_iter().map(Arc::new).collect();
    policy.apply_signatures(&mut decisions, outcomes, &mut annotations);
    decisions.into_iter().map(Arc::unwrap_or_clone).collect()
}
