//! Which platform a manifest of an index is for, as image indexes say it
//! (GOOS/GOARCH names), and whether this node can run it.
//!
//! An index lists a manifest per platform (and attestations, as
//! `unknown/unknown`); a node only ever runs, and its runtime only ever
//! reports, the index or its own platform's manifest. The webhook sends
//! every child with its platform; each agent keeps the ones its node can
//! run, so a 16-platform index costs a node one or two digests, not 17.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    /// `v7`, `v8` for arm; empty when the index says nothing.
    #[serde(default)]
    pub variant: String,
}

/// This machine's architecture as image indexes name it (GOARCH).
pub fn node_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "x86" => "386",
        other => other,
    }
}

/// A manifest an index lists: its digest, and its platform when the index
/// says it (attestations say `unknown/unknown`; a child asked of the
/// registry without the index has none).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Child {
    pub digest: crate::digest::Digest,
    #[serde(default)]
    pub platform: Option<Platform>,
}

impl Platform {
    /// Whether a Linux node of architecture `arch` (GOARCH) may run a
    /// manifest for this platform. Variants are not told apart: a node
    /// reports whichever its runtime picked.
    pub fn runs_on(&self, arch: &str) -> bool {
        self.os == "linux" && self.architecture == arch
    }

    /// Whether this node may run it.
    pub fn runs_here(&self) -> bool {
        self.runs_on(node_architecture())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(os: &str, arch: &str) -> Platform {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: String::new(),
        }
    }

    #[test]
    fn a_node_runs_its_own_linux_architecture_only() {
        assert!(p("linux", "amd64").runs_on("amd64"));
        assert!(!p("linux", "arm64").runs_on("amd64"));
        assert!(!p("windows", "amd64").runs_on("amd64"));
        assert!(!p("unknown", "unknown").runs_on("amd64"), "attestations");
    }
}
