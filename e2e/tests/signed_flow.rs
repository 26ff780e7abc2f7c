//! A signature requirement end to end: the app image signed in cosign's
//! legacy format (with `openssl`, a key the policy names), another left
//! unsigned; the webhook process admits the first and says who signed it,
//! denies the second naming the key it wanted; the signer reaches the agent
//! with the approval and shows on the container that runs it; `check
//! --resolve` reports it offline. Root: eBPF and containerd.

use base64::{Engine, engine::general_purpose::STANDARD};
use imagegate_e2e::{Stack, binary};
use imagegate_testkit::sigstore::{KeyPair, attach_legacy, openssl_sign, simple_signing_payload};
use serde_json::json;

fn require_root() {
    imagegate_testkit::require_root("the end-to-end test loads eBPF and runs containerd");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_signer_is_checked_at_admission_and_reaches_the_node() {
    require_root();
    let mut stack = Stack::start().await.unwrap();
    let key = KeyPair::generate();
    let key_file = stack.dir.path().join("release.pub");
    std::fs::write(&key_file, &key.public_pem).unwrap();
    let app = stack.images.app.clone();
    let miner = stack.images.miner.clone();
    let repository = app.reference.rsplit_once(':').unwrap().0.to_string();
    let payload = simple_signing_payload(&repository, &app.digest);
    let signature = openssl_sign(&key, &payload);
    attach_legacy(
        &stack.registry,
        "shop/app",
        &app.digest,
        &[(
            payload,
            json!({"dev.cosignproject.cosign/signature": STANDARD.encode(&signature)}),
        )],
    )
    .await;
    let policy = stack.policy(&format!(
        "    signatures:\n      - name: release\n        keys:\n          - name: release-2026\n            file: {}\n",
        key_file.display()
    ));
    std::fs::write(stack.dir.path().join("policy.yaml"), &policy).unwrap();
    stack.start_agent("audit").unwrap();
    stack.start_webhook().unwrap();

    let r = stack
        .admission_review("/validate", "web", &app.reference)
        .await
        .unwrap();
    assert_eq!(r["allowed"], true, "{r}");
    let signed_by = r["auditAnnotations"]["signed-by"]
        .as_str()
        .unwrap_or_default();
    assert!(
        signed_by.contains("key \"release-2026\" (sha256:") && signed_by.contains("(release)"),
        "{r}"
    );
    let r = stack
        .admission_review("/validate", "miner", &miner.reference)
        .await
        .unwrap();
    assert_eq!(r["allowed"], false, "{r}");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "{}@{}",
            miner.reference.rsplit_once(':').unwrap().0,
            miner.digest
        )) && message.contains("no signature by key \"release-2026\" (the image has no signature)"),
        "{message}"
    );

    // The approval carries its signer to the agent.
    stack.wait_approval(&app.digest).unwrap();
    let (_, approvals) = stack
        .grpcurl(
            "ListApprovals",
            &format!(r#"{{"digest": "{}"}}"#, app.digest),
        )
        .unwrap();
    let signer = &approvals["approvals"][0]["signers"][0];
    assert_eq!(signer["requirement"], "release", "{approvals}");
    assert_eq!(signer["format"], "cosign-legacy-tag", "{approvals}");
    assert!(
        signer["identity"]
            .as_str()
            .unwrap()
            .starts_with("key \"release-2026\""),
        "{approvals}"
    );

    // And shows on the container that runs the image.
    let pod = stack
        .containerd
        .cri_run_pod("shop", "web", &app.reference)
        .await;
    let key = format!("k8s.io/{}", pod.container_id);
    stack.wait_verdict(&key, "admitted").unwrap();
    let (_, containers) = stack
        .grpcurl("ListContainers", &format!(r#"{{"keyPrefix": "{key}"}}"#))
        .unwrap();
    assert_eq!(
        containers["containers"][0]["signers"][0]["identity"], signer["identity"],
        "{containers}"
    );

    // `check --resolve` finds the same signer, without a cluster.
    let out = std::process::Command::new(binary("imagegate-webhook"))
        .args(["check", "--policy"])
        .arg(stack.dir.path().join("policy.yaml"))
        .args(["--resolve", "--registry-credentials"])
        .arg(stack.dir.path().join("registry-auth.json"))
        .arg("--registry-ca")
        .arg(format!(
            "{}={}",
            stack.registry.host,
            stack.registry.ca_file.as_ref().unwrap().display()
        ))
        .args(["--registry-timeout", "10s"])
        .arg(&app.reference)
        .arg(&miner.reference)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "one image is denied: {text}");
    assert!(text.contains("signed by key \"release-2026\""), "{text}");
    assert!(text.contains("cosign-legacy-tag"), "{text}");
}
