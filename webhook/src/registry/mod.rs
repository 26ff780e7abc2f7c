//! The OCI distribution API, as far as admission reads it: manifests by tag
//! or digest (HEAD and GET), with the registry's auth flows, and nothing
//! read without a bound.
//!
//! Our own client on reqwest rather than a registry library: what a
//! registry sends is untrusted input, and the libraries read whole bodies
//! (a registry serving a 100 MiB index took the webhook past 1 GiB). Here
//! every body has a size bound, checked against Content-Length first and
//! then while it streams; every manifest fetched by digest must hash to
//! that digest; every request has a deadline; and tokens are cached.
//!
//! - [`auth`]: `WWW-Authenticate` challenges, Basic, and Bearer tokens;
//! - [`body`]: bounded reads;
//! - [`client`]: the requests;
//! - [`credentials`]: the registries' usernames and passwords.

pub mod auth;
pub mod body;
pub mod client;
pub mod credentials;

pub use client::{ClientError, Fetched, Head, RegistryClient, RegistryError, Settings};
pub use credentials::Credentials;

/// Largest manifest or index read: the distribution registry's own limit
/// on a manifest it accepts.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest token response read.
pub const MAX_TOKEN_BYTES: usize = 256 * 1024;
/// Largest error body read, for its message.
pub const MAX_ERROR_BYTES: usize = 16 * 1024;
