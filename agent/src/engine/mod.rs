//! The agent's core loop: events from the probe become container
//! identities, identities become verdicts, and verdicts become kernel
//! actions (ignore, watch, kill) and records.
//!
//! - [`machine`]: the state machine, events in and effects out, no I/O;
//! - [`identify`]: from a cgroup to what containerd says runs in it;
//! - [`writer`]: the store's one writer, a thread of its own;
//! - this module: the runner, which feeds the machine and carries out its
//!   effects. Identification runs in spawned tasks that report back
//!   through a channel, and records go to the writer, so neither a slow
//!   runtime nor a slow disk stalls reading the ring buffers.

pub mod identify;
pub mod machine;
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
    runtime::Containerd,
    settle::Gate,
    store::Store,
};

pub use machine::Config;
use machine::{Effect, Env, Identified, Machine, Outcome};
pub use writer::Writer;

/// How often lost-event counters are copied into the metrics.
const LOST_POLL: Duration = Duration::from_secs(1);

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
    pub runtime: Arc<Containerd>,
    pub actions: CgroupActions,
    /// Notified (by the writer) when approvals were added.
    pub approvals_changed: Arc<Notify>,
    pub events: events::Sender,
    pub counters: Arc<Counters>,
    pub settle: Arc<Gate>,
}

impl machine::Approvals for Store {
    fn approved(&self, digest: &str) -> Option<Caveats> {
        Store::approved(self, digest)
    }
}

enum Message {
    Identified(Box<Identified>),
    /// A container the start-up scan found running.
    Running {
        key: u64,
        path: String,
        namespace: String,
        id: String,
    },
}

pub struct Engine {
    machine: Machine,
    parts: Parts,
    tx: mpsc::UnboundedSender<Message>,
    rx: mpsc::UnboundedReceiver<Message>,
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
        }
    }

    /// Runs until `shutdown` completes or the probe fails.
    pub async fn run(
        mut self,
        mut probe: Probe,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProbeError> {
        self.mark_host_roots().await;
        // Aborted when `run` returns, however it returns: a scan still
        // retrying an absent containerd must not outlive the engine.
        let _scan = self.spawn_scan();
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
                _ = sweep.tick() => {
                    let root = self.parts.layout.key_root().to_path_buf();
                    let exists = |path: &str| root.join(path.trim_start_matches('/')).exists();
                    let effects = self.machine.sweep(exists, now_ms());
                    self.parts.metrics.tracked_cgroups.set(self.machine.tracked() as i64);
                    effects
                }
                _ = &mut shutdown => break,
            };
            self.carry_out(effects).await;
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

    fn poll_lost(&self, probe: &Probe) -> Result<(), ProbeError> {
        let (exec, cgroup) = probe.lost_events()?;
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

    /// The start-up scan: containers already running, each looked up as a
    /// container starting now would be. Retries until containerd answers.
    fn spawn_scan(&self) -> tokio::task::JoinSet<()> {
        let runtime = self.parts.runtime.clone();
        let layout = self.parts.layout.clone();
        let tx = self.tx.clone();
        let mut scan = tokio::task::JoinSet::new();
        scan.spawn(async move {
            for task in identify::scan(runtime.as_ref()).await {
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
        });
        scan
    }

    /// Carries out the machine's effects in order: kernel actions and
    /// kills here and now, records through the writer, identification in
    /// tasks of their own.
    async fn carry_out(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Identify { key, pid, path } => self.spawn_identify(key, pid, path),
                Effect::IdentifyRunning {
                    key,
                    path,
                    namespace,
                    id,
                } => self.spawn_identify_running(key, path, namespace, id),
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

    fn spawn_identify(&self, key: u64, pid: Option<u32>, path: Option<String>) {
        let runtime = self.parts.runtime.clone();
        let layout = self.parts.layout.clone();
        let store = self.parts.store.clone();
        self.report(key, async move {
            match identify::cgroup_path(&layout, key, pid, path) {
                None => (String::new(), Outcome::Gone),
                Some(path) => {
                    let outcome =
                        identify::identify(runtime.as_ref(), &path, identify::stored(&store)).await;
                    (path, outcome)
                }
            }
        });
    }

    fn spawn_identify_running(&self, key: u64, path: String, namespace: String, id: String) {
        let runtime = self.parts.runtime.clone();
        let store = self.parts.store.clone();
        self.report(key, async move {
            let stored = identify::stored(&store);
            let outcome =
                identify::identify_running(runtime.as_ref(), &namespace, &id, stored).await;
            (path, outcome)
        });
    }

    /// Runs an identification (its cgroup path and outcome) in a task of
    /// its own and sends the result to the loop.
    fn report(
        &self,
        key: u64,
        identification: impl Future<Output = (String, Outcome)> + Send + 'static,
    ) {
        let tx = self.tx.clone();
        let first_event = Instant::now();
        tokio::spawn(async move {
            let (path, outcome) = identification.await;
            let _ = tx.send(Message::Identified(Box::new(Identified {
                key,
                path,
                first_event,
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
