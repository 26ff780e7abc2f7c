//! Finding an image's signatures in its registry, as cosign does: the OCI
//! 1.1 referrers API (or, where the registry has none, the `sha256-<hex>`
//! tag index that stands in for it) for Sigstore bundles, the
//! `sha256-<hex>.sig` tag for legacy signatures and the `sha256-<hex>.att`
//! tag for legacy attestations (`cosign attest` before v3). Through the resolver's
//! registry client (its credentials, auth, deadlines and bounded reads),
//! within one budget per lookup, cached by digest with the resolver's TTLs.
//!
//! Everything read is bounded: [`MAX_REFERRERS`] artifacts followed,
//! [`MAX_LEGACY_SIGNATURES`] legacy layers read, blobs of at most
//! [`MAX_BUNDLE_BYTES`]. Referrers are followed one level only (a referrer
//! of a referrer is never fetched), so an index that lists itself cannot
//! make a loop.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use tokio::sync::Semaphore;

use futures_util::{StreamExt, stream};
use imagegate_proto::{digest::Digest, media_types};
use serde::Deserialize;

use super::{
    formats,
    model::{Artifact, Format, Found},
};
use crate::{
    registry::{RegistryClient, RegistryError},
    ttl_cache::{Source, TtlCache},
};

/// Artifacts followed from a referrers list or tag index.
pub const MAX_REFERRERS: usize = 32;
/// Layers read from a legacy `.sig` manifest.
pub const MAX_LEGACY_SIGNATURES: usize = 32;
/// Largest bundle blob read (cosign's are a few KB).
pub const MAX_BUNDLE_BYTES: usize = 256 * 1024;
/// Largest simple-signing payload read.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Blobs fetched at once for one image.
const BLOBS_AT_ONCE: usize = 8;

/// How lookups behave: the resolver's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub timeout: Duration,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub cache_entries: u64,
}

/// Signature lookup metrics, registered with the resolver's.
#[derive(Clone)]
pub struct LookupMetrics {
    lookups: Family<OutcomeLabels, Counter>,
    cache_hits: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

impl LookupMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let lookups = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "signature_lookups",
            "Signature lookups that went to a registry, by outcome (found: the registry answered, \
             with or without signatures; failed: it did not)",
            lookups.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "signature_cache_hits",
            "Signature lookups answered from the cache",
            cache_hits.clone(),
        );
        Self {
            lookups,
            cache_hits,
        }
    }
}

/// Why signatures could not be looked up (not: that there are none).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LookupError(pub String);

type Lookup = Result<Arc<Found>, LookupError>;

/// Looks up and caches signatures.
pub struct Finder {
    registry: Arc<RegistryClient>,
    settings: Settings,
    /// (repository, digest, legacy attestations looked up) -> what was
    /// found and until when it is trusted.
    cache: TtlCache<(String, Digest, bool), Arc<Found>, LookupError>,
    /// Registry requests in flight, shared with resolution.
    in_flight: Arc<Semaphore>,
    metrics: LookupMetrics,
}

/// Numbers each lookup's result, so verdicts on it can be remembered: one
/// counter for the process, so results of two finders (a resolver rebuilt,
/// tests) never share a number.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

impl Finder {
    pub fn new(
        registry: Arc<RegistryClient>,
        in_flight: Arc<Semaphore>,
        settings: Settings,
        metrics: LookupMetrics,
    ) -> Self {
        Self {
            registry,
            cache: TtlCache::new(settings.cache_entries, settings.ttl, settings.negative_ttl),
            settings,
            in_flight,
            metrics,
        }
    }

    /// What is attached to `host/path@digest`, from the cache while it is
    /// fresh; cosign's `.att` tag too when `attestations` (bundles of
    /// either kind are always read). Concurrent lookups of one digest share
    /// one request (the cache's placeholder), and a lookup waits for a
    /// registry slot shared with resolution.
    pub async fn find(
        &self,
        host: &str,
        path: &str,
        digest: &Digest,
        attestations: bool,
    ) -> Lookup {
        let key = (format!("{host}/{path}"), digest.clone(), attestations);
        let (lookup, source) = self
            .cache
            .get_or_lookup(&key, || self.lookup(host, path, digest, attestations))
            .await;
        match source {
            Source::Cached => {
                self.metrics.cache_hits.inc();
            }
            Source::Looked(_) => {
                let outcome = if lookup.is_ok() { "found" } else { "failed" };
                self.metrics
                    .lookups
                    .get_or_create(&OutcomeLabels { outcome })
                    .inc();
            }
        }
        lookup
    }

    /// One lookup, within the budget (waiting for a slot included).
    async fn lookup(&self, host: &str, path: &str, digest: &Digest, attestations: bool) -> Lookup {
        let budget = self.settings.timeout;
        let work = async {
            let _permit = self
                .in_flight
                .acquire()
                .await
                .map_err(|_| "the webhook is shutting down".to_string())?;
            self.find_uncached(host, path, digest, attestations).await
        };
        match tokio::time::timeout(budget, work).await {
            Ok(Ok(mut found)) => {
                found.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                Ok(Arc::new(found))
            }
            Ok(Err(e)) => Err(LookupError(e)),
            Err(_) => Err(LookupError(format!(
                "looking up the signatures of {host}/{path}@{digest} timed out after {budget:?}"
            ))),
        }
    }

    async fn find_uncached(
        &self,
        host: &str,
        path: &str,
        digest: &Digest,
        attestations: bool,
    ) -> Result<Found, String> {
        let legacy_attestations = async {
            if attestations {
                self.legacy(host, path, digest, Legacy::Attestations).await
            } else {
                Ok(Found::default())
            }
        };
        let (bundles, signatures, attestations) = tokio::join!(
            self.bundles(host, path, digest),
            self.legacy(host, path, digest, Legacy::Signatures),
            legacy_attestations,
        );
        let mut found = bundles?;
        for legacy in [signatures?, attestations?] {
            found.artifacts.extend(legacy.artifacts);
            found.unreadable.extend(legacy.unreadable);
            found.truncated |= legacy.truncated;
        }
        Ok(found)
    }

    /// A lookup failure: the registry did not answer what it serves.
    fn failed(what: &str, e: RegistryError) -> String {
        format!("the registry did not answer {what}: {e}")
    }

    async fn bundles(&self, host: &str, path: &str, digest: &Digest) -> Result<Found, String> {
        let mut found = Found::default();
        let (index, format) = match self.registry.get_referrers(host, path, digest).await {
            Ok(Some(body)) => (Some(body), Format::BundleReferrer),
            // No referrers API: the referrers tag schema.
            Ok(None) => {
                let tag = digest.to_string().replace(':', "-");
                match self
                    .registry
                    .get_manifest(host, path, &tag, &[media_types::OCI_INDEX])
                    .await
                {
                    Ok(fetched) => (Some(fetched.body), Format::BundleTagIndex),
                    Err(RegistryError::NotFound(_)) => (None, Format::BundleTagIndex),
                    Err(RegistryError::TooLarge(e)) => {
                        found.unreadable.push(format!("the tag index {tag}: {e}"));
                        (None, Format::BundleTagIndex)
                    }
                    Err(e) => return Err(Self::failed("the referrers tag index", e)),
                }
            }
            Err(RegistryError::TooLarge(e)) => {
                found.unreadable.push(format!("the referrers list: {e}"));
                (None, Format::BundleReferrer)
            }
            Err(e) => return Err(Self::failed("the referrers API", e)),
        };
        let Some(index) = index else {
            return Ok(found);
        };
        let index: Manifest = match serde_json::from_slice(&index) {
            Ok(index) => index,
            Err(e) => {
                found
                    .unreadable
                    .push(format!("the referrers index is not an OCI index: {e}"));
                return Ok(found);
            }
        };
        let candidates: Vec<_> = index
            .manifests
            .iter()
            .filter(|d| d.artifact_type.as_deref().is_none_or(formats::is_bundle))
            .collect();
        found.truncated = candidates.len() > MAX_REFERRERS;
        // Futures made up front: a stream's `map` closure over borrowed
        // descriptors trips rustc's higher-ranked lifetime check in the
        // Send bound axum needs (rust-lang/rust#102211).
        let fetches: Vec<_> = candidates
            .into_iter()
            .take(MAX_REFERRERS)
            .map(|d| self.referrer(host, path, d, format))
            .collect();
        gather(fetches, found).await
    }

    /// One referrer manifest and its bundle; `None` when it holds no
    /// bundle (another kind of artifact).
    async fn referrer(
        &self,
        host: &str,
        path: &str,
        descriptor: &Descriptor,
        format: Format,
    ) -> Result<Option<Artifact>, Unread> {
        let digest = Digest::parse(&descriptor.digest).map_err(|_| {
            Unread::Unreadable(format!(
                "a referrer names {:?}, which is not a digest",
                descriptor.digest
            ))
        })?;
        let fetched = self
            .registry
            .get_manifest(host, path, digest.as_str(), &[media_types::OCI_MANIFEST])
            .await
            .map_err(|e| Unread::from(&digest, e))?;
        let manifest: Manifest = serde_json::from_slice(&fetched.body).map_err(|e| {
            Unread::Unreadable(format!("the referrer {digest} is not an OCI manifest: {e}"))
        })?;
        if manifest
            .media_type
            .as_deref()
            .is_some_and(|t| t != media_types::OCI_MANIFEST)
        {
            return Err(Unread::Unreadable(format!(
                "the referrer {digest} is a {:?}, not an OCI manifest",
                manifest.media_type.unwrap_or_default()
            )));
        }
        let Some(layer) = manifest
            .layers
            .iter()
            .find(|l| formats::is_bundle(&l.media_type))
        else {
            let said_bundle = [&descriptor.artifact_type, &manifest.artifact_type]
                .into_iter()
                .any(|t| t.as_deref().is_some_and(formats::is_bundle));
            if said_bundle {
                return Err(Unread::Unreadable(format!(
                    "the referrer {digest} says it is a bundle but has no bundle layer"
                )));
            }
            return Ok(None);
        };
        let blob = self
            .blob(host, path, &layer.digest, MAX_BUNDLE_BYTES)
            .await?;
        formats::bundle(&digest, format, &blob)
            .map(Some)
            .map_err(|e| Unread::Unreadable(format!("the bundle in {digest}: {e}")))
    }

    async fn blob(
        &self,
        host: &str,
        path: &str,
        digest: &str,
        limit: usize,
    ) -> Result<bytes::Bytes, Unread> {
        let digest = Digest::parse(digest).map_err(|_| {
            Unread::Unreadable(format!("a layer names {digest:?}, which is not a digest"))
        })?;
        self.registry
            .get_blob(host, path, &digest, limit)
            .await
            .map_err(|e| Unread::from(&digest, e))
    }

    async fn legacy(
        &self,
        host: &str,
        path: &str,
        digest: &Digest,
        kind: Legacy,
    ) -> Result<Found, String> {
        let mut found = Found::default();
        let tag = format!(
            "{}.{}",
            digest.to_string().replace(':', "-"),
            kind.tag_suffix()
        );
        let fetched = match self
            .registry
            .get_manifest(
                host,
                path,
                &tag,
                &[media_types::OCI_MANIFEST, media_types::DOCKER_MANIFEST],
            )
            .await
        {
            Ok(fetched) => fetched,
            Err(RegistryError::NotFound(_)) => return Ok(found),
            Err(RegistryError::TooLarge(e)) => {
                found.unreadable.push(format!("the tag {tag}: {e}"));
                return Ok(found);
            }
            Err(e) => return Err(Self::failed(kind.what(), e)),
        };
        let manifest: Manifest = match serde_json::from_slice(&fetched.body) {
            Ok(m) => m,
            Err(e) => {
                found
                    .unreadable
                    .push(format!("the tag {tag} is not a manifest: {e}"));
                return Ok(found);
            }
        };
        let layers: Vec<_> = manifest
            .layers
            .iter()
            .filter(|l| l.media_type == kind.layer_media_type())
            .collect();
        found.truncated = layers.len() > MAX_LEGACY_SIGNATURES;
        let manifest_digest = fetched.digest;
        let (manifest_digest, tag) = (&manifest_digest, &tag);
        let fetches: Vec<_> = layers
            .into_iter()
            .take(MAX_LEGACY_SIGNATURES)
            .map(|layer| async move {
                let blob = self
                    .blob(host, path, &layer.digest, kind.layer_limit())
                    .await?;
                let parsed = match kind {
                    Legacy::Signatures => {
                        formats::legacy(manifest_digest, &blob, &layer.annotations)
                    }
                    Legacy::Attestations => {
                        formats::legacy_attestation(manifest_digest, &blob, &layer.annotations)
                    }
                };
                parsed
                    .map(Some)
                    .map_err(|e| Unread::Unreadable(format!("a layer of {tag}: {e}")))
            })
            .collect();
        gather(fetches, found).await
    }
}

/// cosign's tags beside an image, before bundles.
#[derive(Clone, Copy)]
enum Legacy {
    /// `sha256-<hex>.sig`: simple-signing payloads.
    Signatures,
    /// `sha256-<hex>.att`: DSSE envelopes of in-toto statements.
    Attestations,
}

impl Legacy {
    fn tag_suffix(self) -> &'static str {
        match self {
            Self::Signatures => "sig",
            Self::Attestations => "att",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::Signatures => "the signature tag",
            Self::Attestations => "the attestation tag",
        }
    }

    fn layer_media_type(self) -> &'static str {
        match self {
            Self::Signatures => formats::SIMPLE_SIGNING,
            Self::Attestations => formats::DSSE_ENVELOPE,
        }
    }

    /// A simple-signing payload is small; an envelope carries a whole
    /// statement (an SBOM's can be large), as bundles do.
    fn layer_limit(self) -> usize {
        match self {
            Self::Signatures => MAX_PAYLOAD_BYTES,
            Self::Attestations => MAX_BUNDLE_BYTES,
        }
    }
}

/// Runs `fetches`, [`BLOBS_AT_ONCE`] at a time, into `found`: artifacts
/// kept, unreadable ones noted, a registry failure fails the lookup.
async fn gather(
    fetches: Vec<impl Future<Output = Result<Option<Artifact>, Unread>>>,
    mut found: Found,
) -> Result<Found, String> {
    let results: Vec<_> = stream::iter(fetches)
        .buffer_unordered(BLOBS_AT_ONCE)
        .collect()
        .await;
    for result in results {
        match result {
            Ok(Some(artifact)) => found.artifacts.push(artifact),
            Ok(None) => {}
            Err(Unread::Unreadable(e)) => found.unreadable.push(e),
            Err(Unread::Failed(e)) => return Err(e),
        }
    }
    Ok(found)
}

/// One artifact not read: unreadable (bad content: noted, the rest
/// stands), or the registry failing (the whole lookup fails).
enum Unread {
    Unreadable(String),
    Failed(String),
}

impl Unread {
    fn from(digest: &Digest, e: RegistryError) -> Self {
        match e {
            RegistryError::TooLarge(_)
            | RegistryError::Mismatch { .. }
            | RegistryError::NotFound(_)
            | RegistryError::InvalidDigest(_) => Self::Unreadable(format!("{digest}: {e}")),
            e => Self::Failed(Finder::failed(&format!("for {digest}"), e)),
        }
    }
}
