//! What the webhook is asked to review, whichever API the request came
//! through. The two decoders turn their wire formats into [`Review`]; the
//! policy only ever sees this type.
//!
//! - [`admission`]: AdmissionReview v1 and v1beta1;
//! - [`image_review`]: ImageReview (`imagepolicy.k8s.io/v1alpha1`);
//! - `pod_spec`: every image a pod spec or template names, with its JSON
//!   pointer.

pub mod admission;
pub mod image_review;
mod pod_spec;

use std::collections::BTreeMap;

use serde::Serialize;

/// The apiserver path a review came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Api {
    /// The built-in ImagePolicyWebhook plugin (`imagepolicy.k8s.io/v1alpha1`).
    ImageReview,
    /// A ValidatingAdmissionWebhook (`admission.k8s.io/v1` or `v1beta1`).
    AdmissionReview,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::ImageReview => "ImageReview",
            Api::AdmissionReview => "AdmissionReview",
        }
    }
}

/// Where in a pod spec an image was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerKind {
    Container,
    InitContainer,
    EphemeralContainer,
    /// An image volume (`spec.volumes[].image.reference`): mounted, not
    /// run, but pulled from the same registries.
    ImageVolume,
}

/// One image to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageUse {
    /// The image exactly as written in the spec (may be empty or invalid).
    pub image: String,
    /// The container's name, when the request carries it.
    pub container: Option<String>,
    pub kind: ContainerKind,
    /// JSON pointer to the `image` field inside the object, when the request
    /// carries the object (for digest pinning).
    pub pointer: Option<String>,
    /// False on an UPDATE whose old object already had this image: it was
    /// admitted then, and a scale-down or a label change must never wait
    /// on a registry.
    pub changed: bool,
}

/// What the policy needs to know about a request besides its images.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    /// Namespace of the object (empty for cluster-scoped objects).
    pub namespace: String,
    /// The object's labels; `None` when the API does not carry them
    /// (ImageReview).
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations that may ask for break-glass: the object's and its pod
    /// template's (AdmissionReview), or the `*.image-policy.k8s.io/*` ones
    /// the apiserver forwards (ImageReview).
    pub annotations: BTreeMap<String, String>,
}

/// An object a review names (the reviewed object, or its controller), as
/// the apiserver identifies it: what an Event or a report result is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectId {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// A request to review, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Review {
    pub api: Api,
    pub subject: Subject,
    /// Every image the object would run, in spec order.
    pub images: Vec<ImageUse>,
    /// Object kind (`Pod`, `Deployment`, ...) when known.
    pub kind: Option<String>,
    /// Object name when known.
    pub name: Option<String>,
    /// Requesting user when known.
    pub user: Option<String>,
    /// `request.dryRun`: decide, but change nothing.
    pub dry_run: bool,
    /// The object's identity, when the request carries it (AdmissionReview
    /// of a CREATE or UPDATE: the apiserver has set its name and uid before
    /// validating webhooks are called).
    pub object: Option<ObjectId>,
    /// The object's controller (`ownerReferences[controller=true]`): where
    /// a denial is told, since a denied pod never exists and its
    /// ReplicaSet or Job makes another.
    pub controller: Option<ObjectId>,
}
