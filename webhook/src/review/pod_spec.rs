//! The parts of pod specs and pod templates the webhook reads. Everything
//! else in an object (volumes, managedFields, status...) is skipped by serde
//! without being built, which keeps decoding fast.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ContainerKind, ImageUse, Pointer};

#[derive(Debug, Default, PartialEq, Deserialize)]
pub struct Metadata {
    pub name: Option<String>,
    #[serde(rename = "generateName")]
    pub generate_name: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
    pub uid: Option<String>,
    #[serde(rename = "ownerReferences")]
    pub owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Debug, PartialEq, Deserialize)]
pub struct OwnerReference {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    pub controller: Option<bool>,
}

#[derive(Debug, PartialEq, Deserialize)]
pub struct Container {
    pub name: Option<String>,
    pub image: Option<String>,
}

/// A pod volume; only image volumes matter here.
#[derive(Debug, PartialEq, Deserialize)]
pub struct Volume {
    pub name: Option<String>,
    pub image: Option<ImageVolume>,
}

/// `volumes[].image` (Kubernetes 1.31+, the ImageVolume feature gate).
#[derive(Debug, PartialEq, Deserialize)]
pub struct ImageVolume {
    pub reference: Option<String>,
}

/// A PodSpec, a workload spec (with `template`) or a JobSpec (also with
/// `template`), or a CronJobSpec (with `jobTemplate`): their fields do not
/// collide, so one struct reads them all.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub containers: Option<Vec<Container>>,
    pub init_containers: Option<Vec<Container>>,
    pub ephemeral_containers: Option<Vec<Container>>,
    pub volumes: Option<Vec<Volume>>,
    pub template: Option<Box<Template>>,
    pub job_template: Option<Box<Template>>,
}

/// A PodTemplateSpec or a JobTemplateSpec: metadata and a spec.
#[derive(Debug, Default, PartialEq, Deserialize)]
pub struct Template {
    pub metadata: Option<Metadata>,
    pub spec: Option<Spec>,
}

/// Any object the webhook may be asked about.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    pub metadata: Option<Metadata>,
    pub spec: Option<Spec>,
    /// PodTemplate keeps its template at the top level.
    pub template: Option<Template>,
    /// The `EphemeralContainers` kind of Kubernetes 1.16-1.21.
    pub ephemeral_containers: Option<Vec<Container>>,
}

/// Appends the images of a PodSpec found at JSON pointer `at`.
pub fn pod_spec_images(spec: &Spec, at: &'static str, out: &mut Vec<ImageUse>) {
    let lists = [
        (&spec.containers, "containers", ContainerKind::Container),
        (
            &spec.init_containers,
            "initContainers",
            ContainerKind::InitContainer,
        ),
        (
            &spec.ephemeral_containers,
            "ephemeralContainers",
            ContainerKind::EphemeralContainer,
        ),
    ];
    for (list, field, kind) in lists {
        container_images(list.as_deref(), at, field, kind, out);
    }
    for (i, volume) in spec
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if let Some(image) = &volume.image {
            out.push(ImageUse {
                // A missing reference is checked as the empty one, and denied.
                image: image.reference.clone().unwrap_or_default(),
                container: volume.name.clone(),
                kind: ContainerKind::ImageVolume,
                pointer: Some(Pointer {
                    spec: at,
                    list: "volumes",
                    index: i,
                    field: "image/reference",
                }),
                changed: true,
            });
        }
    }
}

/// Appends the images of the container list `list` of the pod spec at
/// JSON pointer `spec`.
pub fn container_images(
    containers: Option<&[Container]>,
    spec: &'static str,
    list: &'static str,
    kind: ContainerKind,
    out: &mut Vec<ImageUse>,
) {
    for (i, c) in containers.unwrap_or_default().iter().enumerate() {
        out.push(ImageUse {
            // A missing image is checked as the empty reference, and denied.
            image: c.image.clone().unwrap_or_default(),
            container: c.name.clone(),
            kind,
            pointer: Some(Pointer {
                spec,
                list,
                index: i,
                field: "image",
            }),
            changed: true,
        });
    }
}
