//! Applying a policy to a review: one decision per image, then one for the
//! review. Plain functions of their inputs: no I/O, no clock.

use std::{collections::BTreeMap, fmt::Write, sync::Arc};

use serde::Serialize;

use super::{DecisionKey, Mode, Policy, Rule, file};
use crate::{
    reference::{ParseError, Reference},
    review::{Api, Review, Subject},
};

/// Rule names for decisions no configured rule made.
pub const RULE_SYNTAX: &str = "reference-syntax";
pub const RULE_DEFAULT: &str = "default";
pub const RULE_EXEMPT: &str = "exempt-namespace";
pub const RULE_BREAK_GLASS: &str = "break-glass";
pub const RULE_RESOLUTION: &str = "digest-resolution";
pub const RULE_UNCHANGED: &str = "unchanged";

/// The suffix of the break-glass annotation on ImageReview.
const IMAGE_REVIEW_BREAK_GLASS_SUFFIX: &str = ".image-policy.k8s.io/break-glass";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageVerdict {
    Allowed,
    Denied,
    /// Denied by a rule in audit mode: allowed, with a warning.
    AuditDenied,
    /// Allowed because the request broke glass.
    BreakGlass,
    /// Allowed because the namespace is exempt.
    Exempt,
    /// On an UPDATE, an image the object already had: admitted with it.
    Unchanged,
}

impl ImageVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageVerdict::Allowed => "allowed",
            ImageVerdict::Denied => "denied",
            ImageVerdict::AuditDenied => "audit-denied",
            ImageVerdict::BreakGlass => "break-glass",
            ImageVerdict::Exempt => "exempt",
            ImageVerdict::Unchanged => "unchanged",
        }
    }

    pub fn allows(self) -> bool {
        self != ImageVerdict::Denied
    }
}

/// The decision on one image.
#[derive(Clone, Debug)]
pub struct ImageDecision {
    /// As written in the spec.
    pub image: String,
    pub reference: Result<Reference, ParseError>,
    pub verdict: ImageVerdict,
    /// The rule that decided (or one of the `RULE_*` names).
    pub rule: String,
    /// One line a user can act on.
    pub reason: String,
    /// What the image resolved to (its digest, an index's manifests);
    /// `None` when not resolved.
    pub resolved: Option<crate::resolve::Resolved>,
    /// Who signed it, per signature or attestation requirement its rule
    /// has (empty when the rule has none).
    pub signers: Vec<crate::signature::Signer>,
}

/// The decision on a whole review.
#[derive(Clone, Debug)]
pub struct ReviewDecision {
    pub allowed: bool,
    /// Why, in one line: the denied images' reasons, or a summary.
    pub message: String,
    /// What audit mode would have denied (AdmissionReview `warnings`).
    pub warnings: Vec<String>,
    pub audit_annotations: BTreeMap<String, String>,
    /// Shared: a remembered decision is handed out without copying its
    /// strings; the steps that change one (resolution, signatures) copy
    /// it first (`Arc::make_mut`).
    pub images: Vec<Arc<ImageDecision>>,
}

impl Policy {
    /// Decides on every image of a review.
    pub fn decide(&self, review: &Review) -> ReviewDecision {
        let (images, annotations) = self.decide_images(review);
        ReviewDecision::summarise(images, annotations)
    }

    /// Decides on every image of a review, before summing up: digest
    /// resolution comes in between.
    pub fn decide_images(
        &self,
        review: &Review,
    ) -> (Vec<Arc<ImageDecision>>, BTreeMap<String, String>) {
        let subject = &review.subject;
        let mut annotations = BTreeMap::new();
        let images: Vec<Arc<ImageDecision>> = if self.exempt_namespaces.contains(&subject.namespace)
        {
            annotations.insert("exempt-namespace".into(), subject.namespace.clone());
            self.allow_all(review, ImageVerdict::Exempt, RULE_EXEMPT, || {
                format!(
                    "namespace {:?} is exempt from image policy",
                    subject.namespace
                )
            })
        } else if let Some(key) = self.break_glass(review.api, subject) {
            annotations.insert("break-glass".into(), key.clone());
            self.allow_all(review, ImageVerdict::BreakGlass, RULE_BREAK_GLASS, || {
                format!("allowed by break-glass annotation {key}=\"true\"")
            })
        } else {
            review
                .images
                .iter()
                .map(|u| {
                    if u.changed {
                        self.decide_image(subject, &u.image)
                    } else {
                        Arc::new(ImageDecision {
                            image: u.image.clone(),
                            reference: Reference::parse_cached(&u.image),
                            verdict: ImageVerdict::Unchanged,
                            rule: RULE_UNCHANGED.into(),
                            reason: format!(
                                "image {:?} is unchanged by this UPDATE: it was admitted with the \
                                 object",
                                u.image
                            ),
                            resolved: None,
                            signers: Vec::new(),
                        })
                    }
                })
                .collect()
        };
        (images, annotations)
    }

    /// Decides on one image for an object in `subject`'s namespace.
    ///
    /// A decision is a function of the policy, the namespace and the image,
    /// unless a rule looks at object labels; then it is not remembered.
    pub fn decide_image(&self, subject: &Subject, image: &str) -> Arc<ImageDecision> {
        if self.uses_labels || image.len() > 1024 {
            return Arc::new(self.decide_image_uncached(subject, image));
        }
        if let Some(decision) = self.decisions.get(&DecisionKey(&subject.namespace, image)) {
            return decision;
        }
        let decision = Arc::new(self.decide_image_uncached(subject, image));
        self.decisions.insert(
            (subject.namespace.clone(), image.to_string()),
            decision.clone(),
        );
        decision
    }

    fn decide_image_uncached(&self, subject: &Subject, image: &str) -> ImageDecision {
        let reference = match Reference::parse_cached(image) {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("image {image:?} is not a valid image reference: {e}");
                return self.denial(image, Err(e), RULE_SYNTAX, reason, self.mode);
            }
        };
        let repository = reference.repository();
        for rule in self.rules.iter().filter(|r| r.applies_to(subject)) {
            if let Some(pattern) = rule.deny.first_match(&repository) {
                let why = format!("repository {repository} matches the denied pattern {pattern}");
                return self.rule_denial(rule, image, reference, &why);
            }
            if !rule.selects(&reference, &repository) {
                continue;
            }
            if let Some(problem) = rule.requirement_failed(&reference) {
                return self.rule_denial(rule, image, reference, &problem);
            }
            return ImageDecision {
                resolved: None,
                signers: Vec::new(),
                image: image.to_string(),
                reason: format!(
                    "{} allowed by rule {:?}",
                    describe(image, &reference),
                    rule.name
                ),
                reference: Ok(reference),
                verdict: ImageVerdict::Allowed,
                rule: rule.name.clone(),
            };
        }
        match self.default_verdict {
            file::Fallback::Allow => ImageDecision {
                resolved: None,
                signers: Vec::new(),
                image: image.to_string(),
                reason: format!(
                    "{}: no rule matched; the policy's default verdict is allow",
                    describe(image, &reference)
                ),
                reference: Ok(reference),
                verdict: ImageVerdict::Allowed,
                rule: RULE_DEFAULT.into(),
            },
            file::Fallback::Deny => {
                let reason = format!(
                    "{} is not allowed: no rule accepts repository {repository}{}",
                    describe(image, &reference),
                    self.accepted_here(subject)
                );
                self.denial(image, Ok(reference), RULE_DEFAULT, reason, self.mode)
            }
        }
    }

    /// `rule` denies `image`, because `why`, in the rule's mode.
    fn rule_denial(
        &self,
        rule: &Rule,
        image: &str,
        reference: Reference,
        why: &str,
    ) -> ImageDecision {
        let reason = format!(
            "{} denied by rule {:?}: {why}",
            describe(image, &reference),
            rule.name
        );
        self.denial(
            image,
            Ok(reference),
            &rule.name,
            reason,
            rule.mode.unwrap_or(self.mode),
        )
    }

    fn denial(
        &self,
        image: &str,
        reference: Result<Reference, ParseError>,
        rule: &str,
        reason: String,
        mode: Mode,
    ) -> ImageDecision {
        ImageDecision {
            resolved: None,
            signers: Vec::new(),
            image: image.to_string(),
            reference,
            verdict: match mode {
                Mode::Enforce => ImageVerdict::Denied,
                Mode::Audit => ImageVerdict::AuditDenied,
            },
            rule: rule.to_string(),
            reason,
        }
    }

    fn allow_all(
        &self,
        review: &Review,
        verdict: ImageVerdict,
        rule: &str,
        reason: impl Fn() -> String,
    ) -> Vec<Arc<ImageDecision>> {
        review
            .images
            .iter()
            .map(|u| {
                Arc::new(ImageDecision {
                    resolved: None,
                    signers: Vec::new(),
                    image: u.image.clone(),
                    reference: Reference::parse_cached(&u.image),
                    verdict,
                    rule: rule.to_string(),
                    reason: reason(),
                })
            })
            .collect()
    }

    /// The annotation key that breaks glass for this request, if any and if
    /// the policy allows break-glass.
    fn break_glass(&self, api: Api, subject: &Subject) -> Option<String> {
        let annotation = self.break_glass_annotation.as_ref()?;
        subject
            .annotations
            .iter()
            .find(|(key, value)| {
                let key_matches = match api {
                    Api::ImageReview => key.ends_with(IMAGE_REVIEW_BREAK_GLASS_SUFFIX),
                    Api::AdmissionReview => *key == annotation,
                };
                key_matches && value.as_str() == "true"
            })
            .map(|(key, _)| key.clone())
    }

    /// `; accepted here: registries a, b; repositories x` for a denial.
    fn accepted_here(&self, subject: &Subject) -> String {
        let mut registries = Vec::new();
        let mut repositories = Vec::new();
        for rule in self.rules.iter().filter(|r| r.applies_to(subject)) {
            for r in &rule.registries {
                if !registries.contains(&r.written) {
                    registries.push(r.written.clone());
                }
            }
            for g in rule.allow.written() {
                if !repositories.contains(g) {
                    repositories.push(g.clone());
                }
            }
        }
        let mut out = String::new();
        if !registries.is_empty() {
            out += &format!("; accepted here: registries {}", registries.join(", "));
        }
        if !repositories.is_empty() {
            out += if registries.is_empty() {
                "; accepted here: repositories "
            } else {
                ", repositories "
            };
            out += &repositories.join(", ");
        }
        if out.is_empty() {
            out = format!("; no rule applies to namespace {:?}", subject.namespace);
        }
        out
    }
}

impl Rule {
    /// Whether the rule applies to objects like `subject`.
    fn applies_to(&self, subject: &Subject) -> bool {
        if !self.namespaces.is_empty() && !self.namespaces.contains(&subject.namespace) {
            return false;
        }
        if self.object_labels.is_empty() {
            return true;
        }
        // A request that carries no labels (ImageReview) cannot satisfy a
        // label condition.
        subject.labels.as_ref().is_some_and(|labels| {
            self.object_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
    }

    /// Whether the rule is about this image's registry and repository.
    fn selects(&self, reference: &Reference, repository: &str) -> bool {
        let registry_ok =
            self.registries.is_empty() || self.registries.iter().any(|r| r.matches(reference));
        let repository_ok = self.allow.is_empty() || self.allow.first_match(repository).is_some();
        registry_ok && repository_ok
    }

    /// The first requirement the reference fails, worded for the user.
    fn requirement_failed(&self, r: &Reference) -> Option<String> {
        let repository = r.repository();
        if self.require_digest && r.digest.is_none() {
            return Some(format!(
                "a digest is required; pin the image as {repository}@sha256:<digest>"
            ));
        }
        if self.deny_untagged && r.is_untagged() {
            return Some(format!(
                "the image has no tag (it would pull {repository}:latest); name a version tag or a digest"
            ));
        }
        if self.deny_latest && r.is_latest() {
            let what = if r.is_untagged() {
                "an image without a tag pulls latest"
            } else {
                "the tag latest"
            };
            return Some(format!(
                "{what}, which is not allowed; name a version tag or a digest, e.g. {repository}:<version>"
            ));
        }
        None
    }
}

impl ReviewDecision {
    /// Sums up per-image decisions into the review's answer.
    pub fn summarise(
        images: Vec<Arc<ImageDecision>>,
        annotations: BTreeMap<String, String>,
    ) -> Self {
        summarise(images, annotations)
    }
}

fn summarise(
    images: Vec<Arc<ImageDecision>>,
    mut annotations: BTreeMap<String, String>,
) -> ReviewDecision {
    let is = |verdict: ImageVerdict| move |d: &&Arc<ImageDecision>| d.verdict == verdict;
    let allowed = !images.iter().any(|d| d.verdict == ImageVerdict::Denied);
    // Most reviews have neither denials nor audit findings: the lists
    // below are then made without allocating.
    let warnings: Vec<String> = images
        .iter()
        .filter(is(ImageVerdict::AuditDenied))
        .map(|d| format!("imagegate audit mode: would deny: {}", d.reason))
        .collect();
    if !warnings.is_empty() {
        annotations.insert(
            "audit-would-deny".into(),
            join_images(images.iter().filter(is(ImageVerdict::AuditDenied))),
        );
    }
    annotations.insert(
        "decision".into(),
        if allowed { "allowed" } else { "denied" }.into(),
    );
    let message = if allowed {
        allowed_message(&images)
    } else {
        annotations.insert(
            "denied-images".into(),
            join_images(images.iter().filter(is(ImageVerdict::Denied))),
        );
        let mut message = String::new();
        for (i, d) in images.iter().filter(is(ImageVerdict::Denied)).enumerate() {
            if i > 0 {
                message.push_str("; ");
            }
            message.push_str(&d.reason);
        }
        message
    };
    ReviewDecision {
        allowed,
        message,
        warnings,
        audit_annotations: annotations,
        images,
    }
}

/// `2 images allowed (rule-a, rule-b)`: the rule that allowed each.
fn allowed_message(images: &[Arc<ImageDecision>]) -> String {
    let n = images.len();
    if n == 0 {
        return "no images to check".to_string();
    }
    let rules: usize = images.iter().map(|d| d.rule.len() + 2).sum();
    let mut message = String::with_capacity(24 + rules);
    let _ = write!(
        message,
        "{n} image{} allowed (",
        if n == 1 { "" } else { "s" }
    );
    for (i, d) in images.iter().enumerate() {
        if i > 0 {
            message.push_str(", ");
        }
        message.push_str(&d.rule);
    }
    message.push(')');
    message
}

/// `image "nginx" (docker.io/library/nginx:latest)`, the normalised form
/// only when it says something the written one does not.
fn describe(image: &str, reference: &Reference) -> String {
    let normalised = reference.to_string();
    if normalised == image {
        format!("image {image:?}")
    } else {
        format!("image {image:?} ({normalised})")
    }
}

fn join_images<'a>(decisions: impl Iterator<Item = &'a Arc<ImageDecision>>) -> String {
    let mut joined = String::new();
    for (i, d) in decisions.enumerate() {
        if i > 0 {
            joined.push_str(", ");
        }
        joined.push_str(&d.image);
    }
    joined
}
