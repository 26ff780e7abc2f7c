//! Violations as Warning Events on their pods, recorded the way client-go's
//! event recorder records them, so `kubectl describe pod` reads as it does
//! for the kubelet's own events:
//!
//! - **Deduplicated**: one Event per pod, reason and image; a repeat raises
//!   its `count` and `lastTimestamp` instead of adding an object. The name
//!   is derived from that key, so a new leader finds the Events the last one
//!   wrote and never counts a violation twice (an Event whose
//!   `lastTimestamp` is not older than the violation already has it).
//! - **Aggregated**: more than [`SIMILAR_LIMIT`] different images with the
//!   same reason on one pod within [`SIMILAR_WINDOW_MS`] fold into one Event
//!   "(combined from similar events): ...", as client-go's aggregator does.
//! - **Rate-limited** per pod: a bucket of [`BURST`] Events refilled one
//!   per [`REFILL_MS`] (client-go's spam filter defaults); what it drops is
//!   counted, not retried.
//!
//! Memory is bounded: every table holds at most [`TRACKED`] keys.
//!
//! The apiserver is behind [`EventSink`]; [`KubeEvents`] is the real one.

use std::{
    collections::HashSet,
    hash::{Hash, Hasher},
};

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use quick_cache::unsync::Cache;

use super::model::{Kind, NodeViolation, PodRef};

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
    /// The pod's rate limit dropped it.
    RateLimited,
    /// Not a pod's container: no object to attach an Event to.
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
    similar: Cache<(String, Kind), Window>,
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

    /// Records `violation` at `now_ms`.
    pub async fn record(
        &mut self,
        violation: &NodeViolation,
        now_ms: i64,
    ) -> Result<Recorded, SinkError> {
        let Some(pod) = &violation.pod else {
            return Ok(Recorded::NoPod);
        };
        if !self.take_token(pod, now_ms) {
            return Ok(Recorded::RateLimited);
        }
        let mut message = message(violation);
        let mut key = format!(
            "{}|{}|{}",
            pod.uid,
            violation.kind.reason(),
            violation.digest
        );
        if self.is_one_of_many(pod, violation, now_ms) {
            message = format!("(combined from similar events): {message}");
            key = format!("{}|{}|combined", pod.uid, violation.kind.reason());
        }
        let name = event_name(pod, &key);
        let at = violation.at_ms;
        match self.seen.get(&key).cloned() {
            Some(seen) if seen.last_ms >= at => Ok(Recorded::AlreadyCounted),
            Some(seen) => {
                self.recount(pod, &key, &name, seen.count + 1, at, &message)
                    .await
            }
            None => {
                let event = new_event(violation, pod, &name, &message);
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
                    // Written before: by this replica before a restart, or
                    // by an earlier leader. Its timestamps say whether it
                    // already counts this violation.
                    Err(SinkError::AlreadyExists) => {
                        let existing = self.sink.get(&pod.namespace, &name).await?;
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
                            self.recount(pod, &key, &name, count + 1, at, &message)
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
        pod: &PodRef,
        key: &str,
        name: &str,
        count: i32,
        at_ms: i64,
        message: &str,
    ) -> Result<Recorded, SinkError> {
        self.sink
            .recount(&pod.namespace, name, count, &time(at_ms), message)
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

    /// client-go's spam filter: a token bucket per pod.
    fn take_token(&mut self, pod: &PodRef, now_ms: i64) -> bool {
        let key = format!("{}/{}/{}", pod.namespace, pod.name, pod.uid);
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
    /// [`SIMILAR_LIMIT`] different ones with the same reason on the same pod
    /// within the window.
    fn is_one_of_many(&mut self, pod: &PodRef, violation: &NodeViolation, now_ms: i64) -> bool {
        let key = (pod.uid.clone(), violation.kind);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&violation.digest, &violation.container).hash(&mut hasher);
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

/// The Event's name: the pod's, then a hash of the key (names must be
/// unique per namespace and at most 253 characters; pod names are at most
/// 253 too, so the pod part is cut to leave room).
fn event_name(pod: &PodRef, key: &str) -> String {
    let mut hasher = Fnv64::default();
    // The bytes themselves: `Hash for str` adds std's own framing, which
    // is not promised to stay the same.
    hasher.write(key.as_bytes());
    let prefix: String = pod.name.chars().take(200).collect();
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

fn new_event(v: &NodeViolation, pod: &PodRef, name: &str, message: &str) -> Event {
    let at = time(v.at_ms);
    Event {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(pod.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(pod.namespace.clone()),
            name: Some(pod.name.clone()),
            uid: Some(pod.uid.clone()).filter(|u| !u.is_empty()),
            field_path: Some(format!("spec.containers{{{}}}", v.container)),
            ..Default::default()
        },
        reason: Some(v.kind.reason().to_string()),
        message: Some(message.to_string()),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some("imagegate-agent".into()),
            host: Some(v.node.clone()),
        }),
        reporting_component: Some("imagegate.dev/agent".into()),
        reporting_instance: Some(v.node.clone()),
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
