//! Tag -> digest, against the real registry, through [`crate::registry`]
//! (bounded reads, auth, deadlines). This module adds what admission needs
//! around it: a budget per lookup and a bound on lookups in flight, a cache
//! with positive and negative TTLs where concurrent lookups of one
//! reference share one request (quick_cache's placeholder guard), index
//! expansion (at most [`MAX_INDEX_CHILDREN`] platforms), and metrics.
//! [`Resolver::resolve_each`] runs one review's lookups and returns their
//! outcomes; what they mean for a decision is the policy's to say.
//!
//! - `each`: one review's lookups, concurrently and bounded.

mod each;

pub use each::{Ask, MAX_LOOKUPS_PER_REVIEW, Outcome};

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use quick_cache::sync::Cache;

use crate::ttl_cache::Source;

use imagegate_proto::{
    MAX_INDEX_CHILDREN,
    digest::Digest,
    media_types,
    platform::{Child, Platform},
};

use crate::{
    reference::Reference,
    registry::{self, Credentials, RegistryClient, RegistryError},
};

const MANIFEST_MEDIA_TYPES: [&str; 4] = media_types::MANIFESTS;

/// How the resolver behaves; flags of `serve`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Overall budget of one resolution, retries and auth included. Keep it
    /// well inside the webhook's `timeoutSeconds`.
    pub timeout: Duration,
    /// How long a resolved digest is trusted before the tag is asked again.
    pub ttl: Duration,
    /// How long a failure is remembered (so a broken registry is not hammered).
    pub negative_ttl: Duration,
    /// Most references remembered.
    pub cache_entries: u64,
    /// Registry lookups in flight at once, all reviews together; more wait
    /// (within their budget).
    pub max_lookups_in_flight: usize,
    /// Hosts reached over plain HTTP. Nothing else is.
    pub plain_http: Vec<String>,
    /// Extra CA bundles (PEM), per host; trusted for that host only.
    pub ca_bundles: Vec<(String, PathBuf)>,
    pub credentials: Credentials,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
            cache_entries: 10_000,
            max_lookups_in_flight: 32,
            plain_http: Vec::new(),
            ca_bundles: Vec::new(),
            credentials: Credentials::default(),
        }
    }
}

/// What a reference resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The digest the tag (or reference) names: a manifest or an index.
    pub digest: Digest,
    /// For an index, the manifests it lists with their platforms (a node
    /// may report its own platform's); empty otherwise.
    pub children: Vec<Child>,
    /// The registry confirmed that this repository serves `digest`. False
    /// only for a digest taken as written (`verifyDigest: false`).
    pub verified: bool,
}

impl Resolved {
    /// Every digest a node may report for this image.
    pub fn all_digests(&self) -> Vec<Digest> {
        std::iter::once(self.digest.clone())
            .chain(self.children.iter().map(|c| c.digest.clone()))
            .collect()
    }
}

/// Why a reference could not be resolved. Messages are for the user who
/// created the pod: they say what to check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error(
        "the registry refused the credentials ({0}); check the pull secret imagegate uses for this registry"
    )]
    Unauthorized(String),
    #[error("the registry has no such manifest ({0})")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error(
        "the review names more than {max} distinct images to look up, and imagegate asks \
         registries about {max} per review; split the workload"
    )]
    TooManyLookups { max: usize },
    #[error(
        "the registry answered a different digest than asked: expected {expected}, got {actual}"
    )]
    Mismatch { expected: String, actual: String },
    #[error("the registry answered {0:?} as the digest, which is not a digest")]
    InvalidDigest(String),
    #[error(
        "the index {digest} lists {count} manifests, more than the {MAX_INDEX_CHILDREN} \
         imagegate follows; pin the image to one platform's manifest digest"
    )]
    TooManyChildren { digest: String, count: usize },
    #[error("{0}")]
    Registry(String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Resolver metrics, registered into the webhook's registry.
#[derive(Clone)]
pub struct ResolverMetrics {
    lookups: Family<OutcomeLabels, Counter>,
    cache_hits: Counter,
    seconds: Histogram,
    invalid_children: Counter,
    signatures: crate::signature::discover::LookupMetrics,
}

impl ResolverMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let lookups = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "registry_lookups",
            "Registry lookups by outcome (resolved, timeout, unauthorized, not_found, mismatch, error)",
            lookups.clone(),
        );
        // The outcomes of an unreachable registry, at 0 from the start: the
        // first failure is then an increase() an alert sees.
        for outcome in ["timeout", "error"] {
            let _ = lookups.get_or_create(&OutcomeLabels { outcome });
        }
        let cache_hits = Counter::default();
        registry.register(
            "resolution_cache_hits",
            "Resolutions answered from the cache (including waits on a lookup already in flight)",
            cache_hits.clone(),
        );
        let seconds = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.0005, 2.0, 14,
        ));
        registry.register(
            "registry_lookup_duration_seconds",
            "Time of registry lookups that went to a registry",
            seconds.clone(),
        );
        let invalid_children = Counter::default();
        registry.register(
            "index_children_invalid",
            "Children of indexes whose digest is not a digest, left out of approvals",
            invalid_children.clone(),
        );
        Self {
            lookups,
            cache_hits,
            seconds,
            invalid_children,
            signatures: crate::signature::discover::LookupMetrics::register(registry),
        }
    }
}

type Lookup = Result<Resolved, ResolveError>;

pub struct Resolver {
    settings: Settings,
    registry: std::sync::Arc<RegistryClient>,
    /// Lookups in flight, all reviews together (signature lookups too).
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
    /// Signature lookups: the same registry client, slots and TTLs.
    signatures: crate::signature::Finder,
    /// Reference (normalised) -> outcome and when it stops being trusted.
    cache: crate::ttl_cache::TtlCache<String, Resolved, ResolveError>,
    /// Digest -> the platform digests it lists: content-addressed, so never
    /// stale; only bounded.
    index_children: Cache<Digest, Vec<Child>>,
    metrics: ResolverMetrics,
}

impl Resolver {
    pub fn new(
        settings: Settings,
        metrics: ResolverMetrics,
    ) -> Result<Self, registry::ClientError> {
        let registry = RegistryClient::new(registry::Settings {
            timeout: settings.timeout,
            plain_http: settings.plain_http.clone(),
            ca_bundles: settings.ca_bundles.clone(),
            credentials: settings.credentials.clone(),
        })?;
        let entries = settings.cache_entries.max(1) as usize;
        let registry = std::sync::Arc::new(registry);
        let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(
            settings.max_lookups_in_flight.max(1),
        ));
        let signatures = crate::signature::Finder::new(
            registry.clone(),
            in_flight.clone(),
            crate::signature::discover::Settings {
                timeout: settings.timeout,
                ttl: settings.ttl,
                negative_ttl: settings.negative_ttl,
                cache_entries: settings.cache_entries,
            },
            metrics.signatures.clone(),
        );
        Ok(Self {
            registry,
            in_flight,
            signatures,
            cache: crate::ttl_cache::TtlCache::new(
                settings.cache_entries,
                settings.ttl,
                settings.negative_ttl,
            ),
            index_children: Cache::new(entries),
            settings,
            metrics,
        })
    }

    /// Signature lookups, within the same registry budget.
    pub fn signatures(&self) -> &crate::signature::Finder {
        &self.signatures
    }

    /// The digests `reference` names now. A reference with a digest is that
    /// digest; with `verify`, the registry must also have it. Concurrent
    /// calls for one reference share one lookup; outcomes are cached.
    pub async fn resolve(
        &self,
        reference: &Reference,
        verify: bool,
    ) -> Result<Resolved, ResolveError> {
        if let (Some(digest), false) = (&reference.digest, verify) {
            return Ok(Resolved {
                digest: digest.clone(),
                children: self.index_children.get(digest).unwrap_or_default(),
                verified: false,
            });
        }
        let key = reference.to_string();
        let (outcome, source) = self
            .cache
            .get_or_lookup(&key, || self.lookup(reference))
            .await;
        match source {
            Source::Cached => {
                self.metrics.cache_hits.inc();
            }
            // The pinned form (`name:tag@digest`) that digest pinning
            // writes is now known too: validating the mutated pod, even
            // with verifyDigest, needs no second lookup.
            Source::Looked(until) => {
                if let (Ok(resolved), None) = (&outcome, &reference.digest) {
                    let mut pinned = reference.clone();
                    pinned.digest = Some(resolved.digest.clone());
                    self.cache
                        .insert(pinned.to_string(), outcome.clone(), until);
                }
            }
        }
        outcome
    }

    /// One lookup against the registry, within the budget.
    async fn lookup(&self, reference: &Reference) -> Lookup {
        let started = Instant::now();
        let bounded = async {
            // Waiting for a turn counts against the budget too.
            let _turn = self.in_flight.acquire().await;
            self.ask_registry(reference).await
        };
        let outcome = match tokio::time::timeout(self.settings.timeout, bounded).await {
            Ok(outcome) => outcome,
            Err(_) => Err(ResolveError::Timeout(self.settings.timeout)),
        };
        self.metrics
            .seconds
            .observe(started.elapsed().as_secs_f64());
        let label = match &outcome {
            Ok(_) => "resolved",
            Err(ResolveError::Timeout(_)) => "timeout",
            Err(ResolveError::Unauthorized(_)) => "unauthorized",
            Err(ResolveError::NotFound(_)) => "not_found",
            Err(ResolveError::TooLarge(_)) => "too_large",
            Err(ResolveError::TooManyLookups { .. }) => "over_review_bound",
            Err(ResolveError::Mismatch { .. }) => "mismatch",
            Err(ResolveError::InvalidDigest(_)) => "invalid_digest",
            Err(ResolveError::TooManyChildren { .. }) => "too_many_children",
            Err(ResolveError::Registry(_)) => "error",
        };
        self.metrics
            .lookups
            .get_or_create(&OutcomeLabels { outcome: label })
            .inc();
        outcome
    }

    async fn ask_registry(&self, reference: &Reference) -> Lookup {
        let (host, path) = (reference.domain.as_str(), reference.path.as_str());
        let asked = match (&reference.digest, reference.effective_tag()) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.to_string(),
            (None, None) => "latest".to_string(),
        };
        let fail = |e| classify(e, reference, self.settings.timeout);
        // HEAD for the digest; a registry that sends none gets a GET, whose
        // bytes give the digest (and, for an index, the children).
        let head = self
            .registry
            .head_manifest(host, path, &asked, &MANIFEST_MEDIA_TYPES)
            .await
            .map_err(fail)?;
        let (digest, media_type, fetched) = match head.digest {
            Some(digest) => (digest, head.media_type, None),
            None => {
                let fetched = self
                    .registry
                    .get_manifest(host, path, &asked, &MANIFEST_MEDIA_TYPES)
                    .await
                    .map_err(fail)?;
                (
                    fetched.digest.clone(),
                    fetched.media_type.clone(),
                    Some(fetched),
                )
            }
        };
        if let Some(expected) = reference.digest.as_ref().filter(|d| **d != digest) {
            return Err(ResolveError::Mismatch {
                expected: expected.to_string(),
                actual: digest.to_string(),
            });
        }
        let children = self
            .children(reference, &digest, media_type.as_deref(), fetched)
            .await?;
        Ok(Resolved {
            digest,
            children,
            verified: true,
        })
    }

    /// The manifests an index lists (empty for a plain manifest), read once
    /// per digest. A registry that says the digest is a plain manifest is
    /// not asked for it: were it lying, the platforms would be missing from
    /// the approval and nodes would flag them, never admit more.
    async fn children(
        &self,
        reference: &Reference,
        digest: &Digest,
        media_type: Option<&str>,
        fetched: Option<registry::Fetched>,
    ) -> Result<Vec<Child>, ResolveError> {
        if let Some(children) = self.index_children.get(digest) {
            return Ok(children);
        }
        let plain = media_type.is_some_and(|t| MANIFEST_MEDIA_TYPES[..2].contains(&t));
        if plain && fetched.is_none() {
            return Ok(Vec::new());
        }
        let fetched = match fetched {
            Some(fetched) => fetched,
            None => self
                .registry
                .get_manifest(
                    &reference.domain,
                    &reference.path,
                    digest.as_str(),
                    &MANIFEST_MEDIA_TYPES,
                )
                .await
                .map_err(|e| classify(e, reference, self.settings.timeout))?,
        };
        #[derive(serde::Deserialize)]
        struct Manifest {
            manifests: Option<Vec<Descriptor>>,
        }
        #[derive(serde::Deserialize)]
        struct Descriptor {
            digest: String,
            platform: Option<Platform>,
        }
        let manifest: Manifest = serde_json::from_slice(&fetched.body).map_err(|e| {
            ResolveError::Registry(format!("the manifest {digest} is not JSON: {e}"))
        })?;
        // A child that is not a digest is nothing a runtime can pull: it is
        // left out (and said), never recorded for agents to refuse.
        let listed = manifest.manifests.unwrap_or_default();
        if listed.len() > MAX_INDEX_CHILDREN {
            return Err(ResolveError::TooManyChildren {
                digest: digest.to_string(),
                count: listed.len(),
            });
        }
        let mut children = Vec::new();
        for child in listed {
            match Digest::parse(&child.digest) {
                Ok(digest) => children.push(Child {
                    digest,
                    platform: child.platform,
                }),
                Err(e) => {
                    self.metrics.invalid_children.inc();
                    tracing::warn!(index = %digest, "an index lists a child that is not a digest, left out: {e}");
                }
            }
        }
        self.index_children.insert(digest.clone(), children.clone());
        Ok(children)
    }
}

fn classify(error: RegistryError, reference: &Reference, budget: Duration) -> ResolveError {
    match error {
        RegistryError::TimedOut => ResolveError::Timeout(budget),
        RegistryError::Unauthorized(text) => ResolveError::Unauthorized(text),
        RegistryError::NotFound(_) => ResolveError::NotFound(reference.to_string()),
        RegistryError::TooLarge(text) => ResolveError::TooLarge(text),
        RegistryError::Mismatch {
            expected, actual, ..
        } => ResolveError::Mismatch { expected, actual },
        RegistryError::InvalidDigest(text) => ResolveError::InvalidDigest(text),
        RegistryError::Other(text) => ResolveError::Registry(text),
    }
}
