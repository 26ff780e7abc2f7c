//! Approvals name what the registry really serves, end to end: webhook ->
//! agent -> verdict, with the real registry, containerd, agent and webhook.

use imagegate_e2e::{Stack, unique};
use imagegate_testkit::grpcurl;

/// Found as a forged approval: `shop/app@sha256:<D>`, D being the digest of
/// another image already on the node, was allowed without asking the
/// registry, recorded, pushed, and the agent then judged that other image
/// `admitted`. A digest is an approval only when the registry confirms this
/// repository serves it; a policy that turns that off says so, and the
/// agent shows it.
#[tokio::test(flavor = "multi_thread")]
async fn a_digest_is_an_approval_only_when_its_repository_serves_it() {
    imagegate_testkit::require_root("the agent loads eBPF and runs containerd");
    let mut stack = Stack::start().await.unwrap();
    stack.start_agent("audit").unwrap();
    stack.start_webhook().unwrap();
    let host = stack.registry.host.clone();
    let miner = stack.images.miner.clone();

    // An unadmitted miner already runs on the node.
    let id = unique("miner");
    stack.containerd.pull("default", &miner.reference);
    stack.containerd.run("default", &miner.reference, &id, &[]);
    stack
        .wait_verdict(&format!("default/{id}"), "never-admitted")
        .unwrap();

    // Its digest, under a repository the policy allows: refused, the
    // registry has no such manifest in shop/app.
    let forged = format!("{host}/shop/app@{}", miner.digest);
    let r = stack
        .admission_review("/validate", "forged", &forged)
        .await
        .unwrap();
    assert_eq!(r["allowed"], false, "{r}");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(message.contains("no such manifest"), "{message}");
    let (_, held) = stack
        .grpcurl(
            "ListApprovals",
            &format!(r#"{{"digest": "{}"}}"#, miner.digest),
        )
        .unwrap();
    assert_eq!(
        grpcurl::count(&held, "approvals"),
        0,
        "nothing recorded: {held}"
    );

    // A policy that takes written digests as given: allowed, and said so
    // all the way to the node.
    stack
        .set_policy(&stack.policy("resolution:\n  verifyDigest: false\n"), 2)
        .unwrap();
    let r = stack
        .admission_review("/validate", "forged", &forged)
        .await
        .unwrap();
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(r["auditAnnotations"]["unverified-digests"], forged, "{r}");
    stack.wait_approval(&miner.digest).unwrap();
    let (_, held) = stack
        .grpcurl(
            "ListApprovals",
            &format!(r#"{{"digest": "{}"}}"#, miner.digest),
        )
        .unwrap();
    assert_eq!(held["approvals"][0]["digestUnverified"], true, "{held}");
    let verdict = stack
        .wait_verdict(&format!("default/{id}"), "admitted")
        .unwrap();
    let reason = verdict["fields"]["reason"].as_str().unwrap();
    assert!(reason.contains("unverified"), "{reason}");
}

/// Found as a poisoned ledger: `app@sha384:<96 hex>` was recorded, the agent
/// refused it, and every later push stalled, so every later admission was
/// flagged. Both sides now take the same digests, and later approvals flow.
#[tokio::test(flavor = "multi_thread")]
async fn a_digest_the_agent_would_refuse_never_stalls_the_push() {
    imagegate_testkit::require_root("the agent loads eBPF and runs containerd");
    let mut stack = Stack::start().await.unwrap();
    stack.start_agent("audit").unwrap();
    stack.start_webhook().unwrap();
    let host = stack.registry.host.clone();
    stack
        .set_policy(&stack.policy("resolution:\n  verifyDigest: false\n"), 2)
        .unwrap();
    let sha384 = format!("sha384:{}", "ab".repeat(48));
    let r = stack
        .admission_review("/validate", "odd", &format!("{host}/shop/app@{sha384}"))
        .await
        .unwrap();
    assert_eq!(r["allowed"], true, "{r}");
    // Not a digest at all: refused at admission, never recorded.
    let r = stack
        .admission_review(
            "/validate",
            "bad",
            &format!("{host}/shop/app@md5:{}", "ab".repeat(16)),
        )
        .await
        .unwrap();
    assert_eq!(r["allowed"], false, "{r}");
    // A later admission still reaches the agent, and its container runs
    // admitted.
    let app = stack.images.app.clone();
    let r = stack
        .admission_review("/validate", "app", &app.reference)
        .await
        .unwrap();
    assert_eq!(r["allowed"], true, "{r}");
    stack.wait_approval(&sha384).unwrap();
    stack.wait_approval(&app.digest).unwrap();
    let id = unique("app");
    stack.containerd.pull("default", &app.reference);
    stack.containerd.run("default", &app.reference, &id, &[]);
    stack
        .wait_verdict(&format!("default/{id}"), "admitted")
        .unwrap();
}

/// Break-glass reaches the node as what it is: logged by the webhook, an
/// approval marked break-glass with its TTL, a verdict that says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_break_glass_approval_is_marked_all_the_way_to_the_node() {
    imagegate_testkit::require_root("the agent loads eBPF and runs containerd");
    let mut stack = Stack::start().await.unwrap();
    stack.start_agent("audit").unwrap();
    stack.start_webhook().unwrap();
    let host = stack.registry.host.clone();
    // The miner's repository is denied by a rule; break-glass lets it in
    // for an hour.
    stack
        .set_policy(
            &format!(
                "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nbreakGlass:\n  approvalTtl: 1h\nrules:\n  - name: shop-registry\n    registries: ['{host}']\n    repositories:\n      deny: ['{host}/tools/*']\n"
            ),
            2,
        )
        .unwrap();
    let miner = stack.images.miner.clone();
    let mut review = imagegate_e2e::fixture("admissionreview-3.json").unwrap();
    let request = &mut review["request"];
    request["uid"] = "glass".into();
    request["namespace"] = "shop".into();
    request["object"]["metadata"]["annotations"] =
        serde_json::json!({"imagegate.dev/break-glass": "true"});
    request["object"]["spec"]["containers"] =
        serde_json::json!([{"name": "main", "image": miner.reference}]);
    if let Some(spec) = request["object"]["spec"].as_object_mut() {
        spec.remove("initContainers");
    }
    let answer = stack.post_review("/validate", &review).await.unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let webhook = stack.webhook.as_ref().unwrap();
    let logged = webhook
        .process
        .wait_for(std::time::Duration::from_secs(5), |l| {
            l["fields"]["message"] == "break-glass: admitted without the policy's rules"
        })
        .expect("every break-glass use is logged");
    assert_eq!(logged["level"], "WARN");
    stack.wait_approval(&miner.digest).unwrap();
    let (_, held) = stack
        .grpcurl(
            "ListApprovals",
            &format!(r#"{{"digest": "{}"}}"#, miner.digest),
        )
        .unwrap();
    let approval = &held["approvals"][0];
    assert_eq!(approval["breakGlass"], true, "{held}");
    assert_eq!(approval["rule"], "break-glass");
    let expires: i64 = approval["expiresAtUnixMs"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let admitted: i64 = approval["admittedAtUnixMs"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(expires - admitted, 3_600_000);
    let id = unique("glass");
    stack.containerd.pull("default", &miner.reference);
    stack.containerd.run("default", &miner.reference, &id, &[]);
    let verdict = stack
        .wait_verdict(&format!("default/{id}"), "admitted")
        .unwrap();
    let reason = verdict["fields"]["reason"].as_str().unwrap();
    assert!(reason.contains("breaking glass"), "{reason}");
}
