//! What the agent concludes about a container: admitted, never admitted,
//! exempt or unknown. Pure functions of the container's identity, the
//! approvals and the configured exemptions.

use globset::{GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::{runtime::ContainerIdentity, store::Caveats};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictKind {
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

impl VerdictKind {
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub kind: VerdictKind,
    pub reason: String,
}

/// What is never checked.
#[derive(Clone, Debug)]
pub struct Exemptions {
    /// Pod sandbox (pause) containers.
    pub sandbox: bool,
    /// containerd namespaces whose containers are not checked.
    pub runtime_namespaces: Vec<String>,
    /// Kubernetes namespaces whose pods are not checked.
    pub pod_namespaces: Vec<String>,
    image_patterns: Vec<String>,
    images: GlobSet,
}

impl Exemptions {
    /// `images` are globs over the image name as containerd records it
    /// (`registry.k8s.io/pause:*`, `docker.io/library/*`).
    pub fn new(
        sandbox: bool,
        runtime_namespaces: Vec<String>,
        pod_namespaces: Vec<String>,
        images: Vec<String>,
    ) -> Result<Self, globset::Error> {
        let mut builder = GlobSetBuilder::new();
        for pattern in &images {
            // `*` stays inside one path segment, like the webhook's rules.
            builder.add(
                globset::GlobBuilder::new(pattern)
                    .literal_separator(true)
                    .build()?,
            );
        }
        Ok(Self {
            sandbox,
            runtime_namespaces,
            pod_namespaces,
            image_patterns: images,
            images: builder.build()?,
        })
    }

    pub fn none() -> Self {
        Self::new(false, Vec::new(), Vec::new(), Vec::new()).expect("no patterns")
    }

    fn reason(&self, c: &ContainerIdentity) -> Option<String> {
        if self.sandbox && c.sandbox {
            return Some("pod sandbox (pause) container".into());
        }
        if self.runtime_namespaces.contains(&c.namespace) {
            return Some(format!("containerd namespace {} is exempt", c.namespace));
        }
        if let Some(pod) = &c.pod
            && self.pod_namespaces.contains(&pod.namespace)
        {
            return Some(format!("Kubernetes namespace {} is exempt", pod.namespace));
        }
        let matches = self.images.matches(&c.image);
        if let Some(&first) = matches.first() {
            return Some(format!(
                "image {} matches exempt pattern {}",
                c.image, self.image_patterns[first]
            ));
        }
        None
    }
}

/// The verdict for an identified container now. `Pending` means "not
/// approved (yet)": the caller turns it into `NeverAdmitted` when the grace
/// window ends.
pub fn decide(
    container: &ContainerIdentity,
    approved: impl Fn(&str) -> Option<Caveats>,
    exemptions: &Exemptions,
) -> Verdict {
    if let Some(reason) = exemptions.reason(container) {
        return Verdict {
            kind: VerdictKind::Exempt,
            reason,
        };
    }
    let Some(digest) = &container.digest else {
        return Verdict {
            kind: VerdictKind::Unknown,
            reason: format!(
                "image {:?} has no record in containerd namespace {}, so its digest cannot \
                 be known",
                container.image, container.namespace
            ),
        };
    };
    if let Some(caveats) = approved(digest) {
        return Verdict {
            kind: VerdictKind::Admitted,
            reason: format!("digest {digest} was admitted{}", caveats_said(caveats)),
        };
    }
    if let Some(platform) = &container.platform_digest
        && let Some(caveats) = approved(platform)
    {
        return Verdict {
            kind: VerdictKind::Admitted,
            reason: format!(
                "platform manifest {platform} (of index {digest}) was admitted{}",
                caveats_said(caveats)
            ),
        };
    }
    let platform = container
        .platform_digest
        .as_ref()
        .map(|p| format!(" nor its platform manifest {p}"))
        .unwrap_or_default();
    Verdict {
        kind: VerdictKind::Pending,
        reason: format!(
            "image {} at digest {digest}{platform} was never admitted",
            container.image
        ),
    }
}

/// What a verdict adds about the approval it rests on.
fn caveats_said(caveats: Caveats) -> &'static str {
    if caveats.unverified {
        ", unverified: the webhook took the digest as written in the pod spec, without the \
         registry confirming it (resolution.verifyDigest: false)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::PodRef;

    fn container(digest: Option<&str>) -> ContainerIdentity {
        ContainerIdentity {
            namespace: "k8s.io".into(),
            id: "abc".into(),
            image: "registry.test/team/app:1".into(),
            digest: digest.map(String::from),
            platform_digest: None,
            pod: Some(PodRef {
                namespace: "shop".into(),
                name: "app-1".into(),
                uid: None,
                container: Some("app".into()),
            }),
            sandbox: false,
        }
    }

    fn approved(list: &'static [&'static str]) -> impl Fn(&str) -> Option<Caveats> {
        move |d| list.contains(&d).then(Caveats::default)
    }

    #[test]
    fn an_approved_digest_is_admitted() {
        let v = decide(
            &container(Some("sha256:a")),
            approved(&["sha256:a"]),
            &Exemptions::none(),
        );
        assert_eq!(v.kind, VerdictKind::Admitted);
    }

    #[test]
    fn an_unapproved_digest_is_pending_with_the_reason() {
        let v = decide(
            &container(Some("sha256:b")),
            approved(&["sha256:a"]),
            &Exemptions::none(),
        );
        assert_eq!(v.kind, VerdictKind::Pending);
        assert!(
            v.reason.contains("sha256:b") && v.reason.contains("never admitted"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn an_index_is_admitted_by_its_platform_manifest() {
        let mut c = container(Some("sha256:index"));
        c.platform_digest = Some("sha256:amd64".into());
        let v = decide(&c, approved(&["sha256:amd64"]), &Exemptions::none());
        assert_eq!(v.kind, VerdictKind::Admitted);
        let v = decide(&c, approved(&[]), &Exemptions::none());
        assert!(v.reason.contains("sha256:amd64"), "{}", v.reason);
    }

    #[test]
    fn an_unverified_approval_is_said() {
        let v = decide(
            &container(Some("sha256:a")),
            |d| (d == "sha256:a").then_some(Caveats { unverified: true }),
            &Exemptions::none(),
        );
        assert_eq!(v.kind, VerdictKind::Admitted);
        assert!(v.reason.contains("unverified"), "{}", v.reason);
    }

    #[test]
    fn no_digest_is_unknown_never_passed() {
        let v = decide(&container(None), approved(&[]), &Exemptions::none());
        assert_eq!(v.kind, VerdictKind::Unknown);
    }

    #[test]
    fn exemptions_by_sandbox_namespace_and_image() {
        let mut c = container(Some("sha256:b"));
        c.sandbox = true;
        let ex = Exemptions::new(true, vec![], vec![], vec![]).unwrap();
        assert_eq!(decide(&c, approved(&[]), &ex).kind, VerdictKind::Exempt);
        c.sandbox = false;
        assert_eq!(decide(&c, approved(&[]), &ex).kind, VerdictKind::Pending);

        let ex = Exemptions::new(false, vec!["k8s.io".into()], vec![], vec![]).unwrap();
        assert_eq!(decide(&c, approved(&[]), &ex).kind, VerdictKind::Exempt);
        let ex = Exemptions::new(false, vec![], vec!["shop".into()], vec![]).unwrap();
        assert_eq!(decide(&c, approved(&[]), &ex).kind, VerdictKind::Exempt);

        let ex =
            Exemptions::new(false, vec![], vec![], vec!["registry.test/team/*".into()]).unwrap();
        assert_eq!(decide(&c, approved(&[]), &ex).kind, VerdictKind::Exempt);
        // `*` does not cross a `/`.
        let ex = Exemptions::new(false, vec![], vec![], vec!["registry.test/*".into()]).unwrap();
        assert_eq!(decide(&c, approved(&[]), &ex).kind, VerdictKind::Pending);
    }
}
