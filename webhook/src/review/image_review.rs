//! ImageReview (`imagepolicy.k8s.io/v1alpha1`), what the apiserver's
//! ImagePolicyWebhook plugin sends: images (containers, then init
//! containers), the namespace, and the pod annotations whose key contains
//! `.image-policy.k8s.io/`. No uid, names, labels or user.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    Api, ContainerKind, ImageUse, Review, Subject,
    answer_json::{self, Writer},
};

pub const API_VERSION: &str = "imagepolicy.k8s.io/v1alpha1";
pub const KIND: &str = "ImageReview";

/// The body is not an ImageReview this webhook can answer at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadRequest {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error(
        "expected an ImageReview of apiVersion {API_VERSION}, got kind {kind:?} apiVersion {api_version:?}"
    )]
    WrongType { kind: String, api_version: String },
}

/// The body as decoded; `PartialEq` lets the tests hold the two decoders
/// (skim, serde_json) to the same result.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Envelope {
    api_version: Option<String>,
    kind: Option<String>,
    spec: Option<Spec>,
}

#[derive(Debug, PartialEq, Deserialize)]
struct Spec {
    containers: Option<Vec<Container>>,
    annotations: Option<BTreeMap<String, String>>,
    namespace: Option<String>,
}

#[derive(Debug, PartialEq, Deserialize)]
struct Container {
    image: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeOnly {
    api_version: Option<String>,
    kind: Option<String>,
}

/// An ImageReview, or why its spec cannot be read. The second case is
/// answered as a denial, not an HTTP error: with `defaultAllow: true` an
/// error would let the pod in.
pub fn decode(body: &[u8]) -> Result<Result<Review, String>, BadRequest> {
    match super::decode_whole::<Envelope>(body) {
        Ok(envelope) => {
            check_type(envelope.kind, envelope.api_version)?;
            Ok(envelope
                .spec
                .map(to_review)
                .ok_or_else(|| "the ImageReview has no spec".to_string()))
        }
        Err(full_error) => {
            let partial: TypeOnly =
                serde_json::from_slice(body).map_err(|e| BadRequest::NotJson(e.to_string()))?;
            check_type(partial.kind, partial.api_version)?;
            Ok(Err(format!(
                "the ImageReview spec cannot be read: {full_error}"
            )))
        }
    }
}

fn check_type(kind: Option<String>, api_version: Option<String>) -> Result<(), BadRequest> {
    let kind = kind.unwrap_or_default();
    let api_version = api_version.unwrap_or_default();
    if kind != KIND || api_version != API_VERSION {
        return Err(BadRequest::WrongType { kind, api_version });
    }
    Ok(())
}

fn to_review(spec: Spec) -> Review {
    let images = spec
        .containers
        .unwrap_or_default()
        .into_iter()
        .map(|c| ImageUse {
            image: c.image.unwrap_or_default(),
            container: None,
            // The plugin lists init containers after containers without
            // saying which is which.
            kind: ContainerKind::Container,
            pointer: None,
            changed: true,
        })
        .collect();
    Review {
        api: Api::ImageReview,
        subject: Subject {
            namespace: spec.namespace.unwrap_or_default(),
            labels: None,
            annotations: spec.annotations.unwrap_or_default(),
        },
        images,
        kind: Some("Pod".into()),
        name: None,
        user: None,
        dry_run: false,
        object: None,
        controller: None,
    }
}

/// The answer to an ImageReview.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    api_version: &'static str,
    kind: &'static str,
    status: Status,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    allowed: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    audit_annotations: BTreeMap<String, String>,
}

impl Response {
    pub fn new(allowed: bool, reason: String, audit_annotations: BTreeMap<String, String>) -> Self {
        Self {
            api_version: API_VERSION,
            kind: KIND,
            status: Status {
                allowed,
                reason,
                audit_annotations,
            },
        }
    }

    /// The answer as JSON: what serde_json writes for it, faster
    /// (`answer_json`).
    pub fn to_json(&self) -> Vec<u8> {
        // Every key and constant, with room to spare: a buffer that had
        // to grow once cost 500 instructions.
        const FIXED_BYTES: usize = 160;
        let status = &self.status;
        let mut w = Writer::with_capacity(
            FIXED_BYTES + status.reason.len() + answer_json::map_len(&status.audit_annotations),
        );
        w.raw("{\"apiVersion\":")
            .string(self.api_version)
            .raw(",\"kind\":")
            .string(self.kind)
            .raw(",\"status\":{\"allowed\":")
            .bool(status.allowed);
        if !status.reason.is_empty() {
            w.raw(",\"reason\":").string(&status.reason);
        }
        if !status.audit_annotations.is_empty() {
            w.raw(",\"auditAnnotations\":")
                .map(&status.audit_annotations);
        }
        w.raw("}}");
        w.finish()
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
            allowed in any::<bool>(),
            reason in prop_oneof![Just(String::new()), text()],
            annotations in prop::collection::btree_map(text(), text(), 0..3),
        ) {
            let answer = Response::new(allowed, reason, annotations);
            prop_assert_eq!(
                String::from_utf8(answer.to_json()).unwrap(),
                serde_json::to_string(&answer).unwrap()
            );
        }
    }
}
