//! Manifest requests to registries, each within a deadline, each body
//! within a bound, with the registry's auth flow.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use bytes::Bytes;
use imagegate_proto::digest::Digest;
use reqwest::{
    Method, StatusCode,
    header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE},
};

use super::{
    MAX_MANIFEST_BYTES, MAX_TOKEN_BYTES,
    auth::{self, Challenge, Kept, TokenAnswer},
    body::{BodyError, error_text, read_bounded},
};
use imagegate_plumbing::errors::error_chain;

use super::Credentials;

/// How registries are reached; from `serve`'s flags.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Deadline of one request (connect, headers and body).
    pub timeout: Duration,
    /// Hosts reached over plain HTTP. Nothing else is.
    pub plain_http: Vec<String>,
    /// Extra CA bundles (PEM), per host; trusted for that host only.
    pub ca_bundles: Vec<(String, PathBuf)>,
    pub credentials: Credentials,
}

/// Why a request failed. Messages say what to check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("the registry sent {what} whose content is {actual}, not {expected}")]
    Mismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("the registry answered {0:?} as the digest, which is not a digest")]
    InvalidDigest(String),
    #[error("timed out")]
    TimedOut,
    #[error("{0}")]
    Other(String),
}

/// A failed request: its deadline, or what went wrong with its causes.
fn transport(error: &reqwest::Error) -> RegistryError {
    if error.is_timeout() {
        RegistryError::TimedOut
    } else {
        RegistryError::Other(error_chain(error))
    }
}

/// What a HEAD on a manifest told.
#[derive(Clone, Debug)]
pub struct Head {
    /// `Docker-Content-Digest`, if the registry sent it.
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
}

/// A manifest read with GET, its content checked against its digest.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub digest: Digest,
    pub media_type: Option<String>,
    pub body: Bytes,
}

pub struct RegistryClient {
    default_http: reqwest::Client,
    /// Clients of hosts with their own CA.
    by_host: HashMap<String, reqwest::Client>,
    settings: Settings,
    kept: Kept,
}

/// The registry client could not be built (a CA bundle, the TLS set-up).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

impl RegistryClient {
    pub fn new(settings: Settings) -> Result<Self, ClientError> {
        Self::build(settings).map_err(ClientError)
    }

    fn build(settings: Settings) -> Result<Self, String> {
        let builder = || {
            reqwest::Client::builder()
                .timeout(settings.timeout)
                .connect_timeout(settings.timeout)
                // Manifests are served in place; a few redirects for
                // registries that front a CDN, never a chain.
                .redirect(reqwest::redirect::Policy::limited(3))
                .user_agent(concat!("imagegate/", env!("CARGO_PKG_VERSION")))
        };
        let mut by_host = HashMap::new();
        for (host, path) in &settings.ca_bundles {
            let pem = std::fs::read(path).map_err(|e| {
                format!(
                    "cannot read the CA bundle {} for {host}: {e}",
                    path.display()
                )
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                format!(
                    "the CA bundle {} for {host} is not PEM: {e}",
                    path.display()
                )
            })?;
            let client = builder()
                .tls_certs_merge(certificates)
                .build()
                .map_err(|e| format!("an HTTP client for {host}: {}", error_chain(&e)))?;
            by_host.insert(host.to_ascii_lowercase(), client);
        }
        Ok(Self {
            default_http: builder()
                .build()
                .map_err(|e| format!("an HTTP client: {}", error_chain(&e)))?,
            by_host,
            settings,
            kept: Kept::default(),
        })
    }

    fn http_for(&self, host: &str) -> &reqwest::Client {
        self.by_host
            .get(&host.to_ascii_lowercase())
            .unwrap_or(&self.default_http)
    }

    /// `https://host` (or `http://` for hosts named plain), with Docker
    /// Hub's API host for `docker.io`.
    fn base_url(&self, host: &str) -> String {
        let scheme = if self
            .settings
            .plain_http
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
        {
            "http"
        } else {
            "https"
        };
        let endpoint = if host.eq_ignore_ascii_case("docker.io") {
            "registry-1.docker.io"
        } else {
            host
        };
        format!("{scheme}://{endpoint}")
    }

    /// HEAD `/v2/<path>/manifests/<reference>` (a tag or a digest).
    pub async fn head_manifest(
        &self,
        host: &str,
        path: &str,
        reference: &str,
        accept: &[&str],
    ) -> Result<Head, RegistryError> {
        let what = format!("{host}/{path}:{reference}");
        let response = self
            .request(
                Method::HEAD,
                host,
                path,
                &format!("manifests/{reference}"),
                accept,
                &what,
            )
            .await?;
        let digest = match response.headers().get("docker-content-digest") {
            None => None,
            Some(value) => {
                let text = value.to_str().unwrap_or_default();
                Some(
                    Digest::parse(text)
                        .map_err(|_| RegistryError::InvalidDigest(text.to_string()))?,
                )
            }
        };
        Ok(Head {
            digest,
            media_type: media_type(&response),
        })
    }

    /// GET `/v2/<path>/manifests/<reference>`, at most
    /// [`MAX_MANIFEST_BYTES`]. Its digest is computed from the bytes: by
    /// `reference`'s algorithm when it is a digest (which the bytes must
    /// then hash to), else by the algorithm of `Docker-Content-Digest`
    /// (which must agree), else sha256.
    pub async fn get_manifest(
        &self,
        host: &str,
        path: &str,
        reference: &str,
        accept: &[&str],
    ) -> Result<Fetched, RegistryError> {
        let what = format!("the manifest {host}/{path}@{reference}");
        let response = self
            .request(
                Method::GET,
                host,
                path,
                &format!("manifests/{reference}"),
                accept,
                &what,
            )
            .await?;
        let media_type = media_type(&response);
        let header = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok());
        let body = read_bounded(response, MAX_MANIFEST_BYTES, &what)
            .await
            .map_err(|e| match body_error(e) {
                RegistryError::TooLarge(e) => RegistryError::TooLarge(format!(
                    "{e}; the registry's own limit on a manifest is the same"
                )),
                other => other,
            })?;
        let expected = Digest::parse(reference).ok().or(header);
        let digest = match &expected {
            Some(expected) => {
                let actual = content_digest(expected.algorithm(), &body);
                if actual != *expected {
                    return Err(RegistryError::Mismatch {
                        what,
                        expected: expected.to_string(),
                        actual: actual.to_string(),
                    });
                }
                actual
            }
            None => content_digest("sha256", &body),
        };
        Ok(Fetched {
            digest,
            media_type,
            body,
        })
    }

    /// GET `/v2/<path>/referrers/<digest>` (OCI 1.1): the referrers
    /// index, at most [`MAX_MANIFEST_BYTES`]; `None` when the registry
    /// answers 404 (it has no referrers API: look for the tag index).
    pub async fn get_referrers(
        &self,
        host: &str,
        path: &str,
        digest: &Digest,
    ) -> Result<Option<Bytes>, RegistryError> {
        let what = format!("the referrers of {host}/{path}@{digest}");
        let response = match self
            .request(
                Method::GET,
                host,
                path,
                &format!("referrers/{digest}"),
                &[imagegate_proto::media_types::OCI_INDEX],
                &what,
            )
            .await
        {
            Ok(response) => response,
            Err(RegistryError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        read_bounded(response, MAX_MANIFEST_BYTES, &what)
            .await
            .map(Some)
            .map_err(body_error)
    }

    /// GET `/v2/<path>/blobs/<digest>`, at most `limit` bytes, which must
    /// hash to `digest`.
    pub async fn get_blob(
        &self,
        host: &str,
        path: &str,
        digest: &Digest,
        limit: usize,
    ) -> Result<Bytes, RegistryError> {
        let what = format!("the blob {host}/{path}@{digest}");
        let response = self
            .request(
                Method::GET,
                host,
                path,
                &format!("blobs/{digest}"),
                &["*/*"],
                &what,
            )
            .await?;
        let body = read_bounded(response, limit, &what)
            .await
            .map_err(body_error)?;
        let actual = content_digest(digest.algorithm(), &body);
        if actual != *digest {
            return Err(RegistryError::Mismatch {
                what,
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(body)
    }

    /// Sends a request for `/v2/<path>/<resource>`, answering an auth
    /// challenge once; the response is a success, or the error it means.
    async fn request(
        &self,
        method: Method,
        host: &str,
        path: &str,
        resource: &str,
        accept: &[&str],
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = format!("{}/v2/{path}/{resource}", self.base_url(host));
        let scope = format!("repository:{path}:pull");
        let http = self.http_for(host);
        let mut authorization = self.kept.get(host, &scope);
        let mut answered_challenge = false;
        loop {
            let mut request = http
                .request(method.clone(), &url)
                .header(ACCEPT, accept.join(", "));
            if let Some(value) = &authorization {
                request = request.header(AUTHORIZATION, value);
            }
            let response = request.send().await.map_err(|e| transport(&e))?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status == StatusCode::UNAUTHORIZED && !answered_challenge {
                answered_challenge = true;
                self.kept.forget(host, &scope);
                let found = auth::challenges(
                    response
                        .headers()
                        .get_all(WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                );
                authorization = Some(self.answer(host, &scope, &found).await?);
                continue;
            }
            let message = if method == Method::HEAD {
                String::new()
            } else {
                error_text(response).await
            };
            let detail = if message.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {message}")
            };
            return Err(match status {
                StatusCode::NOT_FOUND => RegistryError::NotFound(format!("{what} ({detail})")),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    RegistryError::Unauthorized(format!("{what}: {detail}"))
                }
                _ => RegistryError::Other(format!("{what}: {detail}")),
            });
        }
    }

    /// The `Authorization` that answers `challenges` for `host`.
    async fn answer(
        &self,
        host: &str,
        scope: &str,
        challenges: &[Challenge],
    ) -> Result<String, RegistryError> {
        let credentials = self.settings.credentials.for_host(host);
        match challenges.first() {
            Some(Challenge::Bearer {
                realm,
                service,
                scope: asked,
            }) => {
                let scope = asked.as_deref().unwrap_or(scope);
                let mut request = self.http_for(host).get(realm).query(&[("scope", scope)]);
                if let Some(service) = service {
                    request = request.query(&[("service", service)]);
                }
                if let Some((user, password)) = credentials {
                    request = request.header(AUTHORIZATION, auth::basic(user, password));
                }
                let response = request.send().await.map_err(|e| {
                    RegistryError::Other(format!("asking {realm} for a token: {}", error_chain(&e)))
                })?;
                let status = response.status();
                if !status.is_success() {
                    let message = error_text(response).await;
                    let text =
                        format!("the token service {realm} answered HTTP {status}: {message}");
                    return Err(
                        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                            RegistryError::Unauthorized(text)
                        } else {
                            RegistryError::Other(text)
                        },
                    );
                }
                let body = read_bounded(response, MAX_TOKEN_BYTES, "the token answer")
                    .await
                    .map_err(|e| RegistryError::Other(e.to_string()))?;
                let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
                    RegistryError::Other(format!("the token answer of {realm} is not JSON: {e}"))
                })?;
                let (value, lifetime) = answer.authorization().ok_or_else(|| {
                    RegistryError::Other(format!("the token answer of {realm} holds no token"))
                })?;
                self.kept.keep(host, scope, value.clone(), lifetime);
                Ok(value)
            }
            Some(Challenge::Basic) => match credentials {
                Some((user, password)) => {
                    let value = auth::basic(user, password);
                    self.kept
                        .keep(host, scope, value.clone(), Duration::from_secs(3600));
                    Ok(value)
                }
                None => Err(RegistryError::Unauthorized(format!(
                    "{host} wants a username and password and imagegate has none for it"
                ))),
            },
            None => Err(RegistryError::Unauthorized(format!(
                "{host} answered 401 without a challenge imagegate can answer (Basic or Bearer)"
            ))),
        }
    }
}

fn body_error(e: BodyError) -> RegistryError {
    match e {
        BodyError::TooLarge { .. } => RegistryError::TooLarge(e.to_string()),
        BodyError::TimedOut { .. } => RegistryError::TimedOut,
        BodyError::Read { .. } => RegistryError::Other(e.to_string()),
    }
}

fn media_type(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The digest of `bytes` by `algorithm` (one [`Digest`] knows).
pub fn content_digest(algorithm: &str, bytes: &[u8]) -> Digest {
    let which = match algorithm {
        "sha384" => &ring::digest::SHA384,
        "sha512" => &ring::digest::SHA512,
        _ => &ring::digest::SHA256,
    };
    let hash = ring::digest::digest(which, bytes);
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let name = match algorithm {
        "sha384" | "sha512" => algorithm,
        _ => "sha256",
    };
    Digest::parse(&format!("{name}:{hex}")).expect("a hash is a digest")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_digests_by_algorithm() {
        assert_eq!(
            content_digest("sha256", b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(
            content_digest("sha512", b"x")
                .to_string()
                .starts_with("sha512:")
        );
    }
}
