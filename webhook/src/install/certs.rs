//! `imagegate-webhook certs`: a CA and every certificate imagegate uses,
//! made with rcgen:
//!
//! | file | for |
//! |---|---|
//! | `ca.crt` | signs the others; the webhook configurations' `caBundle` |
//! | `private/ca.key` | the CA's key: kept out of the folder's top level, so `kubectl create secret generic --from-file=DIR` (which takes only the files directly in DIR) never puts it in the cluster, where it would let anyone who reads the Secret mint a push identity |
//! | `webhook.crt`, `webhook.key` | the webhook's serving certificate, for its Service's DNS names |
//! | `webhook-client.crt`, `webhook-client.key` | the webhook's identity towards agents (`imagegate-webhook`) |
//! | `agent.crt`, `agent.key` | the agents' gRPC serving certificate (`imagegate-agent`) |
//! | `apiserver-client.crt`, `apiserver-client.key` | the kube-apiserver's client certificate (ImagePolicyWebhook) |

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The DNS name in the agents' serving certificate; the webhook checks it.
pub use imagegate_proto::AGENT_IDENTITY;
/// The DNS name in the webhook's client certificate; agents let only it push.
pub use imagegate_proto::WEBHOOK_IDENTITY;

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("making a certificate: {0}")]
    Make(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} exists; pass --force to replace the certificates in that folder")]
    Exists(PathBuf),
}

/// Where the webhook runs, for its serving certificate's names.
#[derive(Clone, Debug)]
pub struct CertsSpec {
    pub namespace: String,
    pub service: String,
    /// More names or IP addresses for the serving certificate (how the
    /// kube-apiserver reaches the webhook on the ImagePolicyWebhook path).
    pub extra_names: Vec<String>,
    pub validity: Duration,
    pub force: bool,
}

impl CertsSpec {
    /// The names a client may use for the webhook's Service.
    pub fn webhook_names(&self) -> Vec<String> {
        let (s, ns) = (&self.service, &self.namespace);
        let mut names = vec![
            s.clone(),
            format!("{s}.{ns}"),
            format!("{s}.{ns}.svc"),
            format!("{s}.{ns}.svc.cluster.local"),
        ];
        names.extend(self.extra_names.iter().cloned());
        names
    }
}

/// Writes every file into `out`; returns the paths written.
pub fn write_all(out: &Path, spec: &CertsSpec) -> Result<Vec<PathBuf>, CertsError> {
    fs::create_dir_all(out).map_err(|source| CertsError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let ca_path = out.join("ca.crt");
    if ca_path.exists() && !spec.force {
        return Err(CertsError::Exists(ca_path));
    }
    let now = time::OffsetDateTime::now_utc();
    let not_after = now + spec.validity;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "imagegate CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - time::Duration::minutes(5);
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut written = Vec::new();
    let mut write = |name: &str, contents: &str, secret: bool| -> Result<(), CertsError> {
        let path = out.join(name);
        write_file(&path, contents, secret)?;
        written.push(path);
        Ok(())
    };
    write("ca.crt", &ca.pem(), false)?;
    let private = out.join("private");
    fs::create_dir_all(&private).map_err(|source| CertsError::Write {
        path: private.clone(),
        source,
    })?;
    write("private/ca.key", &ca_key_pem, true)?;

    let leaves: [(&str, &str, Vec<String>, Vec<ExtendedKeyUsagePurpose>); 4] = [
        (
            "webhook",
            "imagegate-webhook serving",
            spec.webhook_names(),
            vec![ExtendedKeyUsagePurpose::ServerAuth],
        ),
        (
            "webhook-client",
            WEBHOOK_IDENTITY,
            vec![WEBHOOK_IDENTITY.to_string()],
            // The push identity: serves the approval feed, dials agents.
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        ),
        (
            "agent",
            AGENT_IDENTITY,
            vec![AGENT_IDENTITY.to_string()],
            // Serves the agent's API, follows the webhooks' feed.
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        ),
        (
            "apiserver-client",
            "kube-apiserver",
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        ),
    ];
    for (file, common_name, names, usages) in leaves {
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = usages;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        write(&format!("{file}.crt"), &cert.pem(), false)?;
        write(&format!("{file}.key"), &key.serialize_pem(), true)?;
    }
    Ok(written)
}

/// Keys are written 0600 from the start, never readable by others even
/// for a moment.
fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), CertsError> {
    let err = |source| CertsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    options.mode(if secret { 0o600 } else { 0o644 });
    let mut file = options.open(path).map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

    use super::*;

    fn spec() -> CertsSpec {
        CertsSpec {
            namespace: "imagegate".into(),
            service: "imagegate-webhook".into(),
            extra_names: vec!["127.0.0.1".into()],
            validity: Duration::from_secs(86_400),
            force: false,
        }
    }

    fn leaf(dir: &Path, name: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(dir.join(format!("{name}.crt"))).unwrap()
    }

    #[test]
    fn every_certificate_chains_to_the_ca_with_the_right_names() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_all(dir.path(), &spec()).unwrap();
        assert_eq!(written.len(), 10);
        let ca = CertificateDer::from_pem_file(dir.path().join("ca.crt")).unwrap();
        let anchor = webpki::anchor_from_trusted_cert(&ca).unwrap();
        let provider = rustls::crypto::ring::default_provider();
        let now = rustls::pki_types::UnixTime::now();
        let check = |name: &str, dns: &str, usage: webpki::KeyUsage| {
            let der = leaf(dir.path(), name);
            let cert = webpki::EndEntityCert::try_from(&der).unwrap();
            cert.verify_for_usage(
                provider.signature_verification_algorithms.all,
                std::slice::from_ref(&anchor),
                &[],
                now,
                usage,
                None,
                None,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            if !dns.is_empty() {
                cert.verify_is_valid_for_subject_name(&ServerName::try_from(dns).unwrap())
                    .unwrap_or_else(|e| panic!("{name} for {dns}: {e}"));
            }
        };
        check(
            "webhook",
            "imagegate-webhook.imagegate.svc",
            webpki::KeyUsage::server_auth(),
        );
        check("agent", AGENT_IDENTITY, webpki::KeyUsage::server_auth());
        check(
            "webhook-client",
            WEBHOOK_IDENTITY,
            webpki::KeyUsage::client_auth(),
        );
        // Each end of the approval feed: the agent dials as a client, the
        // webhook's push identity serves it.
        check("agent", AGENT_IDENTITY, webpki::KeyUsage::client_auth());
        check(
            "webhook-client",
            WEBHOOK_IDENTITY,
            webpki::KeyUsage::server_auth(),
        );
        check("apiserver-client", "", webpki::KeyUsage::client_auth());
        let mode = fs::metadata(dir.path().join("agent.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), &spec()).unwrap();
        let err = write_all(dir.path(), &spec()).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        let forced = CertsSpec {
            force: true,
            ..spec()
        };
        write_all(dir.path(), &forced).unwrap();
    }
}
