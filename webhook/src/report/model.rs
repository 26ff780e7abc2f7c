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

/// What an admission decision (or a re-check of a running pod) found that
/// operators should see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DecisionKind {
    /// Denied: the object was not created.
    Denied,
    /// A rule in audit mode would have denied it: admitted, with a warning.
    AuditWouldDeny,
    /// Admitted past the policy because the request broke glass.
    BreakGlass,
    /// A running pod's image no longer meets its rule's signature or
    /// attestation requirement (found when the running pods are checked
    /// again): not adopted in enforce mode, adopted with a warning in
    /// audit mode.
    Unverified,
}

impl DecisionKind {
    /// The Event's `reason` and the report result's `rule`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Denied => "ImageDenied",
            Self::AuditWouldDeny => "AuditWouldDeny",
            Self::BreakGlass => "BreakGlass",
            Self::Unverified => "Unverified",
        }
    }

    pub fn from_reason(reason: &str) -> Option<Self> {
        [
            Self::Denied,
            Self::AuditWouldDeny,
            Self::BreakGlass,
            Self::Unverified,
        ]
        .into_iter()
        .find(|k| k.reason() == reason)
    }
}

/// The object an Event or a result is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject {
    pub api_version: String,
    pub kind: String,
    /// Empty for a cluster-scoped object (a Namespace).
    pub namespace: String,
    pub name: String,
    /// Empty when the request did not carry it (ImageReview).
    pub uid: String,
}

impl Subject {
    /// A pod's subject.
    pub fn pod(pod: &PodRef) -> Self {
        Self {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        }
    }

    /// What identifies the object across Events and results: its uid, or
    /// its kind, namespace and name when the request carried no uid.
    pub fn key(&self) -> String {
        if self.uid.is_empty() {
            format!("{}/{}/{}", self.kind, self.namespace, self.name)
        } else {
            self.uid.clone()
        }
    }

    /// The pod this subject is, if it is one.
    pub fn as_pod(&self) -> Option<PodRef> {
        (self.kind == "Pod" && self.api_version == "v1" && !self.namespace.is_empty()).then(|| {
            PodRef {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                uid: self.uid.clone(),
            }
        })
    }
}

/// One image's admission decision worth telling, as one replica made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub kind: DecisionKind,
    /// What the Event is on: the pod (admitted, or running), the denied
    /// pod's controller, the reviewed workload, or, for ImageReview (which
    /// names no object), the namespace.
    pub subject: Subject,
    /// The container's name, or the image when the request names none.
    pub container: String,
    pub image: String,
    /// The digest checked, when resolution got that far.
    pub digest: String,
    /// The policy rule that decided (or the webhook's check that did).
    pub rule: String,
    /// The policy's words: what to do about it.
    pub reason: String,
    /// Who signed the image, when a signature was verified.
    pub signers: Vec<String>,
    pub at_ms: i64,
    /// The replica that decided (the Event's reportingInstance).
    pub replica: String,
}
