//! What imagegate's webhook and agent share below their domain.
//!
//! - [`allocator`]: giving memory back to the system after a burst;
//! - [`budget`]: a budget shared by all clients, of which one address may
//!   hold only a part;
//! - [`http`]: a bounded plain HTTP/1.1 server for small endpoints;
//! - [`connections`]: a bound on connections open at once;
//! - [`idle`]: closing connections that stop moving bytes.

pub mod allocator;
pub mod budget;
pub mod connections;
pub mod http;
pub mod idle;
