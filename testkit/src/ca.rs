//! A test certificate authority (rcgen) and the certificates it signs.

pub struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, PEM, plus the certificate's DER.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        Self {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A serving certificate for localhost and 127.0.0.1, named `name`.
    pub fn server(&self, name: &str) -> Leaf {
        self.leaf(
            name,
            vec!["localhost".into(), "127.0.0.1".into()],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A serving certificate named `name` for `sans` (DNS names or IP
    /// addresses).
    pub fn server_for(&self, name: &str, sans: &[String]) -> Leaf {
        self.leaf(
            name,
            sans.to_vec(),
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate named `name`.
    pub fn client(&self, name: &str) -> Leaf {
        self.leaf(name, Vec::new(), rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A certificate for `dns_name` usable both to serve and as a client
    /// (mTLS identities: `imagegate-agent`, `imagegate-webhook`).
    pub fn identity(&self, dns_name: &str) -> Leaf {
        let mut params = rcgen::CertificateParams::new(vec![dns_name.to_string()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, dns_name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Writes the CA and `leaf` as `ca.pem`, `NAME.crt`, `NAME.key` in
    /// `dir`; returns the three paths.
    pub fn write(
        &self,
        dir: &std::path::Path,
        name: &str,
        leaf: &Leaf,
    ) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        let ca = dir.join("ca.pem");
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&ca, self.pem()).unwrap();
        std::fs::write(&cert, &leaf.cert_pem).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        (ca, cert, key)
    }

    fn leaf(&self, name: &str, sans: Vec<String>, usage: rcgen::ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = rcgen::CertificateParams::new(sans).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}
