//! Which agents exist: the static list plus the current A/AAAA records of
//! the headless Service. One push task per address, started when it
//! appears and stopped when it goes.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use super::{Pusher, link};

/// Runs until `stop` turns true.
pub async fn run(pusher: Arc<Pusher>, mut stop: watch::Receiver<bool>) {
    let mut running: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
    loop {
        let wanted = resolve(&pusher).await;
        for gone in running
            .keys()
            .filter(|a| !wanted.contains(a))
            .copied()
            .collect::<Vec<_>>()
        {
            info!(agent = %gone, "agent gone from discovery; stopping its push task");
            if let Some(task) = running.remove(&gone) {
                task.abort();
            }
        }
        for address in &wanted {
            if !running.contains_key(address) {
                info!(agent = %address, "agent discovered; syncing approvals to it");
                let task = tokio::spawn(link::follow(*address, pusher.clone(), stop.clone()));
                running.insert(*address, task);
            }
        }
        pusher.metrics.agents.set(running.len() as i64);
        tokio::select! {
            _ = tokio::time::sleep(pusher.config.resolve_every) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for (_, task) in running {
        task.abort();
    }
}

/// Every agent address known now. A name that does not resolve is logged
/// and skipped this round; the others go on.
async fn resolve(pusher: &Pusher) -> BTreeSet<SocketAddr> {
    let mut names: Vec<&String> = pusher.config.agents.iter().collect();
    names.extend(pusher.config.service.iter());
    let mut found = BTreeSet::new();
    for name in names {
        match tokio::net::lookup_host(name.as_str()).await {
            Ok(addresses) => found.extend(addresses),
            Err(e) => warn!(agent = %name, error = %e, "cannot resolve agent address"),
        }
    }
    found
}
