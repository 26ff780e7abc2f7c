//! A minimal HTTPS/1.1 client for tests that post a review to the
//! webhook: one request per connection, the CA given as PEM.

use std::sync::Arc;

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// POSTs `body` (JSON) to `https://localhost:PORT/PATH`; returns the status
/// code and the body.
pub async fn post(port: u16, path: &str, ca_pem: &str, body: &[u8]) -> (u16, Vec<u8>) {
    post_to(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        "localhost",
        path,
        ca_pem,
        body,
    )
    .await
}

/// POSTs `body` (JSON) to `address`, verifying the server's certificate
/// for `server_name` (a Service's DNS name when `address` is a pod's).
pub async fn post_to(
    address: std::net::SocketAddr,
    server_name: &str,
    path: &str,
    ca_pem: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    request(address, server_name, "POST", path, ca_pem, body).await
}

/// GETs `path` from `address`, as [`post_to`] posts (a scrape of
/// `/metrics`, say).
pub async fn get_from(
    address: std::net::SocketAddr,
    server_name: &str,
    path: &str,
    ca_pem: &str,
) -> (u16, Vec<u8>) {
    request(address, server_name, "GET", path, ca_pem, &[]).await
}

async fn request(
    address: std::net::SocketAddr,
    server_name: &str,
    method: &str,
    path: &str,
    ca_pem: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the webhook");
    // The head and the body go in two writes: without this, Nagle holds
    // the body until the server's delayed ACK (40 ms), which latency
    // figures would then measure.
    tcp.set_nodelay(true).expect("TCP_NODELAY");
    let mut tls = connector
        .connect(ServerName::try_from(server_name.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake with the webhook");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {server_name}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    // A peer that closes without close_notify still gave us the answer.
    let _ = tls.read_to_end(&mut answer).await;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let status_line = String::from_utf8_lossy(&answer[..split]);
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, answer[split + 4..].to_vec())
}
