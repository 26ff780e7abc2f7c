//! Real components for imagegate's tests, started on loopback by the tests
//! themselves and stopped on drop: a certificate authority, an OCI
//! registry with TLS and auth, runnable images, and containerd with runc;
//! and, for pod-shaped tests, a CNI pod network, a kubelet stand-in that
//! runs pod specs through CRI, and stand-ins for cluster DNS and the
//! apiserver's pod list.

pub mod apiserver;
pub mod ca;
pub mod cgroup;
pub mod cgroup_burst;
pub mod containerd;
pub mod dns;
pub mod grpcurl;
pub mod hostile;
pub mod https;
pub mod image;
pub mod independent;
pub mod kubelet;
pub mod metrics;
pub mod network;
pub mod process;
pub mod referrers;
pub mod registry;
pub mod sigstore;

/// Stops a test that needs root with the way to run it; `what` says why.
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "{what}: run `sudo -E cargo xtask test`");
}

/// Serves `app` over plain HTTP on 127.0.0.1 (a free port) until the
/// returned task is dropped or aborted; returns `127.0.0.1:PORT`.
pub async fn serve_on_loopback(app: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (host, server)
}
