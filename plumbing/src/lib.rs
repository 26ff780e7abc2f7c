//! What imagegate's webhook and agent share below their domain.
//!
//! - [`clock`]: wall-clock milliseconds, the unit of stored timestamps;
//! - [`errors`]: an error and its causes on one line;
//! - [`expiry`]: when the certificates in a component's files expire;
//! - [`files`]: noticing that files changed (policy, certificates,
//!   approvals);
//! - [`process`]: log set-up and the stop signal;
//! - [`tls`]: TLS server configurations that follow their files;
//! - [`allocator`]: giving memory back to the system after a burst;
//! - [`budget`]: a budget shared by all clients, of which one address may
//!   hold only a part;
//! - [`http`]: a bounded plain HTTP/1.1 server for small endpoints;
//! - [`connections`]: a bound on connections open at once;
//! - [`discovery`]: one task per address some names resolve to;
//! - [`idle`]: closing connections that stop moving bytes;
//! - [`grpc`]: gRPC listeners with bounded connections and mTLS that knows
//!   its peer (the agent's API, the webhook's approval feed).

pub mod allocator;
pub mod budget;
pub mod clock;
pub mod connections;
pub mod discovery;
pub mod errors;
pub mod expiry;
pub mod files;
pub mod grpc;
pub mod http;
pub mod idle;
pub mod process;
pub mod tls;
