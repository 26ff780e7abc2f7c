//! A test certificate authority that issues certificates as Fulcio does
//! (code signing, the OIDC issuer in extension 1.3.6.1.4.1.57264.1.8, the
//! subject as the SAN), each logged first to its certificate transparency
//! log ([`CtLog`]) whose signed certificate timestamp (RFC 6962, over the
//! precertificate) is embedded in the certificate, as Fulcio does.

use der::{Decode, Encode};

use super::{KeyPair, sha256};

/// A certificate transparency log: signs SCTs over precertificates.
pub struct CtLog {
    key: KeyPair,
}

impl CtLog {
    pub fn new() -> Self {
        Self {
            key: KeyPair::generate(),
        }
    }

    /// Its log id: the SHA-256 of its key.
    pub fn id(&self) -> [u8; 32] {
        sha256(&self.key.spki())
    }

    pub fn spki(&self) -> Vec<u8> {
        self.key.spki()
    }

    /// A v1 SCT (TLS-encoded) over `precert` (the certificate's TBS without
    /// the SCT list) issued by the key `issuer_spki`, at `timestamp_ms`.
    pub fn sct(&self, precert: &[u8], issuer_spki: &[u8], timestamp_ms: u64) -> Vec<u8> {
        let mut signed = vec![0, 0];
        signed.extend(timestamp_ms.to_be_bytes());
        signed.extend(1u16.to_be_bytes());
        signed.extend(sha256(issuer_spki));
        signed.extend(&(precert.len() as u32).to_be_bytes()[1..]);
        signed.extend(precert);
        signed.extend(0u16.to_be_bytes());
        let signature = self.key.sign(&signed);
        let mut sct = vec![0];
        sct.extend(self.id());
        sct.extend(timestamp_ms.to_be_bytes());
        sct.extend(0u16.to_be_bytes());
        // SHA-256, ECDSA.
        sct.extend([4, 3]);
        sct.extend((signature.len() as u16).to_be_bytes());
        sct.extend(signature);
        sct
    }
}

impl Default for CtLog {
    fn default() -> Self {
        Self::new()
    }
}

/// A test Fulcio.
pub struct Fulcio {
    root: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// Sigstore's public Fulcio issues from an intermediate; a test CA may.
    intermediate: Option<rcgen::CertifiedIssuer<'static, rcgen::KeyPair>>,
    /// Where its certificates are logged.
    pub ct: CtLog,
}

/// A signing certificate and its key.
pub struct Signing {
    pub der: Vec<u8>,
    pub pem: String,
    pub key: KeyPair,
}

/// What a certificate is issued for, beyond its identity.
#[derive(Clone)]
pub struct Issue {
    pub not_before: time::OffsetDateTime,
    /// Fulcio's are valid 10 minutes.
    pub minutes: i64,
    pub usage: rcgen::ExtendedKeyUsagePurpose,
    /// Logged to the CT log with the SCT embedded (Fulcio always does).
    pub logged: bool,
}

impl Issue {
    /// A code-signing certificate, logged, valid 10 minutes from
    /// `not_before`.
    pub fn at(not_before: time::OffsetDateTime) -> Self {
        Self {
            not_before,
            minutes: 10,
            usage: rcgen::ExtendedKeyUsagePurpose::CodeSigning,
            logged: true,
        }
    }
}

pub fn ca_params(name: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    // Real CAs' certificates name their issuer's key; verifiers following
    // the Web PKI's profile (sigstore-python's) require it below a root.
    params.use_authority_key_identifier_extension = true;
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(365);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
    params
}

/// The SCT list extension (1.3.6.1.4.1.11129.2.4.2).
const SCT_LIST: &[u64] = &[1, 3, 6, 1, 4, 1, 11129, 2, 4, 2];

impl Fulcio {
    /// A root that issues signing certificates itself.
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        Self {
            root: rcgen::CertifiedIssuer::self_signed(ca_params(name), key).unwrap(),
            intermediate: None,
            ct: CtLog::new(),
        }
    }

    /// A root and an intermediate under it that issues signing
    /// certificates, as Sigstore's public Fulcio is set up.
    pub fn with_intermediate(name: &str) -> Self {
        let mut fulcio = Self::new(name);
        let key = rcgen::KeyPair::generate().unwrap();
        fulcio.intermediate = Some(
            rcgen::CertifiedIssuer::signed_by(
                ca_params(&format!("{name} intermediate")),
                key,
                &fulcio.root,
            )
            .unwrap(),
        );
        fulcio
    }

    /// The chain a trusted root lists: the issuing intermediate (if any),
    /// then the root.
    pub fn chain_der(&self) -> Vec<Vec<u8>> {
        self.intermediate
            .iter()
            .chain(std::iter::once(&self.root))
            .map(|c| c.der().to_vec())
            .collect()
    }

    /// The intermediate's certificate (PEM), as cosign's chain annotation
    /// carries it; `None` without one.
    pub fn intermediate_pem(&self) -> Option<String> {
        self.intermediate.as_ref().map(|i| i.pem())
    }

    fn issuer(&self) -> &rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
        self.intermediate.as_ref().unwrap_or(&self.root)
    }

    /// A certificate for `subject` (an email) from OIDC `issuer`, valid
    /// from `not_before` for `minutes`, logged.
    pub fn certificate(
        &self,
        oidc_issuer: &str,
        subject: &str,
        not_before: time::OffsetDateTime,
        minutes: i64,
    ) -> Signing {
        self.issue(
            oidc_issuer,
            subject,
            Issue {
                minutes,
                ..Issue::at(not_before)
            },
        )
    }

    /// As [`Fulcio::certificate`], for another extended key usage (a
    /// certificate a verifier must refuse for code signing).
    pub fn certificate_for(
        &self,
        oidc_issuer: &str,
        subject: &str,
        not_before: time::OffsetDateTime,
        minutes: i64,
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> Signing {
        self.issue(
            oidc_issuer,
            subject,
            Issue {
                minutes,
                usage,
                ..Issue::at(not_before)
            },
        )
    }

    /// A certificate as `issue` says.
    pub fn issue(&self, oidc_issuer: &str, subject: &str, issue: Issue) -> Signing {
        let key = KeyPair::generate();
        let signing_key = rcgen::KeyPair::try_from(key.pkcs8()).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::Rfc822Name(
            subject.to_string().try_into().unwrap(),
        )];
        params.extended_key_usages = vec![issue.usage];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = issue.not_before;
        params.not_after = issue.not_before + time::Duration::minutes(issue.minutes);
        // One serial for the precertificate and the certificate.
        params.serial_number = Some(rcgen::SerialNumber::from_slice(
            &sha256(key.public_pem.as_bytes())[..16],
        ));
        // The issuer twice, as Fulcio writes it: raw in the deprecated
        // extension .1.1 (which some verifiers still read), a DER
        // UTF8String in .1.8.
        let mut value = vec![0x0c, oidc_issuer.len() as u8];
        value.extend_from_slice(oidc_issuer.as_bytes());
        params.custom_extensions = vec![
            rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 57264, 1, 1],
                oidc_issuer.as_bytes().to_vec(),
            ),
            rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 57264, 1, 8], value),
        ];
        if issue.logged {
            // The precertificate: the certificate without its SCT list (the
            // DER a verifier rebuilds by removing the extension).
            let unlogged = params.signed_by(&signing_key, self.issuer()).unwrap();
            let precert = x509_cert::Certificate::from_der(unlogged.der())
                .unwrap()
                .tbs_certificate
                .to_der()
                .unwrap();
            use rcgen::PublicKeyData;
            let issuer_spki = self.issuer().key().subject_public_key_info();
            let at_ms = (issue.not_before.unix_timestamp() as u64) * 1000 + 500;
            let sct = self.ct.sct(&precert, &issuer_spki, at_ms);
            let mut list = (sct.len() as u16).to_be_bytes().to_vec();
            list.extend(sct);
            let mut tls = (list.len() as u16).to_be_bytes().to_vec();
            tls.extend(list);
            let octets = der::asn1::OctetString::new(tls).unwrap().to_der().unwrap();
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(SCT_LIST, octets));
        }
        let cert = params.signed_by(&signing_key, self.issuer()).unwrap();
        Signing {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            key,
        }
    }
}
