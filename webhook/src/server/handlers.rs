//! HTTP handlers: thin. Decoding is in `review`, the admission sequence in
//! `admit`; these decode, run it, and encode. Every review endpoint goes
//! through [`review`]: the body read within the limits, the request's span
//! and its metrics; an endpoint only records the review's uid in that span
//! once it has read it.

use std::{net::IpAddr, sync::Arc, time::Instant};

use base64::Engine;

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tracing::{Instrument, Span, debug, info, warn};

use super::{AppState, limits, metrics::Endpoint};
use crate::{
    admit,
    policy::{ImageVerdict, ReviewDecision},
    review::{
        Api, Review,
        admission::{self, Decoded},
        image_review,
    },
};

const NO_POLICY: &str = "imagegate has no valid policy loaded; every image is denied until one is (see the webhook's log)";

/// Every review, whatever its endpoint: its body read whole within the
/// limits (refusals answered there, and not counted as decisions), then
/// answered in a span that carries its endpoint and, once read, its uid
/// (so every log line of one review can be found by it), timed from body
/// received to answer made, and counted. `peer` is the client's address,
/// which the per-address body budget counts against.
pub async fn review(
    state: &AppState,
    endpoint: Endpoint,
    peer: IpAddr,
    request: Request,
) -> Response {
    let read = match limits::read_review(&state.budgets, peer, request).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    let span = tracing::info_span!(
        "review",
        endpoint = endpoint.as_str(),
        uid = tracing::field::Empty
    );
    let started = Instant::now();
    let body = &read.body;
    let response = async {
        match endpoint {
            Endpoint::ImagePolicy => answer_image_policy(state, body).await,
            Endpoint::Validate => answer_validate(state, body).await,
            Endpoint::Mutate => answer_mutate(state, body).await,
        }
    }
    .instrument(span)
    .await;
    state
        .metrics
        .observe(endpoint, response.status().as_u16(), started.elapsed());
    // `read` (the body's budget and the decision slot) is given back here,
    // once the answer is made.
    drop(read);
    response
}

/// An ImageReview's answer.
async fn answer_image_policy(state: &AppState, body: &[u8]) -> Response {
    match image_review::decode(body) {
        Err(bad) => bad_request(bad.to_string()),
        Ok(Err(reason)) => {
            warn!("ImageReview denied: {reason}");
            json_answer(image_review::Response::new(false, reason, Default::default()).to_json())
        }
        Ok(Ok(review)) => {
            let (allowed, reason, annotations) = match decide(state, &review).await {
                Some(d) => {
                    // ImageReview has one reason for all images: the denial's,
                    // or nothing when allowed.
                    let reason = if d.allowed { String::new() } else { d.message };
                    (d.allowed, reason, d.audit_annotations)
                }
                None => (false, NO_POLICY.to_string(), Default::default()),
            };
            json_answer(image_review::Response::new(allowed, reason, annotations).to_json())
        }
    }
}

/// An AdmissionReview's answer.
async fn answer_validate(state: &AppState, body: &[u8]) -> Response {
    match admission::decode(body) {
        Err(bad) => bad_request(bad.to_string()),
        Ok(Decoded::Unreadable {
            api_version,
            uid,
            reason,
        }) => unreadable(api_version, uid, reason),
        Ok(Decoded::Review(request)) => {
            let request = *request;
            Span::current().record("uid", request.uid.as_str());
            match &request.review {
                Err(why) => {
                    debug!(uid = %request.uid, operation = %request.operation, "allowed without checks: {why}");
                    json(admission::Response::allow(
                        request.api_version,
                        request.uid,
                        format!("not checked: {why}"),
                    ))
                }
                Ok(review) => match decide(state, review).await {
                    Some(d) => {
                        let answer = if d.allowed {
                            admission::Response::allow(request.api_version, request.uid, d.message)
                        } else {
                            admission::Response::deny(
                                request.api_version,
                                request.uid,
                                403,
                                d.message,
                            )
                        };
                        json(
                            answer
                                .with_warnings(d.warnings)
                                .with_audit_annotations(d.audit_annotations),
                        )
                    }
                    None => json(admission::Response::deny(
                        request.api_version,
                        request.uid,
                        500,
                        NO_POLICY.to_string(),
                    )),
                },
            }
        }
    }
}

/// An AdmissionReview whose uid could be read but not the rest: denied with
/// that uid, so `failurePolicy: Ignore` cannot turn the error into an allow.
fn unreadable(api_version: String, uid: String, reason: String) -> Response {
    Span::current().record("uid", uid.as_str());
    warn!("AdmissionReview denied: {reason}");
    json(admission::Response::deny(api_version, uid, 400, reason))
}

/// Runs the admission pipeline with the policy in force; counts and logs.
/// `None` without a policy.
async fn decide(state: &AppState, review: &Review) -> Option<ReviewDecision> {
    let Some(policy) = state.policy.current() else {
        warn!(api = review.api.as_str(), namespace = %review.subject.namespace, "denied: {NO_POLICY}");
        return None;
    };
    let decision = admit::admit(
        &policy,
        state.resolver.as_deref(),
        state.ledger.as_ref(),
        review,
    )
    .await;
    let api = match review.api {
        Api::ImageReview => "ImageReview",
        Api::AdmissionReview => "AdmissionReview",
    };
    if let Some(queue) = &state.decisions {
        let now = imagegate_plumbing::clock::now_ms_i64();
        queue.tell(crate::report::decisions::of_review(
            review,
            &decision,
            &state.replica,
            now,
        ));
    }
    for image in &decision.images {
        state
            .metrics
            .decisions
            .count(review.api, image.verdict, &image.rule);
    }
    let name = review.name.as_deref().unwrap_or("");
    let broken: Vec<&str> = decision
        .images
        .iter()
        .filter(|i| i.verdict == ImageVerdict::BreakGlass)
        .map(|i| i.image.as_str())
        .collect();
    if !broken.is_empty() {
        // Every use, at the default level: break-glass is an event to see.
        warn!(
            api,
            namespace = %review.subject.namespace,
            name,
            user = review.user.as_deref().unwrap_or(""),
            dry_run = review.dry_run,
            images = ?broken,
            annotation = decision.audit_annotations.get("break-glass").map(String::as_str).unwrap_or(""),
            "break-glass: admitted without the policy's rules"
        );
    }
    if decision.allowed {
        debug!(api, namespace = %review.subject.namespace, name, "allowed: {}", decision.message);
    } else {
        info!(api, namespace = %review.subject.namespace, name, dry_run = review.dry_run, "denied: {}", decision.message);
    }
    Some(decision)
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.policy.current().is_some() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no valid policy loaded")
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn bad_request(error: String) -> Response {
    debug!("bad request: {error}");
    (StatusCode::BAD_REQUEST, json_bytes(&ErrorBody { error })).into_response()
}

/// An AdmissionReview's answer.
fn json(value: admission::Response) -> Response {
    json_answer(value.to_json())
}

/// A review's answer, already JSON: built as a response directly. It is
/// what axum's `(StatusCode, headers, body)` makes, in about 500
/// user-space instructions per review instead of 960 (callgrind).
fn json_answer(body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json_bytes<T: Serialize>(value: &T) -> ([(header::HeaderName, &'static str); 1], Vec<u8>) {
    // Serialising these plain structs cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// An AdmissionReview answered with a JSONPatch that pins each allowed
/// image to its digest (`name:tag@sha256:...`; the tag stays for
/// humans). Images that already carry a digest are left alone, and so is
/// everything when the object says `imagegate.dev/pin-digests: "false"` or
/// the deciding rule has `pinDigests: false`. Denying is the validator's
/// job: the mutator only denies what it cannot read.
async fn answer_mutate(state: &AppState, body: &[u8]) -> Response {
    match admission::decode(body) {
        Err(bad) => bad_request(bad.to_string()),
        Ok(Decoded::Unreadable {
            api_version,
            uid,
            reason,
        }) => unreadable(api_version, uid, reason),
        Ok(Decoded::Review(request)) => {
            let request = *request;
            Span::current().record("uid", request.uid.as_str());
            let pinned = match (&request.review, state.policy.current()) {
                (Err(why), _) => admit::Pinned::nothing(format!("not pinned: {why}")),
                (Ok(_), None) => {
                    return json(admission::Response::deny(
                        request.api_version,
                        request.uid,
                        500,
                        NO_POLICY.to_string(),
                    ));
                }
                (Ok(review), Some(policy)) => {
                    admit::pin(&policy, state.resolver.as_deref(), review).await
                }
            };
            let mut answer =
                admission::Response::allow(request.api_version, request.uid, pinned.message);
            if !pinned.operations.is_empty() {
                // Serialising JSON values cannot fail.
                let patch = serde_json::to_vec(&pinned.operations).unwrap_or_default();
                answer = answer.with_patch(base64::engine::general_purpose::STANDARD.encode(patch));
            }
            json(answer)
        }
    }
}
