//! Offline checks of imagegate's deploy files: render the Helm chart and
//! the Kustomize overlay with the real `helm` and `kubectl`, and validate
//! every object against the Kubernetes API schemas (k8s-openapi's types,
//! generated from them; unknown fields are errors, as with `kubectl
//! apply --validate=strict`). No cluster is needed.

pub mod crd;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// A tool from `.tools/bin` (setup puts helm there), else from `PATH`.
pub fn tool(name: &str) -> PathBuf {
    let local = root().join(".tools/bin").join(name);
    if local.exists() {
        local
    } else {
        PathBuf::from(name)
    }
}

fn run(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}: run `cargo xtask setup`"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `helm template` of the chart with `--set` pairs and values files.
pub fn helm_template(sets: &[&str], values: &[&Path]) -> Result<String> {
    let mut command = Command::new(tool("helm"));
    command
        .args(["template", "imagegate"])
        .arg(root().join("deploy/helm/imagegate"))
        .args(["--namespace", "imagegate"]);
    for set in sets {
        command.args(["--set", set]);
    }
    for file in values {
        command.arg("--values").arg(file);
    }
    run(&mut command)
}

/// `kubectl kustomize DIR`.
pub fn kustomize(dir: &Path) -> Result<String> {
    run(Command::new(tool("kubectl")).arg("kustomize").arg(dir))
}

/// The YAML documents of a stream, as JSON values (empty ones dropped).
pub fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

fn strict<T: DeserializeOwned>(object: &Value) -> Result<()> {
    let mut unknown = Vec::new();
    let _: T = serde_ignored::deserialize(object.clone(), |path| unknown.push(path.to_string()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !unknown.is_empty() {
        bail!("fields the schema does not have: {unknown:?}");
    }
    Ok(())
}

/// Validates one object against its kind's schema: the core API's types,
/// the Prometheus Operator's CRDs (vendored); cert-manager's kinds are
/// checked for the fields every object has.
pub fn validate(object: &Value) -> Result<()> {
    let object = &go_base64(object);
    use k8s_openapi::api::{
        admissionregistration::v1 as admission, apps::v1 as apps, core::v1 as core,
        policy::v1 as policy, rbac::v1 as rbac,
    };
    let api_version = object["apiVersion"].as_str().unwrap_or("");
    let kind = object["kind"].as_str().unwrap_or("");
    let name = object["metadata"]["name"].as_str().unwrap_or("");
    let result = match (api_version, kind) {
        ("v1", "Namespace") => strict::<core::Namespace>(object),
        ("v1", "ServiceAccount") => strict::<core::ServiceAccount>(object),
        ("v1", "ConfigMap") => strict::<core::ConfigMap>(object),
        ("v1", "Secret") => strict::<core::Secret>(object),
        ("v1", "Service") => strict::<core::Service>(object),
        ("apps/v1", "Deployment") => strict::<apps::Deployment>(object),
        ("apps/v1", "DaemonSet") => strict::<apps::DaemonSet>(object),
        ("policy/v1", "PodDisruptionBudget") => strict::<policy::PodDisruptionBudget>(object),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => strict::<rbac::ClusterRole>(object),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            strict::<rbac::ClusterRoleBinding>(object)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => strict::<rbac::Role>(object),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => strict::<rbac::RoleBinding>(object),
        ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
            strict::<admission::ValidatingWebhookConfiguration>(object)
        }
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            strict::<admission::MutatingWebhookConfiguration>(object)
        }
        ("cert-manager.io/v1", "Issuer" | "Certificate") => {
            if name.is_empty() || !object["spec"].is_object() {
                Err(anyhow::anyhow!("needs metadata.name and spec"))
            } else {
                Ok(())
            }
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => strict::<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        >(object),
        ("monitoring.coreos.com/v1", "ServiceMonitor" | "PodMonitor" | "PrometheusRule") => {
            against_crd(object)
        }
        _ => Err(anyhow::anyhow!(
            "no schema known for this kind: add it here"
        )),
    };
    result.with_context(|| format!("{api_version} {kind} {name:?}"))
}

/// Checks an object against the vendored CRD (deploy/check/schemas) that
/// defines its kind.
fn against_crd(object: &Value) -> Result<()> {
    let dir = root().join("deploy/check/schemas");
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let crd = crd::Crd::load(&path)?;
        if crd.defines(object) {
            let violations = crd.violations(object)?;
            if violations.is_empty() {
                return Ok(());
            }
            bail!("against {}:\n  {}", path.display(), violations.join("\n  "));
        }
    }
    bail!("no CRD in {} defines this kind", dir.display())
}

/// Kubernetes decodes base64 fields with Go's decoder, which skips line
/// breaks (kustomize folds long values); k8s-openapi's does not. Fold
/// them back before the strict decode.
fn go_base64(object: &Value) -> Value {
    let mut object = object.clone();
    let unfold = |v: &mut Value| {
        if let Some(text) = v.as_str() {
            *v = Value::String(text.split_whitespace().collect());
        }
    };
    if object["kind"] == "Secret"
        && let Some(data) = object.get_mut("data").and_then(Value::as_object_mut)
    {
        data.values_mut().for_each(unfold);
    }
    if let Some(hooks) = object.get_mut("webhooks").and_then(Value::as_array_mut) {
        for hook in hooks {
            if let Some(bundle) = hook.pointer_mut("/clientConfig/caBundle") {
                unfold(bundle);
            }
        }
    }
    object
}

/// The first object of `kind` named `name`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}
