//! The agent's domain: what it knows about containers and approvals, and
//! what it concludes. Plain data; the adapters (containerd, the store, the
//! kernel maps, the gRPC API) convert to and from these types and depend on
//! this module, not on each other.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Audit or enforce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Flag violations only.
    Audit,
    /// Flag violations, kill their processes and stop their execs.
    Enforce,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerVerdict {
    /// Its image digest (index or platform manifest) is among the approvals.
    Admitted,
    /// Its digest is not approved, and the grace window has passed: a
    /// violation.
    NeverAdmitted,
    /// Configured not to be checked.
    Exempt,
    /// The agent could not tell which image it runs.
    Unknown,
    /// Not approved yet, inside the grace window.
    Pending,
}

impl ContainerVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admitted => "admitted",
            Self::NeverAdmitted => "never-admitted",
            Self::Exempt => "exempt",
            Self::Unknown => "unknown",
            Self::Pending => "pending",
        }
    }
}

/// A container as containerd describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerIdentity {
    /// Where the runtime keeps it: a containerd namespace (`k8s.io` for
    /// CRI), or `cri-o`.
    pub namespace: String,
    pub id: String,
    /// The image name the container was created from.
    pub image: String,
    /// The image's target digest (a manifest, or an index for a
    /// multi-platform image); `None` if the image record is gone.
    pub digest: Option<Digest>,
    /// When `digest` is an index: the digest of this node's platform
    /// manifest in it.
    pub platform_digest: Option<Digest>,
    /// The image's other registry digests: one per other repository it was
    /// pulled from (the same image, so an approval of any admits it).
    pub other_digests: Vec<Digest>,
    /// Why there is no digest, when there is none (said in the verdict).
    pub no_digest_because: Option<String>,
    /// Kubernetes pod, for containers CRI created (as CRI records it, not
    /// as labels claim).
    pub pod: Option<PodRef>,
    /// A pod sandbox (pause) container that CRI created.
    pub sandbox: bool,
    /// What the container's labels claim that CRI did not confirm in time
    /// (`io.cri-containerd.kind=sandbox` with no such sandbox in CRI):
    /// said in its verdict, never trusted.
    pub unconfirmed_claim: Option<String>,
}

/// The Kubernetes names CRI puts on a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub container: Option<String>,
}

/// A container's identity keyed for maps and the store: `namespace/id`.
pub fn container_key(namespace: &str, id: &str) -> String {
    format!("{namespace}/{id}")
}

/// One approved digest, with where the approval came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub digest: Digest,
    /// The reference admission approved, e.g. `registry.example/app:1.2`.
    #[serde(default)]
    pub reference: Option<String>,
    /// The Kubernetes namespace of the admitted object.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Who sent it: a webhook's identity, or `file:PATH`.
    #[serde(default)]
    pub source: String,
    /// When the agent stored it.
    #[serde(default)]
    pub received_at_ms: u64,
    /// The policy rule that allowed it (from a webhook).
    #[serde(default)]
    pub rule: Option<String>,
    /// When admission approved it (from a webhook; 0 if unknown).
    #[serde(default)]
    pub admitted_at_ms: u64,
    #[serde(default)]
    pub origin: Origin,
    /// The webhook took the digest as written, unconfirmed by the registry.
    #[serde(default)]
    pub unverified: bool,
    /// Admitted by breaking glass, not by a rule.
    #[serde(default)]
    pub break_glass: bool,
    /// After this, the approval admits no new container.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// The last time a sender pushed it (0: when received): approvals no
    /// sender pushes again within its ledger's retention expire.
    #[serde(default)]
    pub refreshed_at_ms: u64,
    /// Who signed the image, as the webhook verified it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<Signer>,
}

/// A verified signer of an admitted image (from the webhook).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signer {
    /// The policy requirement it satisfied.
    pub requirement: String,
    /// A key (`key "name" (sha256:…)`) or a certificate identity.
    pub identity: String,
    /// How the signature was attached.
    pub format: String,
}

impl Approval {
    /// When a sender last pushed it.
    pub fn last_pushed_ms(&self) -> u64 {
        self.refreshed_at_ms.max(self.received_at_ms)
    }
}

/// What sets an approval apart, for verdicts to say: kept in memory only
/// for the few approvals that have any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caveats {
    /// The digest was not confirmed by the registry.
    #[serde(default)]
    pub unverified: bool,
    /// Admitted by breaking glass.
    #[serde(default)]
    pub break_glass: bool,
    /// After this (milliseconds since the Unix epoch), no new container.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

impl Caveats {
    pub fn of(approval: &Approval) -> Self {
        Self {
            unverified: approval.unverified,
            break_glass: approval.break_glass,
            expires_at_ms: approval.expires_at_ms,
        }
    }

    pub fn any(&self) -> bool {
        *self != Self::default()
    }
}

/// How an approval came about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Not said (older senders, approvals files).
    #[default]
    Unspecified,
    /// A review the apiserver sent.
    Admission,
    /// A pod that already ran when a webhook rebuilt the admitted set from
    /// the cluster.
    Adopted,
}

/// A container the agent has seen, with its latest verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// `containerd namespace/container id`, or `cgroup:PATH` when the
    /// container could not be identified.
    pub key: String,
    pub runtime_namespace: Option<String>,
    pub id: Option<String>,
    pub image: Option<String>,
    pub digest: Option<Digest>,
    pub platform_digest: Option<Digest>,
    pub pod: Option<PodRef>,
    pub cgroup: String,
    pub verdict: ContainerVerdict,
    pub reason: String,
    pub first_seen_ms: u64,
    pub decided_at_ms: u64,
    /// When the agent found the container gone (its cgroup removed).
    #[serde(default)]
    pub gone_at_ms: Option<u64>,
}

/// A container that ran without approval (or could not be identified).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub seq: u64,
    pub at_ms: u64,
    pub container: String,
    pub pod: Option<PodRef>,
    pub image: Option<String>,
    pub digest: Option<Digest>,
    /// `never-admitted`, or `unknown` for a container that could not be
    /// identified (flagged, never passed silently).
    pub verdict: ContainerVerdict,
    pub reason: String,
    /// Enforce mode acted on it (processes killed, execs stopped).
    pub enforced: bool,
}

/// What the kernel does with a cgroup's execs (the probe's per-cgroup
/// action map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A host cgroup, or an admitted or exempt container: execs pass
    /// without a report.
    Ignore,
    /// Reported to the agent.
    Watch,
    /// Refused in the kernel (enforce mode, a violation).
    Kill,
}

/// When enforce mode may kill, as the store keeps it (see `settle`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleRecord {
    /// The agent's first start on this node (with this state folder).
    pub first_start_ms: u64,
    pub settled: Option<Settled>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    pub at_ms: u64,
    /// Why, in words: which webhook's cluster set, or the window.
    pub by: String,
}
