//! The ledger's records as the wire carries them, in batches bounded by
//! count and bytes: what the dial path pushes and the feed streams.

use imagegate_proto::v1 as pb;

use crate::ledger::{Approval, Origin};

/// How much one batch may carry.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub approvals: usize,
    pub bytes: usize,
}

impl BatchLimits {
    /// A push or sync call to an agent: the agent's own bounds.
    pub const CALL: Self = Self {
        approvals: imagegate_proto::MAX_APPROVALS_PER_CALL,
        bytes: imagegate_proto::MAX_BATCH_BYTES,
    };
    /// One message of a feed stream. Smaller than a call: thousands of
    /// streams may each hold one or two in flight, and the webhook's memory
    /// is their sum.
    pub const FEED: Self = Self {
        approvals: 2_000,
        bytes: 512 << 10,
    };
}

/// The ledger's record as the wire carries it: an index's manifests with
/// their platforms (each agent keeps its own), those without one as plain
/// digests.
pub fn approval_out(approval: &Approval) -> pb::Approval {
    let (with_platform, without): (Vec<_>, Vec<_>) =
        approval.children.iter().partition(|c| c.platform.is_some());
    pb::Approval {
        digest: approval.digest.to_string(),
        platform_digests: without.iter().map(|c| c.digest.to_string()).collect(),
        platform_manifests: with_platform
            .iter()
            .filter_map(|c| {
                let platform = c.platform.as_ref()?;
                Some(pb::PlatformManifest {
                    digest: c.digest.to_string(),
                    os: platform.os.clone(),
                    architecture: platform.architecture.clone(),
                    variant: platform.variant.clone(),
                })
            })
            .collect(),
        reference: approval.reference.clone(),
        namespace: approval.namespace.clone(),
        rule: approval.rule.clone(),
        admitted_at_unix_ms: approval.admitted_at_ms as i64,
        generation: approval.generation,
        source: String::new(),
        digest_unverified: !approval.verified,
        break_glass: approval.break_glass,
        expires_at_unix_ms: approval.expires_at_ms.unwrap_or(0) as i64,
        signers: approval
            .signers
            .iter()
            .map(|s| pb::Signer {
                requirement: s.requirement.clone(),
                identity: s.identity.clone(),
                format: s.format.clone(),
            })
            .collect(),
        origin: match approval.origin {
            Origin::Admission => pb::Origin::Admission,
            Origin::Adopted => pb::Origin::Adopted,
        } as i32,
    }
}

/// The first records of `records` that fit `limits` (always at least one;
/// one approval is small, its index children being bounded), and the
/// generation of the last one taken.
pub fn batch(records: &[Approval], limits: BatchLimits) -> (Vec<pb::Approval>, u64) {
    use prost::Message;
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut last = 0;
    for record in records.iter().take(limits.approvals) {
        let approval = approval_out(record);
        // The field's tag and length prefix, a few bytes each.
        let size = approval.encoded_len() + 8;
        if !out.is_empty() && bytes + size > limits.bytes {
            break;
        }
        bytes += size;
        last = record.generation;
        out.push(approval);
    }
    (out, last)
}

#[cfg(test)]
mod tests {
    use imagegate_proto::{
        digest::Digest,
        platform::{Child, Platform},
    };

    use super::*;

    fn digest(n: usize) -> Digest {
        Digest::parse(&format!("sha256:{n:064x}")).unwrap()
    }

    fn sixteen_platform_index(n: usize) -> Approval {
        Approval {
            digest: digest(n * 100),
            verified: true,
            break_glass: false,
            expires_at_ms: None,
            children: (1..=16)
                .map(|i| Child {
                    digest: digest(n * 100 + i),
                    platform: Some(Platform {
                        os: "linux".into(),
                        architecture: format!("arch{i}"),
                        variant: String::new(),
                    }),
                })
                .collect(),
            reference: format!("registry.example/team/app-{n}:1.0"),
            namespace: "default".into(),
            kind: Some("Deployment".into()),
            name: Some(format!("app-{n}")),
            user: None,
            rule: "team".into(),
            api: crate::review::Api::AdmissionReview,
            origin: Origin::Admission,
            signers: Vec::new(),
            admitted_at_ms: 1,
            generation: n as u64 + 1,
        }
    }

    /// Found with 3,500 admissions of 16-platform indexes: 10,000 records
    /// per call made messages over the agent's 4 MiB limit, and a new
    /// agent failed every sync, forever.
    #[test]
    fn batches_are_bounded_by_bytes_as_well_as_count() {
        use prost::Message;
        let records: Vec<Approval> = (0..10_000).map(sixteen_platform_index).collect();
        let (first, last) = batch(&records, BatchLimits::CALL);
        assert!(first.len() < 10_000, "bounded by bytes: {}", first.len());
        assert_eq!(last, first.len() as u64, "the generation of the last taken");
        let request = pb::SyncApprovalsRequest {
            approvals: first,
            since_generation: 0,
            generation: last,
            ledger: "x".repeat(32),
            cluster_set_generation: None,
            retention_seconds: u64::MAX,
        };
        assert!(
            request.encoded_len() <= imagegate_proto::MAX_BATCH_BYTES + 1024,
            "{} bytes",
            request.encoded_len()
        );
        assert!(request.encoded_len() < imagegate_proto::MAX_MESSAGE_BYTES);
        // Small records still go 10,000 at a time.
        let small: Vec<Approval> = (0..12_000)
            .map(|n| Approval {
                children: Vec::new(),
                ..sixteen_platform_index(n)
            })
            .collect();
        assert_eq!(
            batch(&small, BatchLimits::CALL).0.len(),
            imagegate_proto::MAX_APPROVALS_PER_CALL
        );
        // A feed message is smaller.
        let (feed, _) = batch(&records, BatchLimits::FEED);
        let bytes: usize = feed.iter().map(|a| a.encoded_len() + 8).sum();
        assert!(
            !feed.is_empty() && bytes <= BatchLimits::FEED.bytes,
            "{bytes} bytes"
        );
    }
}
