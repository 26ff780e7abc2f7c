//! What the agent concludes about a container: admitted, never admitted,
//! exempt or unknown. Pure functions of the container's identity, the
//! approvals and the configured exemptions.

use crate::{
    digest::Digest,
    model::{Caveats, ContainerIdentity, ContainerVerdict},
};

/// A verdict and why, in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub kind: ContainerVerdict,
    pub reason: String,
}

/// What is never checked. Only what the agent can verify: labels and
/// image names are claims anyone with containerd's socket can make (see
/// `runtime`), so a sandbox is one CRI created, a pod namespace is that of
/// a sandbox CRI created, and an image is exempt by digest only.
#[derive(Clone, Debug)]
pub struct Exemptions {
    /// Pod sandbox (pause) containers CRI created.
    pub sandbox: bool,
    /// containerd namespaces whose containers are not checked.
    pub runtime_namespaces: Vec<String>,
    /// Kubernetes namespaces whose pods (CRI's record) are not checked.
    pub pod_namespaces: Vec<String>,
    /// Images exempt by digest (`name@sha256:...`, the name for humans).
    images: Vec<(String, Digest)>,
}

/// An `--exempt-image` that does not name a digest.
#[derive(Debug, thiserror::Error)]
#[error(
    "--exempt-image {0:?}: give the image by digest (name@sha256:<digest>); a name or tag is a \
     claim anyone with containerd's socket can make by re-tagging any image"
)]
pub struct NoDigest(String);

impl Exemptions {
    /// `images` are `name@digest`: matched by digest, the index's or the
    /// node's platform manifest's.
    pub fn new(
        sandbox: bool,
        runtime_namespaces: Vec<String>,
        pod_namespaces: Vec<String>,
        images: Vec<String>,
    ) -> Result<Self, NoDigest> {
        let images = images
            .into_iter()
            .map(|written| {
                let digest = written
                    .rsplit_once('@')
                    .and_then(|(_, d)| Digest::parse(d).ok())
                    .ok_or_else(|| NoDigest(written.clone()))?;
                Ok((written, digest))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            sandbox,
            runtime_namespaces,
            pod_namespaces,
            images,
        })
    }

    pub fn none() -> Self {
        Self {
            sandbox: false,
            runtime_namespaces: Vec::new(),
            pod_namespaces: Vec::new(),
            images: Vec::new(),
        }
    }

    fn reason(&self, c: &ContainerIdentity) -> Option<String> {
        if self.sandbox && c.sandbox {
            return Some("pod sandbox (pause) container, created by CRI".into());
        }
        if self.runtime_namespaces.contains(&c.namespace) {
            return Some(format!("containerd namespace {} is exempt", c.namespace));
        }
        if let Some(pod) = &c.pod
            && self.pod_namespaces.contains(&pod.namespace)
        {
            return Some(format!(
                "Kubernetes namespace {} is exempt (the pod sandbox CRI created it in)",
                pod.namespace
            ));
        }
        let digests = [c.digest.as_ref(), c.platform_digest.as_ref()];
        self.images
            .iter()
            .find(|(_, d)| digests.contains(&Some(d)))
            .map(|(written, _)| format!("image digest exempt ({written})"))
    }
}

/// The verdict for an identified container now. `Pending` means "not
/// approved (yet)": the caller turns it into `NeverAdmitted` when the grace
/// window ends.
pub fn decide(
    container: &ContainerIdentity,
    approved: impl Fn(&str) -> Option<Caveats>,
    exemptions: &Exemptions,
) -> Judgement {
    if let Some(reason) = exemptions.reason(container) {
        return Judgement {
            kind: ContainerVerdict::Exempt,
            reason,
        };
    }
    let Some(digest) = &container.digest else {
        let reason = if let Some(because) = &container.no_digest_because {
            because.clone()
        } else if container.image.is_empty() {
            "the container was started without an image (from a root filesystem): there is no \
             digest to judge"
                .to_string()
        } else {
            format!(
                "image {:?} has no record in containerd namespace {}, so its digest cannot be \
                 known",
                container.image, container.namespace
            )
        };
        return Judgement {
            kind: ContainerVerdict::Unknown,
            reason,
        };
    };
    if let Some(caveats) = approved(digest.as_str()) {
        return Judgement {
            kind: ContainerVerdict::Admitted,
            reason: format!("digest {digest} was admitted{}", caveats_said(caveats)),
        };
    }
    if let Some(platform) = &container.platform_digest
        && let Some(caveats) = approved(platform.as_str())
    {
        return Judgement {
            kind: ContainerVerdict::Admitted,
            reason: format!(
                "platform manifest {platform} (of index {digest}) was admitted{}",
                caveats_said(caveats)
            ),
        };
    }
    // The same image pulled from another repository: another manifest
    // digest for the same content.
    for other in &container.other_digests {
        if let Some(caveats) = approved(other.as_str()) {
            return Judgement {
                kind: ContainerVerdict::Admitted,
                reason: format!(
                    "digest {other} (the same image, as pulled from another repository) was \
                     admitted{}",
                    caveats_said(caveats)
                ),
            };
        }
    }
    let platform = container
        .platform_digest
        .as_ref()
        .map(|p| format!(" nor its platform manifest {p}"))
        .unwrap_or_default();
    let claim = container
        .unconfirmed_claim
        .as_ref()
        .map(|c| format!("; {c}"))
        .unwrap_or_default();
    Judgement {
        kind: ContainerVerdict::Pending,
        reason: format!(
            "image {} at digest {digest}{platform} was never admitted{claim}",
            container.image
        ),
    }
}

/// What a verdict adds about the approval it rests on.
fn caveats_said(caveats: Caveats) -> String {
    let mut out = String::new();
    if caveats.break_glass {
        out.push_str(" by breaking glass (not by a policy rule)");
    }
    if caveats.unverified {
        out.push_str(
            ", unverified: the webhook took the digest as written in the pod spec, without the \
             registry confirming it",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PodRef;

    /// A valid digest named by a short text, for readable tests.
    fn dg(name: &str) -> Digest {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        Digest::parse(&format!("sha256:{hex:0<64}")).expect("a digest")
    }

    fn container(digest: Option<Digest>) -> ContainerIdentity {
        ContainerIdentity {
            namespace: "k8s.io".into(),
            id: "abc".into(),
            image: "registry.test/team/app:1".into(),
            digest,
            platform_digest: None,
            other_digests: Vec::new(),
            no_digest_because: None,
            pod: Some(PodRef {
                namespace: "shop".into(),
                name: "app-1".into(),
                uid: None,
                container: Some("app".into()),
            }),
            sandbox: false,
            unconfirmed_claim: None,
        }
    }

    fn approved(names: &'static [&'static str]) -> impl Fn(&str) -> Option<Caveats> {
        move |d| {
            names
                .iter()
                .any(|n| dg(n).as_str() == d)
                .then(Caveats::default)
        }
    }

    #[test]
    fn an_approved_digest_is_admitted() {
        let v = decide(
            &container(Some(dg("a"))),
            approved(&["a"]),
            &Exemptions::none(),
        );
        assert_eq!(v.kind, ContainerVerdict::Admitted);
    }

    #[test]
    fn an_unapproved_digest_is_pending_with_the_reason() {
        let v = decide(
            &container(Some(dg("b"))),
            approved(&["a"]),
            &Exemptions::none(),
        );
        assert_eq!(v.kind, ContainerVerdict::Pending);
        assert!(
            v.reason.contains(dg("b").as_str()) && v.reason.contains("never admitted"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn a_claim_cri_did_not_confirm_exempts_nothing_and_is_said() {
        let mut claims = container(Some(dg("b")));
        claims.pod = None;
        claims.unconfirmed_claim =
            Some("it is labelled io.cri-containerd.kind=sandbox, but CRI has no record".into());
        let exempt_all = Exemptions::new(true, vec![], vec!["shop".into()], vec![]).unwrap();
        let v = decide(&claims, approved(&["a"]), &exempt_all);
        assert_eq!(v.kind, ContainerVerdict::Pending);
        assert!(
            v.reason
                .contains("never admitted; it is labelled io.cri-containerd.kind=sandbox"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn an_index_is_admitted_by_its_platform_manifest() {
        let mut c = container(Some(dg("index")));
        c.platform_digest = Some(dg("amd64"));
        let v = decide(&c, approved(&["amd64"]), &Exemptions::none());
        assert_eq!(v.kind, ContainerVerdict::Admitted);
        let v = decide(&c, approved(&[]), &Exemptions::none());
        assert!(v.reason.contains(dg("amd64").as_str()), "{}", v.reason);
    }

    #[test]
    fn an_unverified_approval_is_said() {
        let v = decide(
            &container(Some(dg("a"))),
            |d| {
                (d == dg("a").as_str()).then_some(Caveats {
                    unverified: true,
                    break_glass: true,
                    expires_at_ms: None,
                })
            },
            &Exemptions::none(),
        );
        assert_eq!(v.kind, ContainerVerdict::Admitted);
        assert!(v.reason.contains("unverified"), "{}", v.reason);
        assert!(v.reason.contains("breaking glass"), "{}", v.reason);
    }

    #[test]
    fn no_digest_is_unknown_never_passed() {
        let v = decide(&container(None), approved(&[]), &Exemptions::none());
        assert_eq!(v.kind, ContainerVerdict::Unknown);
    }

    #[test]
    fn exemptions_by_sandbox_namespace_and_image() {
        let mut c = container(Some(dg("b")));
        c.sandbox = true;
        let ex = Exemptions::new(true, vec![], vec![], vec![]).unwrap();
        assert_eq!(
            decide(&c, approved(&[]), &ex).kind,
            ContainerVerdict::Exempt
        );
        c.sandbox = false;
        assert_eq!(
            decide(&c, approved(&[]), &ex).kind,
            ContainerVerdict::Pending
        );

        let ex = Exemptions::new(false, vec!["k8s.io".into()], vec![], vec![]).unwrap();
        assert_eq!(
            decide(&c, approved(&[]), &ex).kind,
            ContainerVerdict::Exempt
        );
        let ex = Exemptions::new(false, vec![], vec!["shop".into()], vec![]).unwrap();
        assert_eq!(
            decide(&c, approved(&[]), &ex).kind,
            ContainerVerdict::Exempt
        );

        // By digest only: a name is a claim.
        let d = |n: char| format!("sha256:{}", n.to_string().repeat(64));
        let mut c = container(Some(Digest::parse(&d('b')).unwrap()));
        let ex = Exemptions::new(false, vec![], vec![], vec![format!("pause@{}", d('b'))]).unwrap();
        assert_eq!(
            decide(&c, approved(&[]), &ex).kind,
            ContainerVerdict::Exempt
        );
        c.digest = Some(Digest::parse(&d('c')).unwrap());
        assert_eq!(
            decide(&c, approved(&[]), &ex).kind,
            ContainerVerdict::Pending
        );
        let err = Exemptions::new(
            false,
            vec![],
            vec![],
            vec!["registry.k8s.io/pause:*".into()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("by digest"), "{err}");
    }
}
