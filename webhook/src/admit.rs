//! The admission pipeline, in one place for every endpoint: review →
//! policy → resolution → signatures → decision → approvals recorded in the
//! ledger.
//!
//! Plain async functions over explicit inputs (no HTTP): the handlers of
//! `/validate`, `/image_policy` and `/mutate` decode, call these, and
//! encode. The offline `check` runs [`decide`], with a resolver when asked
//! (`--resolve`).

use std::{sync::Arc, time::Duration};

use crate::{
    ledger::{Approval, Ledger, Origin},
    policy::{ImageDecision, ImageVerdict, Policy, ReviewDecision},
    resolve::Resolver,
    review::Review,
};

/// The per-image decisions of `review`: the policy's, then, with a
/// resolver, each allowed image resolved to its digests (a resolution
/// failure becomes the policy's denial or audit verdict). Also the audit
/// annotations they add.
pub async fn decide_images(
    policy: &Policy,
    resolver: Option<&Resolver>,
    review: &Review,
) -> (
    Vec<Arc<ImageDecision>>,
    std::collections::BTreeMap<String, String>,
) {
    let (mut images, mut annotations) = policy.decide_images(review);
    if let Some(resolver) = resolver {
        let asks: Vec<_> = images.iter().map(|d| policy.resolution_ask(d)).collect();
        let outcomes = resolver.resolve_each(&asks, policy.verify_digest).await;
        policy.apply_resolution(&mut images, outcomes, &mut annotations);
        if policy.requires_signatures {
            let asks: Vec<_> = images.iter().map(|d| policy.signature_ask(d)).collect();
            let outcomes = resolver.signatures().check_each(&asks).await;
            drop(asks);
            policy.apply_signatures(&mut images, outcomes, &mut annotations);
        }
    }
    (images, annotations)
}

/// The decision on `review`: [`decide_images`], summed up.
pub async fn decide(
    policy: &Policy,
    resolver: Option<&Resolver>,
    review: &Review,
) -> ReviewDecision {
    let (images, annotations) = decide_images(policy, resolver, review).await;
    ReviewDecision::summarise(images, annotations)
}

/// Decides `review`, then [`record`]s what it admits.
pub async fn admit(
    policy: &Policy,
    resolver: Option<&Resolver>,
    ledger: Option<&Arc<Ledger>>,
    review: &Review,
) -> ReviewDecision {
    let decision = decide(policy, resolver, review).await;
    record(ledger, policy.break_glass_ttl, review, decision).await
}

/// When `decision` allows `review` and it is not a dry run, records the
/// approvals it makes in `ledger` durably before returning: nodes learn
/// what runs from the ledger, so what it cannot record is not let in (the
/// decision comes back as a denial saying why).
pub async fn record(
    ledger: Option<&Arc<Ledger>>,
    break_glass_ttl: Option<Duration>,
    review: &Review,
    mut decision: ReviewDecision,
) -> ReviewDecision {
    let Some(ledger) = ledger.filter(|_| decision.allowed && !review.dry_run) else {
        return decision;
    };
    let approvals = approvals(
        review,
        &decision,
        break_glass_ttl,
        imagegate_plumbing::clock::now_ms(),
    );
    if approvals.is_empty() {
        return decision;
    }
    let ledger = ledger.clone();
    let recorded = tokio::task::spawn_blocking(move || ledger.record(&approvals))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = recorded {
        tracing::error!("denied: could not record the admitted digests: {e}");
        decision.allowed = false;
        decision.message = format!(
            "imagegate could not record the admitted digests, so the pod is not admitted: {e}"
        );
    }
    decision
}

/// The approvals `decision` makes: one per allowed image the pipeline
/// resolved to a digest (an unresolved one has nothing for a node to
/// match). A break-glass approval ends `break_glass_ttl` after `now_ms`.
pub fn approvals(
    review: &Review,
    decision: &ReviewDecision,
    break_glass_ttl: Option<Duration>,
    now_ms: u64,
) -> Vec<Approval> {
    decision
        .images
        .iter()
        .filter(|d| d.verdict.allows())
        .filter_map(|d| Some((d, d.resolved.as_ref()?)))
        .map(|(d, resolved)| {
            let break_glass = d.verdict == ImageVerdict::BreakGlass;
            Approval {
                digest: resolved.digest.clone(),
                children: resolved.children.clone(),
                verified: resolved.verified,
                break_glass,
                expires_at_ms: break_glass_ttl
                    .filter(|_| break_glass)
                    .map(|ttl| now_ms + ttl.as_millis() as u64),
                reference: d
                    .reference
                    .as_ref()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|_| d.image.clone()),
                namespace: review.subject.namespace.clone(),
                kind: review.kind.clone(),
                name: review.name.clone(),
                user: review.user.clone(),
                rule: d.rule.clone(),
                api: review.api,
                origin: Origin::Admission,
                admitted_at_ms: now_ms,
                generation: 0,
                signers: d.signers.clone(),
            }
        })
        .collect()
}

/// What `/mutate` does to a review: JSONPatch operations that pin each
/// image the policy lets run to the digest it resolved to.
#[derive(Debug)]
pub struct Pinned {
    /// What was done, for the response.
    pub message: String,
    pub operations: Vec<serde_json::Value>,
}

impl Pinned {
    pub fn nothing(message: String) -> Self {
        Self {
            message,
            operations: Vec::new(),
        }
    }
}

/// Pins `review`'s images (`name:tag@sha256:...`; the tag stays for
/// humans). Images that already carry a digest are left alone, and so is
/// everything when the object carries the policy's pin annotation set to
/// `"false"` or the deciding rule has `pinDigests: false`. Never denies:
/// denying is the validator's job.
pub async fn pin(policy: &Policy, resolver: Option<&Resolver>, review: &Review) -> Pinned {
    let Some(resolver) = resolver else {
        return Pinned::nothing("not pinned: digest resolution is off".into());
    };
    if review
        .subject
        .annotations
        .get(&policy.pin_annotation)
        .map(String::as_str)
        == Some("false")
    {
        return Pinned::nothing(format!("not pinned: {}=\"false\"", policy.pin_annotation));
    }
    let (decisions, _) = decide_images(policy, Some(resolver), review).await;
    let mut operations = Vec::new();
    for (image, decision) in review.images.iter().zip(&decisions) {
        let (Some(pointer), Ok(reference), Some(digest)) = (
            &image.pointer,
            &decision.reference,
            decision.resolved.as_ref().map(|r| &r.digest),
        ) else {
            continue;
        };
        if reference.digest.is_some() || !decision.verdict.allows() || !policy.pins(&decision.rule)
        {
            continue;
        }
        operations.push(serde_json::json!({
            "op": "replace",
            "path": pointer.to_string(),
            "value": format!("{}@{digest}", image.image),
        }));
    }
    if operations.is_empty() {
        return Pinned::nothing("nothing to pin".into());
    }
    Pinned {
        message: format!("pinned {} image(s) to their digests", operations.len()),
        operations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        resolve::Resolved,
        review::{Api, ContainerKind, ImageUse, Subject},
    };
    use imagegate_proto::digest::Digest;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn policy() -> Policy {
        Policy::from_yaml(
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\n\
             rules:\n  - name: shop\n    registries: [registry.shop]\n    denyLatest: true\n",
        )
        .unwrap()
    }

    fn review(images: &[&str], dry_run: bool) -> Review {
        Review {
            api: Api::AdmissionReview,
            subject: Subject {
                namespace: "shop".into(),
                ..Default::default()
            },
            images: images
                .iter()
                .map(|i| ImageUse {
                    image: i.to_string(),
                    container: Some("c".into()),
                    kind: ContainerKind::Container,
                    pointer: None,
                    changed: true,
                })
                .collect(),
            kind: Some("Pod".into()),
            name: Some("web".into()),
            user: Some("alice".into()),
            dry_run,
            object: None,
            controller: None,
        }
    }

    /// The policy's decisions, with `digests` standing in for what a
    /// resolver found (None: not resolved).
    fn resolved(review: &Review, digests: &[Option<&str>]) -> ReviewDecision {
        let (mut images, annotations) = policy().decide_images(review);
        for (image, digest) in images.iter_mut().zip(digests) {
            Arc::make_mut(image).resolved = digest.map(|d| Resolved {
                digest: Digest::parse(d).unwrap(),
                children: Vec::new(),
                verified: true,
            });
        }
        ReviewDecision::summarise(images, annotations)
    }

    #[test]
    fn only_allowed_and_resolved_images_become_approvals() {
        let review = review(
            &[
                "registry.shop/web:1",
                "registry.shop/api:2",
                "elsewhere.example/x:1",
            ],
            false,
        );
        let decision = resolved(&review, &[Some(D1), None, Some(D2)]);
        let approvals = approvals(&review, &decision, None, 5);
        assert_eq!(approvals.len(), 1, "{approvals:?}");
        let a = &approvals[0];
        assert_eq!(a.digest.as_str(), D1);
        assert_eq!(a.reference, "registry.shop/web:1");
        assert_eq!(a.rule, "shop");
        assert_eq!(
            (a.namespace.as_str(), a.user.as_deref()),
            ("shop", Some("alice"))
        );
        assert_eq!((a.admitted_at_ms, a.expires_at_ms), (5, None));
        assert_eq!(a.origin, Origin::Admission);
    }

    #[tokio::test]
    async fn what_is_admitted_is_recorded_and_a_dry_run_or_denial_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(
            Ledger::open(&dir.path().join("l.redb"), Duration::from_secs(3600), 100).unwrap(),
        );
        let dry = review(&["registry.shop/web:1"], true);
        let decision = record(Some(&ledger), None, &dry, resolved(&dry, &[Some(D1)])).await;
        assert!(decision.allowed);
        assert!(
            ledger.all().unwrap().is_empty(),
            "a dry run records nothing"
        );
        let denied = review(&["registry.shop/web:latest"], false);
        let decision = record(Some(&ledger), None, &denied, resolved(&denied, &[Some(D2)])).await;
        assert!(!decision.allowed);
        assert!(ledger.all().unwrap().is_empty(), "a denial records nothing");
        let allowed = review(&["registry.shop/web:1"], false);
        let decision = record(
            Some(&ledger),
            Some(Duration::from_secs(60)),
            &allowed,
            resolved(&allowed, &[Some(D1)]),
        )
        .await;
        assert!(decision.allowed, "{}", decision.message);
        let all = ledger.all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].digest.as_str(), D1);
        assert_eq!(all[0].expires_at_ms, None, "not break-glass: no end");
        // The whole pipeline, with no resolver: the policy decides alone.
        let decision = admit(&policy(), None, Some(&ledger), &denied).await;
        assert!(!decision.allowed);
        assert!(decision.message.contains("latest"), "{}", decision.message);
    }
}
