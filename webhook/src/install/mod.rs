//! What installing imagegate on a cluster needs from this binary: the
//! certificates (`certs`) and the kube-apiserver's ImagePolicyWebhook files
//! (`apiserver-config`).
//!
//! - [`certs`]: the CA and every certificate;
//! - [`apiserver`]: the admission configuration and kubeconfig files.

pub mod apiserver;
pub mod certs;
