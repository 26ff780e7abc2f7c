//! Conversions between the wire types of `imagegate.v1` and the agent's
//! domain types, and the checks on what arrives: a bad field is an
//! `InvalidArgument` naming the field, never a panic or a silent skip.

use imagegate_proto::{
    platform::{Platform, node_architecture},
    v1 as pb,
};
use tonic::Status;

use imagegate_plumbing::clock::now_ms;

use crate::{
    digest::Digest,
    events::{AgentEvent, EventKind},
    feed::FeedCounts,
    model::{Approval, ContainerRecord, ContainerVerdict, Origin, PodRef, Signer, Violation},
    settle::Enforcement,
};

/// Pushed approvals, checked: those kept, and those refused with why.
#[derive(Debug, Default)]
pub struct Checked {
    pub approvals: Vec<Approval>,
    pub rejected: Vec<pb::Rejected>,
}

/// Checks and converts pushed approvals; `field` names the request field.
/// An approval's platform digests become approvals of their own, so a node
/// reporting either digest finds it. An approval with a bad field is
/// refused alone (whole, platform digests included), never the request:
/// one bad record must not block every record after it.
pub fn approvals_in(
    field: &str,
    approvals: Vec<pb::Approval>,
    source: &str,
) -> Result<Checked, Status> {
    approvals_in_for(field, approvals, source, node_architecture())
}

/// [`approvals_in`] for a node of architecture `arch` (GOARCH).
pub fn approvals_in_for(
    field: &str,
    approvals: Vec<pb::Approval>,
    source: &str,
    arch: &str,
) -> Result<Checked, Status> {
    if approvals.len() > imagegate_proto::MAX_APPROVALS_PER_CALL {
        return Err(Status::invalid_argument(format!(
            "{field}: at most {} approvals per call, got {}; send several calls",
            imagegate_proto::MAX_APPROVALS_PER_CALL,
            approvals.len()
        )));
    }
    let received_at_ms = now_ms();
    let mut out = Checked::default();
    for (i, approval) in approvals.into_iter().enumerate() {
        match approval_in(
            &format!("{field}[{i}]"),
            approval,
            source,
            received_at_ms,
            arch,
        ) {
            Ok(records) => out.approvals.extend(records),
            Err(reason) => out.rejected.push(pb::Rejected {
                index: i as u32,
                reason,
            }),
        }
    }
    Ok(out)
}

/// One approval, and its platform digests as approvals of their own.
fn approval_in(
    at: &str,
    approval: pb::Approval,
    source: &str,
    received_at_ms: u64,
    node_architecture: &str,
) -> Result<Vec<Approval>, String> {
    if approval.digest.is_empty() {
        return Err(format!("{at}.digest is required"));
    }
    let digest = Digest::parse(&approval.digest).map_err(|e| format!("{at}.digest: {e}"))?;
    let optional = |s: String| (!s.is_empty()).then_some(s);
    let origin = origin_in(&format!("{at}.origin"), approval.origin)?;
    let mut out = Vec::with_capacity(1 + approval.platform_digests.len());
    {
        let record = Approval {
            digest,
            reference: optional(approval.reference),
            namespace: optional(approval.namespace),
            source: source.to_string(),
            received_at_ms,
            rule: optional(approval.rule),
            admitted_at_ms: u64::try_from(approval.admitted_at_unix_ms).unwrap_or(0),
            origin,
            unverified: approval.digest_unverified,
            break_glass: approval.break_glass,
            expires_at_ms: u64::try_from(approval.expires_at_unix_ms)
                .ok()
                .filter(|at| *at > 0),
            refreshed_at_ms: received_at_ms,
            signers: approval
                .signers
                .into_iter()
                .map(|s| Signer {
                    requirement: s.requirement,
                    identity: s.identity,
                    format: s.format,
                })
                .collect(),
        };
        for (j, platform) in approval.platform_digests.iter().enumerate() {
            let platform =
                Digest::parse(platform).map_err(|e| format!("{at}.platform_digests[{j}]: {e}"))?;
            out.push(Approval {
                digest: platform,
                ..record.clone()
            });
        }
        // Only the manifests this node can run: its runtime never reports
        // another platform's, and holding them all would multiply memory
        // by the index's width.
        for (j, manifest) in approval.platform_manifests.iter().enumerate() {
            let digest = Digest::parse(&manifest.digest)
                .map_err(|e| format!("{at}.platform_manifests[{j}].digest: {e}"))?;
            let platform = Platform {
                os: manifest.os.clone(),
                architecture: manifest.architecture.clone(),
                variant: manifest.variant.clone(),
            };
            if platform.runs_on(node_architecture) {
                out.push(Approval {
                    digest,
                    ..record.clone()
                });
            }
        }
        out.push(record);
    }
    Ok(out)
}

fn origin_in(field: &str, value: i32) -> Result<Origin, String> {
    match pb::Origin::try_from(value) {
        Ok(pb::Origin::Unspecified) => Ok(Origin::Unspecified),
        Ok(pb::Origin::Admission) => Ok(Origin::Admission),
        Ok(pb::Origin::Adopted) => Ok(Origin::Adopted),
        Err(_) => Err(format!("{field}: no origin numbered {value}")),
    }
}

pub fn origin_out(origin: Origin) -> pb::Origin {
    match origin {
        Origin::Unspecified => pb::Origin::Unspecified,
        Origin::Admission => pb::Origin::Admission,
        Origin::Adopted => pb::Origin::Adopted,
    }
}

pub fn approval_out(approval: &Approval) -> pb::Approval {
    pb::Approval {
        digest: approval.digest.to_string(),
        platform_digests: Vec::new(),
        platform_manifests: Vec::new(),
        reference: approval.reference.clone().unwrap_or_default(),
        namespace: approval.namespace.clone().unwrap_or_default(),
        rule: approval.rule.clone().unwrap_or_default(),
        admitted_at_unix_ms: approval.admitted_at_ms as i64,
        // Generations count in the sender's ledger; the agent keeps the
        // approval, not where it stood there.
        generation: 0,
        source: approval.source.clone(),
        origin: origin_out(approval.origin) as i32,
        digest_unverified: approval.unverified,
        break_glass: approval.break_glass,
        expires_at_unix_ms: approval.expires_at_ms.unwrap_or(0) as i64,
        signers: signers_out(&approval.signers),
    }
}

pub fn signers_out(signers: &[Signer]) -> Vec<pb::Signer> {
    signers
        .iter()
        .map(|s| pb::Signer {
            requirement: s.requirement.clone(),
            identity: s.identity.clone(),
            format: s.format.clone(),
        })
        .collect()
}

pub fn verdict_out(kind: ContainerVerdict) -> pb::Verdict {
    match kind {
        ContainerVerdict::Admitted => pb::Verdict::Admitted,
        ContainerVerdict::NeverAdmitted => pb::Verdict::NeverAdmitted,
        ContainerVerdict::Exempt => pb::Verdict::Exempt,
        ContainerVerdict::Unknown => pb::Verdict::Unknown,
        ContainerVerdict::Pending => pb::Verdict::Pending,
    }
}

/// A verdict filter: `None` for "any" (unspecified).
pub fn verdict_in(field: &str, value: i32) -> Result<Option<ContainerVerdict>, Status> {
    let verdict = pb::Verdict::try_from(value)
        .map_err(|_| Status::invalid_argument(format!("{field}: no verdict numbered {value}")))?;
    Ok(match verdict {
        pb::Verdict::Unspecified => None,
        pb::Verdict::Admitted => Some(ContainerVerdict::Admitted),
        pb::Verdict::NeverAdmitted => Some(ContainerVerdict::NeverAdmitted),
        pb::Verdict::Exempt => Some(ContainerVerdict::Exempt),
        pb::Verdict::Unknown => Some(ContainerVerdict::Unknown),
        pb::Verdict::Pending => Some(ContainerVerdict::Pending),
    })
}

fn pod_out(pod: &Option<PodRef>) -> Option<pb::Pod> {
    pod.as_ref().map(|p| pb::Pod {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone().unwrap_or_default(),
        container: p.container.clone().unwrap_or_default(),
    })
}

/// A container on the wire, with the signers of the approval that admitted
/// it (`signers`, looked up by the caller).
pub fn container_out(record: &ContainerRecord, signers: &[Signer]) -> pb::Container {
    pb::Container {
        signers: signers_out(signers),
        key: record.key.clone(),
        runtime_namespace: record.runtime_namespace.clone().unwrap_or_default(),
        id: record.id.clone().unwrap_or_default(),
        image: record.image.clone().unwrap_or_default(),
        digest: text(&record.digest),
        platform_digest: text(&record.platform_digest),
        pod: pod_out(&record.pod),
        cgroup: record.cgroup.clone(),
        verdict: verdict_out(record.verdict) as i32,
        reason: record.reason.clone(),
        first_seen_unix_ms: record.first_seen_ms as i64,
        decided_at_unix_ms: record.decided_at_ms as i64,
        gone_at_unix_ms: record.gone_at_ms.unwrap_or(0) as i64,
    }
}

/// A digest on the wire: empty when there is none.
fn text(digest: &Option<Digest>) -> String {
    digest.as_ref().map(Digest::to_string).unwrap_or_default()
}

pub fn violation_out(violation: &Violation) -> pb::Violation {
    pb::Violation {
        seq: violation.seq,
        at_unix_ms: violation.at_ms as i64,
        container: violation.container.clone(),
        pod: pod_out(&violation.pod),
        image: violation.image.clone().unwrap_or_default(),
        digest: text(&violation.digest),
        verdict: verdict_out(violation.verdict) as i32,
        reason: violation.reason.clone(),
        enforced: violation.enforced,
    }
}

pub fn event_kind_out(kind: EventKind) -> pb::event::Kind {
    match kind {
        EventKind::Verdict => pb::event::Kind::Verdict,
        EventKind::Violation => pb::event::Kind::Violation,
        EventKind::Exec => pb::event::Kind::Exec,
        EventKind::ExecKilled => pb::event::Kind::ExecKilled,
    }
}

pub fn event_out(event: &AgentEvent) -> pb::Event {
    pb::Event {
        kind: event_kind_out(event.kind) as i32,
        at_unix_ms: event.at_ms as i64,
        // Events go out as they happen; ListContainers adds the signers.
        container: Some(container_out(&event.container, &[])),
        pid: event.pid.unwrap_or(0),
        filename: event.filename.clone().unwrap_or_default(),
    }
}

/// The feeds as `GetStatus` shows them. `enforcing`: enforce mode, settled,
/// where a stop due while a stream is not open waits for it;
/// `stops_waited`: the containers whose stop did.
pub fn feeds_out(
    names: &[String],
    counts: FeedCounts,
    feed_wait: std::time::Duration,
    enforcing: bool,
    stops_waited: u64,
) -> pb::Feeds {
    pb::Feeds {
        names: names.to_vec(),
        replicas_found: counts.followed as u32,
        streams_open: counts.open as u32,
        last_resolved_unix_ms: counts.resolved_ms as i64,
        feed_wait_ms: feed_wait.as_millis() as u64,
        holding_stops: enforcing && !counts.all_open(),
        stops_waited,
    }
}

pub fn enforcement_out(enforcement: &Enforcement, enforce_unknown: bool) -> pb::Enforcement {
    use pb::enforcement::State;
    let unknown = if enforce_unknown {
        "; containers containerd knows but whose image it cannot name are stopped too \
         (--enforce-unknown)"
    } else {
        "; containers whose image cannot be named are flagged, not stopped (--enforce-unknown \
         is off)"
    };
    let mut out = match enforcement {
        Enforcement::Audit => pb::Enforcement {
            state: State::Audit as i32,
            reason: "audit mode: violations are flagged, never stopped".into(),
            ..Default::default()
        },
        Enforcement::Settling { deadline_ms } => pb::Enforcement {
            state: State::Settling as i32,
            reason: format!(
                "enforce mode, settling: violations are flagged but not stopped until the \
                 cluster's admitted set arrives from a webhook, or until {}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(*deadline_ms)
                )
            ),
            settle_deadline_unix_ms: *deadline_ms as i64,
            since_unix_ms: 0,
            ..Default::default()
        },
        Enforcement::Enforcing { since_ms, by } => pb::Enforcement {
            state: State::Enforcing as i32,
            reason: format!("enforce mode: violations are stopped ({by})"),
            settle_deadline_unix_ms: 0,
            since_unix_ms: *since_ms as i64,
            ..Default::default()
        },
    };
    if *enforcement != Enforcement::Audit {
        out.reason.push_str(unknown);
        out.enforce_unknown = enforce_unknown;
    }
    out
}

/// Page size: 0 means the default; more than the maximum is an error.
pub fn page_size(value: u32) -> Result<usize, Status> {
    const DEFAULT: u32 = 100;
    const MAX: u32 = 1000;
    match value {
        0 => Ok(DEFAULT as usize),
        v if v > MAX => Err(Status::invalid_argument(format!(
            "page_size: at most {MAX}, got {v}"
        ))),
        v => Ok(v as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn stops_are_held_only_when_enforcing_with_a_stream_not_open() {
        let names = ["imagegate-webhook-feed.imagegate.svc".to_string()];
        let counts = |followed, open| FeedCounts {
            followed,
            open,
            resolved_ms: 1,
        };
        let wait = std::time::Duration::from_secs(30);
        let out = feeds_out(&names, counts(2, 1), wait, true, 4);
        assert!(out.holding_stops, "one replica of two has no stream");
        assert_eq!(
            (
                out.replicas_found,
                out.streams_open,
                out.stops_waited,
                out.feed_wait_ms
            ),
            (2, 1, 4, 30_000)
        );
        assert_eq!(out.names, names);
        assert!(
            feeds_out(&names, counts(0, 0), wait, true, 4).holding_stops,
            "none found"
        );
        assert!(!feeds_out(&names, counts(2, 2), wait, true, 4).holding_stops);
        assert!(
            !feeds_out(&names, counts(2, 1), wait, false, 4).holding_stops,
            "audit or settling: nothing to hold"
        );
    }

    fn approval(digest: &str) -> pb::Approval {
        pb::Approval {
            digest: digest.into(),
            ..Default::default()
        }
    }

    /// Found with a poisoned ledger: one approval the agent refused failed
    /// the whole call, and the push stalled for good. Now it is refused
    /// alone, named, and the rest are kept.
    #[test]
    fn a_bad_approval_is_refused_alone_and_named() {
        let mut with_platform = approval(D);
        with_platform.platform_digests = vec!["sha512:00".into()];
        let checked = approvals_in(
            "approvals",
            vec![
                approval(D),
                approval(""),
                approval("sha256:abc"),
                with_platform,
                approval(&D.replace('1', "2")),
            ],
            "s",
        )
        .unwrap();
        assert_eq!(checked.approvals.len(), 2, "the good ones are kept");
        let reasons: Vec<(u32, &str)> = checked
            .rejected
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        assert_eq!(reasons[0], (1, "approvals[1].digest is required"));
        assert_eq!(reasons[1].0, 2);
        assert!(
            reasons[1].1.starts_with("approvals[2].digest: "),
            "{reasons:?}"
        );
        assert_eq!(reasons[2].0, 3);
        assert!(
            reasons[2]
                .1
                .starts_with("approvals[3].platform_digests[0]: "),
            "{reasons:?}"
        );
    }

    #[test]
    fn an_oversized_batch_is_refused() {
        let many = vec![approval(D); imagegate_proto::MAX_APPROVALS_PER_CALL + 1];
        let err = approvals_in("approvals", many, "s").unwrap_err();
        assert!(err.message().contains("at most 10000"), "{}", err.message());
    }

    #[test]
    fn platform_digests_become_approvals() {
        let mut a = approval(D);
        a.platform_digests = vec![D.replace('1', "2")];
        let out = approvals_in("approvals", vec![a], "webhook/x")
            .unwrap()
            .approvals;
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|a| a.source == "webhook/x"));
    }

    #[test]
    fn a_node_keeps_the_manifests_it_can_run() {
        let manifest = |n: char, os: &str, arch: &str| pb::PlatformManifest {
            digest: D.replace('1', &n.to_string()),
            os: os.into(),
            architecture: arch.into(),
            variant: String::new(),
        };
        let mut a = approval(D);
        a.platform_manifests = vec![
            manifest('2', "linux", "amd64"),
            manifest('3', "linux", "arm64"),
            manifest('4', "unknown", "unknown"),
            manifest('5', "windows", "amd64"),
        ];
        let kept: Vec<String> = approvals_in_for("approvals", vec![a.clone()], "s", "amd64")
            .unwrap()
            .approvals
            .iter()
            .map(|a| a.digest.to_string())
            .collect();
        assert_eq!(kept, [D.replace('1', "2"), D.to_string()]);
        let kept = approvals_in_for("approvals", vec![a], "s", "arm64")
            .unwrap()
            .approvals;
        assert_eq!(kept[0].digest.as_str(), D.replace('1', "3"));
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0).unwrap(), 100);
        assert_eq!(page_size(7).unwrap(), 7);
        assert!(page_size(1001).is_err());
    }
}
