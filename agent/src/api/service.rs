//! `imagegate.v1.AgentService`: approvals in (from the webhook, checked
//! identity), state out (to anyone who may connect).

use std::{pin::Pin, sync::Arc, sync::atomic::Ordering, time::Instant};

use imagegate_proto::{
    source::SourceKey,
    v1::{self as pb, agent_service_server::AgentService},
};
use tokio_stream::{Stream, StreamExt, wrappers::BroadcastStream};
use tonic::{Request, Response, Status};

use imagegate_plumbing::grpc::mtls::{TlsPeer, has_identity};

use super::convert;
use crate::{
    digest::Digest,
    engine, events,
    feed::FeedHealth,
    metrics::Metrics,
    model::Mode,
    settle::{Enforcement, Gate},
    store::Store,
};

/// Facts fixed at start-up, for `GetStatus`.
#[derive(Clone, Debug)]
pub struct StaticStatus {
    pub version: String,
    pub node: String,
    pub kernel: pb::Kernel,
    pub runtime: pb::Runtime,
}

/// `WatchEvents` streams open at once, all clients together.
pub const MAX_WATCHERS: usize = 64;

/// What the API reads, and the writer it sends approvals to: it never
/// writes the store itself.
pub struct Shared {
    /// Read only.
    pub store: Arc<Store>,
    pub writer: engine::Writer,
    pub metrics: Arc<Metrics>,
    pub events: events::Sender,
    pub counters: Arc<engine::Counters>,
    pub settle: Arc<Gate>,
    pub mode: Mode,
    pub enforce_unknown: bool,
    /// `None` when the agent follows no approval feed.
    pub feeds: Option<FeedStatus>,
}

/// The feeds the agent follows, for `GetStatus`.
pub struct FeedStatus {
    pub health: Arc<FeedHealth>,
    /// `--webhook-feed`.
    pub names: Vec<String>,
    /// `--feed-wait`.
    pub feed_wait: std::time::Duration,
}

pub struct AgentApi {
    ctx: Shared,
    /// One permit per open `WatchEvents` stream.
    watchers: Arc<tokio::sync::Semaphore>,
    status: StaticStatus,
    /// The DNS name in the webhook's client certificate; only it may push.
    push_identity: String,
    started: Instant,
}

impl AgentApi {
    pub fn new(ctx: Shared, status: StaticStatus, push_identity: String) -> Self {
        Self {
            ctx,
            watchers: Arc::new(tokio::sync::Semaphore::new(MAX_WATCHERS)),
            status,
            push_identity,
            started: Instant::now(),
        }
    }

    fn store(&self) -> Arc<Store> {
        self.ctx.store.clone()
    }

    /// The sender's source key, `identity/ledger`, once its certificate
    /// shows the push identity.
    fn pusher<T>(&self, request: &Request<T>, ledger: &str) -> Result<SourceKey, Status> {
        let Some(peer) = request.extensions().get::<TlsPeer>() else {
            return Err(Status::unauthenticated(
                "pushing approvals needs the webhook's client certificate: use the agent's mTLS \
                 listener (--grpc-address), not the plaintext one",
            ));
        };
        let Some(certificate) = &peer.certificate else {
            return Err(Status::unauthenticated(
                "no client certificate was presented",
            ));
        };
        if !has_identity(certificate, &self.push_identity) {
            return Err(Status::permission_denied(format!(
                "only {} may push approvals; this client certificate is not valid for that name",
                self.push_identity
            )));
        }
        SourceKey::new(&self.push_identity, ledger)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    async fn add(
        &self,
        source: SourceKey,
        approvals: Vec<pb::Approval>,
        generation: u64,
        cluster_set_generation: Option<u64>,
        retention_seconds: u64,
    ) -> Result<(u32, u64, Vec<pb::Rejected>), Status> {
        take_approvals(
            &self.ctx.writer,
            &self.ctx.metrics,
            source,
            approvals,
            generation,
            cluster_set_generation,
            retention_seconds,
        )
        .await
    }
}

/// Checks approvals from `source` and hands them to the writer, whether
/// they were pushed (the service) or followed (the feed): the valid ones
/// are kept, the others refused with their reasons. Returns how many were
/// new, the generation of `source` now held, and the refused.
pub async fn take_approvals(
    writer: &engine::Writer,
    metrics: &Metrics,
    source: SourceKey,
    approvals: Vec<pb::Approval>,
    generation: u64,
    cluster_set_generation: Option<u64>,
    retention_seconds: u64,
) -> Result<(u32, u64, Vec<pb::Rejected>), Status> {
    let checked = convert::approvals_in("approvals", approvals, &source.to_string())?;
    if !checked.rejected.is_empty() {
        metrics
            .approvals_rejected
            .inc_by(checked.rejected.len() as u64);
        tracing::warn!(
            %source,
            rejected = checked.rejected.len(),
            first = %checked.rejected[0].reason,
            "approvals refused; the others are kept"
        );
    }
    let ledger = source.ledger.clone();
    let received = writer
        .push(engine::writer::Push {
            source,
            approvals: checked.approvals,
            generation,
            cluster_set_generation,
            retention_ms: retention_seconds.saturating_mul(1000),
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    metrics
        .held_generation
        .get_or_create(&crate::metrics::LedgerLabels { ledger })
        .set(i64::try_from(received.generation).unwrap_or(i64::MAX));
    Ok((received.added as u32, received.generation, checked.rejected))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// Runs a store read on a blocking thread: reads decode records, and the
/// engine's verdicts must never wait behind them on the runtime's threads.
async fn read<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(internal)?
        .map_err(internal)
}

/// The repository of a reference: `host/path` without tag or digest.
fn repository(reference: &str) -> &str {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    match without_digest.rfind(':') {
        Some(colon) if !without_digest[colon..].contains('/') => &without_digest[..colon],
        _ => without_digest,
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn push_approvals(
        &self,
        request: Request<pb::PushApprovalsRequest>,
    ) -> Result<Response<pb::PushApprovalsResponse>, Status> {
        let source = self.pusher(&request, &request.get_ref().ledger)?;
        let body = request.into_inner();
        let (added, generation, rejected) = self
            .add(
                source,
                body.approvals,
                body.generation,
                body.cluster_set_generation,
                body.retention_seconds,
            )
            .await?;
        Ok(Response::new(pb::PushApprovalsResponse {
            added,
            generation,
            rejected,
        }))
    }

    async fn sync_approvals(
        &self,
        request: Request<pb::SyncApprovalsRequest>,
    ) -> Result<Response<pb::SyncApprovalsResponse>, Status> {
        let source = self.pusher(&request, &request.get_ref().ledger)?;
        let body = request.into_inner();
        let held = self
            .store()
            .source_generation(&source.to_string())
            .map_err(internal)?;
        if body.since_generation > held {
            return Err(Status::failed_precondition(format!(
                "since_generation {} is after generation {held}, the last this agent holds for \
                 {source}: sync from {held}",
                body.since_generation
            )));
        }
        let (added, generation, rejected) = self
            .add(
                source,
                body.approvals,
                body.generation,
                body.cluster_set_generation,
                body.retention_seconds,
            )
            .await?;
        Ok(Response::new(pb::SyncApprovalsResponse {
            added,
            generation,
            rejected,
        }))
    }

    async fn list_approvals(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let q = request.into_inner();
        let size = convert::page_size(q.page_size)?;
        if !q.digest.is_empty() {
            Digest::parse(&q.digest)
                .map_err(|e| Status::invalid_argument(format!("digest: {e}")))?;
        }
        let after = (!q.page_token.is_empty())
            .then(|| {
                Digest::parse(&q.page_token)
                    .map(|d| d.to_string())
                    .map_err(|_| {
                        Status::invalid_argument("page_token: not a token this agent gave")
                    })
            })
            .transpose()?;
        let store = self.store();
        let (namespace, wanted_repository, digest) = (q.namespace, q.repository, q.digest);
        let filtered = !namespace.is_empty() || !wanted_repository.is_empty();
        let keep = move |a: &crate::model::Approval| {
            (namespace.is_empty() || a.namespace.as_deref() == Some(namespace.as_str()))
                && (wanted_repository.is_empty()
                    || a.reference.as_deref().map(repository) == Some(wanted_repository.as_str()))
        };
        // A digest is a point lookup; everything else walks the table in
        // digest order from the page token, as far as the page needs.
        let total = (!filtered && digest.is_empty()).then(|| store.approval_count() as u64);
        let page = read(move || {
            if digest.is_empty() {
                store.approvals_after(after.as_deref(), size, keep)
            } else {
                let found = store
                    .approval(&digest)?
                    .filter(|a| keep(a) && after.as_deref().is_none_or(|t| a.digest.as_str() > t));
                Ok(crate::store::Page {
                    items: found.into_iter().collect(),
                    next: None,
                })
            }
        })
        .await?;
        let next_page_token = page.next.unwrap_or_default();
        let page = page.items;
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals: page.iter().map(convert::approval_out).collect(),
            next_page_token,
            total,
        }))
    }

    async fn list_containers(
        &self,
        request: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let q = request.into_inner();
        let size = convert::page_size(q.page_size)?;
        let verdict = convert::verdict_in("verdict", q.verdict)?;
        let after = (!q.page_token.is_empty()).then(|| q.page_token.clone());
        let store = self.store();
        let (namespace, prefix) = (q.pod_namespace, q.key_prefix);
        let total = match (namespace.is_empty() && prefix.is_empty(), verdict) {
            (true, None) => Some(store.counts().map_err(internal)?.0),
            (true, Some(v)) => Some(store.count_with_verdict(v).map_err(internal)?),
            (false, _) => None,
        };
        let (page, containers) = read(move || {
            let page = store.containers_page(after.as_deref(), &prefix, size, |c| {
                verdict.is_none_or(|v| c.verdict == v)
                    && (namespace.is_empty()
                        || c.pod.as_ref().map(|p| p.namespace.as_str()) == Some(namespace.as_str()))
            })?;
            // Each admitted container with the signers of the approval that
            // admitted it (its platform manifest's, else its image's).
            let mut containers = Vec::with_capacity(page.items.len());
            for c in &page.items {
                let mut signers = Vec::new();
                if c.verdict == crate::model::ContainerVerdict::Admitted {
                    for digest in [&c.platform_digest, &c.digest].into_iter().flatten() {
                        if let Some(a) = store.approval(digest.as_str())? {
                            signers = a.signers;
                            break;
                        }
                    }
                }
                containers.push(convert::container_out(c, &signers));
            }
            Ok((page, containers))
        })
        .await?;
        Ok(Response::new(pb::ListContainersResponse {
            containers,
            next_page_token: page.next.unwrap_or_default(),
            total,
        }))
    }

    async fn list_violations(
        &self,
        request: Request<pb::ListViolationsRequest>,
    ) -> Result<Response<pb::ListViolationsResponse>, Status> {
        let q = request.into_inner();
        let size = convert::page_size(q.page_size)?;
        let after = if q.page_token.is_empty() {
            0
        } else {
            q.page_token
                .parse::<u64>()
                .map_err(|_| Status::invalid_argument("page_token: not a token this agent gave"))?
        };
        let store = self.store();
        let (container, namespace) = (q.container, q.pod_namespace);
        let total = (container.is_empty() && namespace.is_empty() && q.after_seq == 0)
            .then(|| store.counts().map(|(_, violations)| violations))
            .transpose()
            .map_err(internal)?;
        let from = after.max(q.after_seq);
        let page = read(move || {
            store.violations_page(from, size, |v| {
                (container.is_empty() || v.container == container)
                    && (namespace.is_empty()
                        || v.pod.as_ref().map(|p| p.namespace.as_str()) == Some(namespace.as_str()))
            })
        })
        .await?;
        Ok(Response::new(pb::ListViolationsResponse {
            violations: page.items.iter().map(convert::violation_out).collect(),
            next_page_token: page.next.map(|seq| seq.to_string()).unwrap_or_default(),
            total,
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let q = request.into_inner();
        let mut kinds = Vec::new();
        for (i, kind) in q.kinds.iter().enumerate() {
            match pb::event::Kind::try_from(*kind) {
                Ok(pb::event::Kind::Unspecified) | Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "kinds[{i}]: no event kind numbered {kind}"
                    )));
                }
                Ok(kind) => kinds.push(kind),
            }
        }
        let mut verdicts = Vec::new();
        for (i, verdict) in q.verdicts.iter().enumerate() {
            match convert::verdict_in(&format!("verdicts[{i}]"), *verdict)? {
                Some(v) => verdicts.push(v),
                None => {
                    return Err(Status::invalid_argument(format!(
                        "verdicts[{i}]: VERDICT_UNSPECIFIED is not a verdict"
                    )));
                }
            }
        }
        // Each watcher costs memory for as long as it stays: bounded, and
        // told so rather than queued.
        let watcher = self.watchers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_WATCHERS} WatchEvents streams are open already; close one, or poll \
                 ListViolations with after_seq"
            ))
        })?;
        let prefix = q.key_prefix;
        let stream = BroadcastStream::new(self.ctx.events.subscribe()).filter_map(move |item| {
            // The permit lives as long as the stream.
            let _watcher = &watcher;
            let event = match item {
                Ok(event) => event,
                // A watcher that fell behind is told, then goes on.
                Err(lagged) => {
                    return Some(Err(Status::data_loss(format!(
                        "this watcher fell behind: {lagged}"
                    ))));
                }
            };
            let kind = convert::event_kind_out(event.kind);
            let wanted = (kinds.is_empty() || kinds.contains(&kind))
                && event.container.key.starts_with(&prefix)
                && (verdicts.is_empty() || verdicts.contains(&event.container.verdict));
            wanted.then(|| Ok(convert::event_out(&event)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::Status>, Status> {
        let store = self.store();
        let enforcement = self.ctx.settle.now();
        let (containers, violations) = store.counts().map_err(internal)?;
        let (containers_pruned, violations_pruned, approvals_expired) =
            store.pruned().map_err(internal)?;
        let c = &self.ctx.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let sources = store
            .sources()
            .map_err(internal)?
            .into_iter()
            .map(|(source, state)| pb::Source {
                source,
                generation: state.generation,
                last_sync_unix_ms: state.last_sync_ms as i64,
                cluster_set_generation: state.cluster_set_generation,
            })
            .collect();
        Ok(Response::new(pb::Status {
            version: self.status.version.clone(),
            mode: match self.ctx.mode {
                Mode::Audit => "audit".into(),
                Mode::Enforce => "enforce".into(),
            },
            node: self.status.node.clone(),
            kernel: Some(self.status.kernel.clone()),
            runtime: Some(self.status.runtime.clone()),
            counters: Some(pb::Counters {
                exec_events: load(&c.exec_events),
                cgroup_events: load(&c.cgroup_events),
                lost_exec_events: load(&c.lost_exec_events),
                lost_cgroup_events: load(&c.lost_cgroup_events),
                approvals: store.approval_count() as u64,
                containers,
                violations,
                admitted: load(&c.admitted),
                never_admitted: load(&c.never_admitted),
                exempt: load(&c.exempt),
                unknown: load(&c.unknown),
                containers_pruned,
                violations_pruned,
                approvals_expired,
                identifications_dropped: load(&c.identifications_dropped),
                rescans: load(&c.rescans),
            }),
            sources,
            uptime_seconds: self.started.elapsed().as_secs(),
            enforcement: Some(convert::enforcement_out(
                &enforcement,
                self.ctx.enforce_unknown,
            )),
            feeds: self.ctx.feeds.as_ref().map(|feeds| {
                let enforcing = matches!(enforcement, Enforcement::Enforcing { .. });
                convert::feeds_out(
                    &feeds.names,
                    feeds.health.counts(),
                    feeds.feed_wait,
                    enforcing,
                    self.ctx.metrics.stops_waiting_for_feed.get(),
                )
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_of_a_reference() {
        assert_eq!(
            repository("registry.test:5000/team/app:1.0"),
            "registry.test:5000/team/app"
        );
        assert_eq!(
            repository("registry.test:5000/team/app"),
            "registry.test:5000/team/app"
        );
        assert_eq!(
            repository("registry.test/app@sha256:abcd"),
            "registry.test/app"
        );
    }
}
