//! `imagegate-webhook check`: the real binary, as a CI pipeline runs it.

mod common;

use std::process::{Command, Output};

use common::fixture;
use serde_json::Value;

fn policy_path() -> String {
    format!(
        "{}/../deploy/policy/example-policy.yaml",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn check(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imagegate-webhook"))
        .arg("check")
        .args(args)
        .output()
        .expect("run imagegate-webhook check")
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn all_allowed_exits_zero() {
    let policy = policy_path();
    let out = check(&[
        "--policy",
        &policy,
        "nginx:1.25",
        "registry.k8s.io/pause:3.9",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ALLOW nginx:1.25: image \"nginx:1.25\" (docker.io/library/nginx:1.25) allowed by rule \"docker-hub\""), "{text}");
}

#[test]
fn json_output_is_one_object_per_image_and_a_denial_exits_one() {
    let policy = policy_path();
    let out = check(&[
        "--policy",
        &policy,
        "--output",
        "json",
        "nginx:1.25",
        "nginx",
        "Not/A:Ref!",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["image"], "nginx:1.25");
    assert_eq!(
        lines[0]["reference"],
        serde_json::json!({
            "name": "docker.io/library/nginx:1.25",
            "domain": "docker.io",
            "path": "library/nginx",
            "tag": "1.25",
            "digest": null
        })
    );
    assert_eq!(lines[0]["allowed"], true);
    assert_eq!(lines[0]["rule"], "docker-hub");
    assert_eq!(
        lines[1]["reference"]["name"],
        "docker.io/library/nginx:latest"
    );
    assert_eq!(lines[1]["allowed"], false);
    assert!(
        lines[1]["reason"]
            .as_str()
            .unwrap()
            .contains("pulls latest")
    );
    assert!(lines[2].get("reference").is_none());
    assert!(
        lines[2]["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid reference format"),
        "{}",
        lines[2]
    );
    assert_eq!(lines[2]["allowed"], false);
    assert_eq!(lines[2]["rule"], "reference-syntax");
}

#[test]
fn namespace_changes_the_decision() {
    let policy = policy_path();
    let out = check(&[
        "--policy",
        &policy,
        "--namespace",
        "kube-system",
        "quay.io/anything:1",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let out = check(&[
        "--policy",
        &policy,
        "--namespace",
        "default",
        "quay.io/anything:1",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_review_file_is_decided_as_the_server_would() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_path();
    for (name, code, images) in [
        ("admissionreview-1.json", 1, 1),
        ("admissionreview-3.json", 0, 1),
        ("imagereview-3.json", 1, 3),
    ] {
        let (_, body) = fixture(name);
        let file = dir.path().join(name);
        std::fs::write(&file, serde_json::to_vec(&body).unwrap()).unwrap();
        let out = check(&[
            "--policy",
            &policy,
            "--output",
            "json",
            "--review",
            file.to_str().unwrap(),
        ]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(json_lines(&out).len(), images, "{name}");
    }
}

#[test]
fn usage_and_input_errors_exit_two() {
    let policy = policy_path();
    let dir = tempfile::tempdir().unwrap();
    let bad_policy = dir.path().join("bad.yaml");
    std::fs::write(
        &bad_policy,
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmode: maybe\n",
    )
    .unwrap();
    let out = check(&["--policy", bad_policy.to_str().unwrap(), "nginx:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mode: unknown variant `maybe`"));

    let out = check(&["--policy", "/nonexistent.yaml", "nginx:1"]);
    assert_eq!(out.status.code(), Some(2));

    let not_a_review = dir.path().join("x.json");
    std::fs::write(&not_a_review, r#"{"kind": "ConfigMap"}"#).unwrap();
    let out = check(&[
        "--policy",
        &policy,
        "--review",
        not_a_review.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("expected kind AdmissionReview or ImageReview")
    );

    // No images and no review: a usage error.
    let out = check(&["--policy", &policy]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn certs_and_apiserver_config_write_what_the_cluster_needs() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = Command::new(env!("CARGO_BIN_EXE_imagegate-webhook"))
        .args(["certs", "--out"])
        .arg(&certs)
        .args(["--extra-name", "10.96.0.20"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "ca.crt",
        "webhook.crt",
        "webhook-client.key",
        "agent.crt",
        "apiserver-client.key",
    ] {
        assert!(certs.join(name).exists(), "{name}");
    }
    // The CA's key is kept below the folder: `kubectl create secret
    // generic --from-file=certs` takes only the files directly in it.
    assert!(!certs.join("ca.key").exists());
    assert!(certs.join("private/ca.key").is_file());
    // A second run refuses to overwrite them.
    let again = Command::new(env!("CARGO_BIN_EXE_imagegate-webhook"))
        .args(["certs", "--out"])
        .arg(&certs)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let apiserver = dir.path().join("apiserver");
    let out = Command::new(env!("CARGO_BIN_EXE_imagegate-webhook"))
        .args([
            "apiserver-config",
            "--server",
            "https://10.96.0.20/image_policy",
            "--out",
        ])
        .arg(&apiserver)
        .arg("--certs")
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(
            "--admission-control-config-file=/etc/kubernetes/imagegate/admission-config.yaml"
        ),
        "{said}"
    );
    let config = std::fs::read_to_string(apiserver.join("admission-config.yaml")).unwrap();
    assert!(config.contains("defaultAllow: false"), "{config}");
    let bad = Command::new(env!("CARGO_BIN_EXE_imagegate-webhook"))
        .args(["apiserver-config", "--server", "http://x/validate", "--out"])
        .arg(dir.path().join("bad"))
        .arg("--certs")
        .arg(&certs)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/image_policy"));
}

/// `--resolve`: the pipeline with the registry, as `serve` runs it, so a
/// resolution denial is reproduced offline.
#[tokio::test(flavor = "multi_thread")]
async fn resolve_asks_the_registry_as_the_server_does() {
    let registry = imagegate_testkit::registry::Registry::plain();
    let digest = registry.push_image("team/app", "1.0", "check").await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: local\n    \
             registries: ['{}']\n",
            registry.host
        ),
    )
    .unwrap();
    let (present, missing) = (
        format!("{}/team/app:1.0", registry.host),
        format!("{}/team/app:2.0", registry.host),
    );
    let run = |resolve: bool| {
        let mut args = vec![
            "--policy",
            policy.to_str().unwrap(),
            "--output",
            "json",
            "--plain-http-registry",
            &registry.host,
            &present,
            &missing,
        ];
        if resolve {
            args.push("--resolve");
        }
        check(&args)
    };
    // Without --resolve: the policy alone allows both, nothing resolved.
    let out = tokio::task::block_in_place(|| run(false));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let reports = json_lines(&out);
    assert!(
        reports.iter().all(|r| r.get("resolved").is_none()),
        "{reports:?}"
    );
    // With it: the tag the registry serves is allowed at its digest, the
    // one it does not is denied with the server's reason.
    let out = tokio::task::block_in_place(|| run(true));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports = json_lines(&out);
    assert_eq!(reports[0]["allowed"], true, "{reports:?}");
    assert_eq!(reports[0]["resolved"], digest.as_str());
    assert_eq!(reports[1]["allowed"], false, "{reports:?}");
    let reason = reports[1]["reason"].as_str().unwrap();
    assert!(reason.contains("could not resolve"), "{reason}");
}
