//! Real components for imagegate's tests, started on loopback by the tests
//! themselves and stopped on drop: a certificate authority, an OCI
//! registry with TLS and auth, runnable images, and containerd with runc;
//! and, for pod-shaped tests, a CNI pod network, a kubelet stand-in that
//! runs pod specs through CRI, and stand-ins for cluster DNS and the
//! apiserver's pod list.

pub mod apiserver;
pub mod ca;
pub mod cgroup;
pub mod containerd;
pub mod dns;
pub mod grpcurl;
pub mod hostile;
pub mod https;
pub mod image;
pub mod kubelet;
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
