//! imagegate's admission webhook.
//!
//! - [`reference`]: image references, parsed and normalised;
//! - [`review`]: ImageReview and AdmissionReview, decoded into one [`review::Review`];
//! - [`policy`]: the policy file, validated, and the decisions it makes.

pub mod policy;
pub mod reference;
pub mod review;
