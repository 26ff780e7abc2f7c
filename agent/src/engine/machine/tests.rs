//! The machine's rules, with approvals in a map and time passed in. Over
//! 500 lines: one test per rule, each a short story of events.

use std::collections::HashMap;

use super::*;
use crate::{
    digest::Digest,
    model::{Caveats, Mode, PodRef},
    verdict::Exemptions,
};

const GRACE: Duration = Duration::from_secs(10);
const FEED_WAIT: Duration = Duration::from_secs(30);
const KEY: u64 = 42;
const OWN_KEY: u64 = 7;

fn digest(n: u8) -> Digest {
    Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).expect("a digest")
}

#[derive(Default)]
struct FakeApprovals(HashMap<String, Caveats>);

impl FakeApprovals {
    fn approve(&mut self, digest: Digest) {
        self.0.insert(digest.to_string(), Caveats::default());
    }
}

impl Approvals for FakeApprovals {
    fn approved(&self, digest: &str) -> Option<Caveats> {
        self.0.get(digest).copied()
    }
}

/// A clock and approvals the test moves by hand.
struct World {
    approvals: FakeApprovals,
    kills: bool,
    feeds_open: bool,
    feeds_resolved_ms: u64,
    start: Instant,
    elapsed: Duration,
}

impl World {
    fn new(kills: bool) -> Self {
        Self {
            approvals: FakeApprovals::default(),
            kills,
            feeds_open: true,
            feeds_resolved_ms: u64::MAX,
            start: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    fn env(&self) -> Env<'_> {
        Env {
            approvals: &self.approvals,
            kills: self.kills,
            feeds_open: self.feeds_open,
            feeds_resolved_ms: self.feeds_resolved_ms,
            now: self.start + self.elapsed,
            now_ms: self.now_ms(),
        }
    }

    fn now_ms(&self) -> u64 {
        1_000_000 + self.elapsed.as_millis() as u64
    }

    fn advance(&mut self, by: Duration) {
        self.elapsed += by;
    }
}

fn machine(mode: Mode) -> Machine {
    machine_with(mode, Exemptions::none())
}

fn machine_with(mode: Mode, exemptions: Exemptions) -> Machine {
    Machine::new(
        Config {
            mode,
            grace: GRACE,
            feed_wait: FEED_WAIT,
            exemptions,
            enforce_unknown: false,
        },
        Some(OWN_KEY),
    )
}

fn identity(digest: Option<Digest>, pod_namespace: &str) -> ContainerIdentity {
    ContainerIdentity {
        namespace: "k8s.io".into(),
        id: "c1".into(),
        image: "registry.example/app:1".into(),
        digest,
        platform_digest: None,
        other_digests: Vec::new(),
        no_digest_because: None,
        pod: Some(PodRef {
            namespace: pod_namespace.into(),
            name: "app-0".into(),
            uid: None,
            container: Some("app".into()),
        }),
        sandbox: false,
        unconfirmed_claim: None,
    }
}

/// The cgroup of container `c1`.
const C1_PATH: &str = "/kubepods/pod1/c1";

/// What identification found for cgroup `key` at `path`, first seen at the
/// world's start.
fn identified(world: &World, key: u64, path: &str, outcome: Outcome) -> Identified {
    Identified {
        key,
        path: path.into(),
        first_event: world.start,
        first_seen_ms: 1_000_000,
        outcome,
    }
}

/// Identifies a container in `machine` and returns the effects.
fn start(
    machine: &mut Machine,
    key: u64,
    identity: ContainerIdentity,
    world: &World,
) -> Vec<Effect> {
    let outcome = Outcome::Container {
        identity,
        previous: None,
    };
    machine.on_identified(identified(world, key, C1_PATH, outcome), &world.env())
}

/// The record container `c1` (digest 1) left before the agent restarted.
fn before_restart(verdict: ContainerVerdict, reason: &str, first_seen_ms: u64) -> ContainerRecord {
    ContainerRecord {
        key: "k8s.io/c1".into(),
        runtime_namespace: Some("k8s.io".into()),
        id: Some("c1".into()),
        image: Some("registry.example/app:1".into()),
        digest: Some(digest(1)),
        platform_digest: None,
        pod: None,
        cgroup: C1_PATH.into(),
        verdict,
        reason: reason.into(),
        first_seen_ms,
        decided_at_ms: first_seen_ms,
        gone_at_ms: None,
    }
}

/// Container `c1` found again after a restart, with its record from before.
fn restart(machine: &mut Machine, previous: ContainerRecord, world: &World) -> Vec<Effect> {
    let outcome = Outcome::Container {
        identity: identity(Some(digest(1)), "app"),
        previous: Some(previous),
    };
    machine.on_identified(identified(world, KEY, C1_PATH, outcome), &world.env())
}

fn concluded(effects: &[Effect]) -> Vec<&Concluded> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Concluded(c) => Some(c.as_ref()),
            _ => None,
        })
        .collect()
}

fn kills(effects: &[Effect]) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::Kill { .. } | Effect::SetAction(_, Action::Kill)))
}

#[test]
fn an_unapproved_container_is_pending_then_a_violation_when_grace_ends() {
    let mut world = World::new(false);
    let mut m = machine(Mode::Audit);
    let effects = start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
    assert_eq!(effects[0], Effect::SetAction(KEY, Action::Watch));
    let first = concluded(&effects);
    assert_eq!(first[0].record.verdict, ContainerVerdict::Pending);
    assert!(first[0].violation.is_none(), "pending files nothing");
    assert_eq!(m.next_deadline(), Some(world.start + GRACE));

    world.advance(GRACE - Duration::from_millis(1));
    assert!(m.on_deadlines(&world.env()).is_empty(), "not due yet");
    world.advance(Duration::from_millis(1));
    let effects = m.on_deadlines(&world.env());
    let done = concluded(&effects);
    assert_eq!(done[0].record.verdict, ContainerVerdict::NeverAdmitted);
    assert!(
        done[0].record.reason.contains("grace window"),
        "{}",
        done[0].record.reason
    );
    let violation = done[0].violation.as_ref().expect("a violation is filed");
    assert!(!violation.enforced, "audit mode enforces nothing");
    assert!(!kills(&effects), "audit mode kills nothing");
    assert_eq!(m.next_deadline(), None);
}

#[test]
fn an_approval_arriving_within_grace_admits_without_a_violation() {
    let mut world = World::new(true);
    let mut m = machine(Mode::Enforce);
    start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
    world.advance(Duration::from_secs(3));
    world.approvals.approve(digest(1));
    let effects = m.on_approvals_changed(&world.env());
    assert_eq!(effects[0], Effect::SetAction(KEY, Action::Ignore));
    let done = concluded(&effects);
    assert_eq!(done[0].record.verdict, ContainerVerdict::Admitted);
    assert!(done[0].violation.is_none());
    assert!(!done[0].record.reason.contains("after it was flagged"));
    assert_eq!(m.next_deadline(), None, "no grace deadline left");
    world.advance(GRACE);
    assert!(m.on_deadlines(&world.env()).is_empty());
}

#[test]
fn an_approval_arriving_after_the_violation_admits_and_says_so() {
    let mut world = World::new(false);
    let mut m = machine(Mode::Audit);
    start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
    world.advance(GRACE);
    m.on_deadlines(&world.env());
    world.approvals.approve(digest(1));
    let effects = m.on_approvals_changed(&world.env());
    let done = concluded(&effects);
    assert_eq!(done[0].record.verdict, ContainerVerdict::Admitted);
    assert!(
        done[0].record.reason.contains("after it was flagged"),
        "{}",
        done[0].record.reason
    );
}

#[test]
fn enforce_kills_a_violation_once_settled_and_not_before() {
    let mut world = World::new(false);
    let mut m = machine(Mode::Enforce);
    start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
    world.advance(GRACE);
    let effects = m.on_deadlines(&world.env());
    let done = concluded(&effects);
    assert_eq!(done[0].record.verdict, ContainerVerdict::NeverAdmitted);
    assert!(!done[0].violation.as_ref().unwrap().enforced);
    assert!(!kills(&effects), "settling: flagged, not stopped");

    world.kills = true;
    let effects = m.on_settled(&world.env());
    assert_eq!(
        effects,
        vec![
            Effect::SetAction(KEY, Action::Kill),
            Effect::Kill {
                container: "k8s.io/c1".into(),
                cgroup: C1_PATH.into()
            }
        ]
    );
}

#[test]
fn enforce_once_settled_files_the_violation_as_enforced_and_kills() {
    let mut world = World::new(true);
    let mut m = machine(Mode::Enforce);
    start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
    world.advance(GRACE);
    let effects = m.on_deadlines(&world.env());
    assert!(concluded(&effects)[0].violation.as_ref().unwrap().enforced);
    assert!(kills(&effects));
}

/// A webhook replica restarted and this agent's stream to it is not open
/// yet: the approval may be on it, so the verdict waits (rechecked each
/// second) instead of killing what the replica admitted.
#[test]
fn a_verdict_waits_while_a_feed_is_not_open_and_an_approval_on_it_admits() {
    let mut world = World::new(true);
    world.feeds_open = false;
    let mut m = machine(Mode::Enforce);
    start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
    world.advance(GRACE);
    let effects = m.on_deadlines(&world.env());
    assert_eq!(
        effects,
        vec![Effect::WaitsForFeed],
        "counted; no verdict, no kill"
    );
    assert_eq!(
        m.next_deadline(),
        Some(world.start + GRACE + FEED_RECHECK),
        "looked at again in a second"
    );
    world.advance(Duration::from_secs(5));
    assert!(m.on_deadlines(&world.env()).is_empty(), "still waiting");
    // The stream reopens and the approval it carried arrives.
    world.feeds_open = true;
    world.approvals.approve(digest(1));
    let effects = m.on_approvals_changed(&world.env());
    let done = concluded(&effects);
    assert_eq!(done[0].record.verdict, ContainerVerdict::Admitted);
    assert!(done[0].violation.is_none());
    assert!(!kills(&effects));
    assert_eq!(m.next_deadline(), None);
}

/// A replica started since the feeds' names were last resolved (a rolling
/// update) may have admitted the container, and the agent has no stream to
/// it yet: before a stop, the names are resolved again.
#[test]
fn a_stop_waits_for_the_replicas_to_be_listed_after_the_grace_window() {
    let mut world = World::new(true);
    // Every replica found has its stream open, but they were listed before
    // the container started.
    world.feeds_resolved_ms = world.now_ms();
    let mut m = machine(Mode::Enforce);
    start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
    world.advance(GRACE);
    let effects = m.on_deadlines(&world.env());
    assert_eq!(
        effects,
        vec![Effect::ResolveFeeds, Effect::WaitsForFeed],
        "resolve first, stop nothing"
    );

    // The resolution lists nothing new: stopped at the next look.
    world.feeds_resolved_ms = world.now_ms();
    world.advance(FEED_RECHECK);
    let effects = m.on_deadlines(&world.env());
    assert_eq!(
        concluded(&effects)[0].record.verdict,
        ContainerVerdict::NeverAdmitted
    );
    assert!(kills(&effects));
}

/// The resolution finds a new replica: its stream is not open yet, so the
/// stop waits, and the approval it sends admits the container.
#[test]
fn a_replica_found_by_that_resolution_is_waited_for() {
    let mut world = World::new(true);
    world.feeds_resolved_ms = world.now_ms();
    let mut m = machine(Mode::Enforce);
    start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
    world.advance(GRACE);
    assert_eq!(
        m.on_deadlines(&world.env()),
        vec![Effect::ResolveFeeds, Effect::WaitsForFeed]
    );

    world.feeds_resolved_ms = world.now_ms();
    world.feeds_open = false;
    world.advance(FEED_RECHECK);
    assert!(
        m.on_deadlines(&world.env()).is_empty(),
        "listed, not open: waits, nothing more to resolve"
    );
    world.feeds_open = true;
    world.approvals.approve(digest(1));
    let effects = m.on_approvals_changed(&world.env());
    assert_eq!(
        concluded(&effects)[0].record.verdict,
        ContainerVerdict::Admitted
    );
    assert!(!kills(&effects));
}

/// Only a stop waits: in audit mode, or enforce mode still settling, the
/// container is flagged when its grace window ends, feed or not (a flag is
/// taken back if the approval comes).
#[test]
fn a_verdict_that_only_flags_does_not_wait_for_a_feed() {
    for mode in [Mode::Audit, Mode::Enforce] {
        // Enforce mode settling: it does not kill yet.
        let mut world = World::new(false);
        world.feeds_open = false;
        let mut m = machine(mode);
        start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
        world.advance(GRACE);
        let effects = m.on_deadlines(&world.env());
        let done = concluded(&effects);
        assert_eq!(
            done[0].record.verdict,
            ContainerVerdict::NeverAdmitted,
            "{mode:?}"
        );
        assert!(!kills(&effects));
    }
}

/// The feed reopens without the approval: judged at the next look, as it
/// would have been at the end of the grace window, and the reason says it
/// waited.
#[test]
fn once_the_feeds_are_open_a_waiting_verdict_is_given_at_the_next_look() {
    let mut world = World::new(true);
    world.feeds_open = false;
    let mut m = machine(Mode::Enforce);
    start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
    world.advance(GRACE);
    assert_eq!(m.on_deadlines(&world.env()), vec![Effect::WaitsForFeed]);
    world.feeds_open = true;
    world.advance(FEED_RECHECK);
    let effects = m.on_deadlines(&world.env());
    let done = concluded(&effects);
    assert_eq!(done[0].record.verdict, ContainerVerdict::NeverAdmitted);
    assert!(
        done[0].record.reason.contains("waited longer"),
        "{}",
        done[0].record.reason
    );
    assert!(kills(&effects), "enforced once the feeds are open");
}

/// A replica that stays away: the wait is bounded by `feed_wait` after
/// the grace window, then enforce mode stops the container as before.
#[test]
fn a_feed_that_stays_closed_delays_a_verdict_by_feed_wait_at_most() {
    let mut world = World::new(true);
    world.feeds_open = false;
    let mut m = machine(Mode::Enforce);
    start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
    let mut looks = 0;
    let effects = loop {
        let at = m.next_deadline().expect("a verdict is due");
        world.elapsed = at - world.start;
        let effects = m.on_deadlines(&world.env());
        if !concluded(&effects).is_empty() {
            break effects;
        }
        looks += 1;
        assert!(looks <= 40, "still waiting after {:?}", world.elapsed);
    };
    assert_eq!(world.elapsed, GRACE + FEED_WAIT);
    let done = concluded(&effects);
    assert_eq!(done[0].record.verdict, ContainerVerdict::NeverAdmitted);
    assert!(kills(&effects));
}

#[test]
fn a_settled_agent_never_kills_an_approved_exempt_or_host_cgroup() {
    let mut world = World::new(true);
    world.approvals.approve(digest(1));
    let exemptions = Exemptions::new(false, Vec::new(), vec!["kube-system".into()], Vec::new())
        .expect("exemptions");
    let mut m = machine_with(Mode::Enforce, exemptions);

    let admitted = start(&mut m, 1, identity(Some(digest(1)), "app"), &world);
    assert_eq!(admitted[0], Effect::SetAction(1, Action::Ignore));
    assert_eq!(
        concluded(&admitted)[0].record.verdict,
        ContainerVerdict::Admitted
    );

    let exempt = start(&mut m, 2, identity(Some(digest(2)), "kube-system"), &world);
    assert_eq!(exempt[0], Effect::SetAction(2, Action::Ignore));
    assert_eq!(
        concluded(&exempt)[0].record.verdict,
        ContainerVerdict::Exempt
    );

    let host = m.on_identified(
        identified(&world, 3, "/system.slice/sshd.service", Outcome::Host),
        &world.env(),
    );
    assert_eq!(host, vec![Effect::SetAction(3, Action::Ignore)]);

    world.advance(GRACE);
    let mut later = m.on_deadlines(&world.env());
    later.extend(m.on_settled(&world.env()));
    later.extend(m.on_approvals_changed(&world.env()));
    assert!(!kills(&later), "{later:?}");
}

#[test]
fn the_agent_never_kills_its_own_cgroup() {
    let mut world = World::new(true);
    let mut m = machine(Mode::Enforce);
    start(
        &mut m,
        OWN_KEY,
        identity(Some(digest(1)), "imagegate"),
        &world,
    );
    world.advance(GRACE);
    let effects = m.on_deadlines(&world.env());
    let done = concluded(&effects);
    assert_eq!(done[0].record.verdict, ContainerVerdict::NeverAdmitted);
    assert!(!done[0].violation.as_ref().unwrap().enforced);
    assert!(!kills(&effects));
    assert!(!kills(&m.on_settled(&world.env())));
}

#[test]
fn an_unidentified_container_is_flagged_and_never_stopped() {
    let world = World::new(true);
    let mut m = machine(Mode::Enforce);
    let unknown = Outcome::Unknown("containerd timed out".into());
    let effects = m.on_identified(
        identified(&world, KEY, "/kubepods/pod1/c9", unknown),
        &world.env(),
    );
    let done = concluded(&effects);
    assert_eq!(done[0].record.verdict, ContainerVerdict::Unknown);
    assert!(
        done[0].violation.is_some(),
        "flagged, never passed silently"
    );
    assert!(!kills(&effects));
}

#[test]
fn enforce_unknown_stops_a_container_containerd_knows_without_an_image() {
    let world = World::new(true);
    let mut m = Machine::new(
        Config {
            mode: Mode::Enforce,
            grace: GRACE,
            feed_wait: FEED_WAIT,
            exemptions: Exemptions::none(),
            enforce_unknown: true,
        },
        None,
    );
    let effects = start(&mut m, KEY, identity(None, "app"), &world);
    assert_eq!(
        concluded(&effects)[0].record.verdict,
        ContainerVerdict::Unknown
    );
    assert!(kills(&effects));
}

#[test]
fn a_restart_keeps_a_flagged_verdict_without_filing_it_again() {
    let mut world = World::new(true);
    let previous = before_restart(
        ContainerVerdict::NeverAdmitted,
        "flagged before the restart",
        1_000,
    );
    let mut m = machine(Mode::Enforce);
    let effects = restart(&mut m, previous.clone(), &world);
    let done = concluded(&effects);
    assert_eq!(done[0].record.verdict, ContainerVerdict::NeverAdmitted);
    assert_eq!(done[0].record.reason, previous.reason);
    assert_eq!(done[0].record.first_seen_ms, 1_000);
    assert!(done[0].violation.is_none(), "filed before the restart");
    assert!(kills(&effects), "enforcement applies again");
    assert_eq!(m.next_deadline(), None, "no second grace window");
    world.advance(GRACE);
    assert!(m.on_deadlines(&world.env()).is_empty());
}

#[test]
fn the_grace_window_counts_from_the_first_sighting_across_restarts() {
    let world = World::new(false);
    // Seen 4 s before "now" (1,000,000 ms in the World).
    let previous = before_restart(ContainerVerdict::Pending, "", 996_000);
    let mut m = machine(Mode::Audit);
    restart(&mut m, previous, &world);
    assert_eq!(
        m.next_deadline(),
        Some(world.start + GRACE - Duration::from_secs(4))
    );
}

#[test]
fn a_cgroup_is_looked_up_once_and_execs_in_a_container_are_reported() {
    let world = World::new(false);
    let mut m = machine(Mode::Audit);
    let exec = Exec {
        pid: 10,
        tgid: 10,
        ppid: None,
        cgroup_id: KEY,
        memcg_id: None,
        pid_ns: None,
        mnt_ns: None,
        action: KernelAction::Watch,
        comm: "sh".into(),
        filename: Some("/bin/sh".into()),
        filename_truncated: false,
    };
    let mut effects = Vec::new();
    m.on_exec(KEY, exec.clone(), &mut effects);
    assert_eq!(
        effects,
        vec![Effect::Identify {
            key: KEY,
            pid: Some(10),
            path: None
        }]
    );
    effects.clear();
    m.on_exec(KEY, exec.clone(), &mut effects);
    assert_eq!(
        effects,
        vec![Effect::Hurry(KEY)],
        "a lookup is in flight: only hurried"
    );
    effects.clear();
    start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
    m.on_exec(KEY, exec, &mut effects);
    assert!(
        matches!(
            &effects[..],
            [Effect::Exec {
                key: KEY,
                pid: 10,
                killed: false,
                ..
            }]
        ),
        "{effects:?}"
    );
    assert_eq!(m.record(KEY).map(|r| r.key.as_str()), Some("k8s.io/c1"));
}

#[test]
fn only_cgroups_that_look_like_containers_are_looked_up_early() {
    let mut m = machine(Mode::Audit);
    assert!(
        m.on_new_cgroup(1, "/system.slice/cron.service".into())
            .is_empty()
    );
    let id = "0123456789abcdef".repeat(4);
    let path = format!("/kubepods.slice/cri-containerd-{id}.scope");
    assert_eq!(
        m.on_new_cgroup(2, path.clone()),
        vec![Effect::Identify {
            key: 2,
            pid: None,
            path: Some(path.clone())
        }]
    );
    assert!(m.on_new_cgroup(2, path).is_empty(), "already tracked");
}

#[test]
fn a_running_container_already_judged_is_not_looked_up_again() {
    let world = World::new(false);
    let mut m = machine(Mode::Audit);
    start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
    assert!(
        m.on_running(KEY, "/p".into(), "k8s.io".into(), "c1".into())
            .is_empty()
    );
    assert_eq!(
        m.on_running(8, "/p8".into(), "k8s.io".into(), "c8".into()),
        vec![Effect::IdentifyRunning {
            key: 8,
            path: "/p8".into(),
            namespace: "k8s.io".into(),
            id: "c8".into()
        }]
    );
}

#[test]
fn a_sweep_forgets_gone_cgroups_but_keeps_containers_still_in_grace() {
    let mut world = World::new(false);
    world.approvals.approve(digest(1));
    let mut m = machine(Mode::Audit);
    m.host(1, "/system.slice/gone.service".into());
    start(&mut m, 2, identity(Some(digest(1)), "app"), &world);
    start(&mut m, 3, identity(Some(digest(3)), "app"), &world);
    let effects = m.sweep(|_| false, 0);
    assert!(effects.contains(&Effect::ForgetAction(1)));
    assert!(effects.contains(&Effect::ForgetAction(2)));
    assert!(
        !effects.contains(&Effect::ForgetAction(3)),
        "still in its grace window"
    );
    assert!(effects.contains(&Effect::MarkGone(vec!["k8s.io/c1".into()])));
    assert_eq!(m.tracked(), 1);
}

#[test]
fn the_grace_window_counts_from_the_first_event_not_the_end_of_the_lookup() {
    // A lookup that took 8 s of a 10 s window (a busy runtime, a queue,
    // a container waiting for CRI's record) leaves 2 s, not 10.
    let mut world = World::new(false);
    let mut m = machine(Mode::Audit);
    world.advance(Duration::from_secs(8));
    let effects = start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
    assert_eq!(concluded(&effects)[0].record.first_seen_ms, 1_000_000);
    assert_eq!(m.next_deadline(), Some(world.start + GRACE));
    // One that took longer than the window is judged at once.
    let mut m = machine(Mode::Audit);
    world.advance(Duration::from_secs(4));
    start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
    let effects = m.on_deadlines(&world.env());
    assert_eq!(
        concluded(&effects)[0].record.verdict,
        ContainerVerdict::NeverAdmitted
    );
}

#[test]
fn a_dropped_lookup_is_forgotten_so_the_next_exec_asks_again() {
    let mut m = machine(Mode::Audit);
    let id = "0123456789abcdef".repeat(4);
    let path = format!("/kubepods.slice/cri-containerd-{id}.scope");
    assert_eq!(m.on_new_cgroup(2, path.clone()).len(), 1);
    m.on_dropped(2);
    assert_eq!(m.tracked(), 0);
    assert_eq!(m.on_new_cgroup(2, path).len(), 1, "asked again");
    // A judged container is not forgotten by a stale drop.
    let world = World::new(false);
    start(&mut m, KEY, identity(Some(digest(1)), "app"), &world);
    m.on_dropped(KEY);
    assert!(m.record(KEY).is_some());
}

#[test]
fn a_rescan_does_not_look_up_a_cgroup_already_being_looked_up() {
    let mut m = machine(Mode::Audit);
    let id = "0123456789abcdef".repeat(4);
    let path = format!("/kubepods.slice/cri-containerd-{id}.scope");
    m.on_new_cgroup(2, path.clone());
    assert!(m.on_running(2, path, "k8s.io".into(), id).is_empty());
}

#[test]
fn host_cgroups_past_the_bound_get_their_action_but_are_not_remembered() {
    let mut m = machine(Mode::Audit);
    for key in 0..MAX_TRACKED as u64 + 10 {
        let effects = m.host(key, format!("/burst/{key}"));
        assert_eq!(effects, vec![Effect::SetAction(key, Action::Ignore)]);
    }
    assert_eq!(m.tracked(), MAX_TRACKED);
    // Gone ones swept, there is room again.
    m.sweep(|_| false, 0);
    assert_eq!(m.tracked(), 0);
    m.host(1, "/h".into());
    assert_eq!(m.tracked(), 1);
}
