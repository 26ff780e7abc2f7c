//! The policy file as written (YAML). Validated and compiled by
//! [`super::Policy::from_yaml`]; nothing else reads these types.

use std::collections::BTreeMap;

use serde::Deserialize;

pub const API_VERSION: &str = "imagegate.dev/v1alpha1";
pub const KIND: &str = "ImagePolicy";
pub const DEFAULT_BREAK_GLASS_ANNOTATION: &str = "imagegate.dev/break-glass";
/// On an object or its pod template, `"false"` turns digest pinning off.
pub const PIN_ANNOTATION: &str = "imagegate.dev/pin-digests";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyFile {
    pub api_version: String,
    pub kind: String,
    /// `enforce` (deny what fails) or `audit` (allow, and say what enforce
    /// would have denied).
    #[serde(default)]
    pub mode: Mode,
    /// What happens to an image no rule accepts.
    #[serde(default)]
    pub default_verdict: Fallback,
    /// Namespaces (names or globs) whose objects are not checked.
    #[serde(default)]
    pub exempt_namespaces: Vec<String>,
    #[serde(default)]
    pub break_glass: BreakGlassFile,
    /// Evaluated in order; the first rule that applies to the namespace and
    /// selects the image decides.
    #[serde(default)]
    pub rules: Vec<RuleFile>,
    /// What digest resolution decides (the registries themselves are
    /// configured by the server's flags).
    #[serde(default)]
    pub resolution: ResolutionFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResolutionFile {
    /// An allowed image that cannot be resolved to a digest: `deny` it
    /// (default), or `allow` it with an audit annotation.
    #[serde(default)]
    pub on_failure: Fallback,
    /// Ask the registry whether the repository serves a digest that a
    /// reference names (default true). Off, a pod author's digest is taken
    /// as written: the approval says it is unverified, since it may name
    /// any image on the node.
    #[serde(default = "yes")]
    pub verify_digest: bool,
}

impl Default for ResolutionFile {
    fn default() -> Self {
        Self {
            on_failure: Fallback::default(),
            verify_digest: true,
        }
    }
}

pub use crate::modes::{Fallback, Mode};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BreakGlassFile {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The object annotation that breaks glass on AdmissionReview (value
    /// `"true"`). ImageReview uses `*.image-policy.k8s.io/break-glass`.
    #[serde(default = "default_break_glass_annotation")]
    pub annotation: String,
    /// How long an approval made by breaking glass lets new containers of
    /// that image start on nodes (`1h`, `30m`); unset: as long as any
    /// approval. Containers already running are not stopped when it ends.
    #[serde(default, with = "optional_duration")]
    pub approval_ttl: Option<std::time::Duration>,
}

impl Default for BreakGlassFile {
    fn default() -> Self {
        Self {
            enabled: true,
            annotation: default_break_glass_annotation(),
            approval_ttl: None,
        }
    }
}

/// `1h`, `30m`: humantime durations in the policy file.
mod optional_duration {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<std::time::Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|t| {
            humantime::parse_duration(&t).map_err(|e| {
                serde::de::Error::custom(format!("{t:?} is not a duration (e.g. 1h, 30m): {e}"))
            })
        })
        .transpose()
    }
}

fn yes() -> bool {
    true
}

fn default_break_glass_annotation() -> String {
    DEFAULT_BREAK_GLASS_ANNOTATION.to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleFile {
    pub name: String,
    /// Namespaces (names or globs) the rule applies to; empty: all.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Labels the object must carry for the rule to apply. Only
    /// AdmissionReview carries labels; on ImageReview such a rule never
    /// applies.
    #[serde(default)]
    pub object_labels: BTreeMap<String, String>,
    /// `host[:port]` or `host[:port]/path/prefix`; `*` for any registry.
    /// A rule names registries or `repositories.allow` (or both).
    #[serde(default)]
    pub registries: Vec<String>,
    #[serde(default)]
    pub repositories: RepositoriesFile,
    /// Deny `:latest` and references with neither tag nor digest (which
    /// mean `latest`). A digest decides over the tag.
    #[serde(default)]
    pub deny_latest: bool,
    /// Deny references with neither tag nor digest.
    #[serde(default)]
    pub deny_untagged: bool,
    /// Deny references without a digest.
    #[serde(default)]
    pub require_digest: bool,
    /// Overrides the policy's mode for denials by this rule.
    pub mode: Option<Mode>,
    /// Whether `/mutate` pins the images this rule allows to their digests
    /// (default true). GitOps tools see a rewritten spec as drift: turn it
    /// off for what they manage.
    #[serde(default = "yes")]
    pub pin_digests: bool,
    /// Signatures each image this rule allows must carry (all of them).
    #[serde(default)]
    pub signatures: Vec<SignatureFile>,
    /// Attestations each image this rule allows must carry (all of them).
    #[serde(default)]
    pub attestations: Vec<SignatureFile>,
}

/// Whom a signature (or an attestation: an in-toto statement of
/// `predicateType` whose predicate meets `conditions`) must come from: keys
/// the policy names, or a keyless identity under a trusted root (or both:
/// either satisfies).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SignatureFile {
    /// Named in denials and recorded with each approval.
    pub name: String,
    #[serde(default)]
    pub keys: Vec<KeyFile>,
    pub keyless: Option<KeylessFile>,
    /// A Sigstore `trusted_root.json`: the certificate authorities of
    /// keyless certificates and the transparency logs' keys.
    pub trusted_root: Option<std::path::PathBuf>,
    /// `required` (default for keyless), `optional`, or `off` (default for
    /// keys).
    pub rekor: Option<crate::signature::requirement::Rekor>,
    /// Keyless: how many verified times of signing a signature needs (from
    /// a log entry's signed entry timestamp or an RFC 3161 timestamp of a
    /// timestamp authority in the trusted root), as cosign: default 1. `0`
    /// checks the certificate at the present time when there is none.
    pub verified_times: Option<usize>,
    /// Keyless: the signing certificate's signed certificate timestamp
    /// (certificate transparency), verified against the trusted root's CT
    /// logs: `required` (default, as cosign) or `off`.
    pub sct: Option<crate::signature::requirement::Sct>,
    /// Distinct trusted signers needed (default 1).
    #[serde(default = "one")]
    pub threshold: usize,
    /// Overrides the rule's mode for this requirement.
    pub mode: Option<Mode>,
    /// What a failed lookup (registry error, timeout) decides: `deny`
    /// (default) or `allow` with an audit annotation.
    #[serde(default)]
    pub on_failure: Fallback,
    /// Attestations only: the in-toto predicate type required.
    pub predicate_type: Option<String>,
    /// Attestations only: conditions the predicate must meet.
    #[serde(default)]
    pub conditions: Vec<ConditionFile>,
}

/// A condition on the predicate: at `path` (`metadata.scanFinishedOn`,
/// `scanner.result[].severity`), one test.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConditionFile {
    pub path: String,
    /// The value is an RFC 3339 time no older than this (`24h`).
    #[serde(default, with = "optional_duration")]
    pub max_age: Option<std::time::Duration>,
    /// No value is one of these (case-insensitive).
    #[serde(default)]
    pub deny_values: Vec<String>,
}

/// A public key (PEM), written in the policy or read from a file (a
/// mounted Secret).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyFile {
    pub name: String,
    pub pem: Option<String>,
    pub file: Option<std::path::PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeylessFile {
    /// The OIDC issuer the certificate names, exactly.
    pub issuer: String,
    /// The certificate's subject (email or URI), exactly ...
    pub subject: Option<String>,
    /// ... or matching this regular expression (anchored).
    pub subject_reg_exp: Option<String>,
}

fn one() -> usize {
    1
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoriesFile {
    /// Globs on the full repository name (`docker.io/library/*`); when set,
    /// the rule selects only matching images. `*` stays within a path
    /// segment, `**` crosses segments.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Globs whose matches this rule denies, whatever else it allows.
    #[serde(default)]
    pub deny: Vec<String>,
}
