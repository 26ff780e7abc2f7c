//! From a cgroup to what runs in it: its path (from the exec's process, the
//! new cgroup's event, or the kernel's id), then containerd's answer,
//! retried when containerd fails. The runtime and the cgroup tree are behind
//! [`Runtime`] and [`CgroupTree`], so the rules (a `/<namespace>/<name>`
//! path containerd does not know is a host cgroup; a runtime's container id
//! it does not know is a container it cannot tell, if anything runs in it;
//! a cgroup gone before its lookup is forgotten) are tested with fakes.

use std::{future::Future, time::Duration};

use tokio::time::Instant;

use tracing::{info, warn};

use super::machine::Outcome;
use crate::{
    cgroups::Layout,
    container_ref::{self, RuntimeHint},
    model::{ContainerIdentity, container_key},
    runtime::{Containerd, Lookup, RunningTask, RuntimeError},
    store::Store,
};

/// Attempts at asking containerd before a container is `unknown`.
const LOOKUP_ATTEMPTS: u32 = 3;
/// How often a failed start-up scan is retried (containerd may start after
/// the agent).
pub const SCAN_RETRY: Duration = Duration::from_secs(5);

/// The container runtime, as identification needs it.
pub trait Runtime: Send + Sync + 'static {
    /// The container `id`, looked for in `namespace` first when given;
    /// a record the runtime's labels say CRI keeps is waited for until
    /// `patience` at most.
    fn find(
        &self,
        id: &str,
        namespace: Option<&str>,
        patience: Instant,
    ) -> impl Future<Output = Result<Lookup, RuntimeError>> + Send;
    /// The containers running now (their init processes).
    fn running_tasks(&self) -> impl Future<Output = Result<Vec<RunningTask>, RuntimeError>> + Send;
    /// Where the runtime is, for messages.
    fn describe(&self) -> String;
}

impl Runtime for Containerd {
    fn find(
        &self,
        id: &str,
        namespace: Option<&str>,
        patience: Instant,
    ) -> impl Future<Output = Result<Lookup, RuntimeError>> + Send {
        Containerd::find(self, id, namespace, patience)
    }

    fn running_tasks(&self) -> impl Future<Output = Result<Vec<RunningTask>, RuntimeError>> + Send {
        Containerd::running_tasks(self)
    }

    fn describe(&self) -> String {
        format!("containerd at {}", self.socket().display())
    }
}

/// The cgroup tree, as identification needs it.
pub trait CgroupTree: Send + Sync + 'static {
    /// Whether the cgroup at `path` (in the key hierarchy) still exists.
    fn exists(&self, path: &str) -> bool;
    /// Whether any process is in it (false when it is gone).
    fn populated(&self, path: &str) -> bool;
}

impl CgroupTree for Layout {
    fn exists(&self, path: &str) -> bool {
        self.key_of_path(path).is_ok()
    }

    fn populated(&self, path: &str) -> bool {
        self.processes(path).is_ok_and(|pids| !pids.is_empty())
    }
}

/// Whether a cgroup is not worth asking the runtime about yet: it was only
/// created (no exec named it) and no process is in it. Anyone with a
/// writable cgroup subtree can create thousands a second with container
/// names; nothing runs in them, and when something does, its exec is
/// reported and looked up (the kernel reports every exec in a cgroup it
/// has no decision for). A real container's cgroup has its init process
/// in it by the time the event is read: runc creates it with the process.
pub fn nothing_runs_yet(cgroups: &impl CgroupTree, path: &str, pid: Option<u32>) -> bool {
    pid.is_none() && !cgroups.populated(path)
}

/// The cgroup path of `key`: the one the new-cgroup event named (if it
/// still exists: most of a burst of cgroups is gone before its turn, and
/// is forgotten at once), else the exec's process's (if it still names the
/// same cgroup: the process may have moved), else the kernel's path for
/// the id. `None`: gone.
pub fn cgroup_path(
    layout: &Layout,
    key: u64,
    pid: Option<u32>,
    path: Option<String>,
) -> Option<String> {
    if let Some(path) = path {
        return layout.exists(&path).then_some(path);
    }
    layout
        .path_of_process(pid?)
        .ok()
        .filter(|path| layout.key_of_path(path).ok() == Some(key))
        .or_else(|| layout.path_of_key(key))
}

/// What runs in the cgroup at `path`. `previous` reads a container's
/// record from before a restart; `patience` is how long a container that
/// claims to be CRI's may be waited for in CRI's records.
pub async fn identify(
    runtime: &impl Runtime,
    cgroups: &impl CgroupTree,
    path: &str,
    previous: impl Fn(&str) -> Option<crate::model::ContainerRecord>,
    patience: Instant,
) -> Outcome {
    let Some(found) = container_ref::parse(path) else {
        return Outcome::Host;
    };
    // A `/<namespace>/<name>` path is only a candidate: containerd not
    // knowing it makes it a host cgroup. A runtime's id that containerd does
    // not know is a container it cannot tell, once something runs in it:
    // an empty cgroup runs nothing (anyone can make one with any name), and
    // the kernel reports its first exec, which is looked up again.
    let candidate = found.namespace.is_some();
    match lookup(runtime, &found.id, found.namespace.as_deref(), patience).await {
        Looked::NotFound if candidate => Outcome::Host,
        Looked::NotFound if !cgroups.populated(path) => Outcome::Gone,
        Looked::NotFound => Outcome::Unknown(not_found_reason(&found.id, found.runtime, runtime)),
        Looked::Found(identity) => with_previous(*identity, previous),
        Looked::Failed(_) if !cgroups.exists(path) => Outcome::Gone,
        Looked::Failed(reason) => Outcome::Unknown(reason),
    }
}

/// What runs in a container the start-up scan listed.
pub async fn identify_running(
    runtime: &impl Runtime,
    namespace: &str,
    id: &str,
    previous: impl Fn(&str) -> Option<crate::model::ContainerRecord>,
    patience: Instant,
) -> Outcome {
    match lookup(runtime, id, Some(namespace), patience).await {
        Looked::NotFound => Outcome::Unknown(format!(
            "containerd listed task {namespace}/{id} but then had no such container"
        )),
        Looked::Found(identity) => with_previous(*identity, previous),
        Looked::Failed(reason) => Outcome::Unknown(reason),
    }
}

fn with_previous(
    identity: ContainerIdentity,
    previous: impl Fn(&str) -> Option<crate::model::ContainerRecord>,
) -> Outcome {
    let previous = previous(&container_key(&identity.namespace, &identity.id));
    Outcome::Container { identity, previous }
}

/// A container's record from before a restart, read from the store.
pub fn stored(store: &Store) -> impl Fn(&str) -> Option<crate::model::ContainerRecord> + '_ {
    |key| store.container(key).ok().flatten()
}

enum Looked {
    Found(Box<ContainerIdentity>),
    NotFound,
    Failed(String),
}

/// Asks the runtime, retrying failures (not a "not found").
async fn lookup(
    runtime: &impl Runtime,
    id: &str,
    namespace: Option<&str>,
    patience: Instant,
) -> Looked {
    let mut last_error = String::new();
    for attempt in 0..LOOKUP_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        match runtime.find(id, namespace, patience).await {
            Ok(Lookup::Found(identity)) => return Looked::Found(identity),
            Ok(Lookup::NotFound) => return Looked::NotFound,
            Err(e) => last_error = e.to_string(),
        }
    }
    Looked::Failed(last_error)
}

fn not_found_reason(id: &str, runtime: RuntimeHint, containerd: &impl Runtime) -> String {
    let hint = match runtime {
        RuntimeHint::CriO => " (the cgroup is CRI-O's, which imagegate does not query yet)",
        RuntimeHint::Podman => " (the cgroup is Podman's, which imagegate does not query yet)",
        _ => "",
    };
    format!(
        "the cgroup names container {id}, but {} has no such container in any namespace{hint}",
        containerd.describe()
    )
}

/// The containers running now; retries until the runtime answers once.
/// `why` the scan runs, for the log.
pub async fn scan(runtime: &impl Runtime, why: &str) -> Vec<RunningTask> {
    loop {
        match runtime.running_tasks().await {
            Ok(tasks) => {
                info!(running = tasks.len(), why, "scan: containers running");
                return tasks;
            }
            Err(e) => {
                warn!(error = %e, why, retry_in = ?SCAN_RETRY, "scan of running containers failed");
                tokio::time::sleep(SCAN_RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Mutex};

    use super::*;
    use crate::model::{ContainerRecord, ContainerVerdict};

    /// containerd as a map of `namespace/id`, failing the first
    /// `failures` calls.
    #[derive(Default)]
    struct FakeRuntime {
        containers: HashMap<String, ContainerIdentity>,
        failures: Mutex<u32>,
    }

    impl Runtime for FakeRuntime {
        async fn find(
            &self,
            id: &str,
            _namespace: Option<&str>,
            _patience: Instant,
        ) -> Result<Lookup, RuntimeError> {
            {
                let mut failures = self.failures.lock().unwrap();
                if *failures > 0 {
                    *failures -= 1;
                    return Err(RuntimeError::Timeout { call: "get" });
                }
            }
            Ok(self
                .containers
                .values()
                .find(|c| c.id == id)
                .map_or(Lookup::NotFound, |c| Lookup::Found(Box::new(c.clone()))))
        }

        async fn running_tasks(&self) -> Result<Vec<RunningTask>, RuntimeError> {
            Ok(Vec::new())
        }

        fn describe(&self) -> String {
            "the fake runtime".into()
        }
    }

    /// The cgroup tree: paths that exist, and which of them have processes.
    struct FakeCgroups {
        existing: Vec<String>,
        populated: Vec<String>,
    }

    impl CgroupTree for FakeCgroups {
        fn exists(&self, path: &str) -> bool {
            self.existing.iter().any(|p| p == path)
        }

        fn populated(&self, path: &str) -> bool {
            self.populated.iter().any(|p| p == path)
        }
    }

    /// Every path exists and has a process in it.
    struct Running;

    impl CgroupTree for Running {
        fn exists(&self, _: &str) -> bool {
            true
        }

        fn populated(&self, _: &str) -> bool {
            true
        }
    }

    async fn identify_in(runtime: &FakeRuntime, path: &str) -> Outcome {
        identify(runtime, &Running, path, none, Instant::now()).await
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn identity() -> ContainerIdentity {
        ContainerIdentity {
            namespace: "k8s.io".into(),
            id: ID.into(),
            image: "registry.example/app:1".into(),
            digest: Some(
                crate::digest::Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap(),
            ),
            platform_digest: None,
            pod: None,
            sandbox: false,
            unconfirmed_claim: None,
        }
    }

    fn runtime_with(identity: ContainerIdentity, failures: u32) -> FakeRuntime {
        FakeRuntime {
            containers: HashMap::from([(
                container_key(&identity.namespace, &identity.id),
                identity,
            )]),
            failures: Mutex::new(failures),
        }
    }

    fn none(_: &str) -> Option<ContainerRecord> {
        None
    }

    fn cri_path() -> String {
        format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope")
    }

    #[tokio::test]
    async fn a_path_that_names_no_container_is_the_host() {
        let runtime = FakeRuntime::default();
        let outcome = identify_in(&runtime, "/system.slice/sshd.service").await;
        assert!(matches!(outcome, Outcome::Host), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_runtime_id_containerd_does_not_know_is_unknown_never_host() {
        let runtime = FakeRuntime::default();
        let outcome = identify_in(&runtime, &cri_path()).await;
        let Outcome::Unknown(reason) = outcome else {
            panic!("{outcome:?}");
        };
        assert!(
            reason.contains(ID) && reason.contains("the fake runtime"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_namespace_path_containerd_does_not_know_is_the_host() {
        let runtime = FakeRuntime::default();
        let outcome = identify_in(&runtime, "/k8s.io/not-a-container").await;
        assert!(matches!(outcome, Outcome::Host), "{outcome:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_then_unknown_with_the_runtimes_error() {
        let outcome = identify_in(&runtime_with(identity(), 2), &cri_path()).await;
        assert!(matches!(outcome, Outcome::Container { .. }), "{outcome:?}");
        let outcome = identify_in(&runtime_with(identity(), LOOKUP_ATTEMPTS), &cri_path()).await;
        let Outcome::Unknown(reason) = outcome else {
            panic!("{outcome:?}");
        };
        assert!(reason.contains("took longer"), "{reason}");
    }

    #[tokio::test]
    async fn a_container_comes_with_its_record_from_before_a_restart() {
        let before = ContainerRecord {
            key: container_key("k8s.io", ID),
            runtime_namespace: Some("k8s.io".into()),
            id: Some(ID.into()),
            image: None,
            digest: None,
            platform_digest: None,
            pod: None,
            cgroup: cri_path(),
            verdict: ContainerVerdict::NeverAdmitted,
            reason: "flagged".into(),
            first_seen_ms: 5,
            decided_at_ms: 6,
            gone_at_ms: None,
        };
        let previous = |key: &str| (key == before.key).then(|| before.clone());
        let runtime = runtime_with(identity(), 0);
        let outcome = identify(&runtime, &Running, &cri_path(), previous, Instant::now()).await;
        let Outcome::Container {
            identity: found,
            previous,
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        assert_eq!(found, identity());
        assert_eq!(previous.map(|p| p.first_seen_ms), Some(5));
    }

    #[tokio::test]
    async fn a_listed_task_that_vanished_is_unknown() {
        let runtime = FakeRuntime::default();
        let outcome = identify_running(&runtime, "k8s.io", "gone", none, Instant::now()).await;
        assert!(
            matches!(&outcome, Outcome::Unknown(r) if r.contains("k8s.io/gone")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn an_empty_cgroup_named_like_a_container_the_runtime_does_not_know_is_forgotten() {
        // Anyone with a writable cgroup subtree can name one so: until a
        // process runs in it, there is nothing to judge (its first exec is
        // reported and looked up again).
        let runtime = FakeRuntime::default();
        let empty = FakeCgroups {
            existing: vec![cri_path()],
            populated: vec![],
        };
        let outcome = identify(&runtime, &empty, &cri_path(), none, Instant::now()).await;
        assert!(matches!(outcome, Outcome::Gone), "{outcome:?}");
        // A container the runtime knows is judged whether or not anything
        // runs in it yet.
        let runtime = runtime_with(identity(), 0);
        let outcome = identify(&runtime, &empty, &cri_path(), none, Instant::now()).await;
        assert!(matches!(outcome, Outcome::Container { .. }), "{outcome:?}");
    }

    #[test]
    fn only_a_created_cgroup_with_nothing_in_it_is_not_worth_a_lookup() {
        let cgroups = FakeCgroups {
            existing: vec!["/a".into(), "/b".into()],
            populated: vec!["/b".into()],
        };
        assert!(nothing_runs_yet(&cgroups, "/a", None));
        assert!(!nothing_runs_yet(&cgroups, "/b", None));
        // An exec named it: something runs there, whatever the tree says
        // a moment later.
        assert!(!nothing_runs_yet(&cgroups, "/a", Some(7)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cgroup_gone_while_the_runtime_failed_is_forgotten_not_unknown() {
        let gone = FakeCgroups {
            existing: vec![],
            populated: vec![],
        };
        let runtime = runtime_with(identity(), LOOKUP_ATTEMPTS);
        let outcome = identify(&runtime, &gone, &cri_path(), none, Instant::now()).await;
        assert!(matches!(outcome, Outcome::Gone), "{outcome:?}");
    }
}
