//! imagegate's admission webhook.
//!
//! - [`reference`](mod@reference): image references, parsed and normalised;
//! - [`review`]: ImageReview and AdmissionReview, decoded into one [`review::Review`];
//! - [`policy`]: the policy file, validated, and the decisions it makes;
//! - [`modes`]: enforce or audit, allow or deny on failure: the words the
//!   policy and the signature stage share;
//! - [`policy_store`]: the policy in force, reloaded when its file changes;
//! - [`admit`]: the admission pipeline every endpoint shares: policy,
//!   resolution, signatures, decision, approvals recorded;
//! - [`server`]: the HTTPS server, its routes, limits and metrics;
//! - [`check`]: the same decisions offline, for CI pipelines;
//! - [`adopt`]: the admitted set rebuilt from the pods the cluster runs;
//! - [`ledger`], [`push`]: admitted digests recorded, and pushed to agents;
//! - [`resolve`]: tags to digests against the registries;
//! - [`signature`]: signatures and attestations of the resolved digests,
//!   found in the registries and verified against the policy's keys and
//!   trusted roots;
//! - [`registry`]: the OCI distribution API, every read bounded;
//! - [`ttl_cache`]: lookup outcomes cached with positive and negative TTLs,
//!   one lookup per key at a time (resolution and signatures);
//! - [`install`]: certificates and the apiserver's configuration files.

pub mod admit;
pub mod adopt;
pub mod check;
pub mod install;
pub mod ledger;
pub mod modes;
pub mod policy;
pub mod policy_store;
pub mod push;
pub mod reference;
pub mod registry;
pub mod report;
pub mod resolve;
pub mod review;
pub mod server;
pub mod signature;
pub mod ttl_cache;
