//! What goes into the state machine and what comes out: its
//! configuration, the world it reads for one step ([`Env`]), what
//! identification found ([`Identified`]), and the [`Effect`]s the runner
//! carries out.

use std::time::{Duration, Instant};

use crate::{
    model::{
        Action, Caveats, ContainerIdentity, ContainerRecord, ContainerVerdict, Mode, Violation,
    },
    verdict::Exemptions,
};

/// What the machine is configured with.
pub struct Config {
    pub mode: Mode,
    /// Time a container may run unapproved before it is flagged, because
    /// approvals can arrive just after a pod is created.
    pub grace: Duration,
    /// How much longer than `grace` a verdict that would stop a container
    /// waits while a webhook's approval feed is not open
    /// ([`Env::feeds_open`]): the approval may be on it. Bounded, so a
    /// webhook that stays away does not turn enforce mode into audit.
    pub feed_wait: Duration,
    pub exemptions: Exemptions,
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
                ContainerVerdict::NeverAdmitted => true,
                ContainerVerdict::Unknown => {
                    self.enforce_unknown && record.runtime_namespace.is_some()
                }
                _ => false,
            }
    }
}

/// Which digests are approved now (the store's in-memory set; a map in
/// the tests).
pub trait Approvals {
    fn approved(&self, digest: &str) -> Option<Caveats>;
}

/// What the world looks like for one step: the approvals, whether enforce
/// mode kills yet (see `settle`), whether every webhook's approval feed is
/// open, and the time.
pub struct Env<'a> {
    pub approvals: &'a dyn Approvals,
    pub kills: bool,
    /// Every webhook replica found has its feed stream open; true when the
    /// agent follows no feed (approvals are pushed to it, or read from a
    /// file).
    pub feeds_open: bool,
    /// When the feeds' names were last resolved (unix ms; `u64::MAX` when
    /// the agent follows no feed).
    pub feeds_resolved_ms: u64,
    pub now: Instant,
    pub now_ms: u64,
}

/// What a step asks the runner to do, in order.
#[derive(Debug, PartialEq)]
pub enum Effect {
    /// Ask containerd what runs in cgroup `key` (from an exec's process or
    /// a new cgroup's path).
    Identify {
        key: u64,
        pid: Option<u32>,
        path: Option<String>,
    },
    /// Something runs in cgroup `key`, whose lookup is waiting: move it
    /// ahead of cgroups that were only created.
    Hurry(u64),
    /// Ask containerd about a container a scan found running.
    IdentifyRunning {
        key: u64,
        path: String,
        namespace: String,
        id: String,
    },
    SetAction(u64, Action),
    /// The cgroup is gone: drop its kernel action.
    ForgetAction(u64),
    /// Store the record, and the violation if one is filed, then tell
    /// watchers (stored first, told after: whoever sees a verdict finds
    /// its record).
    Concluded(Box<Concluded>),
    /// An exec in the watched container of cgroup `key`, for watchers
    /// (the runner reads the container's record only if anyone watches:
    /// this is the exec path, and it allocates nothing).
    Exec {
        key: u64,
        pid: u32,
        filename: Option<String>,
        killed: bool,
    },
    /// Kill the processes already running in the container's cgroup.
    Kill {
        container: String,
        cgroup: String,
    },
    /// These container records' cgroups are gone.
    MarkGone(Vec<String>),
    /// A container's stop waits for a webhook's approval feed (counted
    /// once per container).
    WaitsForFeed,
    /// Resolve the webhooks' feed names now: a stop is due, and a replica
    /// listed since the last resolution may hold the container's approval.
    ResolveFeeds,
}

/// A verdict to record.
#[derive(Debug, PartialEq)]
pub struct Concluded {
    pub record: ContainerRecord,
    /// A violation to file (numbered by the store).
    pub violation: Option<Violation>,
    /// From the container's first event to this verdict.
    pub latency: Duration,
}

/// What containerd said about a cgroup.
// Sent boxed (inside `Identified`), so the large variant costs no copies.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome {
    Host,
    /// The cgroup is gone (a short-lived process in a removed cgroup).
    Gone,
    /// A container; `previous` is its record from before a restart.
    Container {
        identity: ContainerIdentity,
        previous: Option<ContainerRecord>,
    },
    Unknown(String),
}

#[derive(Debug)]
pub struct Identified {
    pub key: u64,
    pub path: String,
    /// When the machine first saw the cgroup.
    pub first_event: Instant,
    /// The same, on the wall clock: the container's first sighting, from
    /// which its grace window runs (not from when the lookup ended).
    pub first_seen_ms: u64,
    pub outcome: Outcome,
}
