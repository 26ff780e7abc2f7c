use std::{collections::BTreeMap, sync::Arc};

use super::*;
use crate::review::{Api, ContainerKind, ImageUse, Review, Subject};

const EXAMPLE: &str = include_str!("../../../deploy/policy/example-policy.yaml");
const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn policy(yaml: &str) -> Policy {
    Policy::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn header() -> &'static str {
    "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\n"
}

fn ns(namespace: &str) -> Subject {
    Subject {
        namespace: namespace.into(),
        labels: Some(BTreeMap::new()),
        annotations: BTreeMap::new(),
    }
}

fn review(api: Api, namespace: &str, images: &[&str], annotations: &[(&str, &str)]) -> Review {
    Review {
        api,
        subject: Subject {
            namespace: namespace.into(),
            labels: (api == Api::AdmissionReview).then(BTreeMap::new),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
        images: images
            .iter()
            .map(|i| ImageUse {
                image: i.to_string(),
                container: None,
                kind: ContainerKind::Container,
                pointer: None,
                changed: true,
            })
            .collect(),
        kind: Some("Pod".into()),
        name: None,
        user: None,
        dry_run: false,
        object: None,
        controller: None,
    }
}

fn verdict(p: &Policy, namespace: &str, image: &str) -> (ImageVerdict, String) {
    let d = p.decide_image(&ns(namespace), image);
    (d.verdict, d.rule.clone())
}

#[test]
fn the_example_policy_reproduces_the_seeds_setup() {
    let p = policy(EXAMPLE);
    let allowed = |image: &str, rule: &str| {
        assert_eq!(
            verdict(&p, "default", image),
            (ImageVerdict::Allowed, rule.to_string()),
            "{image}"
        );
    };
    allowed("nginx:1.25", "docker-hub");
    allowed("docker.io/library/nginx:1.25.3", "docker-hub");
    allowed("index.docker.io/bitnami/redis:7.2", "docker-hub");
    allowed(&format!("nginx@sha256:{HEX64}"), "docker-hub");
    allowed("registry.k8s.io/pause:3.9", "kubernetes-registries");
    allowed("k8s.gcr.io/coredns:1.7.0", "kubernetes-registries");

    let denied = |image: &str, rule: &str, says: &str| {
        let d = p.decide_image(&ns("default"), image);
        assert_eq!(
            (d.verdict, d.rule.as_str()),
            (ImageVerdict::Denied, rule),
            "{image}: {}",
            d.reason
        );
        assert!(d.reason.contains(says), "{image}: {}", d.reason);
        assert!(!d.reason.contains('\n'));
    };
    denied(
        "nginx",
        "docker-hub",
        "an image without a tag pulls latest, which is not allowed",
    );
    denied(
        "nginx:latest",
        "docker-hub",
        "the tag latest, which is not allowed",
    );
    denied("registry.k8s.io/pause", "kubernetes-registries", "latest");
    denied(
        "docker.io.evil.com/library/nginx:1.25",
        "default",
        "no rule accepts repository docker.io.evil.com/library/nginx; accepted here: registries registry.k8s.io, k8s.gcr.io, docker.io",
    );
    denied(
        "quay.io/team/app:1",
        "default",
        "no rule accepts repository quay.io/team/app",
    );
    denied(
        "evil/cryptominer-x:1",
        "docker-hub",
        "matches the denied pattern docker.io/*/cryptominer*",
    );
    denied(
        "NGINX:1",
        "reference-syntax",
        "repository name must be lowercase",
    );
    denied("", "reference-syntax", "empty");
}

#[test]
fn the_reason_names_image_rule_and_what_is_accepted() {
    let d = policy(EXAMPLE).decide_image(&ns("default"), "nginx:latest");
    assert_eq!(
        d.reason,
        "image \"nginx:latest\" (docker.io/library/nginx:latest) denied by rule \"docker-hub\": the tag latest, which is not allowed; name a version tag or a digest, e.g. docker.io/library/nginx:<version>"
    );
}

#[test]
fn exempt_namespaces_allow_everything_and_say_so() {
    let d = policy(EXAMPLE).decide(&review(
        Api::AdmissionReview,
        "kube-system",
        &["evil.io/x", "not valid!"],
        &[],
    ));
    assert!(d.allowed);
    assert!(d.images.iter().all(|i| i.verdict == ImageVerdict::Exempt));
    assert_eq!(
        d.audit_annotations
            .get("exempt-namespace")
            .map(String::as_str),
        Some("kube-system")
    );
}

#[test]
fn break_glass_on_image_review_needs_the_value_true() {
    let p = policy(EXAMPLE);
    let key = "mycorp.image-policy.k8s.io/break-glass";
    let d = p.decide(&review(
        Api::ImageReview,
        "default",
        &["quay.io/x:1"],
        &[(key, "true")],
    ));
    assert!(d.allowed);
    assert_eq!(d.images[0].verdict, ImageVerdict::BreakGlass);
    assert_eq!(
        d.audit_annotations.get("break-glass").map(String::as_str),
        Some(key)
    );
    // The fixture's "ticket-123" is not "true": no break-glass.
    let d = p.decide(&review(
        Api::ImageReview,
        "default",
        &["quay.io/x:1"],
        &[(key, "ticket-123")],
    ));
    assert!(!d.allowed);
    // The object annotation is not the ImageReview convention, and the other
    // way round.
    let d = p.decide(&review(
        Api::ImageReview,
        "default",
        &["quay.io/x:1"],
        &[("imagegate.dev/break-glass", "true")],
    ));
    assert!(!d.allowed);
    let d = p.decide(&review(
        Api::AdmissionReview,
        "default",
        &["quay.io/x:1"],
        &[(key, "true")],
    ));
    assert!(!d.allowed);
}

#[test]
fn break_glass_on_objects_and_turned_off() {
    let p = policy(EXAMPLE);
    let glass = [("imagegate.dev/break-glass", "true")];
    let d = p.decide(&review(
        Api::AdmissionReview,
        "default",
        &["quay.io/x:1"],
        &glass,
    ));
    assert!(d.allowed && d.images[0].verdict == ImageVerdict::BreakGlass);
    let off = policy(&format!("{}breakGlass: {{enabled: false}}\n", header()));
    let d = off.decide(&review(
        Api::AdmissionReview,
        "default",
        &["quay.io/x:1"],
        &glass,
    ));
    assert!(!d.allowed, "break-glass disabled by policy");
}

#[test]
fn audit_mode_allows_with_warnings_globally_and_per_rule() {
    let global = policy(&format!("{}mode: audit\n", header()));
    let d = global.decide(&review(
        Api::AdmissionReview,
        "default",
        &["quay.io/x:1", "nginx:1"],
        &[],
    ));
    assert!(d.allowed);
    assert_eq!(d.warnings.len(), 2);
    assert!(
        d.warnings[0].starts_with("imagegate audit mode: would deny: image \"quay.io/x:1\""),
        "{:?}",
        d.warnings
    );
    assert_eq!(
        d.audit_annotations
            .get("audit-would-deny")
            .map(String::as_str),
        Some("quay.io/x:1, nginx:1")
    );

    let per_rule = policy(&format!(
        "{}rules:\n- name: hub\n  registries: [docker.io]\n  denyLatest: true\n  mode: audit\n",
        header()
    ));
    assert_eq!(
        verdict(&per_rule, "default", "nginx").0,
        ImageVerdict::AuditDenied
    );
    assert_eq!(
        verdict(&per_rule, "default", "quay.io/x:1").0,
        ImageVerdict::Denied,
        "the default is still enforced"
    );
}

#[test]
fn requirements_digest_untagged_latest() {
    let p = policy(&format!(
        "{}rules:\n- name: strict\n  registries: ['*']\n  requireDigest: true\n",
        header()
    ));
    assert_eq!(verdict(&p, "x", "nginx:1.25").0, ImageVerdict::Denied);
    assert_eq!(
        verdict(&p, "x", &format!("nginx:1.25@sha256:{HEX64}")).0,
        ImageVerdict::Allowed
    );

    let untagged = policy(&format!(
        "{}rules:\n- name: tags\n  registries: ['*']\n  denyUntagged: true\n",
        header()
    ));
    assert_eq!(verdict(&untagged, "x", "nginx").0, ImageVerdict::Denied);
    assert_eq!(
        verdict(&untagged, "x", "registry:5000/x").0,
        ImageVerdict::Denied,
        "a port is not a tag"
    );
    assert_eq!(
        verdict(&untagged, "x", "nginx:latest").0,
        ImageVerdict::Allowed,
        "tagged, if latest"
    );
    assert_eq!(
        verdict(&untagged, "x", &format!("nginx@sha256:{HEX64}")).0,
        ImageVerdict::Allowed
    );
}

#[test]
fn rules_apply_per_namespace_and_labels_in_order() {
    let p = policy(&format!(
        "{}rules:
- name: team-a-internal
  namespaces: [team-a, 'team-a-*']
  registries: [registry.internal:5000/team-a]
- name: labelled
  objectLabels: {{tier: frontend}}
  repositories:
    allow: ['docker.io/library/nginx']
- name: hub-pinned
  registries: [docker.io]
  requireDigest: true
",
        header()
    ));
    assert_eq!(
        verdict(&p, "team-a-dev", "registry.internal:5000/team-a/app:1").1,
        "team-a-internal"
    );
    assert_eq!(
        verdict(&p, "team-b", "registry.internal:5000/team-a/app:1").1,
        "default"
    );
    assert_eq!(
        verdict(&p, "team-a", "registry.internal:5000/team-ab/app:1").1,
        "default"
    );
    // Without the label, nginx:1 meets the later rule and its digest requirement.
    assert_eq!(
        verdict(&p, "x", "nginx:1"),
        (ImageVerdict::Denied, "hub-pinned".into())
    );
    let mut frontend = ns("x");
    frontend.labels = Some(BTreeMap::from([(
        "tier".to_string(),
        "frontend".to_string(),
    )]));
    assert_eq!(
        p.decide_image(&frontend, "nginx:1").verdict,
        ImageVerdict::Allowed
    );
    // ImageReview carries no labels: a label rule never applies.
    let mut no_labels = frontend.clone();
    no_labels.labels = None;
    assert_eq!(p.decide_image(&no_labels, "nginx:1").rule, "hub-pinned");
}

#[test]
fn default_verdict_allow() {
    let p = policy(&format!("{}defaultVerdict: allow\n", header()));
    assert_eq!(
        verdict(&p, "x", "anything.io/x:1"),
        (ImageVerdict::Allowed, "default".into())
    );
    assert_eq!(
        verdict(&p, "x", "Bad Ref").0,
        ImageVerdict::Denied,
        "an unparseable reference is never allowed by default"
    );
}

#[test]
fn a_review_with_a_denied_image_is_denied_with_every_reason() {
    let d = policy(EXAMPLE).decide(&review(
        Api::AdmissionReview,
        "default",
        &["nginx:1.25", "nginx", "quay.io/x:1"],
        &[],
    ));
    assert!(!d.allowed);
    assert_eq!(
        d.images
            .iter()
            .filter(|i| i.verdict == ImageVerdict::Denied)
            .count(),
        2
    );
    assert!(
        d.message.contains("\"nginx\"") && d.message.contains("quay.io/x:1"),
        "{}",
        d.message
    );
    assert!(
        !d.message.contains("nginx:1.25\""),
        "allowed images are not in the denial: {}",
        d.message
    );
    assert_eq!(d.audit_annotations["denied-images"], "nginx, quay.io/x:1");
    assert_eq!(d.audit_annotations["decision"], "denied");
}

fn problems(yaml: &str) -> String {
    Policy::from_yaml(yaml)
        .expect_err("should be refused")
        .to_string()
}

#[test]
fn invalid_files_name_the_field_and_the_problem() {
    assert_eq!(
        problems("apiVersion: v1\nkind: ConfigMap\n"),
        "invalid policy: apiVersion: expected imagegate.dev/v1alpha1, got \"v1\"; kind: expected ImagePolicy, got \"ConfigMap\""
    );
    let e = problems(&format!(
        "{}rules:\n- name: a\n  registry: [docker.io]\n",
        header()
    ));
    assert!(
        e.contains("rules[0]") && e.contains("unknown field `registry`"),
        "{e}"
    );
    let e = problems(&format!("{}mode: strict\n", header()));
    assert!(
        e.contains("mode") && e.contains("unknown variant `strict`"),
        "{e}"
    );
    let e = problems(&format!(
        "{}rules:\n- name: a\n  denyLatest: maybe\n",
        header()
    ));
    assert!(e.contains("rules[0].denyLatest"), "{e}");
    let e = problems(&format!(
        "{}rules:\n- name: a\n  registries: [docker.io, 'https://x']\n- name: a\n  repositories: {{allow: [nginx]}}\n",
        header()
    ));
    assert!(
        e.contains(
            "rules[0].registries[1]: `https://x` is not a registry: write the host without a scheme"
        ),
        "{e}"
    );
    assert!(
        e.contains("rules[1].name: \"a\" is used by an earlier rule"),
        "{e}"
    );
    assert!(
        e.contains("rules[1].repositories.allow[0]: `nginx` can never match"),
        "{e}"
    );
    let e = problems(&format!("{}exemptNamespaces: ['[']\n", header()));
    assert!(e.contains("exemptNamespaces[0]"), "{e}");
    let e = problems("apiVersion: [\n");
    assert!(e.starts_with("invalid policy: "), "{e}");
    let e = problems("");
    assert!(e.contains("apiVersion") || e.contains("missing"), "{e}");
}

#[test]
fn a_rule_must_select_something_and_star_selects_every_registry() {
    let e = Policy::from_yaml(&format!("{}rules:\n- name: k\n", header()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rules[0]: the rule selects no image"), "{e}");
    let e = Policy::from_yaml(&format!(
        "{}rules:\n- name: k\n  denyLatest: true\n  repositories: {{deny: ['docker.io/x/*']}}\n",
        header()
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("selects no image"),
        "deny alone selects nothing: {e}"
    );

    let any = policy(&format!(
        "{}rules:\n- name: any\n  registries: ['*']\n  denyLatest: true\n",
        header()
    ));
    assert_eq!(verdict(&any, "x", "nginx:1.25").0, ImageVerdict::Allowed);
    assert_eq!(
        verdict(&any, "x", "registry.internal:5000/a/b:1").0,
        ImageVerdict::Allowed
    );
    assert_eq!(verdict(&any, "x", "nginx:latest").0, ImageVerdict::Denied);
    // `*` names no host: break-glass may not reach any host it likes.
    let r = crate::reference::Reference::parse("evil.example/x:1").unwrap();
    assert!(!any.knows_registry(&r));
}

/// Found: 891 of the example policy's 1,480 prefixes loaded, one of them
/// ending in `- name: k`, a rule that matched every image. A prefix may
/// still be a valid, smaller policy (files are taken only whole by the
/// file watcher, see `server::watch`), but none may select everything.
#[test]
fn no_prefix_of_the_example_policy_loads_a_rule_selecting_everything() {
    let mut loaded = 0;
    for end in 0..=EXAMPLE.len() {
        if !EXAMPLE.is_char_boundary(end) {
            continue;
        }
        let Ok(p) = Policy::from_yaml(&EXAMPLE[..end]) else {
            continue;
        };
        loaded += 1;
        for rule in &p.rules {
            assert!(
                !rule.registries.is_empty() || !rule.allow.is_empty(),
                "the {end}-byte prefix loads rule {:?} selecting every image",
                rule.name
            );
        }
        // Whatever loads decides an unknown registry as the whole does.
        assert_eq!(
            p.decide_image(&ns("x"), "evil.example/miner:1").verdict,
            ImageVerdict::Denied,
            "the {end}-byte prefix allows an unknown registry"
        );
    }
    assert!(loaded > 0 && loaded < EXAMPLE.len(), "{loaded}");
}

#[test]
fn a_decision_is_found_again_by_its_borrowed_key() {
    let p = policy(EXAMPLE);
    let first = p.decide_image(&ns("default"), "nginx:1.25");
    assert_eq!(p.decisions.len(), 1);
    // The borrowed key hashes and compares as the owned key stored.
    let found = p
        .decisions
        .get(&DecisionKey("default", "nginx:1.25"))
        .expect("the decision is remembered under the owned key");
    assert_eq!((found.verdict, &found.rule), (first.verdict, &first.rule));
    assert!(
        p.decisions
            .get(&DecisionKey("default", "nginx:1.26"))
            .is_none()
    );
    assert!(
        p.decisions
            .get(&DecisionKey("other", "nginx:1.25"))
            .is_none()
    );
}

/// The summary's wording, case by case: what the answers and the audit
/// annotations carry, joined in the images' order, empty parts included.
#[test]
fn a_summary_joins_rules_reasons_and_images_in_order() {
    let p = policy(&format!(
        "{}rules:\n  - name: internal\n    registries: [registry.internal]\n",
        header()
    ));
    let image = |name: &str, verdict: ImageVerdict, rule: &str, reason: &str| {
        let mut d = p.decide_image(&ns("apps"), name);
        let changed = Arc::make_mut(&mut d);
        changed.verdict = verdict;
        changed.rule = rule.to_string();
        changed.reason = reason.to_string();
        d
    };
    let none = ReviewDecision::summarise(Vec::new(), BTreeMap::new());
    assert!(none.allowed);
    assert_eq!(none.message, "no images to check");
    assert_eq!(none.audit_annotations["decision"], "allowed");

    let one = ReviewDecision::summarise(
        vec![image("a", ImageVerdict::Allowed, "internal", "")],
        BTreeMap::new(),
    );
    assert_eq!(one.message, "1 image allowed (internal)");

    let audited = ReviewDecision::summarise(
        vec![
            image("a", ImageVerdict::Allowed, "internal", ""),
            image("", ImageVerdict::AuditDenied, "", "no rule"),
            image("c", ImageVerdict::AuditDenied, "x", "latest"),
        ],
        BTreeMap::new(),
    );
    assert!(audited.allowed);
    assert_eq!(audited.message, "3 images allowed (internal, , x)");
    assert_eq!(
        audited.warnings,
        [
            "imagegate audit mode: would deny: no rule",
            "imagegate audit mode: would deny: latest"
        ]
    );
    assert_eq!(audited.audit_annotations["audit-would-deny"], ", c");
    assert!(!audited.audit_annotations.contains_key("denied-images"));

    let denied = ReviewDecision::summarise(
        vec![
            image("", ImageVerdict::Denied, "default", ""),
            image("b", ImageVerdict::Allowed, "internal", ""),
            image("c", ImageVerdict::Denied, "default", "not allowed"),
        ],
        BTreeMap::from([("break-glass".to_string(), "no".to_string())]),
    );
    assert!(!denied.allowed);
    assert_eq!(denied.message, "; not allowed");
    assert_eq!(denied.audit_annotations["denied-images"], ", c");
    assert_eq!(denied.audit_annotations["decision"], "denied");
    assert_eq!(denied.audit_annotations["break-glass"], "no");
    assert!(denied.warnings.is_empty());
}
