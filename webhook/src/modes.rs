//! The vocabulary the policy and the signature stage share: whether a
//! check that fails denies or only warns ([`Mode`]), and what a lookup that
//! could not be made decides ([`Fallback`]). Its own module so that neither
//! `policy` nor `signature` imports the other for it.

use serde::Deserialize;

/// `enforce`: a failed check denies; `audit`: it admits, and the decision
/// says what would have been denied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// What is decided when nothing else decides: `defaultVerdict` (no rule
/// matched), `resolution.onFailure` and a requirement's `onFailure` (the
/// registry did not answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    Allow,
    #[default]
    Deny,
}
