//! Bounds on what clients may make the webhook hold: connections (in all
//! and from one address), time to send headers and bodies, idle time, bytes
//! of request bodies buffered at once (in all and by one address), and
//! reviews decided at once. Anyone who can reach the port can open
//! connections without a certificate; none of that may grow without bound,
//! and the apiserver's reviews must keep being answered while someone tries.
//!
//! A review is read here, before it is decoded: within a deadline, into
//! a buffer charged to the byte budget, up to what the apiserver can
//! legitimately send; only then does it wait for a decision slot, so a slow
//! client never holds one. Whatever is refused gets a denial carrying the
//! request's uid when the uid arrived, so `failurePolicy: Ignore` cannot
//! turn a refusal into an allow.

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::Request,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use http_body_util::BodyExt;
use imagegate_plumbing::budget::{Budget, Held, Refused};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tracing::{debug, warn};

/// The apiserver's limit on a request body (and so on an object). An
/// AdmissionReview carries the object and, on UPDATE, the old object; Go's
/// JSON encoder writes `<`, `>` and `&` as six bytes (`\u003c`): up to
/// 2 x 3 MiB x 6, plus the envelope.
pub const APISERVER_REQUEST_BYTES: usize = 3 * 1024 * 1024;
pub const MAX_REVIEW_BYTES: usize = 2 * 6 * APISERVER_REQUEST_BYTES + 1024 * 1024;

/// How much of an oversized body is kept to find its uid: the apiserver
/// writes `request.uid` first.
const UID_PREFIX_BYTES: usize = 64 * 1024;

/// The bounds, set by `serve`'s flags.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Connections open at once from one address, so that one client
    /// cannot take every slot from the apiserver. The apiserver itself
    /// opens one HTTP/1.1 connection per concurrent admission call
    /// (kubernetes/kubernetes#82090), so this must stay above the
    /// concurrency it sends: twice `max_reviews` by default.
    pub max_connections_per_address: usize,
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body.
    pub body_timeout: Duration,
    /// A connection with no bytes in either direction for this long is
    /// closed (slow clients included).
    pub idle_timeout: Duration,
    /// Bytes of request bodies held at once, all requests together; one
    /// client address may hold up to the largest review of it.
    pub body_budget_bytes: usize,
    /// Reviews decided at once; more wait up to `queue_wait`.
    pub max_reviews: usize,
    pub queue_wait: Duration,
    /// HTTP/2 streams one connection may have open.
    pub max_streams_per_connection: u32,
}

/// What the defaults add up to under the chart's 256 MiB limit, at worst:
/// 64 MiB of bodies, 256 connections x (256 KiB of HTTP/2 window, 64 KiB
/// of header buffer, ~50 KiB of TLS buffers) = 94 MiB, and the process
/// itself (~30 MiB).
impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_connections_per_address: 128,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            body_budget_bytes: 64 * 1024 * 1024,
            max_reviews: 64,
            queue_wait: Duration::from_secs(2),
            max_streams_per_connection: 32,
        }
    }
}

/// HTTP/2 flow-control windows: how much a peer may send before the webhook
/// reads it, per stream and per connection.
pub const H2_STREAM_WINDOW: u32 = 128 * 1024;
pub const H2_CONNECTION_WINDOW: u32 = 256 * 1024;
/// Largest request head (HTTP/1.1 buffer, HTTP/2 header list).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The shared budgets behind [`Limits`].
#[derive(Clone)]
pub struct Budgets {
    limits: Limits,
    /// Reviews being decided; taken once the body is read, so a slow
    /// client never holds one.
    deciding: Arc<Semaphore>,
    /// Bytes of bodies being read or decided, in all and by one address.
    bodies: Budget,
}

impl Budgets {
    pub fn new(limits: Limits) -> Self {
        Self {
            deciding: Arc::new(Semaphore::new(limits.max_reviews.max(1))),
            // One address may hold as much as the largest review, so the
            // apiserver can send one, and no more, so others find room.
            bodies: Budget::new(
                limits.body_budget_bytes,
                MAX_REVIEW_BYTES.min(limits.body_budget_bytes),
            ),
            limits,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// Why a review was not decided, with what of its body arrived (to find
/// its uid).
struct Refusal {
    status: StatusCode,
    reason: String,
    prefix: Vec<u8>,
}

/// A review's body, read whole, and what it holds while it is decided:
/// its bytes stay charged to the budget and its decision slot taken until
/// this is dropped (after the answer is made).
pub struct ReadReview {
    pub body: Bytes,
    _held: Held,
    _deciding: OwnedSemaphorePermit,
}

/// Reads a review's body within its deadline and the byte budgets, then
/// takes a slot within the bound on reviews decided at once.
///
/// Every refusal is an AdmissionReview denial carrying the uid when the uid
/// arrived (the apiserver's `failurePolicy: Ignore` would turn an HTTP
/// error into an allow), else an HTTP error: the `Err` is that answer.
pub async fn read_review(
    budgets: &Budgets,
    peer: IpAddr,
    request: Request,
) -> Result<ReadReview, Response> {
    let limits = &budgets.limits;
    let (parts, body) = request.into_parts();
    let deadline = Instant::now() + limits.body_timeout;
    let (bytes, held) = match read_bounded(budgets, peer, body, deadline).await {
        Ok(read) => read,
        Err(refusal) => return Err(refuse(parts.uri.path(), refusal, &peer)),
    };
    // A free slot is taken at once; only a full house waits (with a timer).
    let slot = match budgets.deciding.clone().try_acquire_owned() {
        Ok(slot) => Some(slot),
        Err(_) => tokio::time::timeout(limits.queue_wait, budgets.deciding.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok),
    };
    let Some(deciding) = slot else {
        warn!(
            max = limits.max_reviews,
            "reviews being decided at their bound; refusing one"
        );
        let refusal = Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: format!(
                "the webhook is deciding {} reviews already; try again",
                limits.max_reviews
            ),
            prefix: bytes[..bytes.len().min(UID_PREFIX_BYTES)].to_vec(),
        };
        return Err(refuse(parts.uri.path(), refusal, &peer));
    };
    Ok(ReadReview {
        body: bytes,
        _held: held,
        _deciding: deciding,
    })
}

/// The whole body, and the budget it holds (given back when dropped).
/// One timer for the whole read; a body that arrives as one chunk (most
/// reviews) is passed on without a copy.
async fn read_bounded(
    budgets: &Budgets,
    peer: IpAddr,
    body: Body,
    deadline: Instant,
) -> Result<(Bytes, Held), Refusal> {
    let mut read = BodyRead {
        first: None,
        joined: Vec::new(),
        held: budgets.bodies.hold_nothing(peer),
    };
    match tokio::time::timeout_at(deadline, read.collect(peer, body)).await {
        Ok(Ok(())) => {}
        Ok(Err((status, reason))) => return Err(read.refusal(status, reason)),
        Err(_) => {
            let reason = format!(
                "the request body did not arrive within {:?}",
                budgets.limits.body_timeout
            );
            return Err(read.refusal(StatusCode::REQUEST_TIMEOUT, reason));
        }
    }
    let bytes = match read.first.take() {
        Some(only) => only,
        None => Bytes::from(std::mem::take(&mut read.joined)),
    };
    Ok((bytes, read.held))
}

/// A body being read and the budget it holds.
struct BodyRead {
    /// The body while it is one chunk.
    first: Option<Bytes>,
    /// The body once a second chunk arrived: copied into one buffer, which
    /// grows past the allocator's mmap threshold and so is unmapped when
    /// freed (many small chunks kept would fragment the heap and keep
    /// memory after a burst).
    joined: Vec<u8>,
    held: Held,
}

impl BodyRead {
    fn len(&self) -> usize {
        self.first.as_ref().map_or(self.joined.len(), Bytes::len)
    }

    fn push(&mut self, chunk: &[u8]) {
        if let Some(first) = self.first.take() {
            self.joined.reserve(first.len() + chunk.len());
            self.joined.extend_from_slice(&first);
        }
        self.joined.extend_from_slice(chunk);
    }

    /// Reads frames until the body ends or a bound is crossed (the status
    /// and reason of the refusal; the start of the chunk that crossed it is
    /// kept, for the uid).
    async fn collect(&mut self, peer: IpAddr, mut body: Body) -> Result<(), (StatusCode, String)> {
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| (StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            if self.len() + chunk.len() > MAX_REVIEW_BYTES {
                let limit = MAX_REVIEW_BYTES / (1024 * 1024);
                self.keep_for_uid(&chunk);
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the review is larger than {limit} MiB, more than the apiserver sends for \
                         an object and its old object; denied without reading it"
                    ),
                ));
            }
            if let Err(why) = self.held.grow(chunk.len()) {
                let whose = match why {
                    Refused::Full => "all clients together",
                    Refused::AddressFull => "this client address",
                };
                warn!(%peer, whose, "request bodies at their memory budget; refusing one");
                self.keep_for_uid(&chunk);
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the webhook holds as many request bytes as it may from {whose}; try again"
                    ),
                ));
            }
            if self.first.is_none() && self.joined.is_empty() {
                self.first = Some(chunk);
            } else {
                self.push(&chunk);
            }
        }
        Ok(())
    }

    /// Keeps what is needed of a refused chunk to find the uid.
    fn keep_for_uid(&mut self, chunk: &[u8]) {
        let room = UID_PREFIX_BYTES.saturating_sub(self.len());
        if room > 0 {
            self.push(&chunk[..chunk.len().min(room)]);
        }
    }

    /// The refusal, with the first bytes read (where the uid is).
    fn refusal(&self, status: StatusCode, reason: String) -> Refusal {
        let read: &[u8] = self.first.as_deref().unwrap_or(&self.joined);
        Refusal {
            status,
            reason,
            prefix: read[..read.len().min(UID_PREFIX_BYTES)].to_vec(),
        }
    }
}

/// An AdmissionReview whose uid is readable gets a denial carrying it and
/// the refusal's code; anything else (an ImageReview has no uid) the
/// refusal's HTTP status.
fn refuse(path: &str, refusal: Refusal, peer: &IpAddr) -> Response {
    let Refusal {
        status,
        reason,
        prefix,
    } = refusal;
    if path != "/image_policy"
        && let Some((api_version, uid)) = uid_of(&prefix)
    {
        warn!(%uid, %peer, "AdmissionReview denied unread: {reason}");
        let answer =
            crate::review::admission::Response::deny(api_version, uid, status.as_u16(), reason);
        let body = serde_json::to_vec(&answer).unwrap_or_default();
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
    }
    debug!(%status, %peer, "request refused: {reason}");
    let body = serde_json::json!({ "error": reason }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `apiVersion` and `request.uid` from the start of an AdmissionReview,
/// without parsing the rest (which did not all arrive). Keys are matched at
/// their depth, so an object's own `metadata.uid` is never taken for the
/// request's.
fn uid_of(prefix: &[u8]) -> Option<(String, String)> {
    let mut depth = 0usize;
    let mut top_key: &[u8] = b"";
    let (mut api_version, mut uid) = (None, None);
    let mut at = 0;
    while at < prefix.len() {
        match prefix[at] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            b'"' => {
                let (text, after) = string_at(prefix, at)?;
                at = after;
                let colon = skip_space(prefix, after);
                if prefix.get(colon) != Some(&b':') {
                    continue;
                }
                let value = skip_space(prefix, colon + 1);
                match (depth, text) {
                    (1, b"apiVersion") => api_version = plain_string(prefix, value),
                    (2, b"uid") if top_key == b"request" => uid = plain_string(prefix, value),
                    (1, key) => top_key = key,
                    _ => {}
                }
                if let (Some(api_version), Some(uid)) = (&api_version, &uid) {
                    return (crate::review::admission::API_VERSIONS
                        .contains(&api_version.as_str())
                        && !uid.is_empty()
                        && uid.len() <= 128)
                        .then(|| (api_version.clone(), uid.clone()));
                }
                continue;
            }
            _ => {}
        }
        at += 1;
    }
    None
}

/// The raw text of the string starting at `open` (a quote), and the index
/// after its closing quote.
fn string_at(bytes: &[u8], open: usize) -> Option<(&[u8], usize)> {
    let mut at = open + 1;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'"' => return Some((&bytes[open + 1..at], at + 1)),
            _ => at += 1,
        }
    }
    None
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// A string value without escapes (uids and versions have none; decoding
/// escapes would need the parser this avoids).
fn plain_string(bytes: &[u8], at: usize) -> Option<String> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let (text, _) = string_at(bytes, at)?;
    if text.contains(&b'\\') {
        return None;
    }
    String::from_utf8(text.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uid_of_a_truncated_admission_review() {
        let body = br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"0f1e-22","kind":{"group":"","version":"v1","kind":"Pod"},"object":{"metadata":{"name":"x"},"spec":{"containers":[{"env":[{"value":"\u003c\u003c"#;
        assert_eq!(
            uid_of(body),
            Some(("admission.k8s.io/v1".into(), "0f1e-22".into()))
        );
        assert_eq!(
            uid_of(br#"{"apiVersion":"v1","request":{"uid":"x"}}"#),
            None
        );
        // Keys in sorted order: the object's uid comes before the request's.
        let sorted = br#"{"apiVersion":"admission.k8s.io/v1","request":{"object":{"metadata":{"uid":"pod"}},"uid":"req"}}"#;
        assert_eq!(
            uid_of(sorted),
            Some(("admission.k8s.io/v1".into(), "req".into()))
        );
        // A string containing braces and quotes does not move the depth.
        let tricky = br#"{"apiVersion":"admission.k8s.io/v1","x":"{\"uid\":\"no\"","request":{"uid":"yes"}}"#;
        assert_eq!(
            uid_of(tricky),
            Some(("admission.k8s.io/v1".into(), "yes".into()))
        );
        assert_eq!(uid_of(b"garbage"), None);
    }
}
