//! Registry credentials from a dockerconfigjson file: the format of
//! Kubernetes pull secrets (`kubernetes.io/dockerconfigjson`) and of
//! `~/.docker/config.json`.

use std::collections::HashMap;

use base64::Engine;
use serde::Deserialize;

/// A file that cannot be used as credentials.
/// A Docker config that is not one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(String);

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a dockerconfigjson file: {reason}")]
    Format { path: String, reason: String },
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Username and password per registry host (lower-case, with port).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    by_host: HashMap<String, (String, String)>,
}

impl Credentials {
    pub fn load(path: &std::path::Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read(path).map_err(|source| CredentialsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| CredentialsError::Format {
            path: path.display().to_string(),
            reason: e.0,
        })
    }

    /// Credentials from a Docker config's JSON.
    pub fn parse(json: &[u8]) -> Result<Self, FormatError> {
        Self::parse_text(json).map_err(FormatError)
    }

    fn parse_text(json: &[u8]) -> Result<Self, String> {
        let config: DockerConfig = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let mut by_host = HashMap::new();
        for (key, entry) in config.auths {
            let pair = match (entry.username, entry.password, entry.auth) {
                (Some(user), Some(password), _) => (user, password),
                (_, _, Some(auth)) => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|e| format!("auths[{key:?}].auth is not base64: {e}"))?;
                    let text = String::from_utf8(decoded)
                        .map_err(|_| format!("auths[{key:?}].auth is not UTF-8"))?;
                    let (user, password) = text
                        .split_once(':')
                        .ok_or_else(|| format!("auths[{key:?}].auth is not user:password"))?;
                    (user.to_string(), password.to_string())
                }
                _ => {
                    return Err(format!(
                        "auths[{key:?}] has neither auth nor username and password"
                    ));
                }
            };
            by_host.insert(host_of(&key), pair);
        }
        Ok(Self { by_host })
    }

    /// The username and password for `host`, if any.
    /// The credentials for `host`, compared case-insensitively (the keys
    /// are lower-cased when read).
    pub fn for_host(&self, host: &str) -> Option<&(String, String)> {
        self.by_host.get(&host.to_ascii_lowercase())
    }

    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.by_host.keys().map(String::as_str)
    }
}

/// `https://index.docker.io/v1/` -> `docker.io`; `Registry:5000` -> `registry:5000`.
fn host_of(key: &str) -> String {
    let without_scheme = key.split_once("://").map(|(_, rest)| rest).unwrap_or(key);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_encodings_and_normalises_hosts() {
        let json = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNzOndvcmQ="},
            "Registry.Local:5000": {"username": "ci", "password": "s3cret"}
        }}"#;
        let creds = Credentials::parse(json).unwrap();
        assert_eq!(
            creds.for_host("docker.io"),
            Some(&("user".into(), "pass:word".into()))
        );
        assert_eq!(
            creds.for_host("registry.local:5000"),
            Some(&("ci".into(), "s3cret".into()))
        );
        assert_eq!(creds.for_host("quay.io"), None);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert!(Credentials::parse(b"{").is_err());
        let e = Credentials::parse(br#"{"auths": {"r": {"auth": "!!"}}}"#).unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
        let e = Credentials::parse(br#"{"auths": {"r": {}}}"#).unwrap_err();
        assert!(e.to_string().contains("neither auth nor username"), "{e}");
        assert!(
            Credentials::parse(br#"{}"#)
                .unwrap()
                .hosts()
                .next()
                .is_none()
        );
    }
}
