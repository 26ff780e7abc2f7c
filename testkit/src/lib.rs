//! Real components for imagegate's tests, started on loopback by the tests
//! themselves and stopped on drop: a certificate authority, an OCI
//! registry with TLS and auth, runnable images, and containerd with runc.

pub mod ca;
pub mod containerd;
pub mod grpcurl;
pub mod https;
pub mod image;
pub mod process;
pub mod registry;

/// Stops a test that needs root with the way to run it; `what` says why.
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "{what}: run `sudo -E cargo xtask test`");
}
