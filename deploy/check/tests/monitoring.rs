//! What operators see, checked offline: the Prometheus Operator objects
//! and the dashboard the chart renders validate against their schemas, the
//! alert rules pass promtool's unit tests, each alert has its runbook, and
//! every dashboard query parses as PromQL. (That the binaries export every
//! metric these use is checked where the chart's pods run:
//! e2e/tests/chart_pods.rs.)

use std::{collections::BTreeSet, process::Command};

use imagegate_deploy_check::{documents, helm_template, root, tool, validate};
use serde_json::Value;

const CA_BUNDLE: &str = "certs.caBundle=Zm9v";

fn render(sets: &[&str]) -> Vec<Value> {
    documents(&helm_template(sets, &[]).expect("helm template")).unwrap()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn promtool(args: &[&str], dir: &std::path::Path) -> String {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool: run `cargo xtask setup`");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn monitors_rules_and_dashboard_render_and_validate_for_both_monitor_kinds() {
    for (monitor, port_holder) in [("ServiceMonitor", "Service"), ("PodMonitor", "Pod")] {
        for certs in ["certs.source=secret", "certs.source=cert-manager"] {
            let objects = render(&[
                CA_BUNDLE,
                certs,
                &format!("monitoring.monitor={monitor}"),
                "monitoring.rules=true",
                "monitoring.dashboard=true",
                "monitoring.labels.release=prometheus",
            ]);
            for object in &objects {
                validate(object).unwrap_or_else(|e| panic!("{monitor} {certs}: {e:#}"));
            }
            let monitors = of_kind(&objects, monitor);
            assert_eq!(monitors.len(), 2, "{monitor}: one per component");
            for m in &monitors {
                assert_eq!(m["metadata"]["labels"]["release"], "prometheus");
                let component = m["metadata"]["name"].as_str().unwrap();
                let endpoints = if monitor == "ServiceMonitor" {
                    &m["spec"]["endpoints"]
                } else {
                    &m["spec"]["podMetricsEndpoints"]
                };
                let endpoint = &endpoints[0];
                // The labels the alerts and the dashboard group by.
                let relabel = endpoint["relabelings"].as_array().unwrap();
                assert!(
                    relabel
                        .iter()
                        .any(|r| r["targetLabel"] == "job" && r["replacement"] == component)
                );
                assert!(relabel.iter().any(|r| r["targetLabel"] == "node"
                    && r["sourceLabels"][0] == "__meta_kubernetes_pod_node_name"));
                // The named port exists where the monitor looks it up.
                let port = endpoint["port"].as_str().unwrap();
                let has_port = if port_holder == "Service" {
                    objects.iter().any(|o| {
                        o["kind"] == "Service"
                            && o["metadata"]["name"] == component
                            && o["spec"]["ports"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .any(|p| p["name"] == port)
                    })
                } else {
                    let kind = if component == "imagegate-webhook" {
                        "Deployment"
                    } else {
                        "DaemonSet"
                    };
                    objects.iter().any(|o| {
                        o["kind"] == kind
                            && o["spec"]["template"]["spec"]["containers"][0]["ports"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .any(|p| p["name"] == port)
                    })
                };
                assert!(has_port, "{monitor} {component}: no port named {port}");
                if component == "imagegate-webhook" {
                    // HTTPS, checked against the CA the serving certificate
                    // chains to: the Secret the webhook mounts ca.crt from.
                    assert_eq!(endpoint["scheme"], "https");
                    let secret = endpoint["tlsConfig"]["ca"]["secret"]["name"]
                        .as_str()
                        .unwrap();
                    let expected = if certs.ends_with("cert-manager") {
                        "imagegate-webhook-tls"
                    } else {
                        "imagegate-certs"
                    };
                    assert_eq!(secret, expected, "{certs}");
                    assert_eq!(
                        endpoint["tlsConfig"]["serverName"],
                        "imagegate-webhook.imagegate.svc"
                    );
                }
            }
            assert_eq!(of_kind(&objects, "PrometheusRule").len(), 1);
            let dashboards: Vec<_> = of_kind(&objects, "ConfigMap")
                .into_iter()
                .filter(|c| c["metadata"]["name"] == "imagegate-dashboard")
                .collect();
            assert_eq!(
                dashboards[0]["metadata"]["labels"]["grafana_dashboard"],
                "1"
            );
            let json: Value =
                serde_json::from_str(dashboards[0]["data"]["imagegate.json"].as_str().unwrap())
                    .expect("the dashboard is JSON");
            assert_eq!(json["uid"], "imagegate");
        }
    }
    // Off by default: nothing that needs the operator's CRDs.
    let defaults = render(&[CA_BUNDLE]);
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(
            of_kind(&defaults, kind).is_empty(),
            "{kind} rendered by default"
        );
    }
    let wrong = helm_template(&[CA_BUNDLE, "monitoring.monitor=Probe"], &[]).unwrap_err();
    assert!(
        format!("{wrong:#}").contains("use ServiceMonitor, PodMonitor"),
        "{wrong:#}"
    );
}

#[test]
fn the_prometheus_rule_carries_the_alert_file_which_passes_promtool_and_its_tests() {
    let objects = render(&[CA_BUNDLE, "monitoring.rules=true"]);
    let rule = of_kind(&objects, "PrometheusRule")[0];
    let file: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/helm/imagegate/files/alerts.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(rule["spec"], file, "the PrometheusRule is the alert file");

    // promtool on what the chart rendered, then its unit tests.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rendered.yaml"),
        serde_yaml_ng::to_string(&rule["spec"]).unwrap(),
    )
    .unwrap();
    let checked = promtool(&["check", "rules", "rendered.yaml"], dir.path());
    let alerts: Vec<&str> = file["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{checked}"
    );
    let tested = promtool(
        &["test", "rules", "alerts_test.yaml"],
        &root().join("deploy/monitoring"),
    );
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert is tested firing, and has its runbook where its
    // runbook_url points.
    let tests = std::fs::read_to_string(root().join("deploy/monitoring/alerts_test.yaml")).unwrap();
    let readme = std::fs::read_to_string(root().join("deploy/README.md")).unwrap();
    for rule in file["groups"][0]["rules"].as_array().unwrap() {
        let alert = rule["alert"].as_str().unwrap();
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            )),
            "{alert}: no promtool test expects it to fire"
        );
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        let anchor = url.rsplit_once('#').unwrap().1;
        assert_eq!(anchor, alert.to_lowercase(), "{alert}: runbook anchor");
        assert!(
            readme.contains(&format!("\n#### {alert}\n")),
            "{alert}: no runbook heading `#### {alert}` in deploy/README.md"
        );
        for key in ["summary", "description"] {
            assert!(rule["annotations"][key].is_string(), "{alert}: no {key}");
        }
        assert!(
            ["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap()),
            "{alert}: severity"
        );
    }
}

/// Every query of the dashboard, with Grafana's variables replaced by what
/// Grafana would send, parses as PromQL (promtool checks them as recording
/// rules), and each panel says what it shows.
#[test]
fn every_dashboard_query_parses_and_every_panel_is_explained() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/helm/imagegate/files/dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        assert!(
            !panel["description"].as_str().unwrap_or("").is_empty(),
            "{title}: no description"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            let expr = expr
                .replace("$__rate_interval", "2m")
                .replace("$__range", "6h")
                .replace("$node", ".*");
            assert!(!expr.contains('$'), "an unknown variable in {expr}");
            serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr})
        })
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("queries.yaml"),
        serde_yaml_ng::to_string(&file).unwrap(),
    )
    .unwrap();
    let checked = promtool(&["check", "rules", "queries.yaml"], dir.path());
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{checked}"
    );
}

#[test]
fn the_kustomize_monitoring_component_is_the_chart_rendered() {
    let values = root().join("deploy/kustomize/values.yaml");
    let mut command = Command::new(tool("helm"));
    command
        .args(["template", "imagegate"])
        .arg(root().join("deploy/helm/imagegate"))
        .args(["--namespace", "imagegate", "--values"])
        .arg(&values)
        .args([
            "--set",
            "monitoring.monitor=PodMonitor",
            "--set",
            "monitoring.rules=true",
            "--set",
            "monitoring.dashboard=true",
            "--show-only",
            "templates/monitoring.yaml",
        ]);
    let out = command.output().expect("helm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read_to_string(
        root().join("deploy/kustomize/components/monitoring/monitoring.yaml"),
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed,
        "deploy/kustomize/components/monitoring/monitoring.yaml is stale: regenerate it with\n  \
         .tools/bin/helm template imagegate deploy/helm/imagegate --namespace imagegate \
         --values deploy/kustomize/values.yaml --set monitoring.monitor=PodMonitor \
         --set monitoring.rules=true --set monitoring.dashboard=true \
         --show-only templates/monitoring.yaml > deploy/kustomize/components/monitoring/monitoring.yaml"
    );
    // kubectl builds an overlay of the base with the component.
    // (kustomize takes relative paths only: the overlay sits in target/.)
    std::fs::create_dir_all(root().join("target")).unwrap();
    let overlay = tempfile::tempdir_in(root().join("target")).unwrap();
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources: [../../deploy/kustomize/base]\n\
         components: [../../deploy/kustomize/components/monitoring]\n",
    )
    .unwrap();
    let objects =
        documents(&imagegate_deploy_check::kustomize(overlay.path()).expect("kubectl kustomize"))
            .unwrap();
    assert_eq!(of_kind(&objects, "PodMonitor").len(), 2);
    assert_eq!(of_kind(&objects, "PrometheusRule").len(), 1);
    assert_eq!(
        of_kind(&objects, "DaemonSet").len(),
        1,
        "the base is there too"
    );
    for object in &objects {
        validate(object).unwrap_or_else(|e| panic!("{e:#}"));
    }
}
