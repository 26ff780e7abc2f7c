//! A real OCI registry for tests: Debian's `docker-registry` (distribution
//! 2.8) on loopback, plain HTTP or TLS with htpasswd Basic auth, filled with
//! hand-made images whose digests the test computes itself.

use std::os::unix::process::CommandExt;
use std::{
    net::{IpAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use oci_client::{
    Client, Reference,
    client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol},
    secrets::RegistryAuth,
};
use serde_json::json;

use crate::ca::Ca;

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A running registry; killed on drop.
pub struct Registry {
    child: Child,
    pub host: String,
    pub ca_file: Option<PathBuf>,
    pub credentials: Option<(String, String)>,
    dir: tempfile::TempDir,
}

pub fn sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// Plain HTTP, anonymous.
    pub fn plain() -> Self {
        Self::start(LOOPBACK, None, None, None)
    }

    /// Plain HTTP with htpasswd Basic auth (the npm Sigstore signer needs
    /// an auth challenge, and speaks plain HTTP to 127.0.0.1 only).
    pub fn plain_basic(user: &str, password: &str) -> Self {
        Self::start(LOOPBACK, None, Some((user, password)), None)
    }

    /// HTTPS with a certificate from `ca`, and htpasswd Basic auth.
    pub fn tls_basic(ca: &Ca, user: &str, password: &str) -> Self {
        Self::start(LOOPBACK, Some(ca), Some((user, password)), None)
    }

    /// Like [`Self::tls_basic`], listening on `ip` (a pod network's gateway,
    /// so pods reach it as a registry outside the cluster).
    pub fn tls_basic_on(ip: IpAddr, ca: &Ca, user: &str, password: &str) -> Self {
        Self::start(ip, Some(ca), Some((user, password)), None)
    }

    /// HTTPS with a certificate from `ca`, and Bearer tokens from `issuer`
    /// (who knows `user`/`password`).
    pub fn tls_token(ca: &Ca, issuer: &TokenIssuer, user: &str, password: &str) -> Self {
        Self::start(LOOPBACK, Some(ca), Some((user, password)), Some(issuer))
    }

    fn start(
        ip: IpAddr,
        ca: Option<&Ca>,
        credentials: Option<(&str, &str)>,
        issuer: Option<&TokenIssuer>,
    ) -> Self {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: run `cargo xtask setup` (Debian package docker-registry)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port(ip);
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {ip}:{port}\n  relativeurls: true\n",
            dir.path().join("data").display()
        );
        let mut ca_file = None;
        if let Some(ca) = ca {
            let leaf = ca.server_for(
                "registry",
                &["localhost".into(), "127.0.0.1".into(), ip.to_string()],
            );
            std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).unwrap();
            std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            config += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("tls.crt").display(),
                dir.path().join("tls.key").display()
            );
            ca_file = Some(dir.path().join("ca.pem"));
        }
        if let Some(issuer) = issuer {
            std::fs::write(dir.path().join("token-ca.pem"), &issuer.cert_pem).unwrap();
            config += &format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                issuer.port,
                dir.path().join("token-ca.pem").display()
            );
        } else if let Some((user, password)) = credentials {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd (Debian apache2-utils)");
            assert!(out.status.success());
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            config += &format!(
                "auth:\n  htpasswd:\n    realm: imagegate-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            );
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .process_group(0)
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((ip, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            host: format!("{ip}:{port}"),
            ca_file,
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            dir,
        }
    }

    /// A client that can push to this registry.
    fn client(&self) -> (Client, RegistryAuth) {
        // oci-client brings no TLS provider of its own (as in the webhook):
        // ring, once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = ClientConfig::default();
        match &self.ca_file {
            None => config.protocol = ClientProtocol::Http,
            Some(ca) => config.extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: std::fs::read(ca).unwrap(),
            }),
        }
        let auth = match &self.credentials {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        };
        (Client::new(config), auth)
    }

    /// Pushes a single-platform image whose config carries `label` (so
    /// every image gets its own digest) as `repo:tag`; returns the
    /// manifest's digest.
    pub async fn push_image(&self, repo: &str, tag: &str, label: &str) -> String {
        let (manifest, _) = self.push_manifest(repo, label, "amd64", false).await;
        self.put_manifest(
            repo,
            tag,
            &manifest,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .await
    }

    /// Pushes an index of two platform manifests as `repo:tag`; returns the
    /// index digest and the platform digests.
    pub async fn push_index(&self, repo: &str, tag: &str, label: &str) -> (String, Vec<String>) {
        self.push_index_of(repo, tag, label, false).await
    }

    /// Copies the OCI image layout at `layout` (tag `tag`, as `cargo xtask
    /// images` writes it) to `repo:tag` with skopeo, as a user pushes a
    /// built image; returns the manifest's digest.
    pub fn push_layout(&self, layout: &Path, tag: &str, repo: &str) -> String {
        let certs = self.dir.path().join("skopeo-certs");
        std::fs::create_dir_all(&certs).unwrap();
        let mut skopeo = Command::new("skopeo");
        skopeo.args(["copy", "--quiet"]);
        match &self.ca_file {
            Some(ca) => {
                std::fs::copy(ca, certs.join("ca.crt")).unwrap();
                skopeo.arg("--dest-cert-dir").arg(&certs);
            }
            None => {
                skopeo.arg("--dest-tls-verify=false");
            }
        }
        if let Some((u, p)) = &self.credentials {
            skopeo.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        let out = skopeo
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host))
            .output()
            .expect("skopeo (Debian skopeo)");
        assert!(
            out.status.success(),
            "skopeo copy {} -> {repo}:{tag}: {}",
            layout.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        index["manifests"][0]["digest"]
            .as_str()
            .expect("the layout's manifest digest")
            .to_string()
    }

    /// Like [`Self::push_image`], but the image runs: its layer holds
    /// Debian's static busybox, and it sleeps for an hour by default.
    pub async fn push_runnable_image(&self, repo: &str, tag: &str, label: &str) -> String {
        let (manifest, _) = self.push_manifest(repo, label, "amd64", true).await;
        self.put_manifest(
            repo,
            tag,
            &manifest,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .await
    }

    /// Like [`Self::push_index`], with runnable platform images (the arm64
    /// one carries the same x86-64 busybox: only its digest matters).
    pub async fn push_runnable_index(
        &self,
        repo: &str,
        tag: &str,
        label: &str,
    ) -> (String, Vec<String>) {
        self.push_index_of(repo, tag, label, true).await
    }

    async fn push_index_of(
        &self,
        repo: &str,
        tag: &str,
        label: &str,
        runnable: bool,
    ) -> (String, Vec<String>) {
        let mut entries = Vec::new();
        let mut digests = Vec::new();
        for arch in ["amd64", "arm64"] {
            let (manifest, digest) = self
                .push_manifest(repo, &format!("{label}-{arch}"), arch, runnable)
                .await;
            self.put_manifest(
                repo,
                &digest,
                &manifest,
                "application/vnd.oci.image.manifest.v1+json",
            )
            .await;
            entries.push(json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": manifest.len(),
                "platform": {"architecture": arch, "os": "linux"}
            }));
            digests.push(digest);
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries
        }))
        .unwrap();
        let digest = self
            .put_manifest(repo, tag, &index, "application/vnd.oci.image.index.v1+json")
            .await;
        (digest, digests)
    }

    /// Pushes the blobs of an image and returns its manifest (not pushed)
    /// and the manifest's digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        label: &str,
        arch: &str,
        runnable: bool,
    ) -> (Vec<u8>, String) {
        let (client, auth) = self.client();
        let reference: Reference = format!("{}/{repo}:unused", self.host).parse().unwrap();
        client.store_auth_if_needed(&self.host, &auth).await;
        let (layer, run) = if runnable {
            (
                crate::image::busybox_layer().to_vec(),
                json!({
                    "Entrypoint": ["/bin/busybox"],
                    "Cmd": ["sleep", "3600"],
                    "Labels": {"imagegate.test": label}
                }),
            )
        } else {
            (
                format!("imagegate test layer {label}").into_bytes(),
                json!({"Labels": {"imagegate.test": label}}),
            )
        };
        let layer_digest = sha256(&layer);
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "config": run,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
        }))
        .unwrap();
        let config_digest = sha256(&config);
        client
            .push_blob(&reference, layer.clone(), &layer_digest)
            .await
            .expect("push layer");
        client
            .push_blob(&reference, config.clone(), &config_digest)
            .await
            .expect("push config");
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]
        }))
        .unwrap();
        let digest = sha256(&manifest);
        (manifest, digest)
    }

    /// Pushes a blob into `repo`; returns its digest.
    pub async fn push_blob(&self, repo: &str, blob: &[u8]) -> String {
        let (client, auth) = self.client();
        let reference: Reference = format!("{}/{repo}:unused", self.host).parse().unwrap();
        client.store_auth_if_needed(&self.host, &auth).await;
        let digest = sha256(blob);
        client
            .push_blob(&reference, blob.to_vec(), &digest)
            .await
            .expect("push blob");
        digest
    }

    /// PUTs a manifest under `reference` (a tag or a digest); returns its digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &[u8],
        media_type: &str,
    ) -> String {
        let (client, auth) = self.client();
        client.store_auth_if_needed(&self.host, &auth).await;
        let separator = if reference.starts_with("sha256:") {
            "@"
        } else {
            ":"
        };
        let target: Reference = format!("{}/{repo}{separator}{reference}", self.host)
            .parse()
            .unwrap();
        client
            .push_manifest_raw(&target, manifest.to_vec(), media_type.parse().unwrap())
            .await
            .expect("push manifest");
        sha256(manifest)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token issuer for a registry in Bearer-token mode, as Docker Hub and
/// most registries run: `GET /token?service=..&scope=..` with Basic auth
/// answers a JWT (ES256, with its signing certificate in `x5c`) that grants
/// the requested scopes.
pub struct TokenIssuer {
    pub port: u16,
    pub cert_pem: String,
    _server: tokio::task::JoinHandle<()>,
}

pub const TOKEN_SERVICE: &str = "imagegate-test-registry";
pub const TOKEN_ISSUER: &str = "imagegate-test-issuer";

impl TokenIssuer {
    pub async fn start(user: &str, password: &str) -> Self {
        use base64::Engine;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "imagegate test token issuer");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
        let signer = Arc::new(
            ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &key.serialize_der(),
                &ring::rand::SystemRandom::new(),
            )
            .unwrap(),
        );
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route(
            "/token",
            axum::routing::get(
                move |headers: axum::http::HeaderMap,
                      axum::extract::RawQuery(query): axum::extract::RawQuery| {
                    let (signer, x5c, expected) = (signer.clone(), x5c.clone(), expected.clone());
                    async move {
                        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                        if auth != Some(expected.as_str()) {
                            return (
                                axum::http::StatusCode::UNAUTHORIZED,
                                "bad credentials".to_string(),
                            );
                        }
                        let scopes: Vec<String> = query
                            .unwrap_or_default()
                            .split('&')
                            .filter_map(|kv| kv.strip_prefix("scope="))
                            .map(|s| {
                                s.replace("%3A", ":")
                                    .replace("%2F", "/")
                                    .replace("%2C", ",")
                            })
                            .collect();
                        let token = jwt(&signer, &x5c, &scopes);
                        (
                            axum::http::StatusCode::OK,
                            json!({"token": token, "access_token": token}).to_string(),
                        )
                    }
                },
            ),
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            port,
            cert_pem: cert.pem(),
            _server: server,
        }
    }
}

/// A registry token granting `scopes` (`repository:NAME:ACTIONS`).
fn jwt(signer: &ring::signature::EcdsaKeyPair, x5c: &str, scopes: &[String]) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
    let claims = json!({
        "iss": TOKEN_ISSUER, "sub": "ci", "aud": TOKEN_SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", scopes.len()),
        "access": access
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = signer
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        .unwrap();
    format!("{signing_input}.{}", b64(signature.as_ref()))
}
