//! The report side's own view of a violation, converted from the agent's
//! wire type at the boundary ([`NodeViolation::from_wire`]).

use imagegate_proto::v1 as pb;

/// The pod a container belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What happened to the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Its digest was never admitted; flagged (audit mode, or settling).
    NeverAdmitted,
    /// Its digest was never admitted and enforce mode stopped it.
    Killed,
    /// The agent could not tell which image it runs.
    Unidentified,
}

impl Kind {
    /// The Event's `reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NeverAdmitted => "NeverAdmitted",
            Self::Killed => "Killed",
            Self::Unidentified => "ImageUnidentified",
        }
    }
}

/// One violation an agent filed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeViolation {
    pub node: String,
    /// The agent's sequence number (per agent).
    pub seq: u64,
    pub at_ms: i64,
    /// `None` for containers that are not a pod's (started past Kubernetes).
    pub pod: Option<PodRef>,
    /// The container's name in the pod, or the runtime's key.
    pub container: String,
    pub image: String,
    pub digest: String,
    pub kind: Kind,
    /// The agent's words.
    pub reason: String,
}

impl NodeViolation {
    pub fn from_wire(node: &str, v: pb::Violation) -> Self {
        let kind = match (v.verdict(), v.enforced) {
            (pb::Verdict::Unknown, _) => Kind::Unidentified,
            (_, true) => Kind::Killed,
            _ => Kind::NeverAdmitted,
        };
        let pod = v
            .pod
            .as_ref()
            .filter(|p| !p.name.is_empty() && !p.namespace.is_empty())
            .map(|p| PodRef {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                uid: p.uid.clone(),
            });
        let container = v
            .pod
            .as_ref()
            .map(|p| p.container.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| v.container.clone());
        Self {
            node: node.to_string(),
            seq: v.seq,
            at_ms: v.at_unix_ms,
            pod,
            container,
            image: v.image,
            digest: v.digest,
            kind,
            reason: v.reason,
        }
    }
}
