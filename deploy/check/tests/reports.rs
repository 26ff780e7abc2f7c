//! The policy reports' part of the chart: the CRDs it installs where the
//! cluster has none, the RBAC each format needs and nothing more, and the
//! Kustomize component with the CRDs.

use std::process::Command;

use imagegate_deploy_check::{
    crd::Crd, documents, find, helm_template, kustomize, root, tool, validate,
};
use serde_json::Value;

fn render(sets: &[&str]) -> Vec<Value> {
    let mut all = vec!["certs.caBundle=Zm9v"];
    all.extend_from_slice(sets);
    documents(&helm_template(&all, &[]).expect("helm template")).unwrap()
}

fn crd_names(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn each_format_gets_its_crds_kept_on_uninstall_and_its_rbac() {
    for (format, group, crds, resources) in [
        (
            "openreports",
            "openreports.io",
            ["reports.openreports.io", "clusterreports.openreports.io"],
            ["reports", "clusterreports"],
        ),
        (
            "wgpolicyk8s",
            "wgpolicyk8s.io",
            [
                "policyreports.wgpolicyk8s.io",
                "clusterpolicyreports.wgpolicyk8s.io",
            ],
            ["policyreports", "clusterpolicyreports"],
        ),
    ] {
        let set = format!("webhook.reports.format={format}");
        let objects = render(&[&set]);
        for object in &objects {
            validate(object).unwrap_or_else(|e| panic!("{format}: {e:#}"));
        }
        // `helm template` has no cluster to look up: it renders them; an
        // install renders only the absent ones.
        assert_eq!(crd_names(&objects), crds, "{format}");
        for crd in objects
            .iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
        {
            assert_eq!(
                crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
                "{format}"
            );
            assert_eq!(crd["spec"]["group"], group);
        }
        let role = find(&objects, "ClusterRole", "imagegate-webhook");
        let rules = role["rules"].as_array().unwrap();
        assert!(
            rules.contains(
                &serde_json::json!({"apiGroups": [group], "resources": resources,
                "verbs": ["get", "create", "update"]})
            ),
            "{format}: {rules:?}"
        );
        assert!(rules.contains(
            &serde_json::json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]})
        ));
        let deployment = find(&objects, "Deployment", "imagegate-webhook");
        let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap();
        assert!(args.contains(&format!("--report-format={format}").into()));
        assert!(args.contains(&"--report-max-results=1000".into()));
        // The CRDs the chart installs are the ones the stand-in apiserver
        // checks the writer's reports against.
        for name in crds {
            let (plural, group) = name.split_once('.').unwrap();
            let file = root().join(format!(
                "deploy/helm/imagegate/files/crds/{group}_{plural}.yaml"
            ));
            assert_eq!(Crd::load(&file).unwrap().group, group);
        }
    }
    // Reports off, or the CRDs left to the cluster: none rendered, and with
    // Events off too, no Lease role and no report rules.
    assert!(crd_names(&render(&["webhook.reports.installCRDs=false"])).is_empty());
    let objects = render(&[
        "webhook.reports.format=off",
        "webhook.violationEvents=false",
        "webhook.admissionEvents=false",
    ]);
    assert!(crd_names(&objects).is_empty());
    assert!(!objects.iter().any(|o| o["kind"] == "Role"));
    let role = find(&objects, "ClusterRole", "imagegate-webhook");
    assert_eq!(role["rules"].as_array().unwrap().len(), 1, "list pods only");
    // Reports without Events: the Lease is still needed, the token too.
    let objects = render(&[
        "webhook.violationEvents=false",
        "webhook.adoptRunningPods=false",
    ]);
    find(&objects, "Role", "imagegate-webhook-reporter");
    let deployment = find(&objects, "Deployment", "imagegate-webhook");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["automountServiceAccountToken"],
        true
    );
}

#[test]
fn a_format_the_webhook_does_not_know_fails_the_install_not_the_webhook() {
    let error = helm_template(
        &["certs.caBundle=Zm9v", "webhook.reports.format=openreport"],
        &[],
    )
    .expect_err("an unknown format renders");
    assert!(
        format!("{error:#}").contains("webhook.reports.format: openreports, wgpolicyk8s or off"),
        "{error:#}"
    );
    // An unquoted `off` in a values file is YAML's false: it means off.
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, "webhook:\n  reports:\n    format: off\n").unwrap();
    let objects = documents(&helm_template(&["certs.caBundle=Zm9v"], &[&values]).unwrap()).unwrap();
    let deployment = find(&objects, "Deployment", "imagegate-webhook");
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .contains(&"--report-format=off".into()),
        "{args}"
    );
    assert!(crd_names(&objects).is_empty());
}

#[test]
fn the_kustomize_component_holds_the_crds_and_the_base_none() {
    let base = documents(
        &std::fs::read_to_string(root().join("deploy/kustomize/base/imagegate.yaml")).unwrap(),
    )
    .unwrap();
    assert!(
        crd_names(&base).is_empty(),
        "kubectl apply of the base must not replace another tool's CRDs"
    );
    let out = Command::new(tool("helm"))
        .args(["template", "imagegate"])
        .arg(root().join("deploy/helm/imagegate"))
        .args(["--namespace", "imagegate", "--values"])
        .arg(root().join("deploy/kustomize/values.yaml"))
        .args([
            "--set",
            "webhook.reports.installCRDs=true",
            "--show-only",
            "templates/report-crds.yaml",
        ])
        .output()
        .expect("helm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8_lossy(&out.stdout);
    let committed =
        std::fs::read_to_string(root().join("deploy/kustomize/components/report-crds/crds.yaml"))
            .unwrap();
    assert!(
        rendered == committed,
        "deploy/kustomize/components/report-crds/crds.yaml is stale: regenerate it with\n  \
         .tools/bin/helm template imagegate deploy/helm/imagegate --namespace imagegate \
         --values deploy/kustomize/values.yaml --set webhook.reports.installCRDs=true \
         --show-only templates/report-crds.yaml > deploy/kustomize/components/report-crds/crds.yaml"
    );
    std::fs::create_dir_all(root().join("target")).unwrap();
    let overlay = tempfile::tempdir_in(root().join("target")).unwrap();
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources: [../../deploy/kustomize/base]\n\
         components: [../../deploy/kustomize/components/report-crds]\n",
    )
    .unwrap();
    let objects = documents(&kustomize(overlay.path()).expect("kubectl kustomize")).unwrap();
    // Kustomize orders by name.
    assert_eq!(
        crd_names(&objects),
        ["clusterreports.openreports.io", "reports.openreports.io"]
    );
    for object in &objects {
        validate(object).unwrap_or_else(|e| panic!("{e:#}"));
    }
}
