//! Violations as policy reports: an OpenReports `Report` per namespace
//! (`ClusterReport` for containers that are no pod's), or the older
//! `wgpolicyk8s.io/v1alpha2` `PolicyReport` that Policy Reporter setups
//! may still read. Same fields in both (the results' schema is shared).
//!
//! [`book::Book`] keeps, per report, one result per container (updated,
//! not appended), at most `max` results (the oldest dropped and counted),
//! and what changed; [`writer`] writes what changed to the apiserver and
//! removes the results of pods that are gone. Data flows one way:
//! violations -> book -> report objects -> apiserver.

pub mod book;
pub mod writer;

#[cfg(test)]
mod tests;

use kube::discovery::ApiResource;

/// Which report API is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `openreports.io/v1alpha1` `Report` / `ClusterReport`.
    OpenReports,
    /// `wgpolicyk8s.io/v1alpha2` `PolicyReport` / `ClusterPolicyReport`.
    WgPolicy,
}

/// The one report object imagegate writes per namespace (and the one
/// cluster report): its name.
pub const REPORT_NAME: &str = "imagegate";

impl Format {
    /// `--report-format`: `openreports`, `wgpolicyk8s` or `off` (`None`).
    pub fn parse(value: &str) -> Result<Option<Self>, String> {
        match value {
            "openreports" => Ok(Some(Self::OpenReports)),
            "wgpolicyk8s" => Ok(Some(Self::WgPolicy)),
            "off" => Ok(None),
            other => Err(format!(
                "--report-format {other:?}: expected openreports, wgpolicyk8s or off"
            )),
        }
    }

    /// The API group and the version written.
    fn group_and_version(self) -> (&'static str, &'static str) {
        match self {
            Self::OpenReports => ("openreports.io", "v1alpha1"),
            Self::WgPolicy => ("wgpolicyk8s.io", "v1alpha2"),
        }
    }

    pub fn group_version(self) -> String {
        let (group, version) = self.group_and_version();
        format!("{group}/{version}")
    }

    /// The kind for a namespace's report, or the cluster's.
    pub fn kind(self, namespaced: bool) -> &'static str {
        match (self, namespaced) {
            (Self::OpenReports, true) => "Report",
            (Self::OpenReports, false) => "ClusterReport",
            (Self::WgPolicy, true) => "PolicyReport",
            (Self::WgPolicy, false) => "ClusterPolicyReport",
        }
    }

    /// The CRDs that must be installed for this format (`plural.group`).
    pub fn crds(self) -> [String; 2] {
        [true, false].map(|namespaced| {
            let resource = self.api_resource(namespaced);
            format!("{}.{}", resource.plural, resource.group)
        })
    }

    pub fn api_resource(self, namespaced: bool) -> ApiResource {
        let (group, version) = self.group_and_version();
        let kind = self.kind(namespaced);
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: self.group_version(),
            kind: kind.into(),
            plural: format!("{}s", kind.to_ascii_lowercase()),
        }
    }
}
