//! AdmissionReview (`admission.k8s.io/v1` and `v1beta1`): decoding a request
//! into a [`Review`] and encoding the response.
//!
//! A response must carry the request's uid or the apiserver rejects it, and
//! then `failurePolicy` decides, which with `Ignore` means an allow. So once
//! the uid can be read, every problem with the rest of the request is
//! answered as a denial carrying that uid, never as an HTTP error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    Api, ContainerKind, ObjectId, Review, Subject,
    answer_json::{self, Writer},
    pod_spec::{self, Object, Spec},
};

pub const API_VERSIONS: [&str; 2] = ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"];
pub const KIND: &str = "AdmissionReview";

/// What came of decoding a body.
#[derive(Debug)]
pub enum Decoded {
    /// A review to decide on.
    Review(Box<AdmissionRequest>),
    /// The uid was readable but the rest was not: answer a denial with it.
    Unreadable {
        api_version: String,
        uid: String,
        reason: String,
    },
}

/// A decoded request: the review, and what the response must echo.
#[derive(Debug)]
pub struct AdmissionRequest {
    pub api_version: String,
    pub uid: String,
    /// CREATE, UPDATE, DELETE or CONNECT.
    pub operation: String,
    /// `None` when the operation or kind carries no images to check; the
    /// string says why, for the log.
    pub review: Result<Review, &'static str>,
}

/// The body is not an AdmissionReview this webhook can answer at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadRequest {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error(
        "expected an AdmissionReview of apiVersion admission.k8s.io/v1 or v1beta1, got kind \
         {kind:?} apiVersion {api_version:?}"
    )]
    WrongType { kind: String, api_version: String },
    #[error("the AdmissionReview has no request.uid: {0}")]
    NoUid(String),
}

/// The body as decoded; `PartialEq` lets the tests hold the two decoders
/// (skim, serde_json) to the same result.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Envelope {
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<Request>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    operation: String,
    #[serde(default)]
    user_info: Option<UserInfo>,
    /// Boxed: the objects are the largest values decoded, and serde moves
    /// a value up through each layer that built it (unboxed, those moves
    /// were 1,800 of the 43,400 instructions of decoding the bench's Pod).
    #[serde(default)]
    object: Option<Box<Object>>,
    /// The object before an UPDATE.
    #[serde(default)]
    old_object: Option<Box<Object>>,
    #[serde(default)]
    dry_run: Option<bool>,
}

#[derive(Debug, PartialEq, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    version: String,
    kind: String,
}

#[derive(Debug, PartialEq, Deserialize)]
struct UserInfo {
    username: Option<String>,
}

/// Only what is needed to answer: read when the full decode fails.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UidOnly {
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<UidRequest>,
}

#[derive(Deserialize)]
struct UidRequest {
    uid: Option<String>,
}

/// Decodes an AdmissionReview body.
pub fn decode(body: &[u8]) -> Result<Decoded, BadRequest> {
    match super::decode_whole::<Envelope>(body) {
        Ok(envelope) => from_envelope(envelope),
        Err(full_error) => {
            // Read again for the uid alone, so the answer can carry it.
            let partial: UidOnly =
                serde_json::from_slice(body).map_err(|e| BadRequest::NotJson(e.to_string()))?;
            let api_version = check_type(partial.kind, partial.api_version)?;
            let uid = partial
                .request
                .and_then(|r| r.uid)
                .ok_or_else(|| BadRequest::NoUid(full_error.clone()))?;
            Ok(Decoded::Unreadable {
                api_version,
                uid,
                reason: format!("the AdmissionReview request cannot be read: {full_error}"),
            })
        }
    }
}

fn check_type(kind: Option<String>, api_version: Option<String>) -> Result<String, BadRequest> {
    let kind = kind.unwrap_or_default();
    let api_version = api_version.unwrap_or_default();
    if kind != KIND || !API_VERSIONS.contains(&api_version.as_str()) {
        return Err(BadRequest::WrongType { kind, api_version });
    }
    Ok(api_version)
}

fn from_envelope(envelope: Envelope) -> Result<Decoded, BadRequest> {
    let api_version = check_type(envelope.kind, envelope.api_version)?;
    let request = envelope
        .request
        .ok_or_else(|| BadRequest::NoUid("the AdmissionReview has no request".into()))?;
    let uid = request.uid.clone();
    let operation = request.operation.clone();
    match to_review(request) {
        Ok(review) => Ok(Decoded::Review(Box::new(AdmissionRequest {
            api_version,
            uid,
            operation,
            review,
        }))),
        Err(reason) => Ok(Decoded::Unreadable {
            api_version,
            uid,
            reason,
        }),
    }
}

/// Every (API group, resource, kind) the webhook checks: what its
/// ValidatingWebhookConfiguration must send it (deploy/ is tested against
/// this list).
pub const CHECKED_RESOURCES: &[(&str, &str, &str)] = &[
    ("", "pods", "Pod"),
    ("", "pods/ephemeralcontainers", "Pod"),
    ("", "podtemplates", "PodTemplate"),
    ("", "replicationcontrollers", "ReplicationController"),
    ("apps", "deployments", "Deployment"),
    ("apps", "replicasets", "ReplicaSet"),
    ("apps", "daemonsets", "DaemonSet"),
    ("apps", "statefulsets", "StatefulSet"),
    ("batch", "jobs", "Job"),
    ("batch", "cronjobs", "CronJob"),
];

/// Where a kind keeps its pod spec.
enum SpecAt {
    /// `spec` (Pod).
    Pod,
    /// `spec.template.spec` (workloads, Job, ReplicationController).
    Template,
    /// `spec.jobTemplate.spec.template.spec` (CronJob).
    JobTemplate,
    /// `template.spec` (PodTemplate).
    PodTemplate,
    /// `ephemeralContainers` (the EphemeralContainers kind, Kubernetes 1.16-1.21).
    EphemeralContainers,
}

fn spec_at(group: &str, kind: &str) -> Option<SpecAt> {
    Some(match (group, kind) {
        ("", "Pod") => SpecAt::Pod,
        ("", "EphemeralContainers") => SpecAt::EphemeralContainers,
        ("", "PodTemplate") => SpecAt::PodTemplate,
        ("", "ReplicationController")
        | ("apps" | "extensions", "Deployment" | "ReplicaSet" | "DaemonSet")
        | ("apps", "StatefulSet")
        | ("batch", "Job") => SpecAt::Template,
        ("batch", "CronJob") => SpecAt::JobTemplate,
        _ => return None,
    })
}

/// The request as a review, `Ok(Err(why))` when there is nothing to check,
/// or `Err(reason)` when an object that should be checked cannot be read.
#[allow(clippy::result_large_err)]
fn to_review(request: Request) -> Result<Result<Review, &'static str>, String> {
    if !matches!(request.operation.as_str(), "CREATE" | "UPDATE") {
        return Ok(Err("only CREATE and UPDATE can bring new images"));
    }
    let kind = request.kind.kind.as_str();
    let Some(at) = spec_at(&request.kind.group, kind) else {
        return Ok(Err("this kind carries no pod spec"));
    };
    let object = request
        .object
        .ok_or_else(|| format!("the {kind} {} has no object to check", request.operation))?;
    let (mut images, mut annotations) = object_images(&at, kind, &object)?;
    // On UPDATE, only the images the old object did not have are new: the
    // others were admitted with it (a scale-down, a finalizer removed, a
    // label changed must never wait on a registry). An old object that
    // cannot be read leaves every image to be checked.
    if request.operation == "UPDATE"
        && let Some(old) = &request.old_object
        && let Ok((old_images, _)) = object_images(&at, kind, old)
    {
        let before: std::collections::HashSet<&str> =
            old_images.iter().map(|u| u.image.as_str()).collect();
        for image in &mut images {
            image.changed = !before.contains(image.image.as_str());
        }
    }
    let metadata = object.metadata.unwrap_or_default();
    // The object's own annotations win over its template's.
    if let Some(a) = metadata.annotations {
        annotations.extend(a);
    }
    let name = request
        .name
        .filter(|n| !n.is_empty())
        .or(metadata.name)
        .or(metadata.generate_name);
    let api_version = match (request.kind.group.as_str(), request.kind.version.as_str()) {
        (_, "") => None,
        ("", version) => Some(version.to_string()),
        (group, version) => Some(format!("{group}/{version}")),
    };
    let object = match (&api_version, &name, &metadata.uid) {
        (Some(api_version), Some(name), Some(uid)) if !uid.is_empty() => Some(ObjectId {
            api_version: api_version.clone(),
            kind: request.kind.kind.clone(),
            name: name.clone(),
            uid: uid.clone(),
        }),
        _ => None,
    };
    let controller = metadata
        .owner_references
        .into_iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| ObjectId {
            api_version: o.api_version,
            kind: o.kind,
            name: o.name,
            uid: o.uid,
        });
    Ok(Ok(Review {
        api: Api::AdmissionReview,
        subject: Subject {
            namespace: request.namespace.unwrap_or_default(),
            labels: Some(metadata.labels.unwrap_or_default()),
            annotations,
        },
        images,
        kind: Some(request.kind.kind),
        name,
        user: request.user_info.and_then(|u| u.username),
        dry_run: request.dry_run.unwrap_or(false),
        object,
        controller,
    }))
}

/// Every image `object` (of `kind`, its spec at `at`) would run or mount, in
/// spec order, and its pod template's annotations.
#[allow(clippy::type_complexity)]
fn object_images(
    at: &SpecAt,
    kind: &str,
    object: &Object,
) -> Result<(Vec<super::ImageUse>, BTreeMap<String, String>), String> {
    let missing = |path: &str| format!("the {kind} has no {path} to check");
    let mut images = Vec::new();
    let mut annotations = BTreeMap::new();
    let mut add_template_annotations = |template_meta: Option<&pod_spec::Metadata>| {
        if let Some(a) = template_meta.and_then(|m| m.annotations.as_ref()) {
            annotations.extend(a.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    };
    match at {
        SpecAt::Pod => {
            let spec = object.spec.as_ref().ok_or_else(|| missing("spec"))?;
            pod_spec::pod_spec_images(spec, "/spec", &mut images);
        }
        SpecAt::EphemeralContainers => pod_spec::container_images(
            object.ephemeral_containers.as_deref(),
            "",
            "ephemeralContainers",
            ContainerKind::EphemeralContainer,
            &mut images,
        ),
        SpecAt::PodTemplate => {
            let template = object
                .template
                .as_ref()
                .ok_or_else(|| missing("template"))?;
            add_template_annotations(template.metadata.as_ref());
            let spec = template
                .spec
                .as_ref()
                .ok_or_else(|| missing("template.spec"))?;
            pod_spec::pod_spec_images(spec, "/template/spec", &mut images);
        }
        SpecAt::Template => {
            let template = object
                .spec
                .as_ref()
                .and_then(|s| s.template.as_deref())
                .ok_or_else(|| missing("spec.template"))?;
            add_template_annotations(template.metadata.as_ref());
            let spec = template
                .spec
                .as_ref()
                .ok_or_else(|| missing("spec.template.spec"))?;
            pod_spec::pod_spec_images(spec, "/spec/template/spec", &mut images);
        }
        SpecAt::JobTemplate => {
            let job: &Spec = object
                .spec
                .as_ref()
                .and_then(|s| s.job_template.as_deref())
                .and_then(|t| t.spec.as_ref())
                .ok_or_else(|| missing("spec.jobTemplate.spec"))?;
            let template = job
                .template
                .as_deref()
                .ok_or_else(|| missing("spec.jobTemplate.spec.template"))?;
            add_template_annotations(template.metadata.as_ref());
            let spec = template
                .spec
                .as_ref()
                .ok_or_else(|| missing("spec.jobTemplate.spec.template.spec"))?;
            pod_spec::pod_spec_images(spec, "/spec/jobTemplate/spec/template/spec", &mut images);
        }
    }
    Ok((images, annotations))
}

/// A Pod as the apiserver lists it, as the review admission would have
/// made of its CREATE: the same images, namespace, labels and annotations,
/// decided by the same code. `None` when the item cannot be read as a Pod.
pub fn pod_review(item: &serde_json::Value) -> Result<Review, PodError> {
    pod_review_text(item).map_err(PodError)
}

/// A listed pod that cannot be reviewed, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PodError(String);

fn pod_review_text(item: &serde_json::Value) -> Result<Review, String> {
    let object: Object =
        serde_json::from_value(item.clone()).map_err(|e| format!("the pod cannot be read: {e}"))?;
    let metadata = object.metadata.as_ref();
    let request = Request {
        uid: String::new(),
        kind: GroupVersionKind {
            group: String::new(),
            version: "v1".into(),
            kind: "Pod".into(),
        },
        namespace: item["metadata"]["namespace"].as_str().map(str::to_string),
        name: metadata.and_then(|m| m.name.clone()),
        operation: "CREATE".into(),
        user_info: None,
        object: Some(Box::new(object)),
        old_object: None,
        dry_run: None,
    };
    match to_review(request)? {
        Ok(review) => Ok(review),
        Err(why) => Err(why.to_string()),
    }
}

/// The answer to one AdmissionReview.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    api_version: String,
    kind: &'static str,
    response: Answer,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    uid: String,
    allowed: bool,
    status: Status,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    audit_annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

#[derive(Debug, Serialize)]
struct Status {
    code: u16,
    message: String,
}

impl Response {
    /// An answer that allows the request (status 200), echoing its
    /// apiVersion and uid.
    pub fn allow(api_version: String, uid: String, message: String) -> Self {
        Self::new(api_version, uid, true, 200, message)
    }

    /// An answer that denies the request, echoing its apiVersion and uid.
    /// `code` says why (403 by policy, 400 unreadable, 5xx the webhook's
    /// own trouble); one that is not an error code is sent as 403, so a
    /// denial never carries a success status.
    pub fn deny(api_version: String, uid: String, code: u16, message: String) -> Self {
        let code = if code >= 400 { code } else { 403 };
        Self::new(api_version, uid, false, code, message)
    }

    fn new(api_version: String, uid: String, allowed: bool, code: u16, message: String) -> Self {
        Self {
            api_version,
            kind: KIND,
            response: Answer {
                uid,
                allowed,
                status: Status { code, message },
                warnings: Vec::new(),
                audit_annotations: BTreeMap::new(),
                patch_type: None,
                patch: None,
            },
        }
    }

    pub fn with_warnings(mut self, warnings: Vec<String>) -> Self {
        self.response.warnings = warnings;
        self
    }

    pub fn with_audit_annotations(mut self, annotations: BTreeMap<String, String>) -> Self {
        self.response.audit_annotations = annotations;
        self
    }

    /// Attaches a JSONPatch (already base64-encoded, as the API wants it).
    pub fn with_patch(mut self, base64_patch: String) -> Self {
        self.response.patch_type = Some("JSONPatch");
        self.response.patch = Some(base64_patch);
        self
    }

    /// The answer as JSON: what serde_json writes for it, faster
    /// (`answer_json`).
    pub fn to_json(&self) -> Vec<u8> {
        // Every key and constant, with room to spare: a buffer that had
        // to grow once cost 500 instructions.
        const FIXED_BYTES: usize = 256;
        let a = &self.response;
        let strings = self.api_version.len()
            + a.uid.len()
            + a.status.message.len()
            + a.warnings.iter().map(|w| w.len() + 3).sum::<usize>()
            + answer_json::map_len(&a.audit_annotations)
            + a.patch.as_ref().map_or(0, String::len);
        let mut w = Writer::with_capacity(FIXED_BYTES + strings);
        w.raw("{\"apiVersion\":")
            .string(&self.api_version)
            .raw(",\"kind\":")
            .string(self.kind)
            .raw(",\"response\":{\"uid\":")
            .string(&a.uid)
            .raw(",\"allowed\":")
            .bool(a.allowed)
            .raw(",\"status\":{\"code\":")
            .u16(a.status.code)
            .raw(",\"message\":")
            .string(&a.status.message)
            .raw("}");
        if !a.warnings.is_empty() {
            w.raw(",\"warnings\":").strings(&a.warnings);
        }
        if !a.audit_annotations.is_empty() {
            w.raw(",\"auditAnnotations\":").map(&a.audit_annotations);
        }
        if let Some(patch_type) = a.patch_type {
            w.raw(",\"patchType\":").string(patch_type);
        }
        if let Some(patch) = &a.patch {
            w.raw(",\"patch\":").string(patch);
        }
        w.raw("}}");
        w.finish()
    }
}

#[cfg(test)]
mod checked_resources_tests {
    use super::*;

    #[test]
    fn every_checked_resource_has_a_pod_spec_to_read() {
        for (group, _, kind) in CHECKED_RESOURCES {
            assert!(spec_at(group, kind).is_some(), "{group}/{kind}");
        }
    }
}

#[cfg(test)]
mod response_tests {
    use proptest::prelude::*;

    use super::{answer_json::any_text as text, *};

    proptest! {
        /// Whatever it holds, an answer is written as serde_json writes
        /// it.
        #[test]
        fn an_answer_is_written_as_serde_json_writes_it(
            api_version in text(),
            uid in text(),
            allowed in any::<bool>(),
            code in any::<u16>(),
            message in text(),
            warnings in prop::collection::vec(text(), 0..3),
            annotations in prop::collection::btree_map(text(), text(), 0..3),
            patch in prop::option::of(text()),
        ) {
            let mut answer = if allowed {
                Response::allow(api_version, uid, message)
            } else {
                Response::deny(api_version, uid, code, message)
            }
            .with_warnings(warnings)
            .with_audit_annotations(annotations);
            if let Some(patch) = patch {
                answer = answer.with_patch(patch);
            }
            let written = answer.to_json();
            prop_assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&answer).unwrap()
            );
        }
    }

    #[test]
    fn an_answer_echoes_the_uid_and_a_denial_never_carries_a_success_code() {
        let allow = serde_json::to_value(Response::allow(
            "admission.k8s.io/v1".into(),
            "u-1".into(),
            "ok".into(),
        ))
        .unwrap();
        assert_eq!(allow["response"]["uid"], "u-1");
        assert_eq!(allow["response"]["allowed"], true);
        assert_eq!(allow["response"]["status"]["code"], 200);
        for (asked, sent) in [(403, 403), (400, 400), (503, 503), (200, 403), (0, 403)] {
            let deny = serde_json::to_value(Response::deny(
                "admission.k8s.io/v1beta1".into(),
                "u-2".into(),
                asked,
                "no".into(),
            ))
            .unwrap();
            assert_eq!(deny["apiVersion"], "admission.k8s.io/v1beta1");
            assert_eq!(deny["response"]["uid"], "u-2");
            assert_eq!(deny["response"]["allowed"], false);
            assert_eq!(deny["response"]["status"]["code"], sent, "asked {asked}");
        }
    }
}
