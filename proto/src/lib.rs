//! imagegate's gRPC API, package `imagegate.v1`: the `.proto` files under
//! `proto/imagegate/v1/` and the Rust types generated from them. Wire types
//! stay in this crate; the agent and the webhook convert to their own domain
//! types at the boundary.
