//! Image references: parsed by the distribution/reference grammar, normalised
//! the way Docker Hub names are (`nginx` -> `docker.io/library/nginx:latest`).
//!
//! Parsing is `oci-spec`'s `Reference` (a port of distribution/reference,
//! maintained with youki and oci-client). This module adds the checks where
//! its regex-based port is looser than the Go original, so that what Go's
//! `reference.ParseNormalizedNamed` refuses is refused here too:
//! - Rust's `\w` matches Unicode letters, Go's only ASCII: non-ASCII input is
//!   refused before parsing;
//! - Go's digest parser wants lower-case hex; the port accepts upper case;
//! - Go limits the whole normalised name (`docker.io/library/` included) to
//!   255 bytes, the port only the path;
//! - Go refuses an upper-case path after Docker Hub normalisation
//!   (`Foo/bar`), the port does not.
//!
//! The host is kept as written: Go applies Docker Hub's normalisation only
//! to exactly `docker.io` and `index.docker.io`, so to containerd and the
//! kubelet `Docker.io/nginx` is host `Docker.io`, path `nginx`, not
//! `docker.io/library/nginx`. Policies then compare hosts
//! case-insensitively, as DNS and TLS do. And what the runtime reads as an
//! image ID (64 hex digits, or `sha256:<hex>`, which `ParseAnyReference`
//! takes as a digest and CRI looks up among local images whatever their
//! name) is refused: it names no repository a policy could judge.

use std::{fmt, sync::LazyLock};

use imagegate_proto::digest::{Digest, DigestError};
use oci_spec::distribution::{ParseError as OciParseError, Reference as OciReference};
use serde::Serialize;

/// How many parsed references [`Reference::parse_cached`] keeps.
const PARSE_CACHE_ENTRIES: usize = 16 * 1024;

/// Parsed references by input. The grammar is one large regex whose
/// backtracker clears a visited set the size of its NFA on every search: in
/// the webhook that was three quarters of all instructions per request
/// (callgrind), while a cluster's images repeat. A parse is a pure function
/// of its input, so memoising it changes no answer.
static PARSE_CACHE: LazyLock<quick_cache::sync::Cache<String, Result<Reference, ParseError>>> =
    LazyLock::new(|| quick_cache::sync::Cache::new(PARSE_CACHE_ENTRIES));

/// Longest name (domain and path, as written) distribution/reference accepts.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Why a string is not an image reference. The message is what a user sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the image reference is empty")]
    Empty,
    #[error("invalid reference format: image references are ASCII only")]
    NonAscii,
    #[error("invalid reference format: a digest's hex must be lower case")]
    UppercaseDigest,
    #[error("invalid reference format: repository name must not be more than 255 characters")]
    NameTooLong,
    #[error("invalid reference format: repository name must be lowercase")]
    Uppercase,
    #[error("invalid reference format: {0}")]
    Digest(DigestError),
    #[error(
        "invalid reference format: {0:?} looks like a registry host but is not a valid one; \
         the runtime would read it as a path on no registry, which cannot be pulled"
    )]
    NotAHost(String),
    #[error(
        "{0:?} is an image ID, not a reference: the runtime would run whatever local image has \
         that ID, whatever its name; name the image by repository and digest, e.g. \
         registry.example/team/app@sha256:<digest>"
    )]
    ImageId(String),
    #[error("{0}")]
    Grammar(String),
}

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Reference {
    /// Registry host, with its port if any, as written (and as the runtime
    /// keeps it): `docker.io`, `registry.local:5000`. Compared
    /// case-insensitively by policies.
    pub domain: String,
    /// Repository path inside the registry: `library/nginx`.
    pub path: String,
    /// The tag as written; `None` when the reference has none.
    pub tag: Option<String>,
    /// `algorithm:hex` as written (checked: the digest type the agent uses);
    /// when present it decides over the tag.
    pub digest: Option<Digest>,
}

impl Reference {
    /// [`Reference::parse`], remembered for the inputs seen most recently.
    /// Inputs longer than any valid reference are not remembered.
    pub fn parse_cached(input: &str) -> Result<Self, ParseError> {
        if input.len() > 1024 {
            return Self::parse(input);
        }
        if let Some(found) = PARSE_CACHE.get(input) {
            return found;
        }
        let parsed = Self::parse(input);
        PARSE_CACHE.insert(input.to_string(), parsed.clone());
        parsed
    }

    /// Parses `input` as Kubernetes and containerd do.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        if input.is_empty() {
            return Err(ParseError::Empty);
        }
        if !input.is_ascii() {
            return Err(ParseError::NonAscii);
        }
        if is_image_id(input) {
            return Err(ParseError::ImageId(input.to_string()));
        }
        // Go's grammar reads a first component with `.` or `:` that is not
        // a valid host as part of a path with no registry at all
        // (`ho_st.com/x`): nothing could pull it, nothing to judge.
        if let Some((first, _)) = input.split('@').next().unwrap_or(input).split_once('/')
            && (first.contains(['.', ':']) || first == "localhost")
            && !is_host(first)
        {
            return Err(ParseError::NotAHost(first.to_string()));
        }
        let (name, digest) = match input.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (input, None),
        };
        // Only the hex after `algorithm:` must be lower case; an upper-case
        // algorithm is refused by the grammar itself.
        let digest_hex = digest.and_then(|d| d.split_once(':')).map(|(_, hex)| hex);
        if digest_hex.is_some_and(|hex| hex.bytes().any(|b| b.is_ascii_uppercase())) {
            return Err(ParseError::UppercaseDigest);
        }
        // Normalising only lengthens a name: refuse early what is already too
        // long, before the regex runs on it.
        if name_part(name).len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ParseError::NameTooLong);
        }
        let parsed = OciReference::try_from(input).map_err(|e| explain(input, e))?;
        let tag = has_explicit_tag(name)
            .then(|| parsed.tag().map(str::to_string))
            .flatten();
        let (domain, path) = docker_hub_normalised(parsed.registry(), parsed.repository());
        // The grammar lets a first component like `Foo` through as a domain,
        // but without `.` or `:` it is a path on Docker Hub, and Go refuses an
        // upper-case path after normalising (found by the fuzz target:
        // `docKero/lx1`).
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ParseError::Uppercase);
        }
        // Go applies the limit to the normalised name, `docker.io/` and
        // `library/` included (found by the fuzz target: a 250-byte Docker
        // Hub path).
        if domain.len() + 1 + path.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ParseError::NameTooLong);
        }
        let digest = parsed
            .digest()
            .map(Digest::parse)
            .transpose()
            .map_err(ParseError::Digest)?;
        Ok(Self {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`: the repository, what registry and repository rules
    /// match against, the host lower-cased (hosts are case-insensitive).
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain.to_ascii_lowercase(), self.path)
    }

    /// The tag a runtime pulls: the written one, or `latest` when there is
    /// neither tag nor digest.
    pub fn effective_tag(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(tag), _) => Some(tag),
            (None, None) => Some("latest"),
            (None, Some(_)) => None,
        }
    }

    /// Pulls `latest`: written as `:latest`, or implied by having neither tag
    /// nor digest. A digest decides over any tag, so `x:latest@sha256:..` is
    /// not `latest`.
    pub fn is_latest(&self) -> bool {
        self.digest.is_none() && self.effective_tag() == Some("latest")
    }

    /// Neither a tag nor a digest was written.
    pub fn is_untagged(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }
}

/// The fully normalised form, `docker.io/library/nginx:1.25`, with `latest`
/// spelled out when implied, and the digest when there is one.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = self.effective_tag() {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Docker Hub's normalisation, exactly as distribution/reference applies
/// it: only to the spellings `docker.io` and `index.docker.io`. Any other
/// host, `Docker.io` included, stays as written: the runtime contacts that
/// host, not Docker Hub.
fn docker_hub_normalised(registry: &str, repository: &str) -> (String, String) {
    let mut domain = registry.to_string();
    if domain == "index.docker.io" {
        domain = "docker.io".into();
    }
    let path = if domain == "docker.io" && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository.to_string()
    };
    (domain, path)
}

/// distribution/reference's domain grammar: dot-separated labels of ASCII
/// letters, digits and inner hyphens, and an optional numeric port.
fn is_host(host: &str) -> bool {
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// What the runtime reads as an image ID rather than a reference: 64
/// lower-case hex digits, or a whole digest (`sha256:<hex>`).
fn is_image_id(input: &str) -> bool {
    (input.len() == 64
        && input
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        || Digest::parse(input).is_ok()
}

/// The name as written, without its tag (`registry:5000/x:1` -> `registry:5000/x`).
fn name_part(name: &str) -> &str {
    match name.rfind(':') {
        // A colon after the last slash starts a tag; one before it is a port.
        Some(colon) if !name[colon..].contains('/') => &name[..colon],
        _ => name,
    }
}

/// Whether the name (reference without digest) carries a `:tag`, as opposed
/// to a `host:port/` only.
fn has_explicit_tag(name: &str) -> bool {
    name_part(name).len() != name.len()
}

/// Turns oci-spec's error into the user-facing reason, naming what
/// distribution/reference would.
fn explain(input: &str, err: OciParseError) -> ParseError {
    match err {
        OciParseError::NameEmpty => ParseError::Empty,
        OciParseError::NameTooLong => ParseError::NameTooLong,
        OciParseError::NameContainsUppercase => ParseError::Uppercase,
        OciParseError::ReferenceInvalidFormat => {
            // Go's parser says why when the path has upper case; say it too.
            let name = name_part(input.split('@').next().unwrap_or(input));
            let path = match name.split_once('/') {
                Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest,
                _ => name,
            };
            if path.bytes().any(|b| b.is_ascii_uppercase()) {
                ParseError::Uppercase
            } else {
                ParseError::Grammar(format!("invalid reference format: {err}"))
            }
        }
        other => ParseError::Grammar(format!("invalid reference format: {other}")),
    }
}

#[cfg(test)]
mod tests;
