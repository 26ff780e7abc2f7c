//! A test timestamp authority (RFC 3161): a root and a signing certificate
//! for time stamping (its extended key usage critical, as RFC 3161 asks),
//! with timestamps made by `openssl ts` (Debian's openssl): the request
//! over the signature's SHA-256, the reply signed by the authority's key.

use std::{path::Path, process::Command};

use super::fulcio::ca_params;

pub struct Tsa {
    root: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    signer_der: Vec<u8>,
    signer_pem: String,
    key_pem: String,
    dir: tempfile::TempDir,
}

/// id-kp-timeStamping, DER: an extended key usage extension's value.
const EKU_TIME_STAMPING: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08,
];

impl Tsa {
    /// An authority whose signing certificate is valid from `not_before`
    /// to `not_after`.
    pub fn new(
        name: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Self {
        let root = rcgen::CertifiedIssuer::self_signed(
            ca_params(&format!("{name} root")),
            rcgen::KeyPair::generate().unwrap(),
        )
        .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let mut eku =
            rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 37], EKU_TIME_STAMPING.to_vec());
        eku.set_criticality(true);
        params.custom_extensions = vec![eku];
        let signer = params.signed_by(&key, &root).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("serial"), "01\n").unwrap();
        std::fs::write(
            dir.path().join("tsa.cnf"),
            "[ tsa ]\ndefault_tsa = tsa_config\n[ tsa_config ]\n\
             serial = $ENV::TSA_DIR/serial\ndefault_policy = 1.3.6.1.4.1.57264.2\n\
             digests = sha256, sha384, sha512\nsigner_digest = sha256\n\
             ess_cert_id_alg = sha256\naccuracy = secs:1\n",
        )
        .unwrap();
        Self {
            root,
            signer_der: signer.der().to_vec(),
            signer_pem: signer.pem(),
            key_pem: key.serialize_pem(),
            dir,
        }
    }

    /// An authority valid for a year around now.
    pub fn valid_now(name: &str) -> Self {
        let now = time::OffsetDateTime::now_utc();
        Self::new(
            name,
            now - time::Duration::days(1),
            now + time::Duration::days(365),
        )
    }

    /// The chain a trusted root lists: the signing certificate, then the
    /// root.
    pub fn chain_der(&self) -> Vec<Vec<u8>> {
        vec![self.signer_der.clone(), self.root.der().to_vec()]
    }

    /// A timestamp response (DER) over `signature`, now, by `openssl ts`;
    /// `with_certificate` embeds the signing certificate in the token.
    pub fn timestamp(&self, signature: &[u8], with_certificate: bool) -> Vec<u8> {
        let dir = self.dir.path();
        std::fs::write(dir.join("signature"), signature).unwrap();
        std::fs::write(dir.join("signer.pem"), &self.signer_pem).unwrap();
        std::fs::write(dir.join("signer.key"), &self.key_pem).unwrap();
        let mut query = Command::new("openssl");
        query
            .args(["ts", "-query", "-sha256", "-no_nonce", "-data"])
            .arg(dir.join("signature"));
        if with_certificate {
            query.arg("-cert");
        }
        run(query.arg("-out").arg(dir.join("request.tsq")));
        run(Command::new("openssl")
            .env("TSA_DIR", dir)
            .args(["ts", "-reply", "-config"])
            .arg(dir.join("tsa.cnf"))
            .arg("-queryfile")
            .arg(dir.join("request.tsq"))
            .arg("-signer")
            .arg(dir.join("signer.pem"))
            .arg("-inkey")
            .arg(dir.join("signer.key"))
            .arg("-out")
            .arg(dir.join("response.tsr")));
        std::fs::read(dir.join("response.tsr")).unwrap()
    }

    /// Where its files are (for `openssl ts -verify` in a test).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn run(command: &mut Command) {
    let out = command.output().expect("openssl");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
