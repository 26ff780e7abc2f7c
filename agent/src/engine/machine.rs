//! The engine's state machine: what the agent tracks per cgroup, and what
//! each event makes of it. Events in, [`Effect`]s out; no I/O. The runner
//! (`engine::Engine`) feeds it and carries out the effects, so every rule
//! here (the grace window, late approvals, restarts, the settle window,
//! never stopping host, exempt or admitted containers, nor the agent
//! itself) is tested below without root, containerd or a kernel.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use crate::{
    container_ref,
    exec_event::{Exec, KernelAction},
    model::{
        Action, ContainerIdentity, ContainerRecord, ContainerVerdict, Mode, Violation,
        container_key,
    },
    verdict,
};

pub use io::{Approvals, Concluded, Config, Effect, Env, Identified, Outcome};

/// Most cgroups tracked in user space: the kernel filter holds as many
/// (`CGROUP_ACTIONS`). Past it, host cgroups get their kernel action but
/// are not remembered here (the filter's LRU ages them out), so however
/// many cgroups someone creates and keeps, this map stays bounded; the
/// runner sweeps gone ones early when it gets near.
pub const MAX_TRACKED: usize = 65_536;

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
    /// The container's first event, for the latency of its verdicts.
    first_event: Instant,
    /// Its verdict waited past the grace window for a webhook's feed.
    waited_for_feed: bool,
}

/// While a verdict waits for a feed, it is looked at again this often.
const FEED_RECHECK: Duration = Duration::from_secs(1);

/// Whether a violation still has to be filed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Filed {
    New,
    /// Filed before the agent restarted.
    Already,
}

pub struct Machine {
    config: Config,
    /// The agent's own cgroup: never given a kill action, whatever its
    /// verdict (a misconfigured exemption must not make the agent kill
    /// itself).
    own_key: Option<u64>,
    tracked: HashMap<u64, Tracked>,
}

impl Machine {
    pub fn new(config: Config, own_key: Option<u64>) -> Self {
        Self {
            config,
            own_key,
            tracked: HashMap::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Cgroups tracked (containers, host cgroups, lookups in flight).
    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// A cgroup known to be the host's (the root, the agent's own): its
    /// execs are ignored in the kernel. Remembered (to forget its kernel
    /// action once it is gone) while there is room: see [`MAX_TRACKED`].
    pub fn host(&mut self, key: u64, path: String) -> Vec<Effect> {
        if self.tracked.len() < MAX_TRACKED || self.tracked.contains_key(&key) {
            self.tracked.insert(key, Tracked::Host(path));
        } else {
            self.tracked.remove(&key);
        }
        vec![Effect::SetAction(key, Action::Ignore)]
    }

    /// The record of the container in cgroup `key`, once judged.
    pub fn record(&self, key: u64) -> Option<&ContainerRecord> {
        match self.tracked.get(&key) {
            Some(Tracked::Container(watched)) => Some(&watched.record),
            _ => None,
        }
    }

    /// An exec the kernel reported in cgroup `key`; effects are added to
    /// `effects` (the exec path: no allocation of its own).
    pub fn on_exec(&mut self, key: u64, exec: Exec, effects: &mut Vec<Effect>) {
        match self.tracked.get(&key) {
            Some(Tracked::Container(watched)) => {
                let killed = exec.action == KernelAction::Killed;
                let filename = exec.filename.as_deref().unwrap_or("?");
                // Killed execs are rare and matter; the others can be many
                // (a shell loop) and are for debugging.
                if killed {
                    warn!(container = %watched.record.key, pid = exec.pid, filename, "enforced: exec killed in the kernel");
                } else {
                    debug!(container = %watched.record.key, verdict = watched.record.verdict.as_str(), pid = exec.pid, filename, "exec in a watched container");
                }
                effects.push(Effect::Exec {
                    key,
                    pid: exec.pid,
                    filename: exec.filename,
                    killed,
                });
            }
            // Something runs there: its lookup should not wait behind
            // cgroups that were only created.
            Some(Tracked::Identifying) => effects.push(Effect::Hurry(key)),
            Some(Tracked::Host(_)) => {}
            None => {
                self.tracked.insert(key, Tracked::Identifying);
                effects.push(Effect::Identify {
                    key,
                    pid: Some(exec.tgid),
                    path: None,
                });
            }
        }
    }

    /// A new cgroup in the key hierarchy. Only those that look like
    /// containers are looked up early; anything else waits for an exec,
    /// if one ever comes.
    pub fn on_new_cgroup(&mut self, key: u64, path: String) -> Vec<Effect> {
        if container_ref::parse(&path).is_none() || self.tracked.contains_key(&key) {
            return Vec::new();
        }
        debug!(key, path, "new container cgroup");
        self.tracked.insert(key, Tracked::Identifying);
        vec![Effect::Identify {
            key,
            pid: None,
            path: Some(path),
        }]
    }

    /// A container a scan of the runtime found running in cgroup `key`
    /// (at start-up, or after events were dropped).
    pub fn on_running(
        &mut self,
        key: u64,
        path: String,
        namespace: String,
        id: String,
    ) -> Vec<Effect> {
        if matches!(
            self.tracked.get(&key),
            Some(Tracked::Container(_) | Tracked::Identifying)
        ) {
            return Vec::new();
        }
        self.tracked.insert(key, Tracked::Identifying);
        vec![Effect::IdentifyRunning {
            key,
            path,
            namespace,
            id,
        }]
    }

    /// The runner could not queue the lookup of `key` (too many waiting):
    /// forget it, so that the next exec there asks again (the kernel
    /// reports every exec in a cgroup it has no decision for).
    pub fn on_dropped(&mut self, key: u64) {
        if matches!(self.tracked.get(&key), Some(Tracked::Identifying)) {
            self.tracked.remove(&key);
        }
    }

    /// What containerd said about a cgroup.
    pub fn on_identified(&mut self, identified: Identified, env: &Env) -> Vec<Effect> {
        let Identified {
            key,
            path,
            first_event,
            first_seen_ms,
            outcome,
        } = identified;
        let mut effects = Vec::new();
        match outcome {
            Outcome::Gone => {
                // Forget it: the kernel keeps reporting a PENDING cgroup,
                // so a later exec there starts a new lookup.
                self.tracked.remove(&key);
            }
            Outcome::Host => {
                debug!(key, path, "host cgroup");
                effects.extend(self.host(key, path));
            }
            Outcome::Unknown(reason) => {
                let record = ContainerRecord {
                    key: format!("cgroup:{path}"),
                    runtime_namespace: None,
                    id: container_ref::parse(&path).map(|r| r.id),
                    image: None,
                    digest: None,
                    platform_digest: None,
                    pod: None,
                    cgroup: path,
                    verdict: ContainerVerdict::Unknown,
                    reason,
                    first_seen_ms,
                    decided_at_ms: env.now_ms,
                    gone_at_ms: None,
                };
                effects.push(Effect::SetAction(key, Action::Watch));
                let watched = Watched {
                    record,
                    identity: None,
                    deadline: None,
                    first_event,
                    waited_for_feed: false,
                };
                self.conclude(key, watched, Filed::New, env, &mut effects);
            }
            Outcome::Container { identity, previous } => {
                let first_seen_ms = previous.as_ref().map_or(first_seen_ms, |p| p.first_seen_ms);
                let verdict = self.decide(&identity, env);
                let mut record = ContainerRecord {
                    key: container_key(&identity.namespace, &identity.id),
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
                    decided_at_ms: env.now_ms,
                    gone_at_ms: None,
                };
                // The window runs from the container's first sighting,
                // also across agent restarts.
                let deadline = (verdict.kind == ContainerVerdict::Pending).then(|| {
                    let elapsed = Duration::from_millis(env.now_ms.saturating_sub(first_seen_ms));
                    env.now + self.config.grace.saturating_sub(elapsed)
                });
                let action = match verdict.kind {
                    ContainerVerdict::Admitted | ContainerVerdict::Exempt => Action::Ignore,
                    _ => Action::Watch,
                };
                effects.push(Effect::SetAction(key, action));
                // A restart finds a flagged container already flagged: keep
                // its verdict instead of opening a second grace window.
                let flagged_before = previous.filter(|p| {
                    p.verdict == ContainerVerdict::NeverAdmitted && p.digest == record.digest
                });
                let (deadline, filed) = match flagged_before {
                    Some(previous) if verdict.kind == ContainerVerdict::Pending => {
                        record.verdict = previous.verdict;
                        record.reason = previous.reason;
                        (None, Filed::Already)
                    }
                    _ => (deadline, Filed::New),
                };
                let watched = Watched {
                    record,
                    identity: Some(identity),
                    deadline,
                    first_event,
                    waited_for_feed: false,
                };
                self.conclude(key, watched, filed, env, &mut effects);
            }
        }
        effects
    }

    /// Records a verdict and files a violation when due (unless it was
    /// filed before a restart; enforcement applies again either way).
    fn conclude(
        &mut self,
        key: u64,
        watched: Watched,
        filed: Filed,
        env: &Env,
        effects: &mut Vec<Effect>,
    ) {
        let record = &watched.record;
        let violating = matches!(
            record.verdict,
            ContainerVerdict::NeverAdmitted | ContainerVerdict::Unknown
        );
        let violation = (violating && filed == Filed::New).then(|| Violation {
            seq: 0,
            at_ms: env.now_ms,
            container: record.key.clone(),
            pod: record.pod.clone(),
            image: record.image.clone(),
            digest: record.digest.clone(),
            verdict: record.verdict,
            reason: record.reason.clone(),
            enforced: self.stopping(key, record, env),
        });
        effects.push(Effect::Concluded(Box::new(Concluded {
            record: record.clone(),
            violation,
            latency: env.now.saturating_duration_since(watched.first_event),
        })));
        if violating {
            self.enforce(key, record, env, effects);
        }
        self.tracked
            .insert(key, Tracked::Container(Box::new(watched)));
    }

    /// Whether enforcement stops this container now.
    fn stopping(&self, key: u64, record: &ContainerRecord, env: &Env) -> bool {
        self.config.stops(record) && env.kills && Some(key) != self.own_key
    }

    /// Enforce mode, once settled: stop the container's execs in the
    /// kernel, then kill what already runs in it.
    fn enforce(&self, key: u64, record: &ContainerRecord, env: &Env, effects: &mut Vec<Effect>) {
        if !self.config.stops(record) {
            return;
        }
        if Some(key) == self.own_key {
            warn!(container = %record.key, "not enforced: this is the agent's own container (exempt its namespace)");
            return;
        }
        if !env.kills {
            info!(container = %record.key, "flagged, not stopped: enforce mode is settling (GetStatus says until when)");
            return;
        }
        effects.push(Effect::SetAction(key, Action::Kill));
        effects.push(Effect::Kill {
            container: record.key.clone(),
            cgroup: record.cgroup.clone(),
        });
    }

    fn decide(&self, identity: &ContainerIdentity, env: &Env) -> verdict::Judgement {
        verdict::decide(
            identity,
            |d| env.approvals.approved(d),
            &self.config.exemptions,
        )
    }

    /// Drops what the machine tracks for cgroups that no longer exist.
    /// Containers still waiting for their grace window are kept: one that
    /// exits early is still judged.
    pub fn sweep(&mut self, exists: impl Fn(&str) -> bool, now_ms: u64) -> Vec<Effect> {
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
        let mut effects = Vec::with_capacity(gone.len() + 1);
        let mut containers = Vec::new();
        for key in gone {
            if let Some(Tracked::Container(watched)) = self.tracked.remove(&key) {
                containers.push(watched.record.key);
            }
            effects.push(Effect::ForgetAction(key));
        }
        if !effects.is_empty() {
            debug!(
                forgotten = effects.len(),
                tracked = self.tracked.len(),
                at_ms = now_ms,
                "cgroups gone"
            );
        }
        // Kept as gone: retention drops them later (see `retention`).
        if !containers.is_empty() {
            effects.push(Effect::MarkGone(containers));
        }
        effects
    }

    /// The earliest grace deadline, if any container is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.tracked
            .values()
            .filter_map(|t| match t {
                Tracked::Container(w) => w.deadline,
                _ => None,
            })
            .min()
    }

    /// Pending containers whose grace window ended are violations now,
    /// unless their approval arrived.
    pub fn on_deadlines(&mut self, env: &Env) -> Vec<Effect> {
        let due = self.containers_where(|w| w.deadline.is_some_and(|d| d <= env.now));
        let mut effects = Vec::new();
        for key in due {
            self.redecide(key, true, env, &mut effects);
        }
        effects
    }

    /// Approvals arrived: pending and flagged containers are decided again.
    pub fn on_approvals_changed(&mut self, env: &Env) -> Vec<Effect> {
        let waiting = self.containers_where(|w| {
            matches!(
                w.record.verdict,
                ContainerVerdict::Pending | ContainerVerdict::NeverAdmitted
            )
        });
        let mut effects = Vec::new();
        for key in waiting {
            self.redecide(key, false, env, &mut effects);
        }
        effects
    }

    /// The agent settled: containers approved meanwhile pass, the
    /// violations flagged while settling are stopped now.
    pub fn on_settled(&mut self, env: &Env) -> Vec<Effect> {
        let mut effects = self.on_approvals_changed(env);
        let flagged = self.containers_where(|w| self.config.stops(&w.record));
        info!(
            flagged = flagged.len(),
            "settled: enforce mode stops violations from now on"
        );
        for key in flagged {
            if let Some(record) = self.record(key) {
                self.enforce(key, record, env, &mut effects);
            }
        }
        effects
    }

    /// The keys of the containers `keep` accepts.
    fn containers_where(&self, keep: impl Fn(&Watched) -> bool) -> Vec<u64> {
        self.tracked
            .iter()
            .filter_map(|(key, t)| match t {
                Tracked::Container(w) if keep(w) => Some(*key),
                _ => None,
            })
            .collect()
    }

    /// How much longer a container past its grace window waits for its
    /// approval: while a webhook's feed is not open, up to `feed_wait`
    /// after the window (counted, as the window is, from the container's
    /// first sighting). Only a verdict that would stop the container waits:
    /// a flag is taken back when the approval arrives ("admitted (after it
    /// was flagged)"), a stop is not. `None`: judge it now.
    fn feed_wait_left(&self, watched: &Watched, env: &Env) -> Option<Duration> {
        let would_stop = env.kills && self.config.mode == Mode::Enforce;
        if !would_stop || (env.feeds_open && self.replicas_listed(watched, env)) {
            return None;
        }
        let waited = Duration::from_millis(env.now_ms.saturating_sub(watched.record.first_seen_ms));
        let left = (self.config.grace + self.config.feed_wait).saturating_sub(waited);
        (!left.is_zero()).then_some(left)
    }

    /// Whether the webhook replicas were listed after this container's
    /// grace window ended: a replica started since the last resolution
    /// (a rolling update, a rescheduled pod) may have admitted it, and its
    /// stream is not open until the agent finds it.
    fn replicas_listed(&self, watched: &Watched, env: &Env) -> bool {
        let window_ended_ms = watched
            .record
            .first_seen_ms
            .saturating_add(self.config.grace.as_millis() as u64);
        env.feeds_resolved_ms >= window_ended_ms
    }

    /// Decides again for a container that was not approved: approved now,
    /// or (when `expired`) never admitted.
    fn redecide(&mut self, key: u64, expired: bool, env: &Env, effects: &mut Vec<Effect>) {
        let Some(Tracked::Container(mut watched)) = self.tracked.remove(&key) else {
            return;
        };
        let Some(identity) = &watched.identity else {
            watched.deadline = None;
            self.tracked.insert(key, Tracked::Container(watched));
            return;
        };
        let verdict = self.decide(identity, env);
        let feed_wait = if expired {
            self.feed_wait_left(&watched, env)
        } else {
            None
        };
        match verdict.kind {
            ContainerVerdict::Admitted | ContainerVerdict::Exempt => {
                effects.push(Effect::SetAction(key, Action::Ignore));
                let record = &mut watched.record;
                record.decided_at_ms = env.now_ms;
                record.reason =
                    if verdict.kind == ContainerVerdict::Admitted && watched.deadline.is_none() {
                        format!("{} (after it was flagged)", verdict.reason)
                    } else {
                        verdict.reason
                    };
                record.verdict = verdict.kind;
                watched.deadline = None;
                self.conclude(key, *watched, Filed::New, env, effects);
            }
            ContainerVerdict::Pending if feed_wait.is_some() => {
                // A webhook's feed is not open, or a replica may have been
                // listed since the names were last resolved: the approval
                // may be on its way.
                let left = feed_wait.unwrap_or_default();
                if !self.replicas_listed(&watched, env) {
                    effects.push(Effect::ResolveFeeds);
                }
                if !watched.waited_for_feed {
                    info!(container = %watched.record.key, "grace window ended while a webhook's approval feed is not open: the verdict waits for it");
                    effects.push(Effect::WaitsForFeed);
                }
                watched.waited_for_feed = true;
                watched.deadline = Some(env.now + left.min(FEED_RECHECK));
                self.tracked.insert(key, Tracked::Container(watched));
            }
            ContainerVerdict::Pending if expired => {
                let record = &mut watched.record;
                record.decided_at_ms = env.now_ms;
                record.verdict = ContainerVerdict::NeverAdmitted;
                record.reason = format!(
                    "{}; no approval arrived within the {:?} grace window",
                    verdict.reason, self.config.grace
                );
                if watched.waited_for_feed {
                    record.reason.push_str(
                        " (its verdict waited longer while a webhook's approval feed was not open)",
                    );
                }
                watched.deadline = None;
                self.conclude(key, *watched, Filed::New, env, effects);
            }
            _ => {
                self.tracked.insert(key, Tracked::Container(watched));
            }
        }
    }
}

mod io;
#[cfg(test)]
mod tests;
