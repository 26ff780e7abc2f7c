//! Helpers shared by the webhook's integration tests.
#![allow(dead_code)]

pub mod registry;

use std::path::PathBuf;

use serde_json::{Value, json};

pub const EXAMPLE_POLICY: &str = include_str!("../../../deploy/policy/example-policy.yaml");

/// A fixture captured from a real kube-apiserver v1.28.7: `(http_path, body)`.
pub fn fixture(name: &str) -> (String, Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/apiserver-v1.28")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut doc: Value = serde_json::from_str(&text).expect("fixture is JSON");
    let http_path = doc["http_path"].as_str().expect("http_path").to_string();
    (http_path, doc["body"].take())
}

/// An AdmissionReview v1 for `object` of `group/kind`.
pub fn admission_review(group: &str, kind: &str, operation: &str, object: Value) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": "things"},
            "name": "thing",
            "namespace": "default",
            "operation": operation,
            "userInfo": {"username": "alice"},
            "object": object,
            "oldObject": null,
            "dryRun": false
        }
    })
}

/// A pod spec with one container, one init container and one ephemeral
/// container, each with its own image.
pub fn pod_spec(container: &str, init: &str, ephemeral: &str) -> Value {
    json!({
        "containers": [{"name": "app", "image": container}],
        "initContainers": [{"name": "init", "image": init}],
        "ephemeralContainers": [{"name": "debug", "image": ephemeral}]
    })
}

/// An ImageReview with `images` in namespace `default`.
pub fn image_review(images: &[&str], annotations: Value) -> Value {
    json!({
        "kind": "ImageReview",
        "apiVersion": "imagepolicy.k8s.io/v1alpha1",
        "metadata": {"creationTimestamp": null},
        "spec": {
            "containers": images.iter().map(|i| json!({"image": i})).collect::<Vec<_>>(),
            "annotations": annotations,
            "namespace": "default"
        },
        "status": {"allowed": false}
    })
}

/// A test certificate authority (rcgen).
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

    /// A client certificate named `name`.
    pub fn client(&self, name: &str) -> Leaf {
        self.leaf(name, Vec::new(), rcgen::ExtendedKeyUsagePurpose::ClientAuth)
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
