//! One agent: connect over mTLS, learn what it holds, sync, then push
//! every new ledger write; on any failure reconnect with backoff and sync
//! again from what the agent reports.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use imagegate_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use tokio::sync::watch;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tracing::{debug, info, warn};

use super::{
    PushLabels, Pusher,
    wire::{BatchLimits, batch},
};
use imagegate_plumbing::errors::error_chain;
use imagegate_proto::source::SourceKey;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Even without writes, look at the ledger this often (a missed wake-up
/// costs at most this much).
const IDLE_CHECK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("connecting: {0}")]
    Connect(String),
    #[error("{call}: {status}")]
    Rpc {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("the ledger failed: {0}")]
    Ledger(String),
}

/// Follows one agent until `stop` turns true (or the task is aborted).
pub async fn follow(address: SocketAddr, pusher: Arc<Pusher>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = session(address, &pusher, &mut backoff);
        tokio::select! {
            result = session => {
                if let Err(e) = result {
                    pusher.metrics.pushes.get_or_create(&PushLabels { result: "error" }).inc();
                    warn!(agent = %address, error = %e, retry_in = ?backoff, "push to agent failed");
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: returns only on failure.
async fn session(
    address: SocketAddr,
    pusher: &Pusher,
    backoff: &mut Duration,
) -> Result<(), LinkError> {
    let channel = connect(address, pusher).await?;
    let mut client = AgentServiceClient::new(channel);
    let ledger_id = pusher.ledger.id().to_string();
    let retention_seconds = pusher.ledger.retention().as_secs();
    let mut changes = pusher.ledger.subscribe();
    let mut held = held_generation(&mut client, &ledger_id).await?;
    info!(agent = %address, held, "connected to agent");
    let mut syncing = true;
    // The cluster set mark this agent was last told of.
    let mut told_cluster_set = None;
    loop {
        // Marked seen before the read, not after: a write landing between
        // the read and the wait below then still wakes it (marking after
        // the read lost such a write until the idle check, 30 s later).
        changes.borrow_and_update();
        let ledger = pusher.ledger.clone();
        let since = held;
        let (records, cluster_set) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::ledger::LedgerError>((
                ledger.since(since, BatchLimits::CALL.approvals)?,
                ledger.cluster_set()?,
            ))
        })
        .await
        .map_err(|e| LinkError::Ledger(e.to_string()))?
        .map_err(|e| LinkError::Ledger(e.to_string()))?;
        let Some(last_record) = records.last().map(|a| a.generation) else {
            if cluster_set.is_some() && cluster_set != told_cluster_set {
                // Nothing new to send, but the agent has yet to learn
                // that what it holds is the whole cluster set.
                client
                    .push_approvals(pb::PushApprovalsRequest {
                        approvals: Vec::new(),
                        generation: held,
                        ledger: ledger_id.clone(),
                        cluster_set_generation: cluster_set,
                        retention_seconds,
                    })
                    .await
                    .map_err(|status| LinkError::Rpc {
                        call: "PushApprovals",
                        status: Box::new(status),
                    })?;
                info!(agent = %address, cluster_set = ?cluster_set, "agent told of the cluster set");
                told_cluster_set = cluster_set;
                continue;
            }
            // Up to date: wait for the next write.
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(IDLE_CHECK) => {}
            }
            continue;
        };
        let (approvals, last) = batch(&records, BatchLimits::CALL);
        debug_assert!(last <= last_record);
        let count = approvals.len() as u64;
        let reply = if syncing {
            client
                .sync_approvals(pb::SyncApprovalsRequest {
                    approvals,
                    since_generation: held,
                    generation: last,
                    ledger: ledger_id.clone(),
                    cluster_set_generation: cluster_set,
                    retention_seconds,
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    (r.generation, r.rejected)
                })
        } else {
            client
                .push_approvals(pb::PushApprovalsRequest {
                    approvals,
                    generation: last,
                    ledger: ledger_id.clone(),
                    cluster_set_generation: cluster_set,
                    retention_seconds,
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    (r.generation, r.rejected)
                })
        };
        let call = if syncing {
            "SyncApprovals"
        } else {
            "PushApprovals"
        };
        match reply {
            Ok((agent_holds, rejected)) if agent_holds >= last => {
                if !rejected.is_empty() {
                    // The agent kept the rest and moved on; these records
                    // can never reach it. Said loudly, counted, not retried.
                    pusher.metrics.pushes_rejected.inc_by(rejected.len() as u64);
                    for r in rejected.iter().take(5) {
                        tracing::error!(agent = %address, call, reason = %r.reason, "the agent refused an approval");
                    }
                }
                pusher
                    .metrics
                    .pushes
                    .get_or_create(&PushLabels { result: "ok" })
                    .inc();
                pusher.metrics.pushed_approvals.inc_by(count);
                debug!(agent = %address, call, count, generation = last, "approvals sent");
                held = agent_holds;
                syncing = false;
                told_cluster_set = cluster_set;
                *backoff = Duration::from_millis(100);
            }
            Ok((agent_holds, _)) => {
                // The agent holds less than we sent: it lost state. Sync
                // again from what it has.
                warn!(agent = %address, agent_holds, sent = last, "agent reports an older generation; resyncing");
                held = agent_holds;
                syncing = true;
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                // Sync from a generation the agent does not hold: ask again.
                held = held_generation(&mut client, &ledger_id).await?;
                syncing = true;
            }
            Err(status) => {
                return Err(LinkError::Rpc {
                    call,
                    status: Box::new(status),
                });
            }
        }
    }
}

/// The generation of this ledger the agent holds, from its status.
async fn held_generation(
    client: &mut AgentServiceClient<Channel>,
    ledger_id: &str,
) -> Result<u64, LinkError> {
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(|status| LinkError::Rpc {
            call: "GetStatus",
            status: Box::new(status),
        })?
        .into_inner();
    Ok(status
        .sources
        .iter()
        .find(|s| SourceKey::parse(&s.source).is_ok_and(|key| key.ledger == ledger_id))
        .map_or(0, |s| s.generation))
}

/// A channel to the agent, with this webhook's client certificate. The
/// files are read on every connection, so renewed certificates are used
/// from the next one on.
async fn connect(address: SocketAddr, pusher: &Pusher) -> Result<Channel, LinkError> {
    let config = &pusher.config;
    let files = AgentTls {
        ca: &config.ca,
        cert: &config.cert,
        key: &config.key,
        server_name: &config.server_name,
    };
    agent_endpoint(address, &files)
        .map_err(LinkError::Connect)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .map_err(|e| LinkError::Connect(error_chain(&e)))
}

/// The files the webhook reaches an agent's mTLS API with: its push
/// identity, and the CA and name the agent's certificate must have.
pub struct AgentTls<'a> {
    pub ca: &'a std::path::Path,
    pub cert: &'a std::path::Path,
    pub key: &'a std::path::Path,
    pub server_name: &'a str,
}

/// An endpoint for the agent API at `address`. The files are read on every
/// call, so renewed certificates are used from the next connection on.
pub fn agent_endpoint(address: SocketAddr, files: &AgentTls<'_>) -> Result<Endpoint, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(files.ca)?))
        .identity(Identity::from_pem(read(files.cert)?, read(files.key)?))
        .domain_name(files.server_name.to_string());
    Endpoint::from_shared(format!("https://{address}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())
}
