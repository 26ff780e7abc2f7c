//! What the webhook is asked to review, whichever API the request came
//! through. The two decoders turn their wire formats into [`Review`]; the
//! policy only ever sees this type.
//!
//! - [`admission`]: AdmissionReview v1 and v1beta1;
//! - [`image_review`]: ImageReview (`imagepolicy.k8s.io/v1alpha1`);
//! - `pod_spec`: every image a pod spec or template names, with its JSON
//!   pointer.

pub mod admission;
mod answer_json;
pub mod image_review;
mod pod_spec;
mod skim;

use std::collections::BTreeMap;

use serde::{Serialize, de::DeserializeOwned};

/// A review body decoded whole into `T`, or why not.
///
/// JSON is UTF-8 (RFC 8259, section 8.1): the body is checked once, whole,
/// and serde_json then takes each string it keeps as it is. From bytes it
/// checks every string again, key by key, which was about an eighth of
/// decoding an AdmissionReview (callgrind: 70,976 -> 62,735 instructions
/// for the bench's 3.4 KB Pod). It is also stricter: bytes that are not
/// UTF-8 in a field nobody reads no longer pass. The apiserver's encoder
/// never writes them, and a body with them is answered as any unreadable
/// review is: denied, with its uid when it has one.
/// <https://www.rfc-editor.org/rfc/rfc8259#section-8.1>
fn decode_whole<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("the body is not UTF-8 text: {e}"))?;
    if let Some(value) = skim::from_str(text) {
        return Ok(value);
    }
    serde_json::from_str(text).map_err(|e| e.to_string())
}

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
    /// Where the `image` field is inside the object, when the request
    /// carries the object (for digest pinning).
    pub pointer: Option<Pointer>,
    /// False on an UPDATE whose old object already had this image: it was
    /// admitted then, and a scale-down or a label change must never wait
    /// on a registry.
    pub changed: bool,
}

/// Where an image is in a reviewed object: a JSON pointer (RFC 6901) such
/// as `/spec/template/spec/containers/1/image`, kept as its parts and
/// written out only for a patch. Every image of every review has one and
/// few are patched; formatting each up front was about 4% of an
/// AdmissionReview's instructions (callgrind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pointer {
    /// The pod spec (`/spec`, `/spec/template/spec`, ...; empty for the
    /// `EphemeralContainers` kind, whose list is at the top).
    pub spec: &'static str,
    /// The list in it (`containers`, `volumes`, ...).
    pub list: &'static str,
    pub index: usize,
    /// `image`, or `image/reference` for an image volume.
    pub field: &'static str,
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.spec, self.list, self.index, self.field
        )
    }
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

#[cfg(test)]
mod tests {
    use super::Pointer;

    #[test]
    fn a_pointer_is_written_out_as_rfc_6901() {
        let at = |spec, list, index, field| {
            Pointer {
                spec,
                list,
                index,
                field,
            }
            .to_string()
        };
        assert_eq!(
            at("/spec/template/spec", "initContainers", 1, "image"),
            "/spec/template/spec/initContainers/1/image"
        );
        assert_eq!(
            at("/spec", "volumes", 0, "image/reference"),
            "/spec/volumes/0/image/reference"
        );
        // The EphemeralContainers kind keeps its list at the top.
        assert_eq!(
            at("", "ephemeralContainers", 2, "image"),
            "/ephemeralContainers/2/image"
        );
    }
}
