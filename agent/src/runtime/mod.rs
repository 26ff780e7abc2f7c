//! The node's container runtime, as identification asks it:
//!
//! - [`cri`]: the Kubernetes CRI API (`runtime.v1`), which containerd and
//!   CRI-O both serve: the containers and pod sandboxes the kubelet
//!   created, their images and those images' registry digests;
//! - [`containerd`]: containerd's own API, which also sees what CRI cannot
//!   (containers started with `ctr`, nerdctl or Docker in other containerd
//!   namespaces) and reads an index's platform manifest from the content
//!   store;
//! - [`socket`]: one gRPC channel over a Unix socket, reconnected after a
//!   failure, for both.
//!
//! [`NodeRuntime`] is what the agent runs with: CRI on the runtime's
//! socket, and containerd's API beside it when the runtime is containerd.
//! Which runtime, and its socket, is detected from what is mounted
//! ([`detect`]) or named (`--runtime`, `--runtime-socket`).

pub mod containerd;
pub mod cri;
pub mod socket;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

pub use containerd::Containerd;
pub use cri::Cri;

use crate::{digest::Digest, model::PodRef};

/// Which runtime serves the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// Detect it: the `--runtime-socket` given, or the first of the
    /// runtimes' default sockets that exists, asked its name through CRI.
    Auto,
    Containerd,
    #[value(name = "cri-o")]
    CriO,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
        }
    }

    /// Where this runtime's socket is by default.
    pub fn default_sockets(self) -> &'static [&'static str] {
        match self {
            Self::Containerd => &["/run/containerd/containerd.sock"],
            Self::CriO => &["/var/run/crio/crio.sock", "/run/crio/crio.sock"],
            Self::Auto => &[
                "/run/containerd/containerd.sock",
                "/var/run/crio/crio.sock",
                "/run/crio/crio.sock",
            ],
        }
    }

    /// The name a container's record key starts with: the containerd
    /// namespace, or `cri-o` (CRI-O has no namespaces).
    pub fn cri_namespace(self) -> &'static str {
        match self {
            Self::CriO => "cri-o",
            _ => containerd::CRI_NAMESPACE,
        }
    }
}

/// The runtime could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot reach the container runtime at {socket}: {reason}; check --runtime-socket (or \
         --runtime) and that the socket is mounted into the agent"
    )]
    Connect { socket: PathBuf, reason: String },
    #[error("{call}: {status}")]
    Rpc {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("{call} took longer than {:?}", socket::RPC_TIMEOUT)]
    Timeout { call: &'static str },
}

/// A running container's init process, from a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningTask {
    pub namespace: String,
    pub container_id: String,
    pub pid: u32,
}

/// A container as CRI lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CriContainer {
    pub id: String,
    pub sandbox_id: String,
    /// The container's name in its pod.
    pub name: String,
    /// The image as the pod spec named it (`registry/app:1`), or an id.
    pub image: String,
    /// What CRI says the container runs: `repo@sha256:<digest>` for a
    /// pulled image, or an image id (`sha256:<config digest>`) for one
    /// loaded onto the node (and, on CRI-O, after a restart).
    pub image_ref: String,
    /// The image's id, where the runtime fills it in.
    pub image_id: String,
}

/// An image as CRI's ImageStatus describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CriImage {
    pub id: String,
    /// `repo@sha256:<digest>`, one per repository it was pulled from.
    pub repo_digests: Vec<String>,
}

/// An image's digests as containerd's image store has them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageDigests {
    /// The image's target: a manifest, or an index.
    pub digest: Option<Digest>,
    /// For an index: this node's platform manifest.
    pub platform: Option<Digest>,
}

/// A container in containerd's own records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeContainer {
    pub namespace: String,
    pub id: String,
    pub image: String,
    /// `None` when its image record is gone (or it has no image).
    pub digests: Option<ImageDigests>,
    /// What its `io.cri-containerd.kind` label claims (`sandbox`,
    /// `container`), if it has one.
    pub claims_cri: Option<String>,
}

/// What containerd's API found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NativeLookup {
    Found(Box<NativeContainer>),
    /// No such container in any namespace.
    NotFound,
    /// The runtime has no such API (CRI-O): only CRI answers.
    Unavailable,
}

/// The runtime this agent identifies containers with.
pub struct NodeRuntime {
    pub kind: RuntimeKind,
    pub socket: PathBuf,
    pub cri: Cri,
    /// containerd's own API, on the same socket (containerd only).
    pub native: Option<Containerd>,
}

impl NodeRuntime {
    pub fn new(kind: RuntimeKind, socket: &Path) -> Self {
        Self {
            kind,
            socket: socket.to_path_buf(),
            cri: Cri::new(socket),
            native: (kind == RuntimeKind::Containerd).then(|| Containerd::new(socket)),
        }
    }

    /// `containerd at /run/containerd/containerd.sock`.
    pub fn describe(&self) -> String {
        format!("{} at {}", self.kind.as_str(), self.socket.display())
    }
}

/// The sockets to look for: the one named, or the runtime's defaults.
pub fn candidate_sockets(kind: RuntimeKind, socket: Option<&Path>) -> Vec<PathBuf> {
    match socket {
        Some(socket) => vec![socket.to_path_buf()],
        None => kind.default_sockets().iter().map(PathBuf::from).collect(),
    }
}

/// The runtime and its socket: the first candidate socket that exists
/// and, for `auto`, which runtime it is, asked through CRI's Version (else
/// told by the socket's path). `appear` is how long `auto` waits for a
/// socket when none is there yet (the runtime restarting): the chart
/// mounts both runtimes' folders, so a folder alone cannot tell which
/// runtime the node has. A runtime named (or a socket given) needs only
/// its folder: that runtime may start after the agent. `Err` says what was
/// looked for and what to set.
pub async fn detect(
    kind: RuntimeKind,
    socket: Option<&Path>,
    appear: Duration,
) -> Result<Detected, String> {
    let named = kind != RuntimeKind::Auto || socket.is_some();
    detect_in(kind, named, &candidate_sockets(kind, socket), appear).await
}

async fn detect_in(
    kind: RuntimeKind,
    named: bool,
    candidates: &[PathBuf],
    appear: Duration,
) -> Result<Detected, String> {
    let listed = candidates
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let deadline = tokio::time::Instant::now() + appear;
    let path = loop {
        if let Some(found) = candidates.iter().find(|p| p.exists()) {
            break found.clone();
        }
        let folders: Vec<&PathBuf> = candidates
            .iter()
            .filter(|p| p.parent().is_some_and(Path::is_dir))
            .collect();
        if folders.is_empty() {
            return Err(format!(
                "no container runtime socket, nor its folder, is there (looked for {listed}); \
                 mount the runtime's socket folder, or name the socket with --runtime-socket"
            ));
        }
        let unambiguous = named || folders.len() == 1;
        if unambiguous {
            break folders[0].clone();
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "no container runtime socket appeared within {appear:?} (looked for {listed}); \
                 the agent exits to be restarted and look again; if the node's runtime is up, \
                 name it with --runtime (containerd or cri-o) or --runtime-socket"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Asked once: it names the runtime for `auto`, and GetStatus shows it.
    let version = if path.exists() {
        let cri = Cri::new(&path);
        tokio::time::timeout(ASK_VERSION, cri.version())
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    let kind = match (kind, &version) {
        (RuntimeKind::Auto, Some(version)) => kind_named(&version.name).ok_or_else(|| {
            format!(
                "the runtime at {} is {} {}: imagegate identifies containers on containerd and \
                 CRI-O; name one with --runtime if this runtime is either",
                path.display(),
                version.name,
                version.version
            )
        })?,
        // Not answering yet (starting, restarting): the socket's path
        // tells, and identification asks again until it answers.
        (RuntimeKind::Auto, None) if path.to_string_lossy().contains("crio") => RuntimeKind::CriO,
        (RuntimeKind::Auto, None) => RuntimeKind::Containerd,
        (named, _) => named,
    };
    Ok(Detected {
        kind,
        socket: path,
        version,
    })
}

/// What [`detect`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Detected {
    pub kind: RuntimeKind,
    pub socket: PathBuf,
    /// What the runtime answered CRI's Version with, if it answered.
    pub version: Option<cri::Version>,
}

/// How long `auto` waits for CRI's Version before telling the runtime by
/// its socket's path.
const ASK_VERSION: Duration = Duration::from_secs(3);

/// The runtime CRI's Version names (`containerd`, `cri-o`).
fn kind_named(name: &str) -> Option<RuntimeKind> {
    let name = name.to_ascii_lowercase();
    if name.contains("cri-o") {
        Some(RuntimeKind::CriO)
    } else if name.contains("containerd") {
        Some(RuntimeKind::Containerd)
    } else {
        None
    }
}

/// The pod a sandbox belongs to, as CRI records it.
pub fn pod_of(metadata: Option<k8s_cri::v1::PodSandboxMetadata>) -> Option<PodRef> {
    metadata.map(|m| PodRef {
        namespace: m.namespace,
        name: m.name,
        uid: Some(m.uid).filter(|u| !u.is_empty()),
        container: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn detect_among(candidates: &[PathBuf], appear: Duration) -> Result<Detected, String> {
        detect_in(RuntimeKind::Auto, false, candidates, appear).await
    }

    #[test]
    fn the_runtime_is_told_by_the_name_cri_gives() {
        assert_eq!(kind_named("containerd"), Some(RuntimeKind::Containerd));
        assert_eq!(kind_named("cri-o"), Some(RuntimeKind::CriO));
        assert_eq!(kind_named("docker"), None);
    }

    #[tokio::test]
    async fn a_socket_not_there_yet_is_found_by_its_folder_and_named_by_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let crio = dir.path().join("crio/crio.sock");
        std::fs::create_dir_all(crio.parent().unwrap()).unwrap();
        let wait = Duration::from_millis(100);
        let found = detect(RuntimeKind::Auto, Some(&crio), wait).await.unwrap();
        assert_eq!(
            (found.kind, found.socket),
            (RuntimeKind::CriO, crio.clone())
        );
        // Both runtimes' folders (as the chart mounts them for auto), no
        // socket in either: no guess, a clear error after waiting.
        let containerd = dir.path().join("containerd/containerd.sock");
        std::fs::create_dir_all(containerd.parent().unwrap()).unwrap();
        let error = detect_among(&[containerd.clone(), crio.clone()], wait)
            .await
            .unwrap_err();
        assert!(
            error.contains("no container runtime socket appeared"),
            "{error}"
        );
        // A socket that appears while waiting is taken.
        let listener = {
            let containerd = containerd.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                std::os::unix::net::UnixListener::bind(&containerd).unwrap()
            })
        };
        let found = detect_among(&[containerd.clone(), crio.clone()], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(found.socket, containerd);
        drop(listener.await.unwrap());
        // Named: no guessing.
        let found = detect(RuntimeKind::Containerd, Some(&crio), wait)
            .await
            .unwrap();
        assert_eq!(found.kind, RuntimeKind::Containerd);
        // Nothing there at all: the error names what was looked for.
        let missing = dir.path().join("nowhere/containerd.sock");
        let error = detect(RuntimeKind::Auto, Some(&missing), wait)
            .await
            .unwrap_err();
        assert!(error.contains("nowhere/containerd.sock"), "{error}");
        assert!(error.contains("--runtime-socket"), "{error}");
    }

    #[test]
    fn auto_looks_for_both_runtimes_default_sockets() {
        let sockets = candidate_sockets(RuntimeKind::Auto, None);
        assert!(sockets.contains(&PathBuf::from("/run/containerd/containerd.sock")));
        assert!(sockets.contains(&PathBuf::from("/var/run/crio/crio.sock")));
    }
}
