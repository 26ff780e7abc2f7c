//! From a cgroup to what runs in it: its path (from the exec's process, the
//! new cgroup's event, or the kernel's id), then the runtime's answer,
//! retried when the runtime fails. CRI is asked first (what the kubelet
//! created, on containerd and CRI-O alike), then containerd's own API for
//! what CRI cannot see (`ctr`, nerdctl, Docker). The runtime and the cgroup
//! tree are behind [`Runtime`] and [`CgroupTree`], so the rules are tested
//! with fakes: a `/<namespace>/<name>` path the runtime does not know is a
//! host cgroup; a runtime's container id it does not know is a container it
//! cannot tell, if anything runs in it; a cgroup gone before its lookup is
//! forgotten; digests are compared, never repository names, and an image
//! the runtime knows only by id is "unknown", never guessed.

use std::{future::Future, time::Duration};

use tokio::time::Instant;
use tracing::{info, warn};

use super::machine::Outcome;
use crate::{
    cgroups::Layout,
    container_ref::{self, RuntimeHint},
    digest::Digest,
    model::{ContainerIdentity, PodRef, container_key},
    runtime::{
        CriContainer, CriImage, ImageDigests, NativeContainer, NativeLookup, NodeRuntime,
        RunningTask, RuntimeError, RuntimeKind,
    },
    store::Store,
};

/// Attempts at asking the runtime before a container is `unknown`.
const LOOKUP_ATTEMPTS: u32 = 3;
/// How often a failed scan is retried (the runtime may start after the
/// agent).
pub const SCAN_RETRY: Duration = Duration::from_secs(5);
/// How often CRI is asked again for the record of a container labelled as
/// CRI's (containerd files a sandbox in CRI's store only once its pause
/// process runs, so the agent may ask first).
const CRI_RECORD_POLL: Duration = Duration::from_millis(50);

/// The container runtime, as identification needs it.
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> RuntimeKind;
    /// Container `id`, if CRI created it.
    fn cri_container(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<CriContainer>, RuntimeError>> + Send;
    /// The pod of sandbox `id`, if CRI created such a sandbox.
    fn cri_sandbox(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<PodRef>, RuntimeError>> + Send;
    /// Image `image` (a reference or an id), as CRI's ImageStatus has it.
    fn cri_image(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<Option<CriImage>, RuntimeError>> + Send;
    /// Container `id` in containerd's own records, looked for in
    /// `namespace` first when given.
    fn native_find(
        &self,
        id: &str,
        namespace: Option<&str>,
    ) -> impl Future<Output = Result<NativeLookup, RuntimeError>> + Send;
    /// Image `name` in containerd's image store.
    fn native_image(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ImageDigests>, RuntimeError>> + Send;
    /// This node's platform manifest in index `digest`, from containerd's
    /// content store.
    fn native_platform(
        &self,
        namespace: &str,
        digest: &Digest,
    ) -> impl Future<Output = Result<Option<Digest>, RuntimeError>> + Send;
    /// The containers running now (their init processes).
    fn running_tasks(&self) -> impl Future<Output = Result<Vec<RunningTask>, RuntimeError>> + Send;
    /// Where the runtime is, for messages.
    fn describe(&self) -> String;
}

impl Runtime for NodeRuntime {
    fn kind(&self) -> RuntimeKind {
        self.kind
    }

    async fn cri_container(&self, id: &str) -> Result<Option<CriContainer>, RuntimeError> {
        self.cri.container(id).await
    }

    async fn cri_sandbox(&self, id: &str) -> Result<Option<PodRef>, RuntimeError> {
        self.cri.sandbox(id).await
    }

    async fn cri_image(&self, image: &str) -> Result<Option<CriImage>, RuntimeError> {
        self.cri.image(image).await
    }

    async fn native_find(
        &self,
        id: &str,
        namespace: Option<&str>,
    ) -> Result<NativeLookup, RuntimeError> {
        match &self.native {
            Some(containerd) => containerd.find(id, namespace).await,
            None => Ok(NativeLookup::Unavailable),
        }
    }

    async fn native_image(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ImageDigests>, RuntimeError> {
        match &self.native {
            Some(containerd) => containerd.image(namespace, name).await,
            None => Ok(None),
        }
    }

    async fn native_platform(
        &self,
        namespace: &str,
        digest: &Digest,
    ) -> Result<Option<Digest>, RuntimeError> {
        match &self.native {
            Some(containerd) => containerd.platform_of(namespace, digest).await,
            None => Ok(None),
        }
    }

    async fn running_tasks(&self) -> Result<Vec<RunningTask>, RuntimeError> {
        match &self.native {
            // Every namespace, CRI's included.
            Some(containerd) => containerd.running_tasks().await,
            None => self.cri.running_tasks(self.kind.cri_namespace()).await,
        }
    }

    fn describe(&self) -> String {
        NodeRuntime::describe(self)
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
    // A `/<namespace>/<name>` path is only a candidate: the runtime not
    // knowing it makes it a host cgroup. A runtime's id that the runtime
    // does not know is a container it cannot tell, once something runs in
    // it: an empty cgroup runs nothing (anyone can make one with any name),
    // and the kernel reports its first exec, which is looked up again.
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

/// What runs in a container a scan listed.
pub async fn identify_running(
    runtime: &impl Runtime,
    namespace: &str,
    id: &str,
    previous: impl Fn(&str) -> Option<crate::model::ContainerRecord>,
    patience: Instant,
) -> Outcome {
    match lookup(runtime, id, Some(namespace), patience).await {
        Looked::NotFound => Outcome::Unknown(format!(
            "the runtime listed container {namespace}/{id} running, but then had no such container"
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
        match find(runtime, id, namespace, patience).await {
            Ok(Some(identity)) => return Looked::Found(Box::new(identity)),
            Ok(None) => return Looked::NotFound,
            Err(e) => last_error = e.to_string(),
        }
    }
    Looked::Failed(last_error)
}

/// One attempt: CRI first, then containerd's own records. A container in
/// CRI's namespace that is labelled as CRI's but not (yet) in CRI's records
/// is asked for again until `patience` (a sandbox is filed only once its
/// pause process runs), then judged as what it is: a container in that
/// namespace, its verdict saying what the label claimed.
async fn find(
    runtime: &impl Runtime,
    id: &str,
    namespace: Option<&str>,
    patience: Instant,
) -> Result<Option<ContainerIdentity>, RuntimeError> {
    let cri_namespace = runtime.kind().cri_namespace();
    if namespace.is_none_or(|n| n == cri_namespace)
        && let Some(identity) = by_cri(runtime, id).await?
    {
        return Ok(Some(identity));
    }
    let container = match runtime.native_find(id, namespace).await? {
        NativeLookup::Found(container) => *container,
        NativeLookup::NotFound | NativeLookup::Unavailable => return Ok(None),
    };
    if container.namespace == cri_namespace && container.claims_cri.is_some() {
        while Instant::now() + CRI_RECORD_POLL <= patience {
            tokio::time::sleep(CRI_RECORD_POLL).await;
            if let Some(identity) = by_cri(runtime, id).await? {
                return Ok(Some(identity));
            }
        }
    }
    Ok(Some(from_native(container)))
}

/// What CRI says of `id`: a sandbox it created (with its pod), a container
/// it created in a sandbox (with that pod and its image's digests), or
/// nothing (`None`: then any label is no more than a claim).
async fn by_cri(
    runtime: &impl Runtime,
    id: &str,
) -> Result<Option<ContainerIdentity>, RuntimeError> {
    let namespace = runtime.kind().cri_namespace();
    if let Some(pod) = runtime.cri_sandbox(id).await? {
        // CRI does not say which image a sandbox runs; containerd's own
        // records do (exemptions by digest need it; sandboxes themselves
        // are exempt by default).
        let native = match runtime.native_find(id, Some(namespace)).await? {
            NativeLookup::Found(container) => Some(*container),
            _ => None,
        };
        let digests = native.as_ref().and_then(|c| c.digests.clone());
        return Ok(Some(ContainerIdentity {
            namespace: namespace.to_string(),
            id: id.to_string(),
            image: native.map(|c| c.image).unwrap_or_default(),
            digest: digests.as_ref().and_then(|d| d.digest.clone()),
            platform_digest: digests.and_then(|d| d.platform),
            other_digests: Vec::new(),
            no_digest_because: Some(format!(
                "{} does not say which image a pod sandbox runs",
                runtime.kind().as_str()
            )),
            pod: Some(pod),
            sandbox: true,
            unconfirmed_claim: None,
        }));
    }
    let Some(container) = runtime.cri_container(id).await? else {
        return Ok(None);
    };
    let pod = runtime
        .cri_sandbox(&container.sandbox_id)
        .await?
        .map(|mut pod| {
            pod.container = Some(container.name.clone()).filter(|n| !n.is_empty());
            pod
        });
    let digests = cri_digests(runtime, &container).await?;
    Ok(Some(ContainerIdentity {
        namespace: namespace.to_string(),
        id: container.id,
        image: container.image,
        digest: digests.digest,
        platform_digest: digests.platform,
        other_digests: digests.others,
        no_digest_because: digests.none_because,
        pod,
        sandbox: false,
        unconfirmed_claim: None,
    }))
}

/// A container's image digests as CRI has them.
#[derive(Debug, Default, PartialEq, Eq)]
struct CriDigests {
    digest: Option<Digest>,
    platform: Option<Digest>,
    others: Vec<Digest>,
    none_because: Option<String>,
}

/// The registry digest in `repo@sha256:<hex>` (none in a bare image id).
fn digest_in(reference: &str) -> Option<Digest> {
    let (_, digest) = reference.rsplit_once('@')?;
    Digest::parse(digest).ok()
}

/// Every registry digest CRI gives for the container's image: the one its
/// `imageRef` names, and the image's repo digests (one per repository it
/// was pulled from). `imageRef` may be only an image id: for an image
/// loaded onto the node rather than pulled, and on CRI-O after a runtime
/// restart (before cri-o#9925); then the repo digests are all there is, and on
/// containerd its image store may still hold the manifest's digest. An
/// index names this node's platform manifest where containerd's content
/// store has the index. No digest at all is said, never guessed.
async fn cri_digests(
    runtime: &impl Runtime,
    container: &CriContainer,
) -> Result<CriDigests, RuntimeError> {
    let namespace = runtime.kind().cri_namespace();
    let mut digests: Vec<Digest> = digest_in(&container.image_ref).into_iter().collect();
    let asked = [&container.image_ref, &container.image_id, &container.image]
        .into_iter()
        .find(|i| !i.is_empty());
    let image = match asked {
        Some(asked) => runtime.cri_image(asked).await?,
        None => None,
    };
    if let Some(image) = &image {
        for digest in image.repo_digests.iter().filter_map(|r| digest_in(r)) {
            if !digests.contains(&digest) {
                digests.push(digest);
            }
        }
    }
    let mut out = CriDigests::default();
    if digests.is_empty() {
        // Loaded, not pulled: containerd's image store names the manifest.
        if let Some(stored) = runtime.native_image(namespace, &container.image).await?
            && stored.digest.is_some()
        {
            out.digest = stored.digest;
            out.platform = stored.platform;
            return Ok(out);
        }
        out.none_because = Some(match &image {
            None => format!(
                "its image ({}) is no longer in the runtime's image store (removed while the \
                 container runs), so its digest cannot be known",
                asked.map(String::as_str).unwrap_or("unnamed")
            ),
            Some(image) => format!(
                "the runtime knows its image only by id {} (loaded onto the node, not pulled from \
                 a registry): there is no registry digest to judge",
                image.id
            ),
        });
        return Ok(out);
    }
    let primary = digests.remove(0);
    out.platform = runtime.native_platform(namespace, &primary).await?;
    out.digest = Some(primary);
    out.others = digests;
    Ok(out)
}

/// A container only containerd's own records know.
fn from_native(container: NativeContainer) -> ContainerIdentity {
    let none_because = match (&container.digests, container.image.is_empty()) {
        (_, true) => Some(
            "the container was started without an image (from a root filesystem): there is \
             no digest to judge"
                .to_string(),
        ),
        (None, false) => Some(format!(
            "image {:?} has no record in containerd namespace {}, so its digest cannot be known",
            container.image, container.namespace
        )),
        (Some(_), false) => None,
    };
    let unconfirmed_claim = container.claims_cri.as_ref().map(|kind| {
        format!(
            "it is labelled io.cri-containerd.kind={kind}, but CRI has no record of creating it, \
             so it is judged as any container in containerd namespace {}",
            container.namespace
        )
    });
    let digests = container.digests.unwrap_or_default();
    ContainerIdentity {
        namespace: container.namespace,
        id: container.id,
        image: container.image,
        digest: digests.digest,
        platform_digest: digests.platform,
        other_digests: Vec::new(),
        no_digest_because: none_because,
        pod: None,
        sandbox: false,
        unconfirmed_claim,
    }
}

fn not_found_reason(id: &str, hint: RuntimeHint, runtime: &impl Runtime) -> String {
    let other = match (hint, runtime.kind()) {
        (RuntimeHint::CriO, RuntimeKind::Containerd) => " (the cgroup is CRI-O's)",
        (RuntimeHint::Containerd, RuntimeKind::CriO) => " (the cgroup is containerd's)",
        (RuntimeHint::Podman, _) => " (the cgroup is Podman's, which imagegate does not query)",
        (RuntimeHint::Docker, RuntimeKind::CriO) => " (the cgroup is Docker's)",
        _ => "",
    };
    format!(
        "the cgroup names container {id}, but {} has no such container{other}",
        runtime.describe()
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

    /// A runtime answering from maps, as containerd (CRI and its own
    /// records) or CRI-O (CRI only) would; failing the first `failures`
    /// calls.
    struct FakeRuntime {
        kind: RuntimeKind,
        containers: HashMap<String, CriContainer>,
        sandboxes: HashMap<String, PodRef>,
        /// By what ImageStatus is asked with (a reference or an id).
        images: HashMap<String, CriImage>,
        /// containerd's own records (`None` on CRI-O).
        native: Option<Vec<NativeContainer>>,
        native_images: HashMap<String, ImageDigests>,
        platforms: HashMap<Digest, Digest>,
        failures: Mutex<u32>,
    }

    impl FakeRuntime {
        fn new(kind: RuntimeKind) -> Self {
            Self {
                kind,
                containers: HashMap::new(),
                sandboxes: HashMap::new(),
                images: HashMap::new(),
                native: (kind == RuntimeKind::Containerd).then(Vec::new),
                native_images: HashMap::new(),
                platforms: HashMap::new(),
                failures: Mutex::new(0),
            }
        }

        /// An image ImageStatus answers for when asked with `asked`.
        fn image(&mut self, asked: &str, id: &str, repo_digests: Vec<String>) {
            let image = CriImage {
                id: id.to_string(),
                repo_digests,
            };
            self.images.insert(asked.to_string(), image);
        }

        fn fail(&self) -> Result<(), RuntimeError> {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(RuntimeError::Timeout {
                    call: "CRI ListContainers",
                });
            }
            Ok(())
        }
    }

    impl Runtime for FakeRuntime {
        fn kind(&self) -> RuntimeKind {
            self.kind
        }

        async fn cri_container(&self, id: &str) -> Result<Option<CriContainer>, RuntimeError> {
            self.fail()?;
            Ok(self.containers.get(id).cloned())
        }

        async fn cri_sandbox(&self, id: &str) -> Result<Option<PodRef>, RuntimeError> {
            Ok(self.sandboxes.get(id).cloned())
        }

        async fn cri_image(&self, image: &str) -> Result<Option<CriImage>, RuntimeError> {
            Ok(self.images.get(image).cloned())
        }

        async fn native_find(
            &self,
            id: &str,
            _namespace: Option<&str>,
        ) -> Result<NativeLookup, RuntimeError> {
            Ok(match &self.native {
                None => NativeLookup::Unavailable,
                Some(all) => all
                    .iter()
                    .find(|c| c.id == id)
                    .map_or(NativeLookup::NotFound, |c| {
                        NativeLookup::Found(Box::new(c.clone()))
                    }),
            })
        }

        async fn native_image(
            &self,
            _namespace: &str,
            name: &str,
        ) -> Result<Option<ImageDigests>, RuntimeError> {
            Ok(self.native_images.get(name).cloned())
        }

        async fn native_platform(
            &self,
            _namespace: &str,
            digest: &Digest,
        ) -> Result<Option<Digest>, RuntimeError> {
            Ok(self
                .native
                .as_ref()
                .and_then(|_| self.platforms.get(digest).cloned()))
        }

        async fn running_tasks(&self) -> Result<Vec<RunningTask>, RuntimeError> {
            Ok(Vec::new())
        }

        fn describe(&self) -> String {
            format!("the fake {}", self.kind.as_str())
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

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const SANDBOX: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    fn dg(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    fn none(_: &str) -> Option<ContainerRecord> {
        None
    }

    fn cri_path() -> String {
        format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope")
    }

    fn crio_path() -> String {
        format!("/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope")
    }

    async fn identify_in(runtime: &FakeRuntime, path: &str) -> Outcome {
        identify(runtime, &Running, path, none, Instant::now()).await
    }

    /// A pod `shop/web` whose container `app` runs `image` with `image_ref`.
    fn pod_container(runtime: &mut FakeRuntime, image: &str, image_ref: &str) {
        runtime.sandboxes.insert(
            SANDBOX.into(),
            PodRef {
                namespace: "shop".into(),
                name: "web".into(),
                uid: None,
                container: None,
            },
        );
        runtime.containers.insert(
            ID.into(),
            CriContainer {
                id: ID.into(),
                sandbox_id: SANDBOX.into(),
                name: "app".into(),
                image: image.into(),
                image_ref: image_ref.into(),
                image_id: String::new(),
            },
        );
    }

    fn container(outcome: Outcome) -> ContainerIdentity {
        match outcome {
            Outcome::Container { identity, .. } => identity,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_path_that_names_no_container_is_the_host() {
        let runtime = FakeRuntime::new(RuntimeKind::Containerd);
        let outcome = identify_in(&runtime, "/system.slice/sshd.service").await;
        assert!(matches!(outcome, Outcome::Host), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_runtime_id_the_runtime_does_not_know_is_unknown_never_host() {
        for kind in [RuntimeKind::Containerd, RuntimeKind::CriO] {
            let runtime = FakeRuntime::new(kind);
            let outcome = identify_in(&runtime, &cri_path()).await;
            let Outcome::Unknown(reason) = outcome else {
                panic!("{outcome:?}");
            };
            assert!(
                reason.contains(ID) && reason.contains("the fake"),
                "{reason}"
            );
        }
    }

    #[tokio::test]
    async fn a_namespace_path_the_runtime_does_not_know_is_the_host() {
        let runtime = FakeRuntime::new(RuntimeKind::Containerd);
        let outcome = identify_in(&runtime, "/k8s.io/not-a-container").await;
        assert!(matches!(outcome, Outcome::Host), "{outcome:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_then_unknown_with_the_runtimes_error() {
        let mut runtime = FakeRuntime::new(RuntimeKind::CriO);
        pod_container(
            &mut runtime,
            "registry.example/app:1",
            &format!("registry.example/app@{}", dg(1)),
        );
        *runtime.failures.lock().unwrap() = 2;
        let identity = container(identify_in(&runtime, &crio_path()).await);
        assert_eq!(identity.digest, Some(dg(1)));
        *runtime.failures.lock().unwrap() = LOOKUP_ATTEMPTS;
        let Outcome::Unknown(reason) = identify_in(&runtime, &crio_path()).await else {
            panic!("not unknown");
        };
        assert!(reason.contains("took longer"), "{reason}");
    }

    #[tokio::test]
    async fn a_cri_o_container_is_its_pod_and_the_digest_its_image_ref_names() {
        let mut runtime = FakeRuntime::new(RuntimeKind::CriO);
        pod_container(
            &mut runtime,
            "registry.example/app:1",
            &format!("registry.example/app@{}", dg(1)),
        );
        let identity = container(identify_in(&runtime, &crio_path()).await);
        assert_eq!(identity.namespace, "cri-o");
        assert_eq!(identity.digest, Some(dg(1)));
        assert_eq!(
            identity.platform_digest, None,
            "CRI-O has no content store to read"
        );
        let pod = identity.pod.unwrap();
        assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("shop", "web"));
        assert_eq!(pod.container.as_deref(), Some("app"));
        assert!(!identity.sandbox);
    }

    #[tokio::test]
    async fn an_image_ref_that_is_an_image_id_is_resolved_through_the_repo_digests() {
        // CRI-O after a runtime restart (before cri-o#9925), or any runtime for an
        // image it knows by id: the repo digests ImageStatus gives.
        let id = format!("sha256:{}", "c".repeat(64));
        let mut runtime = FakeRuntime::new(RuntimeKind::CriO);
        pod_container(&mut runtime, "registry.example/app:1", &id);
        runtime.image(&id, &id, vec![format!("registry.example/app@{}", dg(1))]);
        let identity = container(identify_in(&runtime, &crio_path()).await);
        assert_eq!(identity.digest, Some(dg(1)));
        assert_eq!(identity.no_digest_because, None);
    }

    #[tokio::test]
    async fn an_image_known_only_by_id_is_unknown_never_guessed() {
        // Loaded onto the node (`ctr images import`, `podman load`): no
        // registry digest anywhere. On CRI-O nothing else says one.
        let id = format!("sha256:{}", "c".repeat(64));
        let mut runtime = FakeRuntime::new(RuntimeKind::CriO);
        pod_container(&mut runtime, "registry.example/app:1", &id);
        runtime.image(&id, &id, vec![]);
        let identity = container(identify_in(&runtime, &crio_path()).await);
        assert_eq!(identity.digest, None);
        let because = identity.no_digest_because.clone().unwrap();
        assert!(
            because.contains("only by id") && because.contains(&id),
            "{because}"
        );
        let verdict =
            crate::verdict::decide(&identity, |_| None, &crate::verdict::Exemptions::none());
        assert_eq!(verdict.kind, ContainerVerdict::Unknown);
        assert_eq!(verdict.reason, because);
        // On containerd its image store still holds the manifest's digest.
        let mut runtime = FakeRuntime::new(RuntimeKind::Containerd);
        pod_container(&mut runtime, "registry.example/app:1", &id);
        runtime.image(&id, &id, vec![]);
        runtime.native_images.insert(
            "registry.example/app:1".into(),
            ImageDigests {
                digest: Some(dg(5)),
                platform: None,
            },
        );
        let identity = container(identify_in(&runtime, &cri_path()).await);
        assert_eq!(identity.digest, Some(dg(5)));
    }

    #[tokio::test]
    async fn one_image_pulled_under_two_repositories_is_admitted_by_either_digest() {
        // cri-o#6208: imageRef names one repository; the approval may be of
        // the other's digest. Digests are compared, never repository names.
        let mut runtime = FakeRuntime::new(RuntimeKind::CriO);
        let image_ref = format!("mirror.example/app@{}", dg(1));
        pod_container(&mut runtime, "registry.example/app:1", &image_ref);
        runtime.image(
            &image_ref,
            "sha256:config",
            vec![image_ref.clone(), format!("registry.example/app@{}", dg(2))],
        );
        let identity = container(identify_in(&runtime, &crio_path()).await);
        assert_eq!(identity.digest, Some(dg(1)));
        assert_eq!(identity.other_digests, vec![dg(2)]);
        let approved = |d: &str| (d == dg(2).as_str()).then(crate::model::Caveats::default);
        let verdict =
            crate::verdict::decide(&identity, approved, &crate::verdict::Exemptions::none());
        assert_eq!(
            verdict.kind,
            ContainerVerdict::Admitted,
            "{}",
            verdict.reason
        );
        assert!(
            verdict.reason.contains("another repository"),
            "{}",
            verdict.reason
        );
    }

    #[tokio::test]
    async fn an_index_names_this_nodes_platform_manifest_where_containerd_holds_it() {
        // kubernetes#108689: the index digest is reported where a platform
        // manifest ran; an approval of either admits.
        let mut runtime = FakeRuntime::new(RuntimeKind::Containerd);
        pod_container(
            &mut runtime,
            "registry.example/app:1",
            &format!("registry.example/app@{}", dg(1)),
        );
        runtime.platforms.insert(dg(1), dg(9));
        let identity = container(identify_in(&runtime, &cri_path()).await);
        assert_eq!(
            (identity.digest.clone(), identity.platform_digest.clone()),
            (Some(dg(1)), Some(dg(9)))
        );
        for approved_digest in [dg(1), dg(9)] {
            let approved =
                |d: &str| (d == approved_digest.as_str()).then(crate::model::Caveats::default);
            let verdict =
                crate::verdict::decide(&identity, approved, &crate::verdict::Exemptions::none());
            assert_eq!(verdict.kind, ContainerVerdict::Admitted);
        }
    }

    #[tokio::test]
    async fn an_image_removed_while_its_container_runs_is_unknown_and_says_so() {
        let id = format!("sha256:{}", "d".repeat(64));
        let mut runtime = FakeRuntime::new(RuntimeKind::CriO);
        pod_container(&mut runtime, "registry.example/app:1", &id);
        let identity = container(identify_in(&runtime, &crio_path()).await);
        assert_eq!(identity.digest, None);
        let because = identity.no_digest_because.unwrap();
        assert!(
            because.contains("no longer in the runtime's image store"),
            "{because}"
        );
    }

    #[tokio::test]
    async fn a_pod_sandbox_cri_created_is_a_sandbox_on_either_runtime() {
        for (kind, path) in [
            (
                RuntimeKind::CriO,
                format!("/kubepods.slice/crio-{SANDBOX}.scope"),
            ),
            (
                RuntimeKind::Containerd,
                format!("/kubepods.slice/cri-containerd-{SANDBOX}.scope"),
            ),
        ] {
            let mut runtime = FakeRuntime::new(kind);
            pod_container(&mut runtime, "registry.example/app:1", "");
            let identity = container(identify_in(&runtime, &path).await);
            assert!(identity.sandbox, "{kind:?}");
            let verdict = crate::verdict::decide(
                &identity,
                |_| None,
                &crate::verdict::Exemptions::new(true, vec![], vec![], vec![]).unwrap(),
            );
            assert_eq!(verdict.kind, ContainerVerdict::Exempt);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_cri_label_buys_no_more_than_the_patience_given() {
        // containerd: a `ctr` container in k8s.io labelled as CRI's, which
        // CRI never created: asked for until patience, then judged as a
        // container of that namespace, the claim said.
        let mut runtime = FakeRuntime::new(RuntimeKind::Containerd);
        runtime.native.as_mut().unwrap().push(NativeContainer {
            namespace: "k8s.io".into(),
            id: ID.into(),
            image: "registry.example/rogue:1".into(),
            digests: Some(ImageDigests {
                digest: Some(dg(3)),
                platform: None,
            }),
            claims_cri: Some("sandbox".into()),
        });
        let started = Instant::now();
        let patience = started + Duration::from_secs(2);
        let identity = container(identify(&runtime, &Running, &cri_path(), none, patience).await);
        assert!(
            started.elapsed() <= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(!identity.sandbox && identity.pod.is_none());
        assert_eq!(identity.digest, Some(dg(3)));
        assert!(identity.unconfirmed_claim.unwrap().contains("kind=sandbox"));
    }

    #[tokio::test]
    async fn a_container_only_containerd_knows_is_judged_by_its_image() {
        let mut runtime = FakeRuntime::new(RuntimeKind::Containerd);
        runtime.native.as_mut().unwrap().push(NativeContainer {
            namespace: "default".into(),
            id: "miner".into(),
            image: "registry.example/miner:1".into(),
            digests: Some(ImageDigests {
                digest: Some(dg(4)),
                platform: None,
            }),
            claims_cri: None,
        });
        let identity = container(identify_in(&runtime, "/default/miner").await);
        assert_eq!(
            (identity.namespace.as_str(), identity.digest),
            ("default", Some(dg(4)))
        );
        // CRI-O has no such API: a `/<namespace>/<id>` look-alike is the host.
        let runtime = FakeRuntime::new(RuntimeKind::CriO);
        assert!(matches!(
            identify_in(&runtime, "/default/miner").await,
            Outcome::Host
        ));
    }

    #[tokio::test]
    async fn a_container_comes_with_its_record_from_before_a_restart() {
        let mut runtime = FakeRuntime::new(RuntimeKind::Containerd);
        pod_container(
            &mut runtime,
            "registry.example/app:1",
            &format!("registry.example/app@{}", dg(1)),
        );
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
        let outcome = identify(&runtime, &Running, &cri_path(), previous, Instant::now()).await;
        let Outcome::Container { previous, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(previous.map(|p| p.first_seen_ms), Some(5));
    }

    #[tokio::test]
    async fn a_listed_task_that_vanished_is_unknown() {
        let runtime = FakeRuntime::new(RuntimeKind::Containerd);
        let outcome = identify_running(&runtime, "k8s.io", "gone", none, Instant::now()).await;
        assert!(
            matches!(&outcome, Outcome::Unknown(r) if r.contains("k8s.io/gone")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn an_empty_cgroup_named_like_a_container_the_runtime_does_not_know_is_forgotten() {
        let runtime = FakeRuntime::new(RuntimeKind::Containerd);
        let empty = FakeCgroups {
            existing: vec![cri_path()],
            populated: vec![],
        };
        let outcome = identify(&runtime, &empty, &cri_path(), none, Instant::now()).await;
        assert!(matches!(outcome, Outcome::Gone), "{outcome:?}");
    }

    #[test]
    fn only_a_created_cgroup_with_nothing_in_it_is_not_worth_a_lookup() {
        let cgroups = FakeCgroups {
            existing: vec!["/a".into(), "/b".into()],
            populated: vec!["/b".into()],
        };
        assert!(nothing_runs_yet(&cgroups, "/a", None));
        assert!(!nothing_runs_yet(&cgroups, "/b", None));
        assert!(!nothing_runs_yet(&cgroups, "/a", Some(7)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cgroup_gone_while_the_runtime_failed_is_forgotten_not_unknown() {
        let runtime = FakeRuntime::new(RuntimeKind::CriO);
        *runtime.failures.lock().unwrap() = LOOKUP_ATTEMPTS;
        let gone = FakeCgroups {
            existing: vec![],
            populated: vec![],
        };
        let outcome = identify(&runtime, &gone, &crio_path(), none, Instant::now()).await;
        assert!(matches!(outcome, Outcome::Gone), "{outcome:?}");
    }
}
