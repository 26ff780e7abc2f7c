//! The agent's core loop: events from the probe become container
//! identities, identities become verdicts, and verdicts become kernel
//! actions (ignore, watch, kill) and records.
//!
//! One task owns all mutable state; identification (containerd calls) runs
//! in spawned tasks that report back through a channel, so a slow runtime
//! never stalls reading the ring buffers.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use crate::{
    cgroups::Layout,
    container_ref::{self, RuntimeHint},
    enforce,
    events::{self, AgentEvent, EventKind},
    exec_event::{Exec, KernelAction, NewCgroup},
    metrics::{EventLabels, Metrics, VerdictLabels},
    probe::{Action, CgroupActions, Probe, ProbeError, ProbeEvent},
    runtime::{ContainerIdentity, Containerd, Lookup, container_key},
    settle::Gate,
    store::{ContainerRecord, Store, Violation, now_ms},
    verdict::{self, Exemptions, Verdict, VerdictKind},
};

/// How often a failed start-up scan is retried (containerd may start after
/// the agent).
const SCAN_RETRY: Duration = Duration::from_secs(5);
/// Attempts at asking containerd before a container is `unknown`.
const LOOKUP_ATTEMPTS: u32 = 3;
/// How often lost-event counters are copied into the metrics.
const LOST_POLL: Duration = Duration::from_secs(1);

/// Audit or enforce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Flag violations only.
    Audit,
    /// Flag violations, kill their processes and stop their execs.
    Enforce,
}

pub struct Config {
    pub mode: Mode,
    /// Time a container may run unapproved before it is flagged, because
    /// approvals can arrive just after a pod is created.
    pub grace: Duration,
    pub exemptions: Exemptions,
    /// How often cgroups that are gone are forgotten: containers come and
    /// go for the agent's whole life, and what it tracks must not grow
    /// with them.
    pub forget_every: Duration,
    /// Enforce mode also stops containers containerd knows but whose image
    /// it cannot name.
    pub enforce_unknown: bool,
}

impl Config {
    /// Whether enforce mode stops a container with this record (once the
    /// agent has settled): never admitted, or (when asked) known to
    /// containerd with no image to judge. A container the agent could not
    /// identify is never stopped.
    pub fn stops(&self, record: &ContainerRecord) -> bool {
        self.mode == Mode::Enforce
            && match record.verdict {
                VerdictKind::NeverAdmitted => true,
                VerdictKind::Unknown => self.enforce_unknown && record.runtime_namespace.is_some(),
                _ => false,
            }
    }
}

/// What the engine shares with the rest of the agent.
pub struct Context {
    pub config: Config,
    pub layout: Layout,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub runtime: Arc<Containerd>,
    pub actions: CgroupActions,
    /// Notified when approvals were added.
    pub approvals_changed: Arc<Notify>,
    /// Verdicts, violations and execs, for `WatchEvents`.
    pub events: events::Sender,
    /// Verdict counts since start, for the status.
    pub counters: Arc<Counters>,
    /// Whether enforce mode kills yet (see `settle`).
    pub settle: Arc<Gate>,
}

/// Counts the status reports, kept apart from the Prometheus registry so
/// they can be read without encoding it.
#[derive(Default)]
pub struct Counters {
    pub exec_events: AtomicU64,
    pub cgroup_events: AtomicU64,
    pub lost_exec_events: AtomicU64,
    pub lost_cgroup_events: AtomicU64,
    pub admitted: AtomicU64,
    pub never_admitted: AtomicU64,
    pub exempt: AtomicU64,
    pub unknown: AtomicU64,
}

enum Tracked {
    /// A lookup is in flight.
    Identifying,
    /// Not a container; its cgroup path.
    Host(String),
    Container(Box<Watched>),
}

struct Watched {
    record: ContainerRecord,
    identity: Option<ContainerIdentity>,
    /// When a `Pending` container turns into a violation.
    deadline: Option<Instant>,
    /// The container's first event (cgroup created, exec, or found by the
    /// scan), for the latency of its verdicts.
    first_event: Instant,
}

/// Whether a violation verdict still has to be filed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Filed {
    New,
    /// Filed before the agent restarted.
    Already,
}

enum Outcome {
    Host,
    /// The cgroup is gone (a short-lived process in a removed cgroup).
    Gone,
    Container(ContainerIdentity),
    Unknown(String),
}

struct Identified {
    key: u64,
    path: String,
    first_event: Instant,
    outcome: Outcome,
}

enum Message {
    Identified(Box<Identified>),
    /// A container found running by the start-up scan.
    Running {
        namespace: String,
        id: String,
        pid: u32,
    },
}

pub struct Engine {
    ctx: Arc<Context>,
    /// The agent's own cgroup key: never given a kill action, whatever its
    /// verdict (a misconfigured exemption must not make the agent kill
    /// itself).
    own_key: Option<u64>,
    tracked: HashMap<u64, Tracked>,
    tx: mpsc::UnboundedSender<Message>,
    rx: mpsc::UnboundedReceiver<Message>,
}

impl Engine {
    pub fn new(ctx: Arc<Context>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let own_key = ctx
            .layout
            .path_of_process(std::process::id())
            .ok()
            .and_then(|path| ctx.layout.key_of_path(&path).ok());
        Self {
            ctx,
            own_key,
            tracked: HashMap::new(),
            tx,
            rx,
        }
    }

    /// Runs until `shutdown` completes or the probe fails.
    pub async fn run(
        mut self,
        mut probe: Probe,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProbeError> {
        self.mark_host_roots();
        tokio::spawn(scan(self.ctx.clone(), self.tx.clone()));
        tokio::pin!(shutdown);
        let mut batch = Vec::new();
        let mut lost_poll = tokio::time::interval(LOST_POLL);
        let mut sweep = tokio::time::interval(self.ctx.config.forget_every);
        let settle = self.ctx.settle.clone();
        loop {
            let deadline = self.next_deadline();
            let settle_deadline = settle.deadline();
            tokio::select! {
                received = probe.recv(&mut batch) => {
                    received?;
                    for event in batch.drain(..) {
                        self.on_event(event);
                    }
                }
                Some(message) = self.rx.recv() => match message {
                    Message::Identified(identified) => self.on_identified(*identified),
                    Message::Running { namespace, id, pid } => self.on_running(namespace, id, pid),
                },
                _ = sleep_until(deadline) => self.on_deadlines(),
                _ = self.ctx.approvals_changed.notified() => self.on_approvals_changed(),
                _ = settle.settled.notified() => self.on_settled(),
                _ = sleep_until(settle_deadline) => {
                    if settle.settle_by_window() {
                        info!("settled: the settle window passed without a cluster set from a webhook");
                    }
                }
                _ = lost_poll.tick() => {
                    let (exec, cgroup) = probe.lost_events()?;
                    self.ctx.counters.lost_exec_events.store(exec, Ordering::Relaxed);
                    self.ctx.counters.lost_cgroup_events.store(cgroup, Ordering::Relaxed);
                    let lost = &self.ctx.metrics.lost_events;
                    lost.get_or_create(&EventLabels { kind: "exec" }).set(exec as i64);
                    lost.get_or_create(&EventLabels { kind: "cgroup" }).set(cgroup as i64);
                }
                _ = sweep.tick() => self.forget_gone(),
                _ = &mut shutdown => break,
            }
        }
        let (exec, cgroup) = probe.lost_events()?;
        info!(
            lost_exec_events = exec,
            lost_cgroup_events = cgroup,
            "engine stopped"
        );
        Ok(())
    }

    /// The hierarchy's root and the agent's own cgroup are host cgroups:
    /// tell the kernel before their execs reach user space.
    fn mark_host_roots(&mut self) {
        let mut host = vec!["/".to_string()];
        if let Ok(own) = self.ctx.layout.path_of_process(std::process::id())
            && container_ref::parse(&own).is_none()
        {
            host.push(own);
        }
        for path in host {
            if let Ok(key) = self.ctx.layout.key_of_path(&path) {
                self.set_action(key, Action::Ignore);
                self.tracked.insert(key, Tracked::Host(path));
            }
        }
    }

    fn on_event(&mut self, event: ProbeEvent) {
        let (kind, counter) = match &event {
            ProbeEvent::Exec(_) => ("exec", &self.ctx.counters.exec_events),
            ProbeEvent::NewCgroup(_) => ("cgroup", &self.ctx.counters.cgroup_events),
        };
        self.ctx
            .metrics
            .events
            .get_or_create(&EventLabels { kind })
            .inc();
        counter.fetch_add(1, Ordering::Relaxed);
        match event {
            ProbeEvent::Exec(exec) => self.on_exec(exec),
            ProbeEvent::NewCgroup(cgroup) => self.on_new_cgroup(cgroup),
        }
    }

    fn on_exec(&mut self, exec: Exec) {
        let key = match self.ctx.layout.filter_key() {
            imagegate_common::filter_key::MEMORY_V1 => exec.memcg_id.unwrap_or(0),
            _ => exec.cgroup_id,
        };
        if exec.action == KernelAction::Killed {
            self.ctx.metrics.kernel_kills.inc();
        }
        match self.tracked.get(&key) {
            Some(Tracked::Container(watched)) => {
                // Killed execs are rare and matter; the others can be many
                // (a shell loop) and are for debugging.
                let killed = exec.action == KernelAction::Killed;
                if self.ctx.events.receiver_count() > 0 {
                    let _ = self.ctx.events.send(AgentEvent {
                        kind: if killed {
                            EventKind::ExecKilled
                        } else {
                            EventKind::Exec
                        },
                        at_ms: now_ms(),
                        container: watched.record.clone(),
                        pid: Some(exec.pid),
                        filename: exec.filename.clone(),
                    });
                }
                if killed {
                    warn!(
                        container = %watched.record.key,
                        pid = exec.pid,
                        filename = exec.filename.as_deref().unwrap_or("?"),
                        "enforced: exec killed in the kernel"
                    );
                } else {
                    debug!(
                        container = %watched.record.key,
                        verdict = watched.record.verdict.as_str(),
                        pid = exec.pid,
                        filename = exec.filename.as_deref().unwrap_or("?"),
                        "exec in a watched container"
                    );
                }
            }
            Some(Tracked::Identifying | Tracked::Host(_)) => {}
            None => {
                self.tracked.insert(key, Tracked::Identifying);
                self.spawn_identify(key, Some(exec.tgid), None, Instant::now());
            }
        }
    }

    fn on_new_cgroup(&mut self, cgroup: NewCgroup) {
        if !self.ctx.layout.is_key_hierarchy(cgroup.hierarchy) {
            return;
        }
        let Some(path) = cgroup.path else {
            return;
        };
        // Only cgroups that look like containers are looked up early;
        // anything else waits for an exec, if one ever comes.
        if container_ref::parse(&path).is_none() || self.tracked.contains_key(&cgroup.id) {
            return;
        }
        debug!(key = cgroup.id, path, "new container cgroup");
        self.tracked.insert(cgroup.id, Tracked::Identifying);
        self.spawn_identify(cgroup.id, None, Some(path), Instant::now());
    }

    fn on_running(&mut self, namespace: String, id: String, pid: u32) {
        let layout = &self.ctx.layout;
        let Ok(path) = layout.path_of_process(pid) else {
            return;
        };
        let Ok(key) = layout.key_of_path(&path) else {
            return;
        };
        if matches!(self.tracked.get(&key), Some(Tracked::Container(_))) {
            return;
        }
        self.tracked.insert(key, Tracked::Identifying);
        let ctx = self.ctx.clone();
        let tx = self.tx.clone();
        let first_event = Instant::now();
        tokio::spawn(async move {
            let outcome = match lookup(&ctx.runtime, &id, Some(&namespace)).await {
                Outcome::Host => Outcome::Unknown(format!(
                    "containerd listed task {namespace}/{id} but then had no such container"
                )),
                other => other,
            };
            let _ = tx.send(Message::Identified(Box::new(Identified {
                key,
                path,
                first_event,
                outcome,
            })));
        });
    }

    fn spawn_identify(&self, key: u64, pid: Option<u32>, path: Option<String>, first: Instant) {
        let ctx = self.ctx.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let identified = identify(&ctx, key, pid, path, first).await;
            let _ = tx.send(Message::Identified(Box::new(identified)));
        });
    }

    fn on_identified(&mut self, identified: Identified) {
        let Identified {
            key,
            path,
            first_event,
            outcome,
        } = identified;
        match outcome {
            Outcome::Gone => {
                // Forget it: the kernel keeps reporting a PENDING cgroup,
                // so a later exec there starts a new lookup.
                self.tracked.remove(&key);
            }
            Outcome::Host => {
                debug!(key, path, "host cgroup");
                self.set_action(key, Action::Ignore);
                self.tracked.insert(key, Tracked::Host(path));
            }
            Outcome::Unknown(reason) => {
                self.observe_identification(first_event);
                let record = ContainerRecord {
                    key: format!("cgroup:{path}"),
                    runtime_namespace: None,
                    id: container_ref::parse(&path).map(|r| r.id),
                    image: None,
                    digest: None,
                    platform_digest: None,
                    pod: None,
                    cgroup: path,
                    verdict: VerdictKind::Unknown,
                    reason,
                    first_seen_ms: now_ms(),
                    decided_at_ms: now_ms(),
                    gone_at_ms: None,
                };
                self.set_action(key, Action::Watch);
                let watched = Watched {
                    record,
                    identity: None,
                    deadline: None,
                    first_event,
                };
                self.conclude(key, watched, Filed::New);
            }
            Outcome::Container(identity) => {
                self.observe_identification(first_event);
                let container = container_key(&identity.namespace, &identity.id);
                let previous = self.ctx.store.container(&container).ok().flatten();
                let first_seen_ms = previous.as_ref().map_or_else(now_ms, |p| p.first_seen_ms);
                let verdict = self.decide(&identity);
                let mut record = ContainerRecord {
                    key: container,
                    runtime_namespace: Some(identity.namespace.clone()),
                    id: Some(identity.id.clone()),
                    image: Some(identity.image.clone()),
                    digest: identity.digest.clone(),
                    platform_digest: identity.platform_digest.clone(),
                    pod: identity.pod.clone(),
                    cgroup: path,
                    verdict: verdict.kind,
                    reason: verdict.reason,
                    first_seen_ms,
                    decided_at_ms: now_ms(),
                    gone_at_ms: None,
                };
                let deadline = (verdict.kind == VerdictKind::Pending).then(|| {
                    // The window runs from the container's first sighting,
                    // also across agent restarts.
                    let elapsed = Duration::from_millis(now_ms().saturating_sub(first_seen_ms));
                    Instant::now() + self.ctx.config.grace.saturating_sub(elapsed)
                });
                let action = match verdict.kind {
                    VerdictKind::Admitted | VerdictKind::Exempt => Action::Ignore,
                    _ => Action::Watch,
                };
                self.set_action(key, action);
                // A restart finds a flagged container already flagged: keep
                // its verdict instead of opening a second grace window.
                if verdict.kind == VerdictKind::Pending
                    && let Some(previous) = previous.filter(|p| {
                        p.verdict == VerdictKind::NeverAdmitted && p.digest == record.digest
                    })
                {
                    record.verdict = previous.verdict;
                    record.reason = previous.reason;
                    let watched = Watched {
                        record,
                        identity: Some(identity),
                        deadline: None,
                        first_event,
                    };
                    self.conclude(key, watched, Filed::Already);
                    return;
                }
                let watched = Watched {
                    record,
                    identity: Some(identity),
                    deadline,
                    first_event,
                };
                self.conclude(key, watched, Filed::New);
            }
        }
    }

    /// Records a verdict, logs it and files a violation when due (unless
    /// it was filed before a restart; enforcement applies again either way).
    fn conclude(&mut self, key: u64, watched: Watched, filed: Filed) {
        let record = &watched.record;
        let counter = match record.verdict {
            VerdictKind::Admitted => Some(&self.ctx.counters.admitted),
            VerdictKind::NeverAdmitted => Some(&self.ctx.counters.never_admitted),
            VerdictKind::Exempt => Some(&self.ctx.counters.exempt),
            VerdictKind::Unknown => Some(&self.ctx.counters.unknown),
            VerdictKind::Pending => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        // Stored first, told after: whoever sees the verdict (log, stream)
        // finds the record and the violation already there.
        self.persist(record);
        if matches!(
            record.verdict,
            VerdictKind::NeverAdmitted | VerdictKind::Unknown
        ) {
            match filed {
                Filed::New => self.file_violation(key, record),
                Filed::Already => self.apply_violation_action(key, record),
            }
        }
        self.publish(EventKind::Verdict, record);
        self.ctx
            .metrics
            .verdicts
            .get_or_create(&VerdictLabels {
                verdict: record.verdict.as_str(),
            })
            .inc();
        let pod = record
            .pod
            .as_ref()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .unwrap_or_default();
        info!(
            container = %record.key,
            verdict = record.verdict.as_str(),
            image = record.image.as_deref().unwrap_or(""),
            digest = record.digest.as_deref().unwrap_or(""),
            pod,
            cgroup = %record.cgroup,
            reason = %record.reason,
            latency_ms = watched.first_event.elapsed().as_secs_f64() * 1000.0,
            "verdict"
        );
        self.tracked
            .insert(key, Tracked::Container(Box::new(watched)));
    }

    fn file_violation(&mut self, key: u64, record: &ContainerRecord) {
        let enforced =
            self.ctx.config.stops(record) && self.ctx.settle.kills() && Some(key) != self.own_key;
        let violation = Violation {
            seq: 0,
            at_ms: now_ms(),
            container: record.key.clone(),
            pod: record.pod.clone(),
            image: record.image.clone(),
            digest: record.digest.clone(),
            verdict: record.verdict,
            reason: record.reason.clone(),
            enforced,
        };
        self.publish(EventKind::Violation, record);
        match self.ctx.store.add_violation(violation) {
            Ok(stored) => warn!(
                seq = stored.seq,
                container = %stored.container,
                verdict = stored.verdict.as_str(),
                image = stored.image.as_deref().unwrap_or(""),
                digest = stored.digest.as_deref().unwrap_or(""),
                reason = %stored.reason,
                enforced,
                "violation"
            ),
            Err(e) => warn!(error = %e, container = %record.key, "could not store a violation"),
        }
        self.apply_violation_action(key, record);
    }

    /// Enforce mode, once settled: stop the container's execs in the
    /// kernel, then kill what already runs in it.
    fn apply_violation_action(&mut self, key: u64, record: &ContainerRecord) {
        if !self.ctx.config.stops(record) {
            return;
        }
        if Some(key) == self.own_key {
            warn!(container = %record.key, "not enforced: this is the agent's own container (exempt its namespace)");
            return;
        }
        if !self.ctx.settle.kills() {
            info!(container = %record.key, "flagged, not stopped: enforce mode is settling (GetStatus says until when)");
            return;
        }
        self.set_action(key, Action::Kill);
        match enforce::kill_cgroup(&self.ctx.layout, &record.cgroup) {
            Ok(killed) => {
                self.ctx.metrics.kills.inc_by(killed as u64);
                warn!(container = %record.key, killed, "enforced: killed the container's processes");
            }
            Err(e) => warn!(container = %record.key, error = %e, "enforcement failed"),
        }
    }

    fn publish(&self, kind: EventKind, record: &ContainerRecord) {
        if self.ctx.events.receiver_count() > 0 {
            let _ = self.ctx.events.send(AgentEvent {
                kind,
                at_ms: now_ms(),
                container: record.clone(),
                pid: None,
                filename: None,
            });
        }
    }

    fn decide(&self, identity: &ContainerIdentity) -> Verdict {
        let store = &self.ctx.store;
        verdict::decide(identity, |d| store.approved(d), &self.ctx.config.exemptions)
    }

    /// Drops what the agent tracks for cgroups that no longer exist, here
    /// and in the kernel map. Containers still waiting for their grace
    /// window are kept: one that exits early is still judged.
    fn forget_gone(&mut self) {
        let root = self.ctx.layout.key_root().to_path_buf();
        let exists = |path: &str| root.join(path.trim_start_matches('/')).exists();
        let gone: Vec<u64> = self
            .tracked
            .iter()
            .filter_map(|(key, tracked)| {
                let alive = match tracked {
                    Tracked::Identifying => true,
                    Tracked::Host(path) => exists(path),
                    Tracked::Container(w) => w.deadline.is_some() || exists(&w.record.cgroup),
                };
                (!alive).then_some(*key)
            })
            .collect();
        let mut gone_containers = Vec::new();
        for key in &gone {
            if let Some(Tracked::Container(watched)) = self.tracked.remove(key) {
                gone_containers.push(watched.record.key);
            }
            self.ctx.actions.remove(*key);
        }
        // Kept as gone: retention drops them later (see `retention`).
        if let Err(e) = self.ctx.store.mark_gone(&gone_containers, now_ms()) {
            warn!(error = %e, "could not mark gone containers");
        }
        if !gone.is_empty() {
            debug!(
                forgotten = gone.len(),
                tracked = self.tracked.len(),
                "cgroups gone"
            );
        }
        self.ctx
            .metrics
            .tracked_cgroups
            .set(self.tracked.len() as i64);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.tracked
            .values()
            .filter_map(|t| match t {
                Tracked::Container(w) => w.deadline,
                _ => None,
            })
            .min()
    }

    fn on_deadlines(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> = self
            .tracked
            .iter()
            .filter_map(|(key, t)| match t {
                Tracked::Container(w) if w.deadline.is_some_and(|d| d <= now) => Some(*key),
                _ => None,
            })
            .collect();
        for key in due {
            self.redecide(key, true);
        }
    }

    /// The agent settled: containers approved meanwhile pass, the
    /// never-admitted ones flagged while settling are stopped now.
    fn on_settled(&mut self) {
        self.on_approvals_changed();
        let flagged: Vec<(u64, ContainerRecord)> = self
            .tracked
            .iter()
            .filter_map(|(key, t)| match t {
                Tracked::Container(w) if self.ctx.config.stops(&w.record) => {
                    Some((*key, w.record.clone()))
                }
                _ => None,
            })
            .collect();
        info!(
            flagged = flagged.len(),
            "settled: enforce mode stops violations from now on"
        );
        for (key, record) in flagged {
            self.apply_violation_action(key, &record);
        }
    }

    fn on_approvals_changed(&mut self) {
        self.ctx
            .metrics
            .approvals
            .set(self.ctx.store.approval_count() as i64);
        let waiting: Vec<u64> = self
            .tracked
            .iter()
            .filter_map(|(key, t)| match t {
                Tracked::Container(w)
                    if matches!(
                        w.record.verdict,
                        VerdictKind::Pending | VerdictKind::NeverAdmitted
                    ) =>
                {
                    Some(*key)
                }
                _ => None,
            })
            .collect();
        for key in waiting {
            self.redecide(key, false);
        }
    }

    /// Decides again for a container that was not approved: approved now,
    /// or (when `expired`) never admitted.
    fn redecide(&mut self, key: u64, expired: bool) {
        let Some(Tracked::Container(watched)) = self.tracked.remove(&key) else {
            return;
        };
        let Watched {
            mut record,
            identity,
            deadline,
            first_event,
        } = *watched;
        let Some(identity) = identity else {
            let watched = Watched {
                record,
                identity: None,
                deadline: None,
                first_event,
            };
            self.tracked
                .insert(key, Tracked::Container(Box::new(watched)));
            return;
        };
        let verdict = self.decide(&identity);
        record.decided_at_ms = now_ms();
        match verdict.kind {
            VerdictKind::Admitted | VerdictKind::Exempt => {
                self.set_action(key, Action::Ignore);
                record.verdict = verdict.kind;
                record.reason = if record.verdict == VerdictKind::Admitted && deadline.is_none() {
                    format!("{} (after it was flagged)", verdict.reason)
                } else {
                    verdict.reason
                };
                let watched = Watched {
                    record,
                    identity: Some(identity),
                    deadline: None,
                    first_event,
                };
                self.conclude(key, watched, Filed::New);
            }
            VerdictKind::Pending if expired => {
                record.verdict = VerdictKind::NeverAdmitted;
                record.reason = format!(
                    "{}; no approval arrived within the {:?} grace window",
                    verdict.reason, self.ctx.config.grace
                );
                let watched = Watched {
                    record,
                    identity: Some(identity),
                    deadline: None,
                    first_event,
                };
                self.conclude(key, watched, Filed::New);
            }
            _ => {
                let watched = Watched {
                    record,
                    identity: Some(identity),
                    deadline,
                    first_event,
                };
                self.tracked
                    .insert(key, Tracked::Container(Box::new(watched)));
            }
        }
    }

    fn observe_identification(&self, first_event: Instant) {
        self.ctx
            .metrics
            .identification_seconds
            .observe(first_event.elapsed().as_secs_f64());
    }

    fn persist(&self, record: &ContainerRecord) {
        if let Err(e) = self.ctx.store.put_container(record) {
            warn!(error = %e, container = %record.key, "could not store a container record");
        }
    }

    fn set_action(&self, key: u64, action: Action) {
        if let Err(e) = self.ctx.actions.set(key, action) {
            warn!(key, ?action, error = %e, "could not update the kernel filter");
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Finds the cgroup of `key` and asks containerd what runs in it.
async fn identify(
    ctx: &Context,
    key: u64,
    pid: Option<u32>,
    path: Option<String>,
    first_event: Instant,
) -> Identified {
    let layout = &ctx.layout;
    let path = path
        .or_else(|| {
            let path = layout.path_of_process(pid?).ok()?;
            // The process may have moved since its exec: trust the path only
            // if it still names the same cgroup.
            (layout.key_of_path(&path).ok()? == key).then_some(path)
        })
        .or_else(|| layout.path_of_key(key));
    let Some(path) = path else {
        return Identified {
            key,
            path: String::new(),
            first_event,
            outcome: Outcome::Gone,
        };
    };
    let outcome = match container_ref::parse(&path) {
        None => Outcome::Host,
        Some(found) => {
            // A `/<namespace>/<name>` path is only a candidate: containerd
            // not knowing it makes it a host cgroup. A runtime's id that
            // containerd does not know is a container it cannot tell.
            let candidate = found.namespace.is_some();
            match lookup(&ctx.runtime, &found.id, found.namespace.as_deref()).await {
                Outcome::Host if !candidate => {
                    Outcome::Unknown(not_found_reason(&found.id, found.runtime, &ctx.runtime))
                }
                other => other,
            }
        }
    };
    Identified {
        key,
        path,
        first_event,
        outcome,
    }
}

fn not_found_reason(id: &str, runtime: RuntimeHint, containerd: &Containerd) -> String {
    let hint = match runtime {
        RuntimeHint::CriO => " (the cgroup is CRI-O's, which imagegate does not query yet)",
        RuntimeHint::Podman => " (the cgroup is Podman's, which imagegate does not query yet)",
        _ => "",
    };
    format!(
        "the cgroup names container {id}, but containerd at {} has no such container in any \
         namespace{hint}",
        containerd.socket().display()
    )
}

/// Asks containerd, retrying transient failures. `NotFound` becomes
/// `Host`; the caller decides whether that is right.
async fn lookup(runtime: &Containerd, id: &str, namespace: Option<&str>) -> Outcome {
    let mut last_error = String::new();
    for attempt in 0..LOOKUP_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        match runtime.find(id, namespace).await {
            Ok(Lookup::Found(identity)) => return Outcome::Container(*identity),
            Ok(Lookup::NotFound) => return Outcome::Host,
            Err(e) => last_error = e.to_string(),
        }
    }
    Outcome::Unknown(last_error)
}

/// Lists running containers and hands them to the engine; retries until
/// containerd answers once.
async fn scan(ctx: Arc<Context>, tx: mpsc::UnboundedSender<Message>) {
    loop {
        match ctx.runtime.running_tasks().await {
            Ok(tasks) => {
                info!(
                    running = tasks.len(),
                    "start-up scan: containers already running"
                );
                for task in tasks {
                    let _ = tx.send(Message::Running {
                        namespace: task.namespace,
                        id: task.container_id,
                        pid: task.pid,
                    });
                }
                return;
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?SCAN_RETRY, "start-up scan failed");
                tokio::time::sleep(SCAN_RETRY).await;
            }
        }
    }
}
