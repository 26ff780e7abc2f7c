//! imagegate's gRPC API, package `imagegate.v1`: the `.proto` files under
//! `proto/imagegate/v1/` and the Rust types generated from them (at build
//! time, by protox and tonic-prost-build; see build.rs). Wire types stay in
//! this crate; the agent and the webhook convert to their own domain types
//! at the boundary.
//!
//! Also the contract both sides must agree on beyond the messages: the
//! [`digest::Digest`] type, [`platform`] matching, the [`source::SourceKey`]
//! approvals are kept under, the [`media_types`] both read, the identities
//! their certificates carry, and the batch limits.

pub mod digest;
pub mod media_types;
pub mod platform;
pub mod source;

/// The DNS name in the webhook's client certificate: only it may push.
pub const WEBHOOK_IDENTITY: &str = "imagegate-webhook";

/// The response header of `ApprovalFeed.Follow` by which a webhook says it
/// ends each catch-up with `ApprovalBatch.caught_up`.
pub const MARKS_CAUGHT_UP_HEADER: &str = "imagegate-marks-caught-up";
/// The DNS name in the agents' serving certificates.
pub const AGENT_IDENTITY: &str = "imagegate-agent";

/// The `imagegate.v1` package.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("imagegate.v1");
}

/// The encoded `FileDescriptorSet` of every imagegate proto, for server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/imagegate_descriptor.bin"));

/// The most approvals one push or sync may carry.
pub const MAX_APPROVALS_PER_CALL: usize = 10_000;

/// The most bytes of approvals (protobuf-encoded) the webhook puts in one
/// push or sync, whatever their count: a batch of multi-arch approvals
/// must never outgrow what the agent decodes.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// The largest message the agent decodes: the batch bound with room to
/// spare (tonic's default, 4 MiB, is what batches once outgrew).
pub const MAX_MESSAGE_BYTES: usize = 4 * MAX_BATCH_BYTES;

/// The most manifests of one index the webhook follows and records: an
/// index listing more is refused at admission, so one approval stays small
/// (1,024 children encode to about 100 KiB).
pub const MAX_INDEX_CHILDREN: usize = 1024;
