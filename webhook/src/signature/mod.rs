//! Signatures: the stage after resolution. For each image a rule admits
//! with signature or attestation requirements, what is attached to the
//! digest resolution found is looked up in its registry and checked
//! against the keys, identities and trusted root the policy names (never
//! against a key the artifact carries). Who signed is recorded with the
//! approval and pushed to nodes.
//!
//! Our own verification over ring, x509-parser and rustls-webpki (already
//! linked for TLS) rather than the `sigstore` crate: see the commit that
//! added it and the README (formats it lacked, its TLS and crypto stacks
//! next to our ring-only build, and its registry client reading whole
//! bodies).
//!
//! - [`model`]: what is found and who signed (domain types);
//! - [`formats`]: cosign's legacy payloads and Sigstore bundles, parsed;
//! - [`discover`]: finding them in the registry (referrers, tag index,
//!   `.sig` tag), bounded and cached;
//! - [`key`], [`certificate`], [`trust_root`], [`rekor`]: the checks;
//! - [`requirement`]: a rule's requirement, compiled from the policy;
//! - [`verify`]: whether what was found satisfies a requirement.

pub mod certificate;
pub mod discover;
pub mod formats;
pub mod key;
pub mod model;
pub mod rekor;
pub mod requirement;
pub mod sct;
pub mod timestamp;
pub mod trust_root;
pub mod verify;

#[cfg(test)]
mod tampered;

use std::{sync::Arc, time::SystemTime};

use futures_util::future::join_all;
use imagegate_proto::digest::Digest;

pub use discover::{Finder, LookupError};
pub use model::Signer;
pub use requirement::Requirement;

use crate::reference::Reference;

/// What to check for one image.
pub struct Ask<'a> {
    pub reference: &'a Reference,
    pub digest: &'a Digest,
    pub requirements: &'a [Arc<Requirement>],
}

/// What was found for one image, per requirement.
#[derive(Debug)]
pub enum Outcome {
    Skipped,
    /// The lookup failed (a registry error or timeout), not the check.
    Failed(LookupError),
    /// Each requirement, with the signers that satisfy it or why none do.
    Checked(Vec<(Arc<Requirement>, requirement::Verdict)>),
}

impl Finder {
    /// Checks every ask, concurrently; one outcome per ask, in order.
    pub async fn check_each(&self, asks: &[Option<Ask<'_>>]) -> Vec<Outcome> {
        join_all(asks.iter().map(|ask| async move {
            let Some(ask) = ask else {
                return Outcome::Skipped;
            };
            // cosign's `.att` tag is read only when something asks for an
            // attestation: one request less on every cold lookup otherwise.
            let attestations = ask
                .requirements
                .iter()
                .any(|r| matches!(r.what, requirement::What::Attestation { .. }));
            match self
                .find(
                    &ask.reference.domain,
                    &ask.reference.path,
                    ask.digest,
                    attestations,
                )
                .await
            {
                Err(e) => Outcome::Failed(e),
                Ok(found) => Outcome::Checked(
                    ask.requirements
                        .iter()
                        .map(|r| {
                            (
                                r.clone(),
                                r.evaluate_cached(ask.digest, &found, SystemTime::now()),
                            )
                        })
                        .collect(),
                ),
            }
        }))
        .await
    }
}
