//! Following the addresses some names resolve to: one task per address,
//! started when it appears and stopped when it goes, the names resolved
//! again every so often. The webhook uses it for agents it dials; agents
//! for the webhook replicas whose feeds they follow (a headless Service:
//! each A/AAAA record is one replica).

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    net::SocketAddr,
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

/// How soon names are resolved again when they gave no address.
const NOTHING_FOUND_RETRY: Duration = Duration::from_secs(2);

/// Runs until `stop` turns true; `follow(address)` is spawned for each
/// address found, and aborted when it is no longer found. `what` names the
/// peers in logs ("agent", "webhook"). `found` hears how many are followed
/// after each resolution. Names are resolved every `every`, and at once
/// when `now` is notified.
pub async fn follow_addresses<F, Fut>(
    names: Vec<String>,
    every: Duration,
    what: &'static str,
    mut stop: watch::Receiver<bool>,
    now: &Notify,
    follow: F,
    found: impl Fn(usize),
) where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut running: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
    loop {
        let wanted = resolve(&names, what).await;
        for gone in running
            .keys()
            .filter(|a| !wanted.contains(a))
            .copied()
            .collect::<Vec<_>>()
        {
            info!(peer = %gone, what, "gone from discovery; stopping its task");
            if let Some(task) = running.remove(&gone) {
                task.abort();
            }
        }
        for address in &wanted {
            if !running.contains_key(address) {
                info!(peer = %address, what, "discovered");
                running.insert(*address, tokio::spawn(follow(*address)));
            }
        }
        found(running.len());
        // Nothing found (the peers are not up yet, or DNS has no record
        // for them yet): look again soon rather than a whole period later.
        let wait = if running.is_empty() {
            every.min(NOTHING_FOUND_RETRY)
        } else {
            every
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = now.notified() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for (_, task) in running {
        task.abort();
    }
}

/// Every address the names resolve to now. A name that does not resolve
/// is logged and skipped this round; the others go on.
async fn resolve(names: &[String], what: &'static str) -> BTreeSet<SocketAddr> {
    let mut found = BTreeSet::new();
    for name in names {
        match tokio::net::lookup_host(name.as_str()).await {
            Ok(addresses) => found.extend(addresses),
            Err(e) => warn!(name = %name, what, error = %e, "cannot resolve"),
        }
    }
    found
}
