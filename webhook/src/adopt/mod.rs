//! Rebuilding the admitted set from the cluster.
//!
//! Workloads that ran before imagegate was installed (or while the webhook
//! was away, or before its ledger was lost: the chart keeps it in an
//! `emptyDir`) never met this webhook, so no agent holds their digests, and
//! enforce mode would kill them. At every start the webhook lists the pods
//! the apiserver holds, decides each pod's images exactly as admission
//! decides a Pod CREATE, and records, for every image the policy allows,
//! the digest the pod's container actually runs
//! (`status.containerStatuses[].imageID`, plus an index's platform
//! manifests), with origin `adopted`. Then it marks the ledger as holding
//! the cluster set, which tells agents they may stop settling.
//!
//! What the apiserver does not know (a `ctr run`, a static pod's bypass)
//! stays unapproved, and running pods the policy would deny now are not
//! adopted: agents flag them, so an operator sees them before switching to
//! enforce.
//!
//! Adopted images meet the rule's signature and attestation requirements,
//! as admitted ones do ([`signatures`]): a tag moved under a running pod to
//! an unsigned image is not adopted by a restart.
//!
//! - [`cluster`]: the apiserver's pod list (kube-rs), behind `PodSource`;
//! - [`signatures`]: the signature stage, on what the nodes run.
//!
//! Over 500 lines with its unit tests (the module itself is under 300).

pub mod cluster;
pub mod signatures;

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use serde_json::Value;
use tracing::{info, warn};

use imagegate_proto::digest::Digest;

use self::cluster::PodSource;
use imagegate_plumbing::clock::now_ms;

use crate::{
    ledger::{Approval, Ledger, Origin},
    policy::Policy,
    policy_store::PolicyStore,
    reference::Reference,
    report::{admission::DecisionQueue, decisions},
    resolve::Resolver,
    review::admission::pod_review,
};

/// Registry lookups for index children run this many at a time.
const LOOKUPS_AT_ONCE: usize = 8;
/// Between failed attempts to list the pods.
const RETRY: Duration = Duration::from_secs(10);

/// What one rebuild found.
#[derive(Debug, Default)]
pub struct Report {
    /// Running pods read.
    pub pods: usize,
    /// Approvals made: one per running (allowed) image digest.
    pub approvals: Vec<Approval>,
    /// `namespace/pod: image: reason` for images the policy denies now.
    pub denied: Vec<String>,
    /// `namespace/pod: image: reason` for images whose signatures or
    /// attestations do not meet their rule's requirements (enforce mode):
    /// not adopted.
    pub unsigned: Vec<String>,
    /// The same in audit mode: adopted, with the reason.
    pub audit_unsigned: Vec<String>,
    /// Both, for the Events and reports (`Unverified`).
    pub unverified: Vec<signatures::Unverified>,
    /// `namespace/pod: container: reason` for containers with no registry
    /// digest to record (not started yet, or an image id).
    pub without_digest: Vec<String>,
    /// Items that could not be read as pods.
    pub unreadable: Vec<String>,
}

/// Decides every running pod of `pods` against `policy` and makes the
/// approvals for what it allows. Index children are asked of the registry
/// when a resolver is given (a node may report either digest).
pub async fn adopt(policy: &Policy, resolver: Option<&Arc<Resolver>>, pods: &[Value]) -> Report {
    let mut report = Report::default();
    let mut candidates = Vec::new();
    let now = now_ms();
    for item in pods {
        let phase = item["status"]["phase"].as_str().unwrap_or("");
        if matches!(phase, "Succeeded" | "Failed") {
            continue;
        }
        let name = format!(
            "{}/{}",
            item["metadata"]["namespace"].as_str().unwrap_or(""),
            item["metadata"]["name"].as_str().unwrap_or("")
        );
        let review = match pod_review(item) {
            Ok(review) => review,
            Err(reason) => {
                report.unreadable.push(format!("{name}: {reason}"));
                continue;
            }
        };
        report.pods += 1;
        let running = running_images(item);
        let (decisions, _) = policy.decide_images(&review);
        for (image, decision) in review.images.iter().zip(decisions) {
            if !decision.verdict.allows() {
                report
                    .denied
                    .push(format!("{name}: {}: {}", image.image, decision.reason));
                continue;
            }
            let container = image.container.clone().unwrap_or_default();
            let Some(image_id) = running.get(container.as_str()) else {
                report.without_digest.push(format!(
                    "{name}: {container}: no imageID in the pod's status (not started yet)"
                ));
                continue;
            };
            let digest = match running_digest(image_id) {
                Ok(digest) => digest,
                Err(reason) => {
                    report
                        .without_digest
                        .push(format!("{name}: {container}: {reason}"));
                    continue;
                }
            };
            let approval = Approval {
                digest,
                children: Vec::new(),
                // What the node runs, as its kubelet reports it; the
                // registry is asked below when a resolver is at hand.
                verified: false,
                break_glass: false,
                expires_at_ms: None,
                reference: decision
                    .reference
                    .as_ref()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|_| image.image.clone()),
                namespace: review.subject.namespace.clone(),
                kind: Some("Pod".into()),
                name: review.name.clone(),
                user: None,
                rule: decision.rule.clone(),
                api: review.api,
                origin: Origin::Adopted,
                admitted_at_ms: now,
                generation: 0,
                // Filled in by the signature check, if the rule has
                // requirements.
                signers: Vec::new(),
            };
            candidates.push(signatures::Candidate {
                pod: name.clone(),
                object: review.object.clone(),
                container,
                approval,
                decision: Arc::unwrap_or_clone(decision),
            });
        }
    }
    let Some(resolver) = resolver else {
        // Without registry access admission checks no signature either.
        report.approvals = candidates.into_iter().map(|c| c.approval).collect();
        return report;
    };
    let mut approvals: Vec<Approval> = candidates.iter().map(|c| c.approval.clone()).collect();
    add_children(resolver, &mut approvals).await;
    for (c, approval) in candidates.iter_mut().zip(approvals) {
        c.approval = approval;
    }
    let checked = signatures::check(policy, resolver, candidates).await;
    report.approvals = checked.adopted;
    report.unsigned = checked.unsigned;
    report.audit_unsigned = checked.audit_unsigned;
    report.unverified = checked.unverified;
    report
}

/// Container name -> imageID, for every container kind that reports one.
fn running_images(pod: &Value) -> HashMap<&str, &str> {
    let mut out = HashMap::new();
    for field in [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ] {
        for status in pod["status"][field].as_array().into_iter().flatten() {
            if let (Some(name), Some(id)) = (status["name"].as_str(), status["imageID"].as_str())
                && !id.is_empty()
            {
                out.insert(name, id);
            }
        }
    }
    out
}

/// The registry digest in an imageID (`repo@sha256:...`, as CRI reports a
/// pulled image; `docker-pullable://` from dockershim days).
fn running_digest(image_id: &str) -> Result<Digest, String> {
    let id = image_id
        .strip_prefix("docker-pullable://")
        .unwrap_or(image_id);
    if !id.contains('@') {
        return Err(format!(
            "imageID {id:?} is a local image id, not a registry digest (the image was loaded \
             onto the node, not pulled): nothing to adopt; agents judge it by its digest"
        ));
    }
    Reference::parse(id)
        .map_err(|e| format!("imageID {id:?} is not a reference: {e}"))?
        .digest
        .ok_or_else(|| format!("imageID {id:?} names no digest"))
}

/// Adds each index's platform manifests, asked of the registry by digest
/// (best effort: what cannot be asked keeps the digest the node reports).
async fn add_children(resolver: &Arc<Resolver>, approvals: &mut [Approval]) {
    // Each lookup owns what it needs: the futures run on as a stream.
    let lookups: Vec<_> = approvals
        .iter()
        .map(|approval| {
            let by_digest = Reference::parse(&approval.reference).ok().map(|mut r| {
                r.digest = Some(approval.digest.clone());
                r.tag = None;
                r
            });
            let resolver = resolver.clone();
            async move {
                match by_digest {
                    Some(reference) => resolver.resolve(&reference, true).await.ok(),
                    None => None,
                }
            }
        })
        .collect();
    let found: Vec<_> = stream::iter(lookups)
        .buffered(LOOKUPS_AT_ONCE)
        .collect()
        .await;
    for (approval, resolved) in approvals.iter_mut().zip(found) {
        if let Some(resolved) = resolved.filter(|r| r.digest == approval.digest) {
            approval.children = resolved.children;
            approval.verified = resolved.verified;
        }
    }
}

/// Lists the cluster's pods until it works, adopts what the policy in force
/// allows, records it and marks the ledger as holding the cluster set.
/// Rebuilds the admitted set now (retrying until it works), then again
/// every `every` if given. Running again keeps the digests of long-running
/// pods fresh: no admission refreshes them, and a ledger (and every agent
/// told its retention) expires a record not admitted or adopted within its
/// retention.
pub async fn run(
    source: impl PodSource,
    policy: Arc<PolicyStore>,
    resolver: Option<Arc<Resolver>>,
    ledger: Arc<Ledger>,
    every: Option<Duration>,
    tell: Option<(DecisionQueue, String)>,
) {
    loop {
        match once(&source, &policy, resolver.as_ref(), &ledger, tell.as_ref()).await {
            Ok(()) => match every {
                Some(every) => tokio::time::sleep(every).await,
                None => return,
            },
            Err(e) => {
                warn!(error = %e, retry_in = ?RETRY, "could not rebuild the admitted set from the cluster");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

async fn once(
    source: &impl PodSource,
    policy: &PolicyStore,
    resolver: Option<&Arc<Resolver>>,
    ledger: &Arc<Ledger>,
    tell: Option<&(DecisionQueue, String)>,
) -> Result<(), String> {
    let Some(policy) = policy.current() else {
        return Err("no valid policy is loaded yet".into());
    };
    let pods = source.list().await.map_err(|e| e.to_string())?;
    let report = adopt(&policy, resolver, &pods).await;
    for denied in &report.denied {
        warn!("running pod not adopted, the policy denies it now (agents flag it): {denied}");
    }
    for unsigned in &report.unsigned {
        warn!(
            "running pod not adopted, its image does not meet its rule's signature requirements \
             (agents flag it, and in enforce mode stop it once settled): {unsigned}"
        );
    }
    for unsigned in &report.audit_unsigned {
        warn!(
            "running pod adopted in audit mode, though its image does not meet its rule's \
             signature requirements: {unsigned}"
        );
    }
    if let Some((queue, replica)) = tell {
        let now = imagegate_plumbing::clock::now_ms_i64();
        queue.tell(
            report
                .unverified
                .iter()
                .filter_map(|u| decisions::of_unverified(u, replica, now))
                .collect(),
        );
    }
    for skipped in report.without_digest.iter().chain(&report.unreadable) {
        info!("running container not adopted: {skipped}");
    }
    let ledger = ledger.clone();
    let approvals = report.approvals;
    let adopted = approvals.len();
    let generation = tokio::task::spawn_blocking(move || {
        if !approvals.is_empty() {
            ledger.record(&approvals)?;
        }
        ledger.mark_cluster_set()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    info!(
        pods = report.pods,
        adopted,
        denied = report.denied.len(),
        unsigned = report.unsigned.len(),
        without_digest = report.without_digest.len(),
        generation,
        "rebuilt the admitted set from the cluster; agents settle once they hold it"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn policy() -> Policy {
        Policy::from_yaml(
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: shop\n    registries: [registry.shop]\n    denyLatest: true\n",
        )
        .unwrap()
    }

    fn pod(ns: &str, name: &str, phase: &str, containers: &[(&str, &str, Option<&str>)]) -> Value {
        json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"app": name}},
            "spec": {"containers": containers.iter().map(|(n, image, _)| json!({"name": n, "image": image})).collect::<Vec<_>>()},
            "status": {
                "phase": phase,
                "containerStatuses": containers.iter().filter_map(|(n, _, id)| id.map(|id| json!({"name": n, "imageID": id}))).collect::<Vec<_>>()
            }
        })
    }

    #[tokio::test]
    async fn adopts_what_runs_and_the_policy_allows() {
        let pods = [
            pod(
                "shop",
                "app",
                "Running",
                &[
                    (
                        "web",
                        "registry.shop/web:1",
                        Some(&format!("registry.shop/web@{D1}")),
                    ),
                    // Not started yet: nothing to record.
                    ("side", "registry.shop/side:1", None),
                ],
            ),
            // Denied now (latest): not adopted, reported.
            pod(
                "shop",
                "old",
                "Running",
                &[(
                    "web",
                    "registry.shop/web:latest",
                    Some(&format!("registry.shop/web@{D2}")),
                )],
            ),
            // Another registry: the default verdict denies.
            pod(
                "shop",
                "evil",
                "Running",
                &[(
                    "m",
                    "evil.example/miner:1",
                    Some(&format!("evil.example/miner@{D2}")),
                )],
            ),
            // Done: not running, not adopted.
            pod(
                "shop",
                "job",
                "Succeeded",
                &[(
                    "j",
                    "registry.shop/job:1",
                    Some(&format!("registry.shop/job@{D2}")),
                )],
            ),
            // Loaded onto the node: an image id, not a registry digest.
            pod(
                "shop",
                "loaded",
                "Running",
                &[("l", "registry.shop/l:1", Some(D2))],
            ),
        ];
        let report = adopt(&policy(), None, &pods).await;
        assert_eq!(report.pods, 4);
        assert_eq!(report.approvals.len(), 1, "{report:?}");
        let a = &report.approvals[0];
        assert_eq!(a.digest.as_str(), D1);
        assert!(a.children.is_empty(), "no resolver: the digest alone");
        assert_eq!(a.reference, "registry.shop/web:1");
        assert_eq!(a.rule, "shop");
        assert_eq!(a.origin, Origin::Adopted);
        assert_eq!(
            (a.namespace.as_str(), a.name.as_deref()),
            ("shop", Some("app"))
        );
        assert_eq!(report.denied.len(), 2, "{:?}", report.denied);
        assert!(report.denied[0].contains("latest"), "{:?}", report.denied);
        assert_eq!(
            report.without_digest.len(),
            2,
            "{:?}",
            report.without_digest
        );
        assert!(
            report
                .without_digest
                .iter()
                .any(|w| w.contains("local image id")),
            "{:?}",
            report.without_digest
        );
    }

    #[tokio::test]
    async fn exempt_namespaces_are_adopted_as_exempt() {
        let policy = Policy::from_yaml_exempting(
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules: []\n",
            &["imagegate".into()],
        )
        .unwrap();
        let pods = [pod(
            "imagegate",
            "webhook",
            "Running",
            &[(
                "w",
                "registry.shop/imagegate/webhook:0.1.0",
                Some(&format!("registry.shop/imagegate/webhook@{D1}")),
            )],
        )];
        let report = adopt(&policy, None, &pods).await;
        assert_eq!(report.approvals.len(), 1);
        assert_eq!(report.approvals[0].rule, "exempt-namespace");
    }

    #[test]
    fn image_ids_as_runtimes_report_them() {
        assert_eq!(
            running_digest(&format!("docker.io/library/nginx@{D1}"))
                .unwrap()
                .as_str(),
            D1
        );
        assert_eq!(
            running_digest(&format!("docker-pullable://nginx@{D1}"))
                .unwrap()
                .as_str(),
            D1
        );
        assert!(running_digest(D1).unwrap_err().contains("local image id"));
        assert!(running_digest("nginx@sha256:abc").is_err());
    }

    struct Listed(Vec<Value>);

    impl PodSource for Listed {
        async fn list(&self) -> Result<Vec<Value>, cluster::ClusterError> {
            Ok(self.0.clone())
        }
    }

    #[tokio::test]
    async fn a_rebuild_records_and_marks_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(
            Ledger::open(&dir.path().join("l.redb"), Duration::from_secs(3600), 100).unwrap(),
        );
        let pods = vec![pod(
            "shop",
            "app",
            "Running",
            &[(
                "web",
                "registry.shop/web:1",
                Some(&format!("registry.shop/web@{D1}")),
            )],
        )];
        let store = PolicyStore::fixed(policy());
        run(Listed(pods), store, None, ledger.clone(), None, None).await;
        let all = ledger.all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].origin, Origin::Adopted);
        assert_eq!(ledger.cluster_set().unwrap(), Some(1));
    }

    /// A cluster whose second listing shows one more pod.
    struct Growing(std::sync::Mutex<Vec<Vec<Value>>>);

    impl PodSource for Growing {
        async fn list(&self) -> Result<Vec<Value>, cluster::ClusterError> {
            let mut lists = self.0.lock().unwrap();
            Ok(if lists.len() > 1 {
                lists.remove(0)
            } else {
                lists[0].clone()
            })
        }
    }

    #[tokio::test]
    async fn rebuilds_again_at_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(
            Ledger::open(&dir.path().join("l.redb"), Duration::from_secs(3600), 100).unwrap(),
        );
        let web = pod(
            "shop",
            "web",
            "Running",
            &[(
                "web",
                "registry.shop/web:1",
                Some(&format!("registry.shop/web@{D1}")),
            )],
        );
        let api = pod(
            "shop",
            "api",
            "Running",
            &[(
                "api",
                "registry.shop/api:1",
                Some(&format!("registry.shop/api@{D2}")),
            )],
        );
        let source = Growing(std::sync::Mutex::new(vec![
            vec![web.clone()],
            vec![web, api],
        ]));
        let task = tokio::spawn(run(
            source,
            PolicyStore::fixed(policy()),
            None,
            ledger.clone(),
            Some(Duration::from_millis(20)),
            None,
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ledger.all().unwrap().len() < 2 {
            assert!(std::time::Instant::now() < deadline, "never rebuilt again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!task.is_finished(), "keeps rebuilding");
        task.abort();
        let mut digests: Vec<String> = ledger
            .all()
            .unwrap()
            .iter()
            .map(|a| a.digest.to_string())
            .collect();
        digests.sort();
        assert_eq!(digests, [D1, D2]);
    }
}
