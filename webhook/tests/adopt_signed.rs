//! The admitted set rebuilt from the cluster meets the same signature
//! requirements as admission, against a real registry (Debian's
//! docker-registry, Basic auth) with legacy signatures made by `openssl`:
//! a running pod whose image is signed is adopted with its signer; one
//! whose tag moved to an unsigned image under it is not (found: it was
//! adopted, and then admitted on every node); a platform manifest is
//! adopted through the signature of the index that lists it; a rule in
//! audit mode adopts with a warning. The ledger keeps adopted signers.

mod common;

use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};
use common::{
    registry::Registry,
    signing::{PASSWORD, USER, resolver},
};
use imagegate_testkit::sigstore::{KeyPair, attach_legacy, openssl_sign, simple_signing_payload};
use imagegate_webhook::{adopt, ledger::Ledger, policy::Policy};
use serde_json::{Value, json};

/// Signs `repo@digest` with `key` in cosign's legacy layout.
async fn sign(registry: &Registry, key: &KeyPair, repo: &str, digest: &str) {
    let payload = simple_signing_payload(&format!("{}/{repo}", registry.host), digest);
    let signature = openssl_sign(key, &payload);
    attach_legacy(
        registry,
        repo,
        digest,
        &[(
            payload,
            json!({"dev.cosignproject.cosign/signature": STANDARD.encode(signature)}),
        )],
    )
    .await;
}

fn pod(name: &str, image: &str, image_id: &str) -> Value {
    json!({
        "metadata": {"namespace": "shop", "name": name, "uid": format!("uid-{name}")},
        "spec": {"containers": [{"name": "c", "image": image}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "c", "imageID": image_id}]}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_checks_the_signatures_admission_checks() {
    let registry = Registry::plain_basic(USER, PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let host = registry.host.clone();
    let key = KeyPair::generate();
    let key_file = dir.path().join("release.pub");
    std::fs::write(&key_file, &key.public_pem).unwrap();

    let signed = registry.push_image("shop/app", "1", "signed").await;
    sign(&registry, &key, "shop/app", &signed).await;
    // The pod ran app:2 unsigned; then the tag moved to a signed image.
    let ran = registry.push_image("shop/app", "2", "moved-ran").await;
    let now = registry.push_image("shop/app", "2", "moved-now").await;
    sign(&registry, &key, "shop/app", &now).await;
    // A multi-arch image signed as cosign signs it: the index.
    let (index, platforms) = registry.push_index("shop/multi", "3", "multi").await;
    sign(&registry, &key, "shop/multi", &index).await;
    let audited = registry.push_image("shop/audited", "1", "audited").await;

    let requirement = format!(
        "    signatures:\n      - name: release\n        keys:\n          - name: release\n            file: {}\n",
        key_file.display()
    );
    let policy = Policy::from_yaml(&format!(
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: audited\n    registries: [\"{host}/shop/audited\"]\n    mode: audit\n{requirement}  - name: prod\n    registries: [\"{host}\"]\n{requirement}"
    ))
    .unwrap();
    let pods = [
        pod(
            "signed",
            &format!("{host}/shop/app:1"),
            &format!("{host}/shop/app@{signed}"),
        ),
        pod(
            "moved",
            &format!("{host}/shop/app:2"),
            &format!("{host}/shop/app@{ran}"),
        ),
        pod(
            "multi",
            &format!("{host}/shop/multi:3"),
            &format!("{host}/shop/multi@{}", platforms[0]),
        ),
        pod(
            "audited",
            &format!("{host}/shop/audited:1"),
            &format!("{host}/shop/audited@{audited}"),
        ),
    ];
    let resolver = Arc::new(resolver(&host, true));
    let report = adopt::adopt(&policy, Some(&resolver), &pods).await;

    let adopted = |digest: &str| {
        report
            .approvals
            .iter()
            .find(|a| a.digest.as_str() == digest)
    };
    let approval = adopted(&signed).unwrap_or_else(|| panic!("signed: {report:?}"));
    assert_eq!(approval.signers.len(), 1, "{approval:?}");
    assert!(
        approval.signers[0].identity.starts_with("key \"release\""),
        "{approval:?}"
    );
    assert!(
        adopted(&ran).is_none(),
        "a moved tag's unsigned image was adopted: {report:?}"
    );
    assert_eq!(report.unsigned.len(), 1, "{:?}", report.unsigned);
    assert!(
        report.unsigned[0].starts_with("shop/moved:")
            && report.unsigned[0].contains("no signature by key \"release\""),
        "{:?}",
        report.unsigned
    );
    // What the node runs is the platform manifest; its index is signed.
    let multi = adopted(&platforms[0]).unwrap_or_else(|| panic!("multi: {report:?}"));
    assert_eq!(multi.signers.len(), 1, "{multi:?}");
    // Audit mode: adopted, said.
    assert!(adopted(&audited).is_some(), "{report:?}");
    assert_eq!(
        report.audit_unsigned.len(),
        1,
        "{:?}",
        report.audit_unsigned
    );
    assert!(report.audit_unsigned[0].starts_with("shop/audited:"));
    // Both are told as Unverified on their pods, with the digest the node
    // runs and the rule's words.
    let told: Vec<_> = report
        .unverified
        .iter()
        .map(|u| imagegate_webhook::report::decisions::of_unverified(u, "replica-0", 1).unwrap())
        .collect();
    let mut names: Vec<_> = told.iter().map(|d| d.subject.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["audited", "moved"], "{told:?}");
    for d in &told {
        assert_eq!(d.kind.reason(), "Unverified");
        assert_eq!(d.subject.uid, format!("uid-{}", d.subject.name));
        assert_eq!(
            (d.subject.kind.as_str(), d.container.as_str()),
            ("Pod", "c")
        );
        assert!(
            d.reason.contains("no signature by key \"release\""),
            "{d:?}"
        );
    }
    let moved = told.iter().find(|d| d.subject.name == "moved").unwrap();
    assert_eq!(moved.digest, ran.to_string(), "the digest the node runs");

    // The ledger keeps who signed what was adopted (agents and
    // ListApprovals show it).
    let ledger = Ledger::open(
        &dir.path().join("ledger.redb"),
        Duration::from_secs(3600),
        1000,
    )
    .unwrap();
    ledger.record(&report.approvals).unwrap();
    let stored = ledger.all().unwrap();
    let signed_record = stored.iter().find(|a| a.digest.as_str() == signed).unwrap();
    assert_eq!(signed_record.signers, approval.signers);
}
