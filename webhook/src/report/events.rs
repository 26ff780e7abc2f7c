//! Violations and admission decisions as Warning Events on the objects
//! they are about, recorded the way client-go's event recorder records
//! them, so `kubectl describe pod` reads as it does for the kubelet's own
//! events. Both become an [`Occurrence`] ([`Tell`]); the recorder knows
//! nothing else of them:
//!
//! - **Deduplicated**: one Event per object, reason and image; a repeat raises
//!   its `count` and `lastTimestamp` instead of adding an object. The name
//!   is derived from that key, so a new leader finds the Events the last one
//!   wrote and never counts a violation twice (an Event whose
//!   `lastTimestamp` is not older than the violation already has it).
//! - **Aggregated**: more than [`SIMILAR_LIMIT`] different images with the
//!   same reason on one object within [`SIMILAR_WINDOW_MS`] fold into one Event
//!   "(combined from similar events): ...", as client-go's aggregator does.
//! - **Rate-limited** per object: a bucket of [`BURST`] Events refilled one
//!   per [`REFILL_MS`] (client-go's spam filter defaults); what it drops is
//!   counted, not retried.
//!
//! Memory is bounded: every table holds at most [`TRACKED`] keys.
//!
//! The apiserver is behind [`EventSink`]; [`KubeEvents`] is the real one.

use std::{
    collections::{BTreeMap, HashSet},
    hash::{Hash, Hasher},
};

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use quick_cache::unsync::Cache;

use super::model::{Kind, NodeViolation, Subject};

/// client-go's `defaultSpamBurst`.
pub const BURST: f64 = 25.0;
/// client-go's `defaultSpamQPS` (1/300): one Event per 5 minutes after a
/// burst.
pub const REFILL_MS: f64 = 300_000.0;
/// client-go's aggregator: `maxEvents` different messages within
/// `maxIntervalInSeconds`.
pub const SIMILAR_LIMIT: usize = 10;
pub const SIMILAR_WINDOW_MS: i64 = 600_000;
/// Keys kept per table (Events seen, similar windows, rate buckets).
pub const TRACKED: usize = 4096;

/// What became of one violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// A new Event.
    Created { name: String },
    /// An existing Event's count went up.
    Counted { name: String, count: i32 },
    /// The Event already counts it (written by this or an earlier leader).
    AlreadyCounted,
    /// The object's rate limit dropped it.
    RateLimited,
    /// Not about an object (a container of no pod): no Event.
    NoPod,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("an Event with this name exists")]
    AlreadyExists,
    #[error("the apiserver: {0}")]
    Api(String),
}

/// Where Events go: the apiserver, or a fake in unit tests.
pub trait EventSink: Send + Sync {
    fn create(&self, event: &Event) -> impl Future<Output = Result<(), SinkError>> + Send;
    fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Event>, SinkError>> + Send;
    /// Sets `count`, `lastTimestamp` and `message` of an existing Event.
    fn recount(
        &self,
        namespace: &str,
        name: &str,
        count: i32,
        last: &Time,
        message: &str,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// One thing to tell in an Event, whatever it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occurrence {
    pub subject: Subject,
    /// The container, as `kubectl describe` points at it.
    pub field_path: Option<String>,
    pub reason: &'static str,
    /// What, besides the object and the reason, makes two occurrences the
    /// same Event (the image's digest, or the image).
    pub what: String,
    pub message: String,
    pub at_ms: i64,
    /// `source.component` and `reportingComponent`.
    pub component: &'static str,
    pub reporting_component: &'static str,
    /// `source.host` and `reportingInstance`: the node or the replica.
    pub instance: String,
    /// Set on the Event when it is created (the reporter selects its
    /// admission Events by label and reads their details back).
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// What can be told in an Event.
pub trait Tell {
    /// `None` when there is no object to attach it to.
    fn occurrence(&self) -> Option<Occurrence>;
}

impl Tell for NodeViolation {
    fn occurrence(&self) -> Option<Occurrence> {
        let pod = self.pod.as_ref()?;
        Some(Occurrence {
            subject: Subject::pod(pod),
            field_path: Some(format!("spec.containers{{{}}}", self.container)),
            reason: self.kind.reason(),
            what: self.digest.clone(),
            message: message(self),
            at_ms: self.at_ms,
            component: "imagegate-agent",
            reporting_component: "imagegate.dev/agent",
            instance: self.node.clone(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        })
    }
}

/// The Event a key last had, as far as this recorder knows.
#[derive(Clone)]
struct Seen {
    count: i32,
    last_ms: i64,
}

struct Window {
    start_ms: i64,
    messages: HashSet<u64>,
}

struct Bucket {
    tokens: f64,
    at_ms: i64,
}

pub struct Recorder<S> {
    sink: S,
    seen: Cache<String, Seen>,
    similar: Cache<(String, &'static str), Window>,
    buckets: Cache<String, Bucket>,
}

impl<S: EventSink> Recorder<S> {
    pub fn new(sink: S) -> Self {
        Self {
            sink,
            seen: Cache::new(TRACKED),
            similar: Cache::new(TRACKED),
            buckets: Cache::new(TRACKED),
        }
    }

    /// Records what `told` tells at `now_ms`.
    pub async fn record(&mut self, told: &impl Tell, now_ms: i64) -> Result<Recorded, SinkError> {
        let Some(o) = told.occurrence() else {
            return Ok(Recorded::NoPod);
        };
        let object = o.subject.key();
        if !self.take_token(&object, now_ms) {
            return Ok(Recorded::RateLimited);
        }
        let mut message = o.message.clone();
        let mut key = format!("{object}|{}|{}", o.reason, o.what);
        if self.is_one_of_many(&object, &o, now_ms) {
            message = format!("(combined from similar events): {message}");
            key = format!("{object}|{}|combined", o.reason);
        }
        let name = event_name(&o.subject, &key);
        let namespace = event_namespace(&o.subject);
        let at = o.at_ms;
        match self.seen.get(&key).cloned() {
            Some(seen) if seen.last_ms >= at => Ok(Recorded::AlreadyCounted),
            Some(seen) => {
                self.recount(namespace, &key, &name, seen.count + 1, at, &message)
                    .await
            }
            None => {
                let event = new_event(&o, &name, &message);
                match self.sink.create(&event).await {
                    Ok(()) => {
                        self.seen.insert(
                            key,
                            Seen {
                                count: 1,
                                last_ms: at,
                            },
                        );
                        Ok(Recorded::Created { name })
                    }
                    // Written before: by this replica before a restart, by
                    // an earlier leader, or by another replica. Its
                    // timestamps say whether it already counts this.
                    Err(SinkError::AlreadyExists) => {
                        let existing = self.sink.get(namespace, &name).await?;
                        let (count, last_ms) = existing
                            .as_ref()
                            .map(|e| {
                                (
                                    e.count.unwrap_or(1),
                                    e.last_timestamp
                                        .as_ref()
                                        .map_or(0, |t| t.0.as_millisecond()),
                                )
                            })
                            .unwrap_or((0, 0));
                        if last_ms >= at {
                            self.seen.insert(key, Seen { count, last_ms });
                            Ok(Recorded::AlreadyCounted)
                        } else {
                            self.recount(namespace, &key, &name, count + 1, at, &message)
                                .await
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    async fn recount(
        &mut self,
        namespace: &str,
        key: &str,
        name: &str,
        count: i32,
        at_ms: i64,
        message: &str,
    ) -> Result<Recorded, SinkError> {
        self.sink
            .recount(namespace, name, count, &time(at_ms), message)
            .await?;
        self.seen.insert(
            key.to_string(),
            Seen {
                count,
                last_ms: at_ms,
            },
        );
        Ok(Recorded::Counted {
            name: name.to_string(),
            count,
        })
    }

    /// client-go's spam filter: a token bucket per object.
    fn take_token(&mut self, object: &str, now_ms: i64) -> bool {
        let key = object.to_string();
        let mut bucket = self.buckets.get(&key).map_or(
            Bucket {
                tokens: BURST,
                at_ms: now_ms,
            },
            |b| Bucket {
                tokens: b.tokens,
                at_ms: b.at_ms,
            },
        );
        let refilled = (now_ms - bucket.at_ms).max(0) as f64 / REFILL_MS;
        bucket.tokens = (bucket.tokens + refilled).min(BURST);
        bucket.at_ms = now_ms;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        self.buckets.insert(key, bucket);
        allowed
    }

    /// client-go's aggregator: whether this message comes after
    /// [`SIMILAR_LIMIT`] different ones with the same reason on the same
    /// object within the window.
    fn is_one_of_many(&mut self, object: &str, o: &Occurrence, now_ms: i64) -> bool {
        let key = (object.to_string(), o.reason);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&o.what, &o.field_path).hash(&mut hasher);
        let message = hasher.finish();
        let mut window = match self.similar.get(&key) {
            Some(w) if now_ms - w.start_ms <= SIMILAR_WINDOW_MS => Window {
                start_ms: w.start_ms,
                messages: w.messages.clone(),
            },
            _ => Window {
                start_ms: now_ms,
                messages: HashSet::new(),
            },
        };
        // The first SIMILAR_LIMIT messages are Events of their own; a new
        // one after them folds into the combined Event.
        let many = if window.messages.contains(&message) {
            false
        } else if window.messages.len() < SIMILAR_LIMIT {
            window.messages.insert(message);
            false
        } else {
            true
        };
        self.similar.insert(key, window);
        many
    }
}

/// Where the Event lives: the object's namespace, or `default` for a
/// cluster-scoped object (as the apiserver requires of core/v1 Events).
fn event_namespace(subject: &Subject) -> &str {
    if subject.namespace.is_empty() {
        "default"
    } else {
        &subject.namespace
    }
}

/// The Event's name: the object's, then a hash of the key (names must be
/// unique per namespace and at most 253 characters; object names are at
/// most 253 too, so that part is cut to leave room).
fn event_name(subject: &Subject, key: &str) -> String {
    let mut hasher = Fnv64::default();
    // The bytes themselves: `Hash for str` adds std's own framing, which
    // is not promised to stay the same.
    hasher.write(key.as_bytes());
    let prefix: String = subject.name.chars().take(200).collect();
    format!("{prefix}.imagegate.{:016x}", hasher.finish())
}

/// FNV-1a: stable across processes and releases (std's hasher is not
/// guaranteed to be), so every leader derives the same name.
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn time(ms: i64) -> Time {
    Time(Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// What the Event says, in the words `kubectl describe pod` shows.
pub fn message(v: &NodeViolation) -> String {
    let image = if v.digest.is_empty() {
        v.image.clone()
    } else {
        format!("{} ({})", v.image, v.digest)
    };
    match v.kind {
        Kind::NeverAdmitted => format!(
            "container {}: image {image} was never admitted by imagegate; flagged on node {}: {}",
            v.container, v.node, v.reason
        ),
        Kind::Killed => format!(
            "container {}: stopped on node {} (enforce mode): image {image} was never admitted by \
             imagegate",
            v.container, v.node
        ),
        Kind::Unidentified => format!(
            "container {}: the imagegate agent on node {} cannot tell which image it runs: {}",
            v.container, v.node, v.reason
        ),
    }
}

fn new_event(o: &Occurrence, name: &str, message: &str) -> Event {
    let at = time(o.at_ms);
    let subject = &o.subject;
    Event {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(event_namespace(subject).to_string()),
            labels: Some(o.labels.clone()).filter(|l| !l.is_empty()),
            annotations: Some(o.annotations.clone()).filter(|a| !a.is_empty()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(subject.api_version.clone()),
            kind: Some(subject.kind.clone()),
            namespace: Some(subject.namespace.clone()).filter(|n| !n.is_empty()),
            name: Some(subject.name.clone()),
            uid: Some(subject.uid.clone()).filter(|u| !u.is_empty()),
            field_path: o.field_path.clone(),
            ..Default::default()
        },
        reason: Some(o.reason.to_string()),
        message: Some(message.to_string()),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some(o.component.into()),
            host: Some(o.instance.clone()),
        }),
        reporting_component: Some(o.reporting_component.into()),
        reporting_instance: Some(o.instance.clone()),
        first_timestamp: Some(at.clone()),
        last_timestamp: Some(at),
        count: Some(1),
        ..Default::default()
    }
}

/// The apiserver, through kube-rs.
pub struct KubeEvents {
    pub client: kube::Client,
}

impl EventSink for KubeEvents {
    async fn create(&self, event: &Event) -> Result<(), SinkError> {
        let namespace = event.metadata.namespace.as_deref().unwrap_or("default");
        let api: kube::Api<Event> = kube::Api::namespaced(self.client.clone(), namespace);
        match api.create(&kube::api::PostParams::default(), event).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Err(SinkError::AlreadyExists),
            Err(e) => Err(SinkError::Api(imagegate_plumbing::errors::error_chain(&e))),
        }
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Event>, SinkError> {
        let api: kube::Api<Event> = kube::Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name)
            .await
            .map_err(|e| SinkError::Api(imagegate_plumbing::errors::error_chain(&e)))
    }

    async fn recount(
        &self,
        namespace: &str,
        name: &str,
        count: i32,
        last: &Time,
        message: &str,
    ) -> Result<(), SinkError> {
        let api: kube::Api<Event> = kube::Api::namespaced(self.client.clone(), namespace);
        let patch = serde_json::json!({
            "count": count,
            "lastTimestamp": last,
            "message": message,
        });
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .map(|_| ())
        .map_err(|e| SinkError::Api(imagegate_plumbing::errors::error_chain(&e)))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub mod tests_support {
    use super::*;

    /// The Event `o` is created as.
    pub fn event(o: &Occurrence) -> Event {
        new_event(o, "test", &o.message)
    }
}
