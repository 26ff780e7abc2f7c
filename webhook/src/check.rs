//! `imagegate-webhook check`: the webhook's decisions, offline, for CI
//! pipelines: the admission pipeline (`admit`), with the registry only
//! when asked (`--resolve`). Same code, same reasons.

use std::io::Write;

use serde::Serialize;

use crate::{
    admit,
    policy::{ImageDecision, Policy},
    resolve::Resolver,
    review::{Api, ContainerKind, ImageUse, Review, Subject, admission, image_review},
};

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Exit statuses, as documented in `--help`.
pub const EXIT_ALLOWED: u8 = 0;
pub const EXIT_DENIED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

/// One image's result, in the JSON output.
#[derive(Debug, Serialize)]
pub struct ImageReport {
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub allowed: bool,
    pub verdict: &'static str,
    pub rule: String,
    pub reason: String,
    /// The digest the registry resolved the image to (`--resolve`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved: Option<String>,
    /// Who signed it, per requirement of its rule (`--resolve`, which
    /// looks signatures up too).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<crate::signature::Signer>,
}

#[derive(Debug, Serialize)]
pub struct ReferenceReport {
    /// Fully normalised, e.g. `docker.io/library/nginx:1.25`.
    pub name: String,
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl From<&ImageDecision> for ImageReport {
    fn from(d: &ImageDecision) -> Self {
        let (reference, error) = match &d.reference {
            Ok(r) => (
                Some(ReferenceReport {
                    name: r.to_string(),
                    domain: r.domain.clone(),
                    path: r.path.clone(),
                    tag: r.effective_tag().map(str::to_string),
                    digest: r.digest.as_ref().map(ToString::to_string),
                }),
                None,
            ),
            Err(e) => (None, Some(e.to_string())),
        };
        Self {
            image: d.image.clone(),
            reference,
            error,
            allowed: d.verdict.allows(),
            verdict: d.verdict.as_str(),
            rule: d.rule.clone(),
            reason: d.reason.clone(),
            resolved: d.resolved.as_ref().map(|r| r.digest.to_string()),
            signers: d.signers.clone(),
        }
    }
}

/// Decides on images given on the command line, as if in a pod in
/// `namespace`: the same path as the server (exemptions included). No labels
/// or annotations are known, as with an ImageReview.
pub async fn images(
    policy: &Policy,
    resolver: Option<&Resolver>,
    namespace: &str,
    images: &[String],
) -> Vec<ImageReport> {
    let review = Review {
        api: Api::ImageReview,
        subject: Subject {
            namespace: namespace.to_string(),
            labels: None,
            annotations: Default::default(),
        },
        images: images
            .iter()
            .map(|image| ImageUse {
                image: image.clone(),
                container: None,
                kind: ContainerKind::Container,
                pointer: None,
                changed: true,
            })
            .collect(),
        kind: None,
        name: None,
        user: None,
        dry_run: true,
        object: None,
        controller: None,
    };
    admit::decide(policy, resolver, &review)
        .await
        .images
        .iter()
        .map(|d| ImageReport::from(&**d))
        .collect()
}

/// Decides on a review body (AdmissionReview or ImageReview), exactly as
/// the server would. An error says why the body cannot be reviewed.
pub async fn review(
    policy: &Policy,
    resolver: Option<&Resolver>,
    body: &[u8],
) -> Result<Vec<ImageReport>, Unreviewable> {
    let review = decode_any(body).map_err(Unreviewable)?;
    Ok(admit::decide(policy, resolver, &review)
        .await
        .images
        .iter()
        .map(|d| ImageReport::from(&**d))
        .collect())
}

/// A body that is neither an AdmissionReview nor an ImageReview, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreviewable(String);

fn decode_any(body: &[u8]) -> Result<Review, String> {
    #[derive(serde::Deserialize)]
    struct Kind {
        kind: Option<String>,
    }
    let kind: Kind = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    match kind.kind.as_deref() {
        Some(image_review::KIND) => image_review::decode(body)
            .map_err(|e| e.to_string())?
            .map_err(|reason| reason.to_string()),
        Some(admission::KIND) => match admission::decode(body).map_err(|e| e.to_string())? {
            admission::Decoded::Unreadable { reason, .. } => Err(reason),
            admission::Decoded::Review(request) => request
                .review
                .map_err(|why| format!("nothing to check: {why}")),
        },
        other => Err(format!(
            "expected kind AdmissionReview or ImageReview, got {other:?}"
        )),
    }
}

/// Writes the reports; returns the exit status.
pub fn print(reports: &[ImageReport], output: Output, out: &mut impl Write) -> std::io::Result<u8> {
    for r in reports {
        match output {
            Output::Json => {
                serde_json::to_writer(&mut *out, r)?;
                writeln!(out)?;
            }
            Output::Text => {
                let word = if r.allowed { "ALLOW" } else { "DENY " };
                match &r.resolved {
                    Some(digest) => writeln!(out, "{word} {} ({digest}): {}", r.image, r.reason)?,
                    None => writeln!(out, "{word} {}: {}", r.image, r.reason)?,
                }
                for s in &r.signers {
                    writeln!(
                        out,
                        "      signed by {} ({}, {})",
                        s.identity, s.requirement, s.format
                    )?;
                }
            }
        }
    }
    Ok(if reports.iter().all(|r| r.allowed) {
        EXIT_ALLOWED
    } else {
        EXIT_DENIED
    })
}
