//! Violations from every agent, read through the agent API they already
//! serve: `ListViolations` after the last sequence number read, again
//! whenever `WatchEvents` says a violation was filed (and every
//! [`IntakeConfig::poll_every`] in case a signal was missed). Sequence
//! numbers make this lossless across reconnects; the recorder makes it
//! idempotent across leaders, so each new stream simply reads again from
//! the start, keeping only violations younger than
//! [`IntakeConfig::backfill`].

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use imagegate_plumbing::errors::error_chain;
use imagegate_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use super::model::NodeViolation;
use crate::push::{AgentTls, agent_endpoint, followers::Agents};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
const PAGE: u32 = 500;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the list of agents is left to settle after a change before it
/// is read again. Each reading walks the whole list; after a webhook
/// restart thousands of agents join within seconds, and reading on every
/// join would walk it thousands of times on the admission runtime.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct IntakeConfig {
    /// The agents' mTLS API port (the chart's agent.grpcPort).
    pub agent_port: u16,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The name the agents' certificate is valid for.
    pub server_name: String,
    pub poll_every: Duration,
    /// Violations older than this when a stream starts are not reported
    /// (the apiserver keeps Events an hour by default).
    pub backfill: Duration,
}

/// Reads every agent `agents` lists, handing violations to `out`, until
/// `stop` turns true.
pub async fn run(
    mut agents: watch::Receiver<Agents>,
    config: IntakeConfig,
    out: mpsc::Sender<NodeViolation>,
    mut stop: watch::Receiver<bool>,
) {
    let mut running: HashMap<String, (IpAddr, JoinHandle<()>)> = HashMap::new();
    loop {
        let wanted = agents.borrow_and_update().clone();
        running.retain(|node, (ip, task)| {
            let keep = wanted.get(node) == Some(ip);
            if !keep {
                task.abort();
            }
            keep
        });
        for (node, ip) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(node.clone()) {
                let task = tokio::spawn(follow(
                    node,
                    SocketAddr::new(ip, config.agent_port),
                    config.clone(),
                    out.clone(),
                ));
                slot.insert((ip, task));
            }
        }
        tokio::select! {
            changed = agents.changed() => if changed.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(SETTLE) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for (_, (_, task)) in running {
        task.abort();
    }
}

/// One agent, for as long as it follows the feed.
async fn follow(
    node: String,
    address: SocketAddr,
    config: IntakeConfig,
    out: mpsc::Sender<NodeViolation>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut failures = 0u32;
    loop {
        match read(&node, address, &config, &out).await {
            Ok(()) => return,
            // The first failure of a streak is worth a line; the rest
            // (an agent whose node is going away) only at debug.
            Err(e) if failures == 0 => {
                warn!(%node, agent = %address, error = %e, retry_in = ?backoff, "cannot read the agent's violations")
            }
            Err(e) => {
                debug!(%node, agent = %address, error = %e, retry_in = ?backoff, "cannot read the agent's violations")
            }
        }
        failures += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Reads until the connection breaks (an error) or the receiver is gone.
async fn read(
    node: &str,
    address: SocketAddr,
    config: &IntakeConfig,
    out: &mpsc::Sender<NodeViolation>,
) -> Result<(), String> {
    let files = AgentTls {
        ca: &config.ca,
        cert: &config.cert,
        key: &config.key,
        server_name: &config.server_name,
    };
    let channel = agent_endpoint(address, &files)?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| error_chain(&e))?;
    let mut client = AgentServiceClient::new(channel);
    // Watch first: a violation filed while the list runs still wakes us.
    let mut signals = tokio::time::timeout(
        CALL_TIMEOUT,
        client.watch_events(pb::WatchEventsRequest {
            kinds: vec![pb::event::Kind::Violation as i32],
            ..Default::default()
        }),
    )
    .await
    .map_err(|_| "WatchEvents: no answer".to_string())?
    .map_err(|s| format!("WatchEvents: {s}"))?
    .into_inner();
    info!(%node, agent = %address, "reading the agent's violations");
    let now = imagegate_plumbing::clock::now_ms_i64();
    let since_ms =
        now.saturating_sub(i64::try_from(config.backfill.as_millis()).unwrap_or(i64::MAX));
    let mut after = 0;
    loop {
        after = list_after(&mut client, node, after, since_ms, out).await?;
        if out.is_closed() {
            return Ok(());
        }
        tokio::select! {
            signal = signals.message() => match signal {
                Ok(Some(_)) => {}
                Ok(None) => return Err("WatchEvents ended".into()),
                Err(s) => return Err(format!("WatchEvents: {s}")),
            },
            _ = tokio::time::sleep(config.poll_every) => {}
        }
    }
}

/// Sends every violation after `after` (and not older than `since_ms`);
/// returns the last sequence number read.
async fn list_after(
    client: &mut AgentServiceClient<tonic::transport::Channel>,
    node: &str,
    mut after: u64,
    since_ms: i64,
    out: &mpsc::Sender<NodeViolation>,
) -> Result<u64, String> {
    let mut page_token = String::new();
    loop {
        let page = tokio::time::timeout(
            CALL_TIMEOUT,
            client.list_violations(pb::ListViolationsRequest {
                after_seq: after,
                page_size: PAGE,
                page_token: page_token.clone(),
                ..Default::default()
            }),
        )
        .await
        .map_err(|_| "ListViolations: no answer".to_string())?
        .map_err(|s| format!("ListViolations: {s}"))?
        .into_inner();
        for violation in page.violations {
            after = after.max(violation.seq);
            if violation.at_unix_ms < since_ms {
                continue;
            }
            if out
                .send(NodeViolation::from_wire(node, violation))
                .await
                .is_err()
            {
                return Ok(after);
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(after);
        }
        page_token = page.next_page_token;
    }
}
