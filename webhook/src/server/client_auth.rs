//! Client certificates, required per endpoint.
//!
//! The kube-apiserver presents a client certificate on the ImagePolicyWebhook
//! path (its admission kubeconfig names one) but, unless set up for it, not
//! on a ValidatingWebhookConfiguration; the kubelet's probes never do. So
//! with `--client-ca` the TLS layer checks any certificate a client presents
//! against that CA, and this layer refuses requests without one on the
//! paths that require it (`--client-cert-required-path`; every path when
//! none is named).

use axum::{
    extract::Request,
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};

/// Whether the connection a request came on presented a client certificate
/// (which TLS has then verified against `--client-ca`). Set on every request
/// by the listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    pub presented: bool,
}

/// Which paths need a client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Required {
    /// Every path: the TLS handshake itself refuses clients without one.
    Everywhere,
    /// These paths only; others serve clients without a certificate.
    Paths(Vec<String>),
}

impl Required {
    /// From `--client-cert-required-path` values: none means every path.
    pub fn from_paths(paths: Vec<String>) -> Self {
        if paths.is_empty() {
            Self::Everywhere
        } else {
            Self::Paths(paths)
        }
    }

    /// Whether the TLS handshake must refuse clients without a certificate.
    pub fn in_handshake(&self) -> bool {
        matches!(self, Self::Everywhere)
    }

    fn requires(&self, path: &str) -> bool {
        match self {
            Self::Everywhere => true,
            Self::Paths(paths) => paths.iter().any(|p| p == path),
        }
    }
}

/// The middleware: a request to a path that requires a certificate, on a
/// connection that presented none, gets 403 with what to do.
pub async fn enforce(required: Required, request: Request, next: Next) -> Response {
    let certificate = request
        .extensions()
        .get::<ClientCertificate>()
        .copied()
        .unwrap_or(ClientCertificate { presented: false });
    if let Some(refused) = refusal(&required, request.uri().path(), certificate) {
        return refused;
    }
    next.run(request).await
}

/// The 403 a request to `path` gets when it needs a certificate and its
/// connection presented none; `None` when it may go on.
pub fn refusal(
    required: &Required,
    path: &str,
    certificate: ClientCertificate,
) -> Option<Response> {
    if required.requires(path) && !certificate.presented {
        let body = serde_json::json!({
            "error": format!(
                "{path} requires a client certificate issued by the webhook's --client-ca; \
                 the kube-apiserver presents one through its admission kubeconfig \
                 (imagegate-webhook apiserver-config writes it)"
            )
        });
        return Some(
            (
                StatusCode::FORBIDDEN,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_paths_means_everywhere_in_the_handshake() {
        assert_eq!(Required::from_paths(vec![]), Required::Everywhere);
        assert!(Required::Everywhere.in_handshake());
        let some = Required::from_paths(vec!["/image_policy".into()]);
        assert!(!some.in_handshake());
        assert!(some.requires("/image_policy"));
        assert!(!some.requires("/validate"));
        assert!(!some.requires("/image_policy/x"));
    }
}
