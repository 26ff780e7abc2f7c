//! Matching registries, repositories and namespaces. Hosts are compared
//! whole, paths on segment boundaries, never by string prefix.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::reference::Reference;

/// Written as a rule's only way to say "every registry": a rule has to
/// select something explicitly, so a file cut short after `- name: x`
/// cannot turn into a rule that matches every image.
pub const ANY_REGISTRY: &str = "*";

/// `host[:port]` optionally followed by `/path/prefix`, or `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryPattern {
    /// Lower-cased host with port.
    pub host: String,
    /// Repository path prefix, matched on `/` boundaries.
    pub path_prefix: Option<String>,
    /// As written, for messages.
    pub written: String,
}

/// A registry pattern that is not one; says what to write instead.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(String);

impl RegistryPattern {
    /// `*`: every registry.
    pub fn is_any(&self) -> bool {
        self.host == ANY_REGISTRY
    }

    pub fn parse(written: &str) -> Result<Self, PatternError> {
        Self::parse_text(written).map_err(PatternError)
    }

    fn parse_text(written: &str) -> Result<Self, String> {
        if written == ANY_REGISTRY {
            return Ok(Self {
                host: ANY_REGISTRY.into(),
                path_prefix: None,
                written: written.into(),
            });
        }
        if written.contains("://") {
            return Err(format!(
                "`{written}` is not a registry: write the host without a scheme, e.g. registry.example.com:5000"
            ));
        }
        let (host, path) = match written.split_once('/') {
            Some((host, path)) => (host, Some(path)),
            None => (written, None),
        };
        let (name, port) = match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || !name.split('.').all(label_ok) {
            return Err(format!(
                "`{written}` is not a registry: expected host[:port][/path], e.g. registry.example.com:5000/team"
            ));
        }
        if port.is_some_and(|p| p.parse::<u16>().is_err()) {
            return Err(format!(
                "`{written}`: the port must be a number from 0 to 65535"
            ));
        }
        if let Some(path) = path {
            let segment_ok = |s: &str| {
                !s.is_empty()
                    && s.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            };
            if !path.split('/').all(segment_ok) {
                return Err(format!(
                    "`{written}`: the path after the host must be lower-case segments separated by single slashes"
                ));
            }
        }
        let mut host = host.to_ascii_lowercase();
        // The same normalisation references get.
        if host == "index.docker.io" {
            host = "docker.io".into();
        }
        Ok(Self {
            host,
            path_prefix: path.map(str::to_string),
            written: written.to_string(),
        })
    }

    /// Whether `reference` is on this registry (the host compared
    /// case-insensitively, as DNS and TLS compare it) under the path
    /// prefix, if any.
    pub fn matches(&self, reference: &Reference) -> bool {
        if self.is_any() {
            return true;
        }
        if !reference.domain.eq_ignore_ascii_case(&self.host) {
            return false;
        }
        match &self.path_prefix {
            None => true,
            Some(prefix) => {
                reference.path == *prefix
                    || reference
                        .path
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            }
        }
    }
}

/// Globs on full repository names (`docker.io/library/*`).
#[derive(Clone, Debug)]
pub struct RepositoryGlobs {
    set: GlobSet,
    written: Vec<String>,
}

impl RepositoryGlobs {
    /// Compiles `patterns`; an error names the index of the bad one.
    pub fn new(patterns: &[String]) -> Result<Self, (usize, String)> {
        let mut builder = GlobSetBuilder::new();
        for (i, p) in patterns.iter().enumerate() {
            if !p.contains('/') {
                return Err((
                    i,
                    format!(
                        "`{p}` can never match: patterns match the full repository name, \
                         e.g. docker.io/library/{p}"
                    ),
                ));
            }
            let glob = GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| (i, format!("`{p}` is not a valid glob: {e}")))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| (0, e.to_string()))?;
        Ok(Self {
            set,
            written: patterns.to_vec(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// The first pattern that matches `repository`, as written.
    pub fn first_match(&self, repository: &str) -> Option<&str> {
        self.set
            .matches(repository)
            .into_iter()
            .min()
            .map(|i| self.written[i].as_str())
    }

    pub fn written(&self) -> &[String] {
        &self.written
    }
}

/// Namespace names or globs.
#[derive(Clone, Debug)]
pub struct NamespaceSet {
    set: GlobSet,
    empty: bool,
}

impl NamespaceSet {
    pub fn new(patterns: &[String]) -> Result<Self, (usize, String)> {
        let mut builder = GlobSetBuilder::new();
        for (i, p) in patterns.iter().enumerate() {
            if p.is_empty() {
                return Err((i, "a namespace pattern must not be empty".into()));
            }
            let glob = Glob::new(p).map_err(|e| (i, format!("`{p}` is not a valid glob: {e}")))?;
            builder.add(glob);
        }
        Ok(Self {
            set: builder.build().map_err(|e| (0, e.to_string()))?,
            empty: patterns.is_empty(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.empty
    }

    pub fn contains(&self, namespace: &str) -> bool {
        self.set.is_match(namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn registry_hosts_match_whole() {
        let hub = RegistryPattern::parse("docker.io").unwrap();
        assert!(hub.matches(&r("nginx")));
        assert!(hub.matches(&r("index.docker.io/library/nginx")));
        assert!(!hub.matches(&r("docker.io.evil.com/library/nginx")));
        assert!(!hub.matches(&r("evil-docker.io/x")));
        let local = RegistryPattern::parse("Registry.Local:5000").unwrap();
        assert!(local.matches(&r("registry.local:5000/team/app")));
        assert!(local.matches(&r("REGISTRY.local:5000/team/app")));
        assert!(
            !local.matches(&r("registry.local/team/app")),
            "another port is another registry"
        );
        assert!(!local.matches(&r("registry.local:50000/team/app")));
    }

    #[test]
    fn registry_paths_match_on_segment_boundaries() {
        let team = RegistryPattern::parse("docker.io/mycompany").unwrap();
        assert!(team.matches(&r("docker.io/mycompany/app")));
        assert!(team.matches(&r("mycompany/app:1")));
        assert!(!team.matches(&r("docker.io/mycompanyevil/x")));
        assert!(!team.matches(&r("nginx")));
        assert_eq!(
            RegistryPattern::parse("index.docker.io/library")
                .unwrap()
                .host,
            "docker.io"
        );
    }

    #[test]
    fn bad_registry_patterns_say_what_is_expected() {
        for bad in [
            "",
            "docker.io/",
            "https://docker.io",
            "a..b",
            "host:port",
            "host:99999",
            "h/Team",
            "-a.b",
        ] {
            assert!(RegistryPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repository_globs_stay_in_their_segment() {
        let globs =
            RepositoryGlobs::new(&["docker.io/library/*".into(), "ghcr.io/org/**".into()]).unwrap();
        assert_eq!(
            globs.first_match("docker.io/library/nginx"),
            Some("docker.io/library/*")
        );
        assert_eq!(globs.first_match("docker.io/library/team/nginx"), None);
        assert_eq!(
            globs.first_match("ghcr.io/org/a/b/c"),
            Some("ghcr.io/org/**")
        );
        assert_eq!(globs.first_match("ghcr.io/orgevil/a"), None);
        let err = RepositoryGlobs::new(&["nginx".into()]).unwrap_err();
        assert_eq!(err.0, 0);
        assert!(err.1.contains("docker.io/library/nginx"), "{}", err.1);
        assert!(RepositoryGlobs::new(&["a/[".into()]).is_err());
    }

    #[test]
    fn namespaces_match_names_and_globs() {
        let set = NamespaceSet::new(&["default".into(), "team-*".into()]).unwrap();
        assert!(set.contains("default") && set.contains("team-a"));
        assert!(!set.contains("defaults") && !set.contains("kube-system"));
    }
}
