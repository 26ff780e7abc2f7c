//! What imagegate's webhook and agent share below their domain.
//!
//! - [`idle`]: closing connections that stop moving bytes;
//! - [`connections`]: a bound on connections open at once.

pub mod connections;
pub mod idle;
