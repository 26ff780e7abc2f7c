//! What installing imagegate on a cluster needs from this binary: the
//! certificates (`certs`) and the kube-apiserver's ImagePolicyWebhook files
//! (`apiserver-config`).

pub mod apiserver;
pub mod certs;
