//! Tag -> digest, against the real registry.
//!
//! Built on `oci-client` (the OCI distribution client maintained with the
//! oras/wasmCloud projects): it speaks the manifest API with the OCI and
//! Docker manifest and index media types in Accept, HEADs for
//! `Docker-Content-Digest` and falls back to GET, and runs the
//! `WWW-Authenticate` flow for Basic and Bearer-token registries. This
//! module adds what admission needs around it: a budget, a cache with
//! positive and negative TTLs where concurrent lookups of one reference
//! share one request (quick_cache's placeholder guard), index
//! expansion, per-registry TLS and plain-HTTP settings, and metrics.

pub mod apply;
pub mod credentials;

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use oci_client::{
    Client, Reference as OciReference,
    client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol},
    secrets::RegistryAuth,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use quick_cache::sync::Cache;

pub use credentials::Credentials;

use imagegate_proto::{
    MAX_INDEX_CHILDREN,
    digest::Digest,
    platform::{Child, Platform},
};

use crate::reference::Reference;

const INDEX_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    INDEX_MEDIA_TYPES[0],
    INDEX_MEDIA_TYPES[1],
];

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
}

impl ResolverMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let lookups = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "registry_lookups",
            "Registry lookups by outcome (resolved, timeout, unauthorized, not_found, mismatch, error)",
            lookups.clone(),
        );
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
        }
    }
}

type Outcome = Result<Resolved, ResolveError>;

pub struct Resolver {
    settings: Settings,
    default_client: Client,
    /// Clients of hosts with their own TLS or protocol settings.
    clients: HashMap<String, Client>,
    /// Reference (normalised) -> outcome and when it stops being trusted.
    cache: Cache<String, (Outcome, Instant)>,
    /// Digest -> the platform digests it lists: content-addressed, so never
    /// stale; only bounded.
    index_children: Cache<Digest, Vec<Child>>,
    metrics: ResolverMetrics,
}

impl Resolver {
    pub fn new(settings: Settings, metrics: ResolverMetrics) -> Result<Self, String> {
        let config = |host: Option<&str>| -> Result<ClientConfig, String> {
            let mut config = ClientConfig {
                read_timeout: Some(settings.timeout),
                connect_timeout: Some(settings.timeout),
                // Resolution expands indexes itself; it never pulls by platform.
                platform_resolver: None,
                ..Default::default()
            };
            if let Some(host) = host {
                if settings.plain_http.iter().any(|h| h == host) {
                    config.protocol = ClientProtocol::Http;
                }
                for (_, path) in settings.ca_bundles.iter().filter(|(h, _)| h == host) {
                    let pem = std::fs::read(path).map_err(|e| {
                        format!(
                            "cannot read the CA bundle {} for {host}: {e}",
                            path.display()
                        )
                    })?;
                    config.extra_root_certificates.push(Certificate {
                        encoding: CertificateEncoding::Pem,
                        data: pem,
                    });
                }
            }
            Ok(config)
        };
        let mut clients = HashMap::new();
        let special = settings
            .plain_http
            .iter()
            .chain(settings.ca_bundles.iter().map(|(h, _)| h));
        for host in special {
            clients.insert(host.clone(), Client::new(config(Some(host))?));
        }
        let entries = settings.cache_entries.max(1) as usize;
        Ok(Self {
            default_client: Client::new(config(None)?),
            clients,
            cache: Cache::new(entries),
            index_children: Cache::new(entries),
            settings,
            metrics,
        })
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
        loop {
            // One caller per key gets the guard and looks up; the others
            // wait for its outcome (quick_cache's placeholder).
            match self.cache.get_value_or_guard_async(&key).await {
                Ok((outcome, trusted_until)) if Instant::now() < trusted_until => {
                    self.metrics.cache_hits.inc();
                    return outcome;
                }
                // Past its TTL: drop it (unless someone just replaced it)
                // and ask again.
                Ok((_, stale_since)) => {
                    self.cache
                        .remove_if(&key, |(_, until)| *until == stale_since);
                }
                Err(guard) => {
                    let outcome = self.lookup(reference).await;
                    let ttl = if outcome.is_ok() {
                        self.settings.ttl
                    } else {
                        self.settings.negative_ttl
                    };
                    let trusted_until = Instant::now() + ttl;
                    let _ = guard.insert((outcome.clone(), trusted_until));
                    // The pinned form (`name:tag@digest`) that digest
                    // pinning writes is now known too: validating the
                    // mutated pod, even with verifyDigest, needs no second
                    // lookup.
                    if let (Ok(resolved), None) = (&outcome, &reference.digest) {
                        let mut pinned = reference.clone();
                        pinned.digest = Some(resolved.digest.clone());
                        self.cache
                            .insert(pinned.to_string(), (outcome.clone(), trusted_until));
                    }
                    return outcome;
                }
            }
        }
    }

    /// One lookup against the registry, within the budget.
    async fn lookup(&self, reference: &Reference) -> Outcome {
        let started = Instant::now();
        let outcome =
            match tokio::time::timeout(self.settings.timeout, self.ask_registry(reference)).await {
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

    async fn ask_registry(&self, reference: &Reference) -> Outcome {
        // Hosts with their own settings were lower-cased when read.
        let client = self
            .clients
            .get(&reference.domain.to_ascii_lowercase())
            .unwrap_or(&self.default_client);
        let auth = match self.settings.credentials.for_host(&reference.domain) {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let oci = to_oci(reference);
        // HEAD for the digest (oci-client falls back to GET when the HEAD
        // carries none, and checks a requested digest against the answer).
        let answered = client
            .fetch_manifest_digest(&oci, &auth)
            .await
            .map_err(|e| classify(e, reference))?;
        let digest = Digest::parse(&answered).map_err(|_| ResolveError::InvalidDigest(answered))?;
        if let Some(expected) = reference.digest.as_ref().filter(|d| **d != digest) {
            return Err(ResolveError::Mismatch {
                expected: expected.to_string(),
                actual: digest.to_string(),
            });
        }
        let children = self
            .children(client, &oci, &auth, &digest, reference)
            .await?;
        Ok(Resolved {
            digest,
            children,
            verified: true,
        })
    }

    /// The manifests an index lists (empty for a plain manifest), read once
    /// per digest.
    async fn children(
        &self,
        client: &Client,
        oci: &OciReference,
        auth: &RegistryAuth,
        digest: &Digest,
        reference: &Reference,
    ) -> Result<Vec<Child>, ResolveError> {
        if let Some(children) = self.index_children.get(digest) {
            return Ok(children);
        }
        let by_digest = oci.clone_with_digest(digest.to_string());
        let (body, got) = client
            .pull_manifest_raw(&by_digest, auth, &MANIFEST_MEDIA_TYPES)
            .await
            .map_err(|e| classify(e, reference))?;
        if got != digest.as_str() {
            return Err(ResolveError::Mismatch {
                expected: digest.to_string(),
                actual: got,
            });
        }
        #[derive(serde::Deserialize)]
        struct Manifest {
            manifests: Option<Vec<Descriptor>>,
        }
        #[derive(serde::Deserialize)]
        struct Descriptor {
            digest: String,
            platform: Option<Platform>,
        }
        let manifest: Manifest = serde_json::from_slice(&body).map_err(|e| {
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

fn to_oci(reference: &Reference) -> OciReference {
    match (&reference.tag, &reference.digest) {
        (Some(tag), Some(digest)) => OciReference::with_tag_and_digest(
            reference.domain.clone(),
            reference.path.clone(),
            tag.clone(),
            digest.to_string(),
        ),
        (None, Some(digest)) => OciReference::with_digest(
            reference.domain.clone(),
            reference.path.clone(),
            digest.to_string(),
        ),
        _ => OciReference::with_tag(
            reference.domain.clone(),
            reference.path.clone(),
            reference.effective_tag().unwrap_or("latest").to_string(),
        ),
    }
}

fn classify(
    error: oci_client::errors::OciDistributionError,
    reference: &Reference,
) -> ResolveError {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as Code};
    let text = with_causes(&error);
    match &error {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => {
            ResolveError::Unauthorized(text)
        }
        E::ImageManifestNotFoundError(_) => ResolveError::NotFound(reference.to_string()),
        E::RegistryError { envelope, .. } => {
            let codes = || envelope.errors.iter().map(|e| &e.code);
            if codes().any(|c| {
                matches!(
                    c,
                    Code::ManifestUnknown | Code::NameUnknown | Code::NotFound
                )
            }) {
                ResolveError::NotFound(reference.to_string())
            } else if codes().any(|c| matches!(c, Code::Unauthorized | Code::Denied)) {
                ResolveError::Unauthorized(text)
            } else {
                ResolveError::Registry(text)
            }
        }
        E::DigestError(_) => ResolveError::Mismatch {
            expected: reference
                .digest
                .as_ref()
                .map(Digest::to_string)
                .unwrap_or_default(),
            actual: text,
        },
        E::ServerError {
            code: 401 | 403, ..
        } => ResolveError::Unauthorized(text),
        E::ServerError { code: 404, .. } => ResolveError::NotFound(reference.to_string()),
        _ => ResolveError::Registry(text),
    }
}

/// An error with its causes: the top-level message of an HTTP error is often
/// only "error sending request"; what happened (refused, DNS, TLS) is below.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
