//! `imagegate-webhook apiserver-config`: the files the kube-apiserver needs
//! to use imagegate as its ImagePolicyWebhook backend: an
//! `AdmissionConfiguration`, the kubeconfig it names (where the webhook is,
//! the CA to trust, the client certificate to present), and copies of that
//! CA and certificate, all with the paths they will have on the control
//! plane node.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ApiserverError {
    #[error("--server {0:?} must be an https:// URL ending in /image_policy")]
    Server(String),
    #[error("reading {path}: {source}; make it with `imagegate-webhook certs --out DIR`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
}

/// What to write.
#[derive(Clone, Debug)]
pub struct ApiserverSpec {
    /// The webhook's ImageReview URL as the apiserver reaches it.
    pub server: String,
    /// The output of `imagegate-webhook certs`.
    pub certs: PathBuf,
    /// Where the files will be on the control plane node.
    pub host_dir: PathBuf,
    pub allow_ttl: Duration,
    pub deny_ttl: Duration,
    pub retry_backoff: Duration,
}

/// The files written.
pub const ADMISSION_CONFIG: &str = "admission-config.yaml";
pub const KUBECONFIG: &str = "imagegate-kubeconfig.yaml";
pub const CA: &str = "ca.crt";
pub const CLIENT_CERT: &str = "apiserver-client.crt";
pub const CLIENT_KEY: &str = "apiserver-client.key";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionConfiguration {
    pub api_version: String,
    pub kind: String,
    pub plugins: Vec<Plugin>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Plugin {
    pub name: String,
    pub configuration: PluginConfiguration,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginConfiguration {
    pub image_policy: ImagePolicyConfig,
}

/// The plugin's own configuration; TTLs in seconds, the backoff in
/// milliseconds, as the apiserver reads them.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImagePolicyConfig {
    pub kube_config_file: String,
    #[serde(rename = "allowTTL")]
    pub allow_ttl: u64,
    #[serde(rename = "denyTTL")]
    pub deny_ttl: u64,
    pub retry_backoff: u64,
    pub default_allow: bool,
}

/// Writes the five files into `out`; returns their paths.
pub fn write(out: &Path, spec: &ApiserverSpec) -> Result<Vec<PathBuf>, ApiserverError> {
    if !spec.server.starts_with("https://") || !spec.server.ends_with("/image_policy") {
        return Err(ApiserverError::Server(spec.server.clone()));
    }
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ApiserverError::Write { path, source }
    };
    fs::create_dir_all(out).map_err(write_err(out))?;
    let on_node = |name: &str| spec.host_dir.join(name).display().to_string();

    let config = AdmissionConfiguration {
        api_version: "apiserver.config.k8s.io/v1".into(),
        kind: "AdmissionConfiguration".into(),
        plugins: vec![Plugin {
            name: "ImagePolicyWebhook".into(),
            configuration: PluginConfiguration {
                image_policy: ImagePolicyConfig {
                    kube_config_file: on_node(KUBECONFIG),
                    allow_ttl: spec.allow_ttl.as_secs(),
                    deny_ttl: spec.deny_ttl.as_secs(),
                    retry_backoff: spec.retry_backoff.as_millis() as u64,
                    // Fail closed: a webhook that cannot be reached denies.
                    default_allow: false,
                },
            },
        }],
    };
    // The kubeconfig's roles are the reverse of kubectl's: "cluster" is the
    // webhook, "user" is the apiserver.
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "imagegate", "cluster": {
            "server": spec.server,
            "certificate-authority": on_node(CA),
        }}],
        "users": [{"name": "kube-apiserver", "user": {
            "client-certificate": on_node(CLIENT_CERT),
            "client-key": on_node(CLIENT_KEY),
        }}],
        "contexts": [{"name": "imagegate", "context": {"cluster": "imagegate", "user": "kube-apiserver"}}],
        "current-context": "imagegate",
    });

    let mut written = Vec::new();
    let admission = out.join(ADMISSION_CONFIG);
    fs::write(&admission, serde_yaml_ng::to_string(&config)?).map_err(write_err(&admission))?;
    written.push(admission);
    let kube = out.join(KUBECONFIG);
    fs::write(&kube, serde_yaml_ng::to_string(&kubeconfig)?).map_err(write_err(&kube))?;
    written.push(kube);
    for name in [CA, CLIENT_CERT, CLIENT_KEY] {
        let from = spec.certs.join(name);
        let bytes = fs::read(&from).map_err(|source| ApiserverError::Read {
            path: from.clone(),
            source,
        })?;
        let to = out.join(name);
        fs::write(&to, bytes).map_err(write_err(&to))?;
        if name == CLIENT_KEY {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).map_err(write_err(&to))?;
        }
        written.push(to);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::certs::{CertsSpec, write_all};

    fn spec(certs: &Path) -> ApiserverSpec {
        ApiserverSpec {
            server: "https://imagegate-webhook.imagegate.svc:8443/image_policy".into(),
            certs: certs.to_path_buf(),
            host_dir: "/etc/kubernetes/imagegate".into(),
            allow_ttl: Duration::from_secs(50),
            deny_ttl: Duration::from_secs(50),
            retry_backoff: Duration::from_millis(500),
        }
    }

    #[test]
    fn writes_what_the_apiserver_reads_and_parses_back() {
        let certs = tempfile::tempdir().unwrap();
        write_all(
            certs.path(),
            &CertsSpec {
                namespace: "imagegate".into(),
                service: "imagegate-webhook".into(),
                extra_names: vec![],
                validity: Duration::from_secs(3600),
                force: false,
            },
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let written = write(out.path(), &spec(certs.path())).unwrap();
        assert_eq!(written.len(), 5);

        let text = fs::read_to_string(out.path().join(ADMISSION_CONFIG)).unwrap();
        let config: AdmissionConfiguration = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(config.kind, "AdmissionConfiguration");
        let plugin = &config.plugins[0];
        assert_eq!(plugin.name, "ImagePolicyWebhook");
        let policy = &plugin.configuration.image_policy;
        assert!(!policy.default_allow, "must fail closed");
        assert_eq!(
            (policy.allow_ttl, policy.deny_ttl, policy.retry_backoff),
            (50, 50, 500)
        );
        assert_eq!(
            policy.kube_config_file,
            "/etc/kubernetes/imagegate/imagegate-kubeconfig.yaml"
        );
        // The key names the apiserver's plugin expects, exactly.
        for key in [
            "allowTTL:",
            "denyTTL:",
            "retryBackoff:",
            "defaultAllow:",
            "kubeConfigFile:",
        ] {
            assert!(text.contains(key), "{key} in {text}");
        }

        let kube: serde_json::Value =
            serde_yaml_ng::from_str(&fs::read_to_string(out.path().join(KUBECONFIG)).unwrap())
                .unwrap();
        assert_eq!(kube["current-context"], "imagegate");
        assert_eq!(
            kube["clusters"][0]["cluster"]["server"],
            "https://imagegate-webhook.imagegate.svc:8443/image_policy"
        );
        assert_eq!(
            kube["users"][0]["user"]["client-key"],
            "/etc/kubernetes/imagegate/apiserver-client.key"
        );
        assert_eq!(
            fs::read(out.path().join(CA)).unwrap(),
            fs::read(certs.path().join("ca.crt")).unwrap()
        );
    }

    #[test]
    fn refuses_a_server_that_is_not_the_image_policy_url() {
        let certs = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        for server in ["http://x/image_policy", "https://x/validate"] {
            let err = write(
                out.path(),
                &ApiserverSpec {
                    server: server.into(),
                    ..spec(certs.path())
                },
            )
            .unwrap_err();
            assert!(matches!(err, ApiserverError::Server(_)), "{err}");
        }
    }

    #[test]
    fn missing_certificates_say_how_to_make_them() {
        let out = tempfile::tempdir().unwrap();
        let err = write(out.path(), &spec(Path::new("/nonexistent"))).unwrap_err();
        assert!(err.to_string().contains("imagegate-webhook certs"), "{err}");
    }
}
