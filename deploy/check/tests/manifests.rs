//! deploy/ checked offline: the chart and the Kustomize overlay render with
//! the real helm and kubectl, every object validates against the
//! Kubernetes API schemas, the webhook configurations send exactly what
//! the server checks to paths it serves, and the agent's DaemonSet gives
//! it the host paths and capabilities it needs, and nothing else.
//!
//! Over 500 lines: one check per promise the chart makes, all over the same
//! rendered objects.

use std::{collections::BTreeSet, path::Path, process::Command, sync::Arc};

use axum::body::Body;
use http_body_util::BodyExt;
use imagegate_deploy_check::{documents, find, helm_template, kustomize, root, validate};
use serde_json::Value;
use tower::ServiceExt;

const CA_BUNDLE: &str = "Zm9v";

fn render(sets: &[&str]) -> Vec<Value> {
    let mut all = vec![format!("certs.caBundle={CA_BUNDLE}")];
    all.extend(sets.iter().map(|s| s.to_string()));
    let sets: Vec<&str> = all.iter().map(String::as_str).collect();
    documents(&helm_template(&sets, &[]).expect("helm template")).unwrap()
}

#[test]
fn every_rendered_object_validates_in_every_variant() {
    for sets in [
        &[][..],
        &["certs.source=cert-manager", "webhook.mutating.enabled=true"][..],
        &[
            "agent.mode=enforce",
            "agent.sysAdmin=true",
            "agent.sysResource=true",
            "registries.ca.registry\\.local=not-a-pem-but-a-string",
            "webhook.clientCertRequiredPaths=null",
            "registries.credentialsSecret=pull",
            "registries.plainHttp={registry.local:5000}",
            "agent.exemptImages={registry.k8s.io/pause@sha256:7031c1b283388d2c2e09b57badb803c05ebed362dc88d84b480cc47f72a21097}",
            "agent.enforceUnknown=true",
            "image.pullSecrets[0].name=pull",
            "signatures.keysSecret=release-keys",
            "signatures.trustedRootConfigMap=sigstore-root",
        ][..],
    ] {
        let objects = if sets.first() == Some(&"certs.source=cert-manager") {
            documents(&helm_template(sets, &[]).unwrap()).unwrap()
        } else {
            render(sets)
        };
        assert!(objects.len() >= 9, "{sets:?}: {} objects", objects.len());
        for object in &objects {
            validate(object).unwrap_or_else(|e| panic!("{sets:?}: {e:#}"));
        }
    }
}

#[test]
fn a_missing_ca_bundle_is_a_clear_render_error() {
    let err = helm_template(&[], &[]).unwrap_err().to_string();
    assert!(err.contains("certs.caBundle"), "{err}");
}

#[test]
fn the_validator_catches_what_the_apiserver_would_refuse() {
    let mut objects = render(&[]);
    let deployment = objects
        .iter_mut()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicey"] = "Always".into();
    let err = validate(deployment).unwrap_err();
    assert!(format!("{err:#}").contains("imagePullPolicey"), "{err:#}");
    let mut service = find(&objects, "Service", "imagegate-webhook").clone();
    service["spec"]["ports"][0]["port"] = "four-four-three".into();
    assert!(validate(&service).is_err());
}

#[test]
fn the_kustomize_base_is_the_chart_rendered() {
    let values = root().join("deploy/kustomize/values.yaml");
    let rendered = helm_template(&[], &[&values]).unwrap();
    let committed =
        std::fs::read_to_string(root().join("deploy/kustomize/base/imagegate.yaml")).unwrap();
    assert!(
        rendered == committed,
        "deploy/kustomize/base/imagegate.yaml is stale: regenerate it with\n  \
         .tools/bin/helm template imagegate deploy/helm/imagegate --namespace imagegate \
         --values deploy/kustomize/values.yaml > deploy/kustomize/base/imagegate.yaml"
    );
}

#[test]
fn the_kustomize_overlay_fills_in_the_certificates() {
    use imagegate_webhook::install::certs::{CertsSpec, write_all};
    // A copy of deploy/kustomize with fresh certificates in the overlay.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("kustomize");
    for sub in ["base", "overlay"] {
        std::fs::create_dir_all(copy.join(sub)).unwrap();
        for entry in std::fs::read_dir(root().join("deploy/kustomize").join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), copy.join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
    let certs = copy.join("overlay/certs");
    write_all(
        &certs,
        &CertsSpec {
            namespace: "imagegate".into(),
            service: "imagegate-webhook".into(),
            extra_names: vec![],
            validity: std::time::Duration::from_secs(3600),
            force: false,
        },
    )
    .unwrap();
    let objects = documents(&kustomize(&copy.join("overlay")).unwrap()).unwrap();
    for object in &objects {
        validate(object).unwrap_or_else(|e| panic!("{e:#}"));
        if object["kind"] != "Namespace" && !is_cluster_scoped(object) {
            assert_eq!(object["metadata"]["namespace"], "imagegate", "{object}");
        }
    }
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    let webhook = find(&objects, "ValidatingWebhookConfiguration", "imagegate");
    let bundle = webhook["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap();
    assert_eq!(decode_base64(bundle), ca, "the overlay copies the CA in");
    let secret = find(&objects, "Secret", "imagegate-certs");
    for key in [
        "ca.crt",
        "webhook.crt",
        "webhook.key",
        "agent.crt",
        "agent.key",
        "webhook-client.crt",
    ] {
        assert!(secret["data"][key].is_string(), "{key} in the Secret");
    }
}

fn is_cluster_scoped(object: &Value) -> bool {
    matches!(
        object["kind"].as_str(),
        Some(
            "ValidatingWebhookConfiguration"
                | "MutatingWebhookConfiguration"
                | "ClusterRole"
                | "ClusterRoleBinding"
        )
    )
}

fn decode_base64(text: &str) -> Vec<u8> {
    // Small and local: the test needs no base64 crate for one comparison.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text
        .bytes()
        .filter(|b| *b != b'=' && !b.is_ascii_whitespace())
    {
        let value = ALPHABET.iter().position(|a| *a == byte).expect("base64") as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

#[tokio::test]
async fn the_webhook_configurations_send_what_the_server_checks_where_it_serves() {
    use imagegate_webhook::{
        policy::Policy,
        policy_store::PolicyStore,
        review::admission::CHECKED_RESOURCES,
        server::{AppState, Routes, metrics::Metrics},
    };
    let objects = render(&["webhook.mutating.enabled=true"]);
    let policy = std::fs::read_to_string(root().join("deploy/policy/example-policy.yaml")).unwrap();
    let app = Routes::new(
        Arc::new(AppState {
            policy: PolicyStore::fixed(Policy::from_yaml(&policy).unwrap()),
            metrics: Arc::new(Metrics::new()),
            resolver: None,
            ledger: None,
            budgets: imagegate_webhook::server::limits::Budgets::new(Default::default()),
            decisions: None,
            replica: "test".into(),
        }),
        None,
    );
    let expected: BTreeSet<(String, String)> = CHECKED_RESOURCES
        .iter()
        .map(|(group, resource, _)| (group.to_string(), resource.to_string()))
        .collect();
    let service = find(&objects, "Service", "imagegate-webhook");
    for (kind, path) in [
        ("ValidatingWebhookConfiguration", "/validate"),
        ("MutatingWebhookConfiguration", "/mutate"),
    ] {
        let configuration = find(&objects, kind, "imagegate");
        let hook = &configuration["webhooks"][0];
        assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
        assert_eq!(hook["sideEffects"], "NoneOnDryRun");
        assert_eq!(hook["failurePolicy"], "Fail", "fail closed by default");
        assert!(hook["timeoutSeconds"].as_u64().unwrap() <= 10);
        let client = &hook["clientConfig"];
        assert_eq!(client["service"]["path"], path);
        assert_eq!(client["service"]["name"], "imagegate-webhook");
        assert_eq!(
            client["service"]["port"],
            service["spec"]["ports"][0]["port"]
        );
        assert_eq!(client["caBundle"], CA_BUNDLE);
        // Its own namespace and kube-system are never sent: the cluster
        // cannot lock itself out.
        let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
        assert_eq!(excluded["key"], "kubernetes.io/metadata.name");
        assert_eq!(excluded["operator"], "NotIn");
        let values: Vec<&str> = excluded["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(values.contains(&"imagegate") && values.contains(&"kube-system"));
        // Exactly the resources the server checks, on CREATE and UPDATE.
        let mut sent = BTreeSet::new();
        for rule in hook["rules"].as_array().unwrap() {
            assert_eq!(rule["operations"], serde_json::json!(["CREATE", "UPDATE"]));
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    sent.insert((
                        group.as_str().unwrap().to_string(),
                        resource.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
        assert_eq!(sent, expected, "{kind}");
        // The server answers that path with an AdmissionReview.
        let body = std::fs::read(
            root().join("webhook/tests/fixtures/apiserver-v1.28/admissionreview-3.json"),
        )
        .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        let body = serde_json::to_vec(body.get("body").unwrap_or(&body)).unwrap();
        let response = app
            .clone()
            .oneshot(
                axum::http::Request::post(path)
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let review: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(review["kind"], "AdmissionReview", "{path}");
    }
    // The webhook's probes are its own endpoints.
    let deployment = find(&objects, "Deployment", "imagegate-webhook");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(container["resources"]["limits"]["memory"].is_string());
    let pdb = find(&objects, "PodDisruptionBudget", "imagegate-webhook");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
}

/// The capabilities the rendered DaemonSet adds.
fn granted(objects: &[Value]) -> BTreeSet<String> {
    let daemonset = find(objects, "DaemonSet", "imagegate-agent");
    daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_agent_gets_exactly_the_capabilities_its_mode_and_kernel_need() {
    use imagegate_agent::{
        model::Mode,
        requirements::{KernelVersion, capabilities_needed},
    };
    let needed = |mode, kernel| -> BTreeSet<String> {
        capabilities_needed(mode, kernel)
            .iter()
            .map(|c| c.name.to_string())
            .collect()
    };
    let current = KernelVersion(6, 1);
    // Found on a real cluster: SYS_RESOURCE outside the host's bounding set
    // keeps the pod from starting, and no kernel since 5.11 needs it.
    assert_eq!(granted(&render(&[])), needed(Mode::Audit, current));
    assert!(!granted(&render(&[])).contains("SYS_RESOURCE"));
    assert_eq!(
        granted(&render(&["agent.mode=enforce"])),
        needed(Mode::Enforce, current)
    );
    assert_eq!(
        granted(&render(&["agent.sysResource=true"])),
        needed(Mode::Audit, KernelVersion(5, 10))
    );
    assert!(granted(&render(&["agent.sysAdmin=true"])).contains("SYS_ADMIN"));
}

/// Found on a real cluster: the webhook registration left the release
/// namespace out but the agents did not, and in enforce mode they killed
/// the webhook. One list drives all three.
#[test]
fn one_exemption_list_drives_the_registration_the_webhook_and_the_agents() {
    for sets in [&[][..], &["exemptNamespaces={kube-system,monitoring}"][..]] {
        let objects = render(sets);
        let args = |kind: &str, name: &str, flag: &str| -> Vec<String> {
            find(&objects, kind, name)["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|a| a.as_str()?.strip_prefix(flag).map(str::to_string))
                .collect()
        };
        let agent = args("DaemonSet", "imagegate-agent", "--exempt-pod-namespace=");
        let webhook = args("Deployment", "imagegate-webhook", "--exempt-namespace=");
        let registration: Vec<String> = find(
            &objects,
            "ValidatingWebhookConfiguration",
            "imagegate",
        )["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(agent, registration, "{sets:?}");
        assert_eq!(webhook, registration, "{sets:?}");
        assert_eq!(
            registration[0], "imagegate",
            "the release's own namespace, always"
        );
        assert!(registration.contains(&"kube-system".to_string()));
    }
}

#[test]
fn the_webhook_may_list_pods_write_events_and_reports_and_hold_its_lease_and_nothing_else() {
    let objects = render(&[]);
    let role = find(&objects, "ClusterRole", "imagegate-webhook");
    assert_eq!(
        role["rules"],
        serde_json::json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "get", "patch"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
            {"apiGroups": ["openreports.io"], "resources": ["reports", "clusterreports"],
             "verbs": ["get", "create", "update"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
        ])
    );
    let binding = find(&objects, "ClusterRoleBinding", "imagegate-webhook");
    assert_eq!(binding["subjects"][0]["name"], "imagegate-webhook");
    assert_eq!(binding["subjects"][0]["namespace"], "imagegate");
    // The Lease: in the release's namespace only, through a Role.
    let lease_role = find(&objects, "Role", "imagegate-webhook-reporter");
    assert_eq!(lease_role["metadata"]["namespace"], "imagegate");
    assert_eq!(
        lease_role["rules"],
        serde_json::json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                            "verbs": ["get", "create", "update"]}])
    );
    let lease_binding = find(&objects, "RoleBinding", "imagegate-webhook-reporter");
    assert_eq!(lease_binding["subjects"][0]["name"], "imagegate-webhook");
    let deployment = find(&objects, "Deployment", "imagegate-webhook");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], true);
    let args = pod["containers"][0]["args"].as_array().unwrap();
    assert!(args.contains(&"--report-events=on".into()), "{args:?}");
    assert!(args.contains(&"--admission-events=on".into()), "{args:?}");
    assert!(args.contains(&"--denied-result-ttl=1h".into()), "{args:?}");
    // Admission Events without reports: each replica writes its own (no
    // Lease), nobody watches them.
    let objects = render(&[
        "webhook.violationEvents=false",
        "webhook.reports.format=off",
    ]);
    let role = find(&objects, "ClusterRole", "imagegate-webhook");
    assert_eq!(
        role["rules"][1],
        serde_json::json!({"apiGroups": [""], "resources": ["events"],
                           "verbs": ["create", "get", "patch"]})
    );
    assert_eq!(role["rules"].as_array().unwrap().len(), 2, "{role}");
    assert!(!objects.iter().any(|o| o["kind"] == "Role"));
    // Without any Events and reports: no event or report rule, no Lease role.
    let objects = render(&[
        "webhook.violationEvents=false",
        "webhook.admissionEvents=false",
        "webhook.reports.format=off",
    ]);
    let role = find(&objects, "ClusterRole", "imagegate-webhook");
    assert_eq!(role["rules"].as_array().unwrap().len(), 1);
    assert!(!objects.iter().any(|o| o["kind"] == "Role"));
    // Without the rebuild, Events and reports: no token, no role.
    let objects = render(&[
        "webhook.adoptRunningPods=false",
        "webhook.violationEvents=false",
        "webhook.admissionEvents=false",
        "webhook.reports.format=off",
    ]);
    assert!(!objects.iter().any(|o| o["kind"] == "ClusterRole"));
    let deployment = find(&objects, "Deployment", "imagegate-webhook");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
}

#[test]
fn the_agent_daemonset_grants_what_the_agent_needs_and_no_more() {
    use imagegate_agent::requirements::HOST_PATHS;
    let objects = render(&[]);
    let daemonset = find(&objects, "DaemonSet", "imagegate-agent");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));

    // Mounts: every host path the agent uses, from the host path, with
    // write access only where it writes; plus the certificates and the
    // containerd socket (read-only).
    let volumes = pod["volumes"].as_array().unwrap();
    let mounts = container["volumeMounts"].as_array().unwrap();
    let host_path_of = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .map(str::to_string)
    };
    let mut host_mounts = BTreeSet::new();
    let mut runtime_folders = BTreeSet::new();
    for mount in mounts {
        let name = mount["name"].as_str().unwrap();
        let Some(host) = host_path_of(name) else {
            assert_eq!(name, "certs", "only the certificates come from elsewhere");
            assert_eq!(mount["readOnly"], true);
            continue;
        };
        let path = mount["mountPath"].as_str().unwrap();
        let read_only = mount["readOnly"] == true;
        if name.ends_with("-socket") {
            assert!(read_only, "the runtime's socket folder is read-only");
            assert_eq!(host, path);
            runtime_folders.insert(path.to_string());
            continue;
        }
        host_mounts.insert((path.to_string(), read_only));
        if path != "/var/lib/imagegate" {
            assert_eq!(host, path, "{name} mounts the same path from the host");
        }
    }
    let needed: BTreeSet<(String, bool)> = HOST_PATHS
        .iter()
        .map(|p| (p.path.to_string(), !p.writable))
        .collect();
    assert_eq!(host_mounts, needed);
    // auto: both runtimes' default socket folders, where the agent looks.
    let defaults: BTreeSet<String> = imagegate_agent::runtime::RuntimeKind::Auto
        .default_sockets()
        .iter()
        .map(|s| Path::new(s).parent().unwrap().display().to_string())
        .collect();
    assert!(
        runtime_folders.is_subset(&defaults) && runtime_folders.len() == 2,
        "{runtime_folders:?} of {defaults:?}"
    );

    // Probes through gRPC health, on the listener that serves only it,
    // bound to the pod's IP (where the kubelet probes), as metrics are.
    let args = container["args"].as_array().unwrap();
    for probe in ["readinessProbe", "livenessProbe"] {
        let port = container[probe]["grpc"]["port"]
            .as_u64()
            .expect("a gRPC probe");
        assert!(
            args.iter()
                .any(|a| a == &format!("--grpc-health-address=$(POD_IP):{port}")),
            "{probe} port {port} is the health listener, on the pod's IP"
        );
    }
    assert!(
        args.iter().any(|a| a
            .as_str()
            .is_some_and(|a| a.starts_with("--metrics-address=$(POD_IP):"))),
        "metrics on the pod's IP"
    );
    let pod_ip = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_IP")
        .expect("POD_IP in the env, for $(POD_IP) in the args");
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");

    // Agents follow every webhook replica through the feed's headless
    // Service; the webhook dials agents only when told to (upgrades).
    let feed = find(&objects, "Service", "imagegate-webhook-feed");
    assert_eq!(feed["spec"]["clusterIP"], "None");
    let feed_port = feed["spec"]["ports"][0]["port"].as_u64().unwrap();
    let deployment = find(&objects, "Deployment", "imagegate-webhook");
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    assert!(
        args.iter()
            .any(|a| a == &format!("--feed-listen=0.0.0.0:{feed_port}")),
        "{args:?}"
    );
    assert!(
        !args
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("--agent-service")),
        "{args:?}"
    );
    let daemonset = find(&objects, "DaemonSet", "imagegate-agent");
    let agent_args = daemonset["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    assert!(
        agent_args
            .iter()
            .any(|a| a
                == &format!("--webhook-feed=imagegate-webhook-feed.imagegate.svc:{feed_port}")),
        "{agent_args:?}"
    );
    // During an upgrade from a release before the feed, the webhook also
    // dials the agents' headless Service.
    let objects = render(&["webhook.dialAgents=true"]);
    let service = find(&objects, "Service", "imagegate-agent");
    assert_eq!(service["spec"]["clusterIP"], "None");
    let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    let deployment = find(&objects, "Deployment", "imagegate-webhook");
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    assert!(
        args.iter()
            .any(|a| a == &format!("--agent-service=imagegate-agent.imagegate.svc:{port}")),
        "{args:?}"
    );
}

/// Every `--flag` the manifests pass is one the binary accepts.
#[test]
fn the_agent_mounts_the_runtime_it_is_told_and_refuses_one_it_does_not_know() {
    let agent = |sets: &[&str]| {
        let objects = render(sets);
        let pod =
            find(&objects, "DaemonSet", "imagegate-agent")["spec"]["template"]["spec"].clone();
        let args: Vec<String> = pod["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let folders: Vec<(String, String)> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["name"].as_str().unwrap().ends_with("-socket"))
            .map(|v| {
                (
                    v["hostPath"]["path"].as_str().unwrap().to_string(),
                    v["hostPath"]["type"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        (args, folders)
    };
    let pair = |p: &str, t: &str| (p.to_string(), t.to_string());
    let (args, folders) = agent(&[]);
    assert!(args.contains(&"--runtime=auto".to_string()));
    assert!(!args.iter().any(|a| a.starts_with("--runtime-socket")));
    assert_eq!(
        folders,
        [
            pair("/run/containerd", "DirectoryOrCreate"),
            pair("/var/run/crio", "DirectoryOrCreate")
        ]
    );
    let (args, folders) = agent(&["agent.runtime=cri-o"]);
    assert!(args.contains(&"--runtime=cri-o".to_string()));
    assert_eq!(folders, [pair("/var/run/crio", "Directory")]);
    let (args, folders) = agent(&["agent.runtimeSocket=/run/k3s/containerd/containerd.sock"]);
    assert!(args.contains(&"--runtime-socket=/run/k3s/containerd/containerd.sock".to_string()));
    assert_eq!(folders, [pair("/run/k3s/containerd", "Directory")]);
    // Values from before agent.runtime keep working.
    let (args, folders) = agent(&["agent.containerdSocket=/run/other/containerd.sock"]);
    assert!(args.contains(&"--runtime-socket=/run/other/containerd.sock".to_string()));
    assert_eq!(folders, [pair("/run/other", "Directory")]);

    let mut all = vec![format!("certs.caBundle={CA_BUNDLE}")];
    all.push("agent.runtime=docker".into());
    let sets: Vec<&str> = all.iter().map(String::as_str).collect();
    let error = helm_template(&sets, &[]).unwrap_err().to_string();
    assert!(
        error.contains("agent.runtime is \"docker\": it must be auto, containerd or cri-o"),
        "{error}"
    );
}

#[test]
fn the_binaries_accept_every_flag_the_manifests_pass() {
    let objects = render(&[
        "webhook.mutating.enabled=true",
        "registries.credentialsSecret=x",
    ]);
    let bin_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    for (kind, name, binary, help_args) in [
        (
            "DaemonSet",
            "imagegate-agent",
            "imagegate-agent",
            &["--help"][..],
        ),
        (
            "Deployment",
            "imagegate-webhook",
            "imagegate-webhook",
            &["serve", "--help"][..],
        ),
    ] {
        let path = bin_dir.join(binary);
        assert!(
            path.exists(),
            "{} is not built: run the tests with `cargo xtask test`",
            path.display()
        );
        let help = Command::new(&path).args(help_args).output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout).into_owned();
        let object = find(&objects, kind, name);
        for arg in object["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
        {
            let arg = arg.as_str().unwrap();
            let Some(flag) = arg.strip_prefix("--").map(|f| f.split('=').next().unwrap()) else {
                continue;
            };
            assert!(
                help.contains(&format!("--{flag}")),
                "{binary} has no --{flag} (manifest passes {arg})"
            );
        }
    }
}

#[test]
fn signature_trust_material_is_mounted_where_the_policy_names_it() {
    let objects = render(&[
        "signatures.keysSecret=release-keys",
        "signatures.trustedRootConfigMap=sigstore-root",
    ]);
    let deployment = find(&objects, "Deployment", "imagegate-webhook");
    let pod = &deployment["spec"]["template"]["spec"];
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    let mounted = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("{path} not mounted: {mounts:?}"))["name"]
            .clone()
    };
    let volumes = pod["volumes"].as_array().unwrap();
    let volume = |name: &Value| volumes.iter().find(|v| v["name"] == *name).unwrap().clone();
    let keys = volume(&mounted("/etc/imagegate/keys"));
    assert_eq!(keys["secret"]["secretName"], "release-keys");
    let root = volume(&mounted("/etc/imagegate/sigstore"));
    assert_eq!(root["configMap"]["name"], "sigstore-root");
    // Off by default: nothing mounted.
    let objects = render(&[]);
    let deployment = find(&objects, "Deployment", "imagegate-webhook");
    let mounts =
        deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"].to_string();
    assert!(!mounts.contains("/etc/imagegate/keys") && !mounts.contains("sigstore"));
}
