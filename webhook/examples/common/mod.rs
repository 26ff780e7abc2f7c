//! What the push benchmarks share.

use imagegate_webhook::ledger::Approval;

/// A ledger record for `n`: a distinct digest, admitted now (the webhook
/// drops records older than its retention).
pub fn synthetic(n: usize) -> Approval {
    let digest = imagegate_proto::digest::Digest::parse(&format!(
        "sha256:{:064x}",
        (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    ))
    .expect("a digest");
    Approval {
        digest,
        children: Vec::new(),
        verified: true,
        break_glass: false,
        expires_at_ms: None,
        reference: format!("registry.bench/app:{n}"),
        namespace: "bench".into(),
        kind: Some("Pod".into()),
        name: Some(format!("pod-{n}")),
        user: None,
        rule: "bench".into(),
        api: imagegate_webhook::review::Api::AdmissionReview,
        origin: imagegate_webhook::ledger::Origin::Admission,
        admitted_at_ms: imagegate_plumbing::clock::now_ms(),
        generation: 0,
        signers: Vec::new(),
    }
}
