//! The OCI and Docker media types both halves read: the webhook when it
//! resolves a tag, the agent when it reads containerd's image records.

/// An OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// A Docker manifest list (the index before OCI).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// An OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// A Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Media types that list per-platform manifests.
pub const INDEXES: [&str; 2] = [OCI_INDEX, DOCKER_MANIFEST_LIST];
/// Every manifest media type a registry is asked for, indexes included.
pub const MANIFESTS: [&str; 4] = [
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
];

/// Whether `media_type` lists per-platform manifests.
pub fn is_index(media_type: &str) -> bool {
    INDEXES.contains(&media_type)
}
