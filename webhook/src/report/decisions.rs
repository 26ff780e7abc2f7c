//! The admission decisions operators should see, taken from a review and
//! its decision at the boundary: denials, what audit mode would have
//! denied, break-glass admissions. Allowed, exempt and unchanged images are
//! not told (they are the ledger's and the metrics' business), and neither
//! is a dry run (nothing was created or refused).
//!
//! Where each is told:
//! - an admitted pod (audit, break-glass): on the pod, which will exist
//!   under that name and uid;
//! - a denied pod: on its controller when it has one (the ReplicaSet or
//!   Job makes another pod, under another name, at every retry: its Events
//!   count the retries), else on the pod, which was never created;
//! - a reviewed workload (Deployment, CronJob...): on the workload;
//! - an ImageReview, which names no object: on the namespace;
//! - a running pod whose image no longer meets its rule's signature
//!   requirements (the periodic re-check of running pods): on the pod.

use super::model::{Decision, DecisionKind, Subject};
use crate::{
    adopt::signatures::Unverified,
    policy::{ImageVerdict, ReviewDecision},
    review::{Api, ObjectId, Review},
};

/// The decisions of `decision` on `review` worth telling, made by
/// `replica` at `at_ms`.
pub fn of_review(
    review: &Review,
    decision: &ReviewDecision,
    replica: &str,
    at_ms: i64,
) -> Vec<Decision> {
    if review.dry_run {
        return Vec::new();
    }
    let mut told = Vec::new();
    for (image, use_) in decision.images.iter().zip(&review.images) {
        let kind = match image.verdict {
            ImageVerdict::Denied if !decision.allowed => DecisionKind::Denied,
            ImageVerdict::AuditDenied => DecisionKind::AuditWouldDeny,
            ImageVerdict::BreakGlass => DecisionKind::BreakGlass,
            _ => continue,
        };
        let Some(subject) = subject(review, kind) else {
            continue;
        };
        told.push(Decision {
            kind,
            subject,
            container: use_
                .container
                .clone()
                .unwrap_or_else(|| image.image.clone()),
            image: image.image.clone(),
            digest: image
                .resolved
                .as_ref()
                .map(|r| r.digest.to_string())
                .unwrap_or_default(),
            rule: image.rule.clone(),
            reason: image.reason.clone(),
            signers: image.signers.iter().map(|s| s.identity.clone()).collect(),
            at_ms,
            replica: replica.to_string(),
        });
    }
    told
}

/// A running pod's image that no longer meets its rule's signature
/// requirements, found by a re-check of the running pods: `None` when the
/// listed pod carried no identity to tell it on.
pub fn of_unverified(u: &Unverified, replica: &str, at_ms: i64) -> Option<Decision> {
    let object = u.object.as_ref()?;
    Some(Decision {
        kind: DecisionKind::Unverified,
        subject: Subject {
            api_version: object.api_version.clone(),
            kind: object.kind.clone(),
            namespace: u.namespace.clone(),
            name: object.name.clone(),
            uid: object.uid.clone(),
        },
        container: u.container.clone(),
        image: u.decision.image.clone(),
        digest: u.digest.clone(),
        rule: u.decision.rule.clone(),
        reason: u.decision.reason.clone(),
        signers: Vec::new(),
        at_ms,
        replica: replica.to_string(),
    })
}

fn subject(review: &Review, kind: DecisionKind) -> Option<Subject> {
    let namespace = review.subject.namespace.clone();
    let of = |id: &ObjectId| Subject {
        api_version: id.api_version.clone(),
        kind: id.kind.clone(),
        namespace: namespace.clone(),
        name: id.name.clone(),
        uid: id.uid.clone(),
    };
    match review.api {
        Api::ImageReview => (!namespace.is_empty()).then(|| Subject {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            namespace: String::new(),
            name: namespace.clone(),
            uid: String::new(),
        }),
        Api::AdmissionReview => {
            let object = review.object.as_ref();
            let is_pod = review.kind.as_deref() == Some("Pod");
            match (kind, &review.controller) {
                (DecisionKind::Denied, Some(controller)) if is_pod => Some(of(controller)),
                _ => object.map(of),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{policy::Policy, review::admission};

    fn fixture(n: u8) -> Review {
        let path = format!(
            "{}/tests/fixtures/apiserver-v1.28/admissionreview-{n}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        let raw = serde_json::to_vec(&body["body"]).unwrap();
        match admission::decode(&raw).unwrap() {
            admission::Decoded::Review(request) => request.review.unwrap(),
            _ => panic!("fixture {n} is not a review"),
        }
    }

    fn policy(mode: &str) -> Policy {
        Policy::from_yaml(&format!(
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmode: {mode}\nrules:\n  - name: internal\n    registries: [registry.internal]\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_denied_pod_of_a_replicaset_is_told_on_the_replicaset() {
        let review = fixture(3);
        let decision = crate::policy::ReviewDecision::summarise(
            policy("enforce").decide_images(&review).0,
            Default::default(),
        );
        assert!(!decision.allowed);
        let told = of_review(&review, &decision, "webhook-0", 7);
        assert_eq!(told.len(), review.images.len());
        let d = &told[0];
        assert_eq!(d.kind, DecisionKind::Denied);
        assert_eq!(
            d.subject,
            Subject {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                namespace: "default".into(),
                name: "d2-588fc765b5".into(),
                uid: "dc998bf4-94a9-4879-a907-6a8a3b746a52".into(),
            }
        );
        assert_eq!(d.container, review.images[0].container.clone().unwrap());
        assert!(!d.rule.is_empty() && !d.reason.is_empty(), "{d:?}");
        assert_eq!((d.at_ms, d.replica.as_str()), (7, "webhook-0"));
    }

    #[test]
    fn audit_mode_is_told_on_the_pod_that_will_run() {
        let review = fixture(3);
        let decision = crate::policy::ReviewDecision::summarise(
            policy("audit").decide_images(&review).0,
            Default::default(),
        );
        assert!(decision.allowed);
        let told = of_review(&review, &decision, "webhook-0", 7);
        assert!(!told.is_empty());
        for d in &told {
            assert_eq!(d.kind, DecisionKind::AuditWouldDeny);
            assert_eq!(d.subject.kind, "Pod");
            assert_eq!(d.subject.name, "d2-588fc765b5-fmgqc");
            assert_eq!(d.subject.uid, "1d3f1499-720d-4bf8-b194-bdcc2b977d61");
            assert!(d.subject.as_pod().is_some());
        }
    }

    #[test]
    fn a_bare_pod_denied_is_told_on_itself_and_a_deployment_on_itself() {
        for (n, kind) in [(1, "Pod"), (2, "Deployment")] {
            let review = fixture(n);
            let decision = crate::policy::ReviewDecision::summarise(
                policy("enforce").decide_images(&review).0,
                Default::default(),
            );
            let told = of_review(&review, &decision, "r", 1);
            assert!(!told.is_empty(), "fixture {n}");
            assert!(told.iter().all(|d| d.subject.kind == kind), "{told:?}");
        }
    }

    #[test]
    fn allowed_images_and_dry_runs_are_not_told() {
        let mut review = fixture(3);
        let allowing = Policy::from_yaml(
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: all\n    registries: ['*']\n",
        ).unwrap();
        let decision = crate::policy::ReviewDecision::summarise(
            allowing.decide_images(&review).0,
            Default::default(),
        );
        assert!(decision.allowed);
        assert!(of_review(&review, &decision, "r", 1).is_empty());
        review.dry_run = true;
        let denied = crate::policy::ReviewDecision::summarise(
            policy("enforce").decide_images(&review).0,
            Default::default(),
        );
        assert!(of_review(&review, &denied, "r", 1).is_empty());
    }

    #[test]
    fn break_glass_is_told_on_the_pod_and_an_image_review_on_its_namespace() {
        let mut review = fixture(3);
        review
            .subject
            .annotations
            .insert("imagegate.dev/break-glass".into(), "true".into());
        let decision = crate::policy::ReviewDecision::summarise(
            policy("enforce").decide_images(&review).0,
            Default::default(),
        );
        assert!(decision.allowed);
        let told = of_review(&review, &decision, "r", 1);
        assert!(!told.is_empty());
        assert!(
            told.iter()
                .all(|d| d.kind == DecisionKind::BreakGlass && d.subject.kind == "Pod"),
            "{told:?}"
        );

        let text = std::fs::read_to_string(format!(
            "{}/tests/fixtures/apiserver-v1.28/imagereview-1.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        let raw = serde_json::to_vec(&body["body"]).unwrap();
        let review = crate::review::image_review::decode(&raw).unwrap().unwrap();
        let decision = crate::policy::ReviewDecision::summarise(
            policy("enforce").decide_images(&review).0,
            Default::default(),
        );
        assert!(!decision.allowed);
        let told = of_review(&review, &decision, "r", 1);
        assert!(!told.is_empty());
        for d in &told {
            assert_eq!(d.kind, DecisionKind::Denied);
            assert_eq!(
                (d.subject.kind.as_str(), d.subject.namespace.as_str()),
                ("Namespace", "")
            );
            assert_eq!(d.subject.name, review.subject.namespace);
            // No container names in an ImageReview: the image stands in.
            assert_eq!(d.container, d.image);
        }
    }
}
