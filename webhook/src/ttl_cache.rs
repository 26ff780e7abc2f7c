//! Lookup outcomes, cached: a success is trusted for one TTL, a failure for
//! another (so a broken registry is not hammered), the number of keys is
//! bounded, and concurrent callers for one key share one lookup (the first
//! gets quick_cache's placeholder guard, the others wait for its outcome).
//! Resolution and signature lookups both go through it.

use std::{future::Future, hash::Hash, time::Duration, time::Instant};

use quick_cache::sync::Cache;

pub struct TtlCache<K, V, E> {
    cache: Cache<K, (Result<V, E>, Instant)>,
    ttl: Duration,
    negative_ttl: Duration,
}

/// Where an outcome came from.
pub enum Source {
    /// The cache (or a lookup already in flight for the same key).
    Cached,
    /// This call's lookup; trusted until then.
    Looked(Instant),
}

impl<K, V, E> TtlCache<K, V, E>
where
    K: Eq + Hash + Clone,
    V: Clone,
    E: Clone,
{
    pub fn new(entries: u64, ttl: Duration, negative_ttl: Duration) -> Self {
        Self {
            cache: Cache::new(entries.max(1) as usize),
            ttl,
            negative_ttl,
        }
    }

    /// The outcome for `key`: the cached one while it is trusted, else the
    /// outcome of `lookup` (run by one caller per key), cached.
    pub async fn get_or_lookup<F>(
        &self,
        key: &K,
        lookup: impl FnOnce() -> F,
    ) -> (Result<V, E>, Source)
    where
        F: Future<Output = Result<V, E>>,
    {
        let guard = loop {
            match self.cache.get_value_or_guard_async(key).await {
                Ok((outcome, until)) if Instant::now() < until => {
                    return (outcome, Source::Cached);
                }
                // Past its TTL: drop it (unless someone just replaced it)
                // and ask again.
                Ok((_, stale_since)) => {
                    self.cache
                        .remove_if(key, |(_, until)| *until == stale_since);
                }
                Err(guard) => break guard,
            }
        };
        let outcome = lookup().await;
        let ttl = if outcome.is_ok() {
            self.ttl
        } else {
            self.negative_ttl
        };
        let until = Instant::now() + ttl;
        let _ = guard.insert((outcome.clone(), until));
        (outcome, Source::Looked(until))
    }

    /// Caches `outcome` for `key` until `until` (an outcome known under
    /// another key too).
    pub fn insert(&self, key: K, outcome: Result<V, E>, until: Instant) {
        self.cache.insert(key, (outcome, until));
    }
}
