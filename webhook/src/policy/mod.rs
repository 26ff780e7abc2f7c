//! The policy: loaded from YAML, validated with errors that name the field,
//! compiled into matchers, and applied to reviews ([`decide`]).
//!
//! - [`file`](mod@file): the YAML as written (serde types, no logic);
//! - [`matchers`]: registry patterns and globs, compiled;
//! - [`decide`]: one decision per image, summed up per review;
//! - `resolution`: which images are resolved and what an outcome does to a
//!   decision;
//! - `signatures`: rules' signature and attestation requirements, compiled,
//!   and what a check's outcome does to a decision.

pub mod decide;
pub mod file;
pub mod matchers;
mod resolution;
mod signatures;

use std::collections::{BTreeMap, HashSet};

pub use decide::{ImageDecision, ImageVerdict, ReviewDecision};
pub use file::Mode;
use file::PolicyFile;
use matchers::{NamespaceSet, RegistryPattern, RepositoryGlobs};

/// A policy file that cannot be used. The message names each problem's
/// field, e.g. `rules[1].registries[0]: ...`.
#[derive(Debug, thiserror::Error)]
#[error("invalid policy: {}", .problems.join("; "))]
pub struct PolicyError {
    pub problems: Vec<String>,
}

/// A validated, compiled policy.
pub struct Policy {
    pub mode: Mode,
    pub default_verdict: file::Fallback,
    pub exempt_namespaces: NamespaceSet,
    /// `None` when break-glass is disabled.
    pub break_glass_annotation: Option<String>,
    /// How long a break-glass approval admits new containers on nodes.
    pub break_glass_ttl: Option<std::time::Duration>,
    pub rules: Vec<Rule>,
    /// What an image that cannot be resolved to a digest gets.
    pub on_resolution_failure: file::Fallback,
    /// Ask the registry about images that already name a digest.
    pub verify_digest: bool,
    /// The object annotation that turns digest pinning off (`"false"`).
    pub pin_annotation: String,
    /// Some rule reads object labels: decisions then depend on more than
    /// (namespace, image) and are not remembered.
    uses_labels: bool,
    /// Some rule has signature or attestation requirements: reviews then
    /// go through the signature stage.
    pub requires_signatures: bool,
    /// Decisions by (namespace, image); see [`Policy::decide_image`]. Lives
    /// and dies with this policy, so a reload starts afresh.
    decisions: DecisionCache,
}

/// How many (namespace, image) decisions a policy remembers.
const DECISION_CACHE_ENTRIES: usize = 16 * 1024;

type DecisionCache = quick_cache::sync::Cache<(String, String), std::sync::Arc<ImageDecision>>;

/// A [`DecisionCache`] key, borrowed: looking a decision up allocates
/// nothing (the owned key cost two allocations per image per review). It
/// hashes as the owned `(String, String)` does: a tuple struct's derived
/// `Hash` writes its fields in order, as a tuple's does, and `String`
/// hashes as `str`.
#[derive(Hash)]
struct DecisionKey<'a>(&'a str, &'a str);

impl quick_cache::Equivalent<(String, String)> for DecisionKey<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("mode", &self.mode)
            .field("default_verdict", &self.default_verdict)
            .field("break_glass_annotation", &self.break_glass_annotation)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub namespaces: NamespaceSet,
    pub object_labels: BTreeMap<String, String>,
    pub registries: Vec<RegistryPattern>,
    pub allow: RepositoryGlobs,
    pub deny: RepositoryGlobs,
    pub deny_latest: bool,
    pub deny_untagged: bool,
    pub require_digest: bool,
    pub mode: Option<Mode>,
    pub pin_digests: bool,
    /// Signature and attestation requirements, all to be met.
    pub requirements: Vec<std::sync::Arc<crate::signature::Requirement>>,
}

impl Policy {
    /// Whether `reference`'s registry is one a rule names: the only hosts
    /// imagegate contacts for an image no rule decided (break-glass), so a
    /// pod author cannot make the webhook reach any host they choose.
    pub fn knows_registry(&self, reference: &crate::reference::Reference) -> bool {
        self.rules
            .iter()
            .flat_map(|r| &r.registries)
            // `*` names no host: break-glass still reaches only named ones.
            .filter(|pattern| !pattern.is_any())
            .any(|pattern| reference.domain.eq_ignore_ascii_case(&pattern.host))
    }

    /// The files the policy names (signature keys, trusted roots), read
    /// when it loads: watched with the policy file.
    pub fn named_files(&self) -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = self
            .rules
            .iter()
            .flat_map(|r| &r.requirements)
            .flat_map(|r| r.files.iter().cloned())
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// Whether the rule named `name` lets `/mutate` pin what it allows.
    pub fn pins(&self, rule: &str) -> bool {
        self.rule(rule).is_none_or(|r| r.pin_digests)
    }

    /// The rule named `name`.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Parses and validates a policy document.
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        Self::from_yaml_exempting(text, &[])
    }

    /// As [`Policy::from_yaml`], with `exempt` (the installation's own
    /// namespaces, from `--exempt-namespace`) added to the file's
    /// `exemptNamespaces`: the deployment decides those, not the policy.
    pub fn from_yaml_exempting(text: &str, exempt: &[String]) -> Result<Self, PolicyError> {
        Self::from_yaml_reading(text, exempt, &mut read_named_file)
    }

    /// As [`Policy::from_yaml_exempting`], reading the files the policy
    /// names (keys, trusted roots) through `read`: the policy store records
    /// what was read, so what it watches is exactly what the policy holds.
    pub fn from_yaml_reading(
        text: &str,
        exempt: &[String],
        read: &mut dyn FnMut(&std::path::Path) -> Result<Vec<u8>, String>,
    ) -> Result<Self, PolicyError> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let file: PolicyFile = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let at = if path == "." {
                String::new()
            } else {
                format!("{path}: ")
            };
            PolicyError {
                problems: vec![format!("{at}{inner}")],
            }
        })?;
        let mut file = file;
        file.exempt_namespaces.extend(exempt.iter().cloned());
        compile(file, read)
    }
}

/// Most bytes read from a file the policy names (a key, a trusted root).
pub const MAX_NAMED_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a file the policy names, whole, within its bound.
pub fn read_named_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_NAMED_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_NAMED_FILE_BYTES {
        return Err(format!(
            "{} is larger than the {MAX_NAMED_FILE_BYTES} bytes imagegate reads",
            path.display()
        ));
    }
    Ok(bytes)
}

fn compile(
    file: PolicyFile,
    read: &mut dyn FnMut(&std::path::Path) -> Result<Vec<u8>, String>,
) -> Result<Policy, PolicyError> {
    let mut problems = Vec::new();
    if file.api_version != file::API_VERSION {
        problems.push(format!(
            "apiVersion: expected {}, got {:?}",
            file::API_VERSION,
            file.api_version
        ));
    }
    if file.kind != file::KIND {
        problems.push(format!(
            "kind: expected {}, got {:?}",
            file::KIND,
            file.kind
        ));
    }
    let exempt_namespaces = NamespaceSet::new(&file.exempt_namespaces)
        .map_err(|(i, e)| problems.push(format!("exemptNamespaces[{i}]: {e}")))
        .ok();
    if file.break_glass.annotation.is_empty()
        || file.break_glass.annotation.contains(char::is_whitespace)
    {
        problems.push(format!(
            "breakGlass.annotation: {:?} is not an annotation key",
            file.break_glass.annotation
        ));
    }

    let mut names = HashSet::new();
    let mut rules = Vec::new();
    for (i, rule) in file.rules.into_iter().enumerate() {
        let at = format!("rules[{i}]");
        if rule.name.trim().is_empty() {
            problems.push(format!(
                "{at}.name: a rule needs a name (it appears in every decision)"
            ));
        } else if !names.insert(rule.name.clone()) {
            problems.push(format!(
                "{at}.name: {:?} is used by an earlier rule",
                rule.name
            ));
        }
        let namespaces = NamespaceSet::new(&rule.namespaces)
            .map_err(|(j, e)| problems.push(format!("{at}.namespaces[{j}]: {e}")))
            .ok();
        let registries: Vec<_> = rule
            .registries
            .iter()
            .enumerate()
            .filter_map(|(j, r)| {
                RegistryPattern::parse(r)
                    .map_err(|e| problems.push(format!("{at}.registries[{j}]: {e}")))
                    .ok()
            })
            .collect();
        if rule.registries.is_empty() && rule.repositories.allow.is_empty() {
            problems.push(format!(
                "{at}: the rule selects no image; name its `registries` (`['*']` for every \
                 registry) or `repositories.allow`. An empty selector is refused so that a file \
                 cut short cannot load as a rule matching everything"
            ));
        }
        let allow = RepositoryGlobs::new(&rule.repositories.allow)
            .map_err(|(j, e)| problems.push(format!("{at}.repositories.allow[{j}]: {e}")))
            .ok();
        let deny = RepositoryGlobs::new(&rule.repositories.deny)
            .map_err(|(j, e)| problems.push(format!("{at}.repositories.deny[{j}]: {e}")))
            .ok();
        let mut requirements = signatures::compile(
            &format!("{at}.signatures"),
            rule.signatures,
            false,
            &mut problems,
            read,
        );
        requirements.extend(signatures::compile(
            &format!("{at}.attestations"),
            rule.attestations,
            true,
            &mut problems,
            read,
        ));
        let mut requirement_names = HashSet::new();
        for r in &requirements {
            if !requirement_names.insert(r.name.clone()) {
                problems.push(format!(
                    "{at}: the requirement name {:?} is used twice in this rule",
                    r.name
                ));
            }
        }
        if let (Some(namespaces), Some(allow), Some(deny)) = (namespaces, allow, deny) {
            rules.push(Rule {
                name: rule.name,
                namespaces,
                object_labels: rule.object_labels,
                registries,
                allow,
                deny,
                deny_latest: rule.deny_latest,
                deny_untagged: rule.deny_untagged,
                require_digest: rule.require_digest,
                mode: rule.mode,
                pin_digests: rule.pin_digests,
                requirements,
            });
        }
    }
    match exempt_namespaces {
        Some(exempt_namespaces) if problems.is_empty() => Ok(Policy {
            uses_labels: rules.iter().any(|r| !r.object_labels.is_empty()),
            requires_signatures: rules.iter().any(|r| !r.requirements.is_empty()),
            mode: file.mode,
            default_verdict: file.default_verdict,
            exempt_namespaces,
            break_glass_ttl: file.break_glass.approval_ttl,
            break_glass_annotation: file
                .break_glass
                .enabled
                .then_some(file.break_glass.annotation),
            rules,
            on_resolution_failure: file.resolution.on_failure,
            verify_digest: file.resolution.verify_digest,
            pin_annotation: file::PIN_ANNOTATION.to_string(),
            decisions: DecisionCache::new(DECISION_CACHE_ENTRIES),
        }),
        _ => Err(PolicyError { problems }),
    }
}

#[cfg(test)]
mod tests;
