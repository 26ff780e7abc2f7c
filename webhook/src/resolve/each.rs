//! The lookups of one review, concurrently and bounded: the caller says
//! which references to look up, this module returns what each lookup found.
//! It decides nothing: turning an outcome into a verdict is the policy's
//! (`policy::resolution`).

use std::collections::HashMap;

use futures_util::future::join_all;

use super::{ResolveError, Resolved, Resolver};
use crate::reference::Reference;

/// Distinct references one review may have looked up: a pod spec listing
/// thousands of tags cannot turn one review into thousands of registry
/// requests.
pub const MAX_LOOKUPS_PER_REVIEW: usize = 64;

/// What to do for one image.
#[derive(Clone, Copy, Debug)]
pub enum Ask<'a> {
    /// Nothing to resolve (denied, or already admitted with the object).
    Skip,
    /// Not to be contacted (break-glass on a registry no rule names: the
    /// pod's author must not pick the host the webhook contacts).
    DoNotContact(&'a Reference),
    Lookup(&'a Reference),
}

/// What resolution found for one image.
#[derive(Debug)]
pub enum Outcome {
    Skipped,
    /// Not contacted; the reference as written.
    NotContacted(Reference),
    Resolved(Resolved),
    Failed(ResolveError),
}

impl Resolver {
    /// Resolves every `Lookup`, concurrently; one outcome per ask, in
    /// order. A reference asked twice is looked up once (the cache shares
    /// it); past [`MAX_LOOKUPS_PER_REVIEW`] distinct references, the rest
    /// fail without a request.
    pub async fn resolve_each(&self, asks: &[Ask<'_>], verify_digest: bool) -> Vec<Outcome> {
        let mut asked: HashMap<String, bool> = HashMap::new();
        let lookups = asks.iter().map(|ask| {
            let within = match ask {
                Ask::Lookup(reference) => {
                    let count = asked.len();
                    *asked
                        .entry(reference.to_string())
                        .or_insert(count < MAX_LOOKUPS_PER_REVIEW)
                }
                _ => true,
            };
            async move {
                match *ask {
                    Ask::Skip => Outcome::Skipped,
                    Ask::DoNotContact(reference) => Outcome::NotContacted(reference.clone()),
                    Ask::Lookup(_) if !within => Outcome::Failed(ResolveError::TooManyLookups {
                        max: MAX_LOOKUPS_PER_REVIEW,
                    }),
                    Ask::Lookup(reference) => match self.resolve(reference, verify_digest).await {
                        Ok(resolved) => Outcome::Resolved(resolved),
                        Err(e) => Outcome::Failed(e),
                    },
                }
            }
        });
        join_all(lookups).await
    }
}
