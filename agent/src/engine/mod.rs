//! The agent's core loop: events from the probe become container
//! identities, identities become verdicts, and verdicts become kernel
//! actions (ignore, watch, kill) and records.
//!
//! - [`machine`]: the state machine, events in and effects out, no I/O;
//! - [`identify`]: from a cgroup to what containerd says runs in it;
//! - [`queue`]: which identifications wait and which run (bounded);
//! - [`writer`]: the store's one writer, a thread of its own;
//! - this module: the runner, which feeds the machine and carries out its
//!   effects. Identification runs in spawned tasks (a bounded number at
//!   once) that report back through a channel, and records go to the
//!   writer, so neither a slow runtime nor a slow disk stalls reading the
//!   ring buffers, and no burst of cgroups makes the agent grow.

pub mod identify;
pub mod machine;
pub mod queue;
pub mod writer;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use imagegate_plumbing::clock::now_ms;
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

use crate::{
    cgroups::Layout,
    container_ref, enforce,
    events::{self, AgentEvent, EventKind},
    metrics::{EventLabels, Metrics, VerdictLabels},
    model::{Action, Caveats, ContainerVerdict},
    probe::{CgroupActions, Probe, ProbeError, ProbeEvent},
    runtime::NodeRuntime,
    settle::Gate,
    store::Store,
};

pub use machine::Config;
use machine::{Effect, Env, Identified, MAX_TRACKED, Machine, Outcome};
use queue::{Lane, Pushed, Queue, Request, Subject};
pub use writer::Writer;

/// How often lost-event counters are copied into the metrics.
const LOST_POLL: Duration = Duration::from_secs(1);
/// Identifications running at once; each is a handful of runtime calls of
/// a few milliseconds.
const IDENTIFY_RUNNING: usize = 16;
/// Identifications waiting, per lane (see `queue`); more are dropped,
/// counted, and made up for by a re-scan of the runtime.
const IDENTIFY_WAITING: usize = 4096;
/// Re-scans of the runtime's running containers (after dropped events)
/// are this far apart at least.
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// Cgroups forgotten inline (created, nothing in them) per turn of the
/// loop at most, so that a burst does not keep the loop from the rings.
const INLINE_CHECKS_PER_TURN: usize = 512;
/// Past this many tracked cgroups, gone ones are swept at once rather than
/// at the next `forget_every`, at most once per `RESCAN_EVERY`.
const SWEEP_EARLY_AT: usize = MAX_TRACKED / 2;

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
    /// Identifications dropped because too many were waiting.
    pub identifications_dropped: AtomicU64,
    /// Scans of the runtime's running containers after events were dropped
    /// (by the kernel or by the agent).
    pub rescans: AtomicU64,
}

/// What the runner works with.
pub struct Parts {
    /// How often cgroups that are gone are forgotten: containers come and
    /// go for the agent's whole life, and what it tracks must not grow
    /// with them.
    pub forget_every: Duration,
    pub layout: Layout,
    /// Read only: writes go to `writer`.
    pub store: Arc<Store>,
    pub writer: Writer,
    pub metrics: Arc<Metrics>,
    pub runtime: Arc<NodeRuntime>,
    pub actions: CgroupActions,
    /// Notified (by the writer) when approvals were added.
    pub approvals_changed: Arc<Notify>,
    pub events: events::Sender,
    pub counters: Arc<Counters>,
    pub settle: Arc<Gate>,
    /// The webhooks' approval feeds, when the agent follows any.
    pub feeds: Option<Arc<crate::feed::FeedHealth>>,
}

impl machine::Approvals for Store {
    fn approved(&self, digest: &str) -> Option<Caveats> {
        Store::approved(self, digest)
    }
}

// Unbounded channel, bounded use: at most `IDENTIFY_RUNNING` identified
// messages are in flight, and a scan sends one message per running
// container.
enum Message {
    Identified(Box<Identified>),
    /// A container a scan of the runtime found running.
    Running {
        key: u64,
        path: String,
        namespace: String,
        id: String,
    },
}

/// Scans of the runtime's running containers: one at start-up, then one
/// whenever events were dropped (the kernel's rings overflowed, or the
/// identification queue was full), so that a real container whose events
/// were lost is still judged.
struct Rescan {
    wanted: bool,
    why: &'static str,
    task: Option<tokio::task::JoinHandle<()>>,
    last: Option<Instant>,
}

pub struct Engine {
    machine: Machine,
    parts: Parts,
    tx: mpsc::UnboundedSender<Message>,
    rx: mpsc::UnboundedReceiver<Message>,
    queue: Queue,
    rescan: Rescan,
    last_sweep: Instant,
    /// Lost events as last polled: (exec, cgroup).
    lost_seen: (u64, u64),
}

impl Engine {
    pub fn new(config: Config, parts: Parts) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let layout = &parts.layout;
        let own_key = layout
            .path_of_process(std::process::id())
            .ok()
            .and_then(|path| layout.key_of_path(&path).ok());
        Self {
            machine: Machine::new(config, own_key),
            parts,
            tx,
            rx,
            queue: Queue::new(IDENTIFY_RUNNING, IDENTIFY_WAITING),
            rescan: Rescan {
                wanted: true,
                why: "start-up",
                task: None,
                last: None,
            },
            last_sweep: Instant::now(),
            lost_seen: (0, 0),
        }
    }

    /// Runs until `shutdown` completes or the probe fails.
    pub async fn run(
        mut self,
        mut probe: Probe,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProbeError> {
        self.mark_host_roots().await;
        tokio::pin!(shutdown);
        let mut batch = Vec::new();
        let mut lost_poll = tokio::time::interval(LOST_POLL);
        let mut sweep = tokio::time::interval(self.parts.forget_every);
        let settle = self.parts.settle.clone();
        let approvals_changed = self.parts.approvals_changed.clone();
        loop {
            let deadline = self.machine.next_deadline();
            let settle_deadline = settle.deadline();
            let effects = tokio::select! {
                received = probe.recv(&mut batch) => {
                    received?;
                    let mut effects = Vec::new();
                    for event in batch.drain(..) {
                        self.on_event(event, &mut effects);
                    }
                    effects
                }
                Some(message) = self.rx.recv() => match message {
                    Message::Running { key, path, namespace, id } => {
                        self.machine.on_running(key, path, namespace, id)
                    }
                    Message::Identified(identified) => {
                        self.queue.finished(identified.key);
                        if matches!(identified.outcome, Outcome::Container { .. } | Outcome::Unknown(_)) {
                            self.parts.metrics.identification_seconds
                                .observe(identified.first_event.elapsed().as_secs_f64());
                        }
                        self.machine.on_identified(*identified, &env(&self.parts))
                    }
                },
                _ = sleep_until(deadline) => {
                    self.machine.on_deadlines(&env(&self.parts))
                }
                _ = approvals_changed.notified() => {
                    self.parts.metrics.approvals.set(self.parts.store.approval_count() as i64);
                    self.machine.on_approvals_changed(&env(&self.parts))
                }
                _ = settle.settled.notified() => {
                    self.machine.on_settled(&env(&self.parts))
                }
                _ = sleep_until(settle_deadline) => {
                    if self.parts.writer.settle_by_window().await.is_err() {
                        warn!("could not settle: the store writer has stopped");
                    }
                    Vec::new()
                }
                _ = lost_poll.tick() => {
                    self.poll_lost(&probe)?;
                    Vec::new()
                }
                _ = sweep.tick() => self.sweep(),
                // Identifications left waiting by the last turn's bound on
                // inline checks, with slots free: another turn.
                () = std::future::ready(()), if self.queue.can_start() => Vec::new(),
                _ = &mut shutdown => break,
            };
            self.carry_out(effects).await;
            self.start_identifications();
            if self.machine.tracked() > SWEEP_EARLY_AT && self.last_sweep.elapsed() >= RESCAN_EVERY
            {
                let effects = self.sweep();
                self.carry_out(effects).await;
            }
            self.maybe_rescan();
        }
        // A scan still retrying an absent runtime must not outlive the
        // engine.
        if let Some(task) = self.rescan.task.take() {
            task.abort();
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
    async fn mark_host_roots(&mut self) {
        let layout = &self.parts.layout;
        let mut host = vec!["/".to_string()];
        if let Ok(own) = layout.path_of_process(std::process::id())
            && container_ref::parse(&own).is_none()
        {
            host.push(own);
        }
        let mut effects = Vec::new();
        for path in host {
            if let Ok(key) = layout.key_of_path(&path) {
                effects.extend(self.machine.host(key, path));
            }
        }
        self.carry_out(effects).await;
    }

    fn on_event(&mut self, event: ProbeEvent, effects: &mut Vec<Effect>) {
        let counters = &self.parts.counters;
        let (kind, counter) = match &event {
            ProbeEvent::Exec(_) => ("exec", &counters.exec_events),
            ProbeEvent::NewCgroup(_) => ("cgroup", &counters.cgroup_events),
        };
        self.parts
            .metrics
            .events
            .get_or_create(&EventLabels { kind })
            .inc();
        counter.fetch_add(1, Ordering::Relaxed);
        let layout = &self.parts.layout;
        match event {
            ProbeEvent::Exec(exec) => {
                let key = match layout.filter_key() {
                    imagegate_common::filter_key::MEMORY_V1 => exec.memcg_id.unwrap_or(0),
                    _ => exec.cgroup_id,
                };
                if exec.action == crate::exec_event::KernelAction::Killed {
                    self.parts.metrics.kernel_kills.inc();
                }
                self.machine.on_exec(key, exec, effects);
            }
            ProbeEvent::NewCgroup(cgroup) => match cgroup.path {
                Some(path) if layout.is_key_hierarchy(cgroup.hierarchy) => {
                    effects.extend(self.machine.on_new_cgroup(cgroup.id, path));
                }
                _ => {}
            },
        }
    }

    /// Forgets what the machine tracks for cgroups that are gone.
    fn sweep(&mut self) -> Vec<Effect> {
        let root = self.parts.layout.key_root().to_path_buf();
        let exists = |path: &str| root.join(path.trim_start_matches('/')).exists();
        let effects = self.machine.sweep(exists, now_ms());
        self.last_sweep = Instant::now();
        self.parts
            .metrics
            .tracked_cgroups
            .set(self.machine.tracked() as i64);
        effects
    }

    fn poll_lost(&mut self, probe: &Probe) -> Result<(), ProbeError> {
        let (exec, cgroup) = probe.lost_events()?;
        if (exec, cgroup) != self.lost_seen {
            self.lost_seen = (exec, cgroup);
            self.want_rescan("the kernel dropped events (a ring buffer was full)");
        }
        let counters = &self.parts.counters;
        counters.lost_exec_events.store(exec, Ordering::Relaxed);
        counters.lost_cgroup_events.store(cgroup, Ordering::Relaxed);
        let lost = &self.parts.metrics.lost_events;
        lost.get_or_create(&EventLabels { kind: "exec" })
            .set(exec as i64);
        lost.get_or_create(&EventLabels { kind: "cgroup" })
            .set(cgroup as i64);
        Ok(())
    }

    fn want_rescan(&mut self, why: &'static str) {
        if !self.rescan.wanted {
            self.rescan.wanted = true;
            self.rescan.why = why;
        }
    }

    /// Starts a wanted scan once none runs, the last was `RESCAN_EVERY`
    /// ago, and the queue has room for what it finds.
    fn maybe_rescan(&mut self) {
        let rescan = &mut self.rescan;
        if !rescan.wanted
            || rescan.task.as_ref().is_some_and(|t| !t.is_finished())
            || rescan.last.is_some_and(|at| at.elapsed() < RESCAN_EVERY)
            || !self.queue.has_room(Lane::Urgent)
        {
            return;
        }
        if rescan.last.is_some() {
            self.parts.counters.rescans.fetch_add(1, Ordering::Relaxed);
            self.parts.metrics.rescans.inc();
            info!(
                why = rescan.why,
                "scanning the runtime's running containers"
            );
        }
        rescan.wanted = false;
        rescan.last = Some(Instant::now());
        let why = rescan.why;
        self.rescan.task = Some(self.spawn_scan(why));
    }

    /// A scan: containers running now, each looked up as a container
    /// starting now would be (those already judged or being looked up are
    /// skipped by the machine). Retries until the runtime answers.
    fn spawn_scan(&self, why: &'static str) -> tokio::task::JoinHandle<()> {
        let runtime = self.parts.runtime.clone();
        let layout = self.parts.layout.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            for task in identify::scan(runtime.as_ref(), why).await {
                let Ok(path) = layout.path_of_process(task.pid) else {
                    continue;
                };
                let Ok(key) = layout.key_of_path(&path) else {
                    continue;
                };
                let _ = tx.send(Message::Running {
                    key,
                    path,
                    namespace: task.namespace,
                    id: task.container_id,
                });
            }
        })
    }

    /// Carries out the machine's effects in order: kernel actions and
    /// kills here and now, records through the writer, identification in
    /// tasks of their own.
    async fn carry_out(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                // Something runs in a cgroup an exec names; one that was only
                // created may never run anything.
                Effect::Identify { key, pid, path } => {
                    let lane = if pid.is_some() {
                        Lane::Urgent
                    } else {
                        Lane::Speculative
                    };
                    self.enqueue(key, Subject::Cgroup { pid, path }, lane);
                }
                Effect::IdentifyRunning {
                    key,
                    path,
                    namespace,
                    id,
                } => self.enqueue(
                    key,
                    Subject::Running {
                        path,
                        namespace,
                        id,
                    },
                    Lane::Urgent,
                ),
                Effect::Hurry(key) => self.queue.hurry(key),
                Effect::WaitsForFeed => {
                    self.parts.metrics.stops_waiting_for_feed.inc();
                }
                Effect::ResolveFeeds => {
                    if let Some(feeds) = &self.parts.feeds {
                        feeds.resolve_now();
                    }
                }
                Effect::SetAction(key, action) => self.set_action(key, action),
                Effect::ForgetAction(key) => self.parts.actions.remove(key),
                Effect::Concluded(concluded) => {
                    self.count(concluded.record.verdict);
                    if self.parts.writer.concluded(concluded).await.is_err() {
                        warn!("a verdict was not stored: the store writer has stopped");
                    }
                }
                Effect::Exec {
                    key,
                    pid,
                    filename,
                    killed,
                } => {
                    let events = &self.parts.events;
                    if events.receiver_count() > 0
                        && let Some(record) = self.machine.record(key)
                    {
                        let _ = events.send(AgentEvent {
                            kind: if killed {
                                EventKind::ExecKilled
                            } else {
                                EventKind::Exec
                            },
                            at_ms: now_ms(),
                            container: record.clone(),
                            pid: Some(pid),
                            filename,
                        });
                    }
                }
                Effect::Kill { container, cgroup } => {
                    match enforce::kill_cgroup(&self.parts.layout, &cgroup) {
                        Ok(killed) => {
                            self.parts.metrics.kills.inc_by(killed as u64);
                            warn!(%container, killed, "enforced: killed the container's processes");
                        }
                        Err(e) => warn!(%container, error = %e, "enforcement failed"),
                    }
                }
                Effect::MarkGone(containers) => {
                    if self
                        .parts
                        .writer
                        .mark_gone(containers, now_ms())
                        .await
                        .is_err()
                    {
                        warn!("gone containers not marked: the store writer has stopped");
                    }
                }
            }
        }
    }

    fn count(&self, verdict: ContainerVerdict) {
        let counters = &self.parts.counters;
        let counter = match verdict {
            ContainerVerdict::Admitted => &counters.admitted,
            ContainerVerdict::NeverAdmitted => &counters.never_admitted,
            ContainerVerdict::Exempt => &counters.exempt,
            ContainerVerdict::Unknown => &counters.unknown,
            ContainerVerdict::Pending => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.parts
            .metrics
            .verdicts
            .get_or_create(&VerdictLabels {
                verdict: verdict.as_str(),
            })
            .inc();
    }

    /// Queues an identification; one that does not fit is dropped: the
    /// machine forgets the cgroup (its next exec asks again) and a re-scan
    /// of the runtime makes up for it.
    fn enqueue(&mut self, key: u64, subject: Subject, lane: Lane) {
        let request = Request {
            key,
            subject,
            first_event: Instant::now(),
            first_seen_ms: now_ms(),
        };
        if self.queue.push(request, lane) == Pushed::Dropped {
            self.machine.on_dropped(key);
            self.parts
                .counters
                .identifications_dropped
                .fetch_add(1, Ordering::Relaxed);
            self.parts.metrics.identifications_dropped.inc();
            self.want_rescan("identifications were dropped (too many cgroups waiting)");
        }
    }

    /// Starts waiting identifications while slots are free. A cgroup that
    /// was only created and has nothing in it (most of a burst: empty, or
    /// gone already) is forgotten here and now, without a task or a
    /// runtime call.
    fn start_identifications(&mut self) {
        let mut checked = 0;
        while checked < INLINE_CHECKS_PER_TURN
            && let Some(request) = self.queue.start_next()
        {
            checked += 1;
            if let Subject::Cgroup {
                pid,
                path: Some(path),
            } = &request.subject
                && identify::nothing_runs_yet(&self.parts.layout, path, *pid)
            {
                self.queue.finished(request.key);
                let forgotten = Identified {
                    key: request.key,
                    path: String::new(),
                    first_event: request.first_event,
                    first_seen_ms: request.first_seen_ms,
                    outcome: Outcome::Gone,
                };
                let effects = self.machine.on_identified(forgotten, &env(&self.parts));
                debug_assert!(effects.is_empty(), "forgetting a cgroup has no effect");
                continue;
            }
            self.spawn_identify(request);
        }
        self.parts
            .metrics
            .identifications_waiting
            .set(self.queue.waiting() as i64);
    }

    /// Runs one identification in a task of its own; its outcome comes
    /// back to the loop as a message. A container claiming to be CRI's is
    /// waited for in CRI's records until its grace window ends, no longer.
    fn spawn_identify(&self, request: Request) {
        let runtime = self.parts.runtime.clone();
        let layout = self.parts.layout.clone();
        let store = self.parts.store.clone();
        let tx = self.tx.clone();
        let patience = (request.first_event + self.machine.config().grace).into();
        let Request {
            key,
            subject,
            first_event,
            first_seen_ms,
        } = request;
        tokio::spawn(async move {
            let stored = identify::stored(&store);
            let (path, outcome) = match subject {
                Subject::Cgroup { pid, path } => {
                    match identify::cgroup_path(&layout, key, pid, path) {
                        None => (String::new(), Outcome::Gone),
                        Some(path) => {
                            let outcome = identify::identify(
                                runtime.as_ref(),
                                &layout,
                                &path,
                                stored,
                                patience,
                            )
                            .await;
                            (path, outcome)
                        }
                    }
                }
                Subject::Running {
                    path,
                    namespace,
                    id,
                } => {
                    let outcome = identify::identify_running(
                        runtime.as_ref(),
                        &namespace,
                        &id,
                        stored,
                        patience,
                    )
                    .await;
                    (path, outcome)
                }
            };
            let _ = tx.send(Message::Identified(Box::new(Identified {
                key,
                path,
                first_event,
                first_seen_ms,
                outcome,
            })));
        });
    }

    fn set_action(&self, key: u64, action: Action) {
        if let Err(e) = self.parts.actions.set(key, action) {
            warn!(key, ?action, error = %e, "could not update the kernel filter");
        }
    }
}

/// The world as the machine sees it now.
fn env(parts: &Parts) -> Env<'_> {
    Env {
        approvals: parts.store.as_ref(),
        kills: parts.settle.kills(),
        feeds_open: parts.feeds.as_ref().is_none_or(|f| f.all_open()),
        feeds_resolved_ms: parts.feeds.as_ref().map_or(u64::MAX, |f| f.resolved_ms()),
        now: Instant::now(),
        now_ms: now_ms(),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
