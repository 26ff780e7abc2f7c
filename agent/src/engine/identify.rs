//! From a cgroup to what runs in it: its path (from the exec's process, the
//! new cgroup's event, or the kernel's id), then containerd's answer,
//! retried when containerd fails. The runtime is behind [`Runtime`], so the
//! rules (a `/<namespace>/<name>` path containerd does not know is a host
//! cgroup; a runtime's container id it does not know is a container it
//! cannot tell) are tested with a fake.

use std::{future::Future, time::Duration};

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
    /// The container `id`, looked for in `namespace` first when given.
    fn find(
        &self,
        id: &str,
        namespace: Option<&str>,
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
    ) -> impl Future<Output = Result<Lookup, RuntimeError>> + Send {
        Containerd::find(self, id, namespace)
    }

    fn running_tasks(&self) -> impl Future<Output = Result<Vec<RunningTask>, RuntimeError>> + Send {
        Containerd::running_tasks(self)
    }

    fn describe(&self) -> String {
        format!("containerd at {}", self.socket().display())
    }
}

/// The cgroup path of `key`: the one the new-cgroup event named, else the
/// exec's process's (if it still names the same cgroup: the process may
/// have moved), else the kernel's path for the id. `None`: gone.
pub fn cgroup_path(
    layout: &Layout,
    key: u64,
    pid: Option<u32>,
    path: Option<String>,
) -> Option<String> {
    path.or_else(|| {
        let path = layout.path_of_process(pid?).ok()?;
        (layout.key_of_path(&path).ok()? == key).then_some(path)
    })
    .or_else(|| layout.path_of_key(key))
}

/// What runs in the cgroup at `path`. `previous` reads a container's
/// record from before a restart.
pub async fn identify(
    runtime: &impl Runtime,
    path: &str,
    previous: impl Fn(&str) -> Option<crate::model::ContainerRecord>,
) -> Outcome {
    let Some(found) = container_ref::parse(path) else {
        return Outcome::Host;
    };
    // A `/<namespace>/<name>` path is only a candidate: containerd not
    // knowing it makes it a host cgroup. A runtime's id that containerd does
    // not know is a container it cannot tell.
    let candidate = found.namespace.is_some();
    match lookup(runtime, &found.id, found.namespace.as_deref()).await {
        Looked::NotFound if candidate => Outcome::Host,
        Looked::NotFound => Outcome::Unknown(not_found_reason(&found.id, found.runtime, runtime)),
        Looked::Found(identity) => with_previous(identity, previous),
        Looked::Failed(reason) => Outcome::Unknown(reason),
    }
}

/// What runs in a container the start-up scan listed.
pub async fn identify_running(
    runtime: &impl Runtime,
    namespace: &str,
    id: &str,
    previous: impl Fn(&str) -> Option<crate::model::ContainerRecord>,
) -> Outcome {
    match lookup(runtime, id, Some(namespace)).await {
        Looked::NotFound => Outcome::Unknown(format!(
            "containerd listed task {namespace}/{id} but then had no such container"
        )),
        Looked::Found(identity) => with_previous(identity, previous),
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
    Found(ContainerIdentity),
    NotFound,
    Failed(String),
}

/// Asks the runtime, retrying failures (not a "not found").
async fn lookup(runtime: &impl Runtime, id: &str, namespace: Option<&str>) -> Looked {
    let mut last_error = String::new();
    for attempt in 0..LOOKUP_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        match runtime.find(id, namespace).await {
            Ok(Lookup::Found(identity)) => return Looked::Found(*identity),
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
pub async fn scan(runtime: &impl Runtime) -> Vec<RunningTask> {
    loop {
        match runtime.running_tasks().await {
            Ok(tasks) => {
                info!(
                    running = tasks.len(),
                    "start-up scan: containers already running"
                );
                return tasks;
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?SCAN_RETRY, "start-up scan failed");
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
        async fn find(&self, id: &str, _namespace: Option<&str>) -> Result<Lookup, RuntimeError> {
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
        let outcome = identify(&runtime, "/system.slice/sshd.service", none).await;
        assert!(matches!(outcome, Outcome::Host), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_runtime_id_containerd_does_not_know_is_unknown_never_host() {
        let runtime = FakeRuntime::default();
        let outcome = identify(&runtime, &cri_path(), none).await;
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
        let outcome = identify(&runtime, "/k8s.io/not-a-container", none).await;
        assert!(matches!(outcome, Outcome::Host), "{outcome:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_then_unknown_with_the_runtimes_error() {
        let outcome = identify(&runtime_with(identity(), 2), &cri_path(), none).await;
        assert!(matches!(outcome, Outcome::Container { .. }), "{outcome:?}");
        let outcome = identify(
            &runtime_with(identity(), LOOKUP_ATTEMPTS),
            &cri_path(),
            none,
        )
        .await;
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
        let outcome = identify(&runtime_with(identity(), 0), &cri_path(), previous).await;
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
        let outcome = identify_running(&FakeRuntime::default(), "k8s.io", "gone", none).await;
        assert!(
            matches!(&outcome, Outcome::Unknown(r) if r.contains("k8s.io/gone")),
            "{outcome:?}"
        );
    }
}
