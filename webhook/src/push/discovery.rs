//! Which agents to dial: the static list plus the current A/AAAA records
//! of the headless Service, one push task per address.

use std::sync::Arc;

use tokio::sync::watch;

use super::{Pusher, link};

/// Runs until `stop` turns true.
pub async fn run(pusher: Arc<Pusher>, stop: watch::Receiver<bool>) {
    let mut names = pusher.config.agents.clone();
    names.extend(pusher.config.service.iter().cloned());
    let gauge = pusher.metrics.agents.clone();
    imagegate_plumbing::discovery::follow_addresses(
        names,
        pusher.config.resolve_every,
        "agent",
        stop.clone(),
        // Resolved on the period only.
        &tokio::sync::Notify::new(),
        |address| link::follow(address, pusher.clone(), stop.clone()),
        |n| {
            gauge.set(n as i64);
        },
    )
    .await;
}
