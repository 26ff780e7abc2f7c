//! Writing the book's reports to the apiserver: what changed, at most once
//! per flush, as a whole object (created, or replaced at the version read,
//! so two writers never silently overwrite each other: a conflict reads the
//! report again and merges). Results of pods that are gone are removed.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::Value;

use super::{
    Format, REPORT_NAME,
    book::{Book, Scope},
};
use crate::report::model::{Decision, NodeViolation, PodRef};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The object changed since it was read.
    #[error("the report changed since it was read")]
    Conflict,
    /// No such object, or no such resource.
    #[error("not found")]
    NotFound,
    #[error("the apiserver: {0}")]
    Api(String),
}

/// Where reports go: the apiserver, or a fake in unit tests.
pub trait ReportSink: Send + Sync {
    /// Whether the apiserver serves `format`'s reports (its CRDs are
    /// installed).
    fn served(&self, format: Format) -> impl Future<Output = Result<bool, SinkError>> + Send;
    fn get(
        &self,
        format: Format,
        scope: &Scope,
    ) -> impl Future<Output = Result<Option<Value>, SinkError>> + Send;
    /// Creates the report (no `metadata.resourceVersion`) or replaces it
    /// at that version; returns the new version.
    fn put(
        &self,
        format: Format,
        scope: &Scope,
        report: Value,
    ) -> impl Future<Output = Result<String, SinkError>> + Send;
    /// The uid of the pod `pod` names, if it exists.
    fn pod_uid(
        &self,
        pod: &PodRef,
    ) -> impl Future<Output = Result<Option<String>, SinkError>> + Send;
}

/// What one flush did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    pub written: usize,
    pub conflicts: usize,
    pub failed: Vec<String>,
    /// The format's CRDs are not installed: nothing can be written.
    pub crds_missing: bool,
}

pub struct Writer<S> {
    sink: S,
    format: Format,
    book: Book,
    /// The version of each report as last read or written; a report is
    /// read once (to carry on from what is in the cluster) before its
    /// first write, and again after a conflict.
    versions: HashMap<Scope, Option<String>>,
    /// Where the next prune starts in the (sorted) pods the book names.
    prune_from: usize,
}

impl<S: ReportSink> Writer<S> {
    pub fn new(sink: S, format: Format, max_results: usize) -> Self {
        Self {
            sink,
            format,
            book: Book::new(max_results),
            versions: HashMap::new(),
            prune_from: 0,
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// How long a denial stays after its last occurrence.
    pub fn with_denied_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.book
            .set_denied_ttl_ms(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        self
    }

    /// Files `v`; the results this dropped to keep the report bounded.
    pub fn record(&mut self, v: &NodeViolation) -> u64 {
        self.book.record(v)
    }

    /// Files admission decision `d`; the results this dropped.
    pub fn record_decision(&mut self, d: &Decision) -> u64 {
        self.book.record_decision(d)
    }

    /// Takes out the denials whose time is up; how many.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        self.book.expire(now_ms)
    }

    /// Writes every report changed since the last flush.
    pub async fn flush(&mut self) -> Flushed {
        let mut flushed = Flushed::default();
        let changed = self.book.take_changed();
        for (at, scope) in changed.iter().enumerate() {
            match self.write(scope).await {
                Ok(()) => flushed.written += 1,
                Err(SinkError::Conflict) => {
                    flushed.conflicts += 1;
                    self.versions.remove(scope);
                    self.book.changed_again(scope.clone());
                }
                Err(SinkError::NotFound)
                    if !self.sink.served(self.format).await.unwrap_or(true) =>
                {
                    // Nothing of this format can be written: keep all of
                    // it for when the CRDs are installed.
                    for scope in &changed[at..] {
                        self.book.changed_again(scope.clone());
                    }
                    self.versions.clear();
                    flushed.crds_missing = true;
                    return flushed;
                }
                Err(e) => {
                    self.versions.remove(scope);
                    self.book.changed_again(scope.clone());
                    flushed
                        .failed
                        .push(format!("{}: {e}", name(self.format, scope)));
                }
            }
        }
        flushed
    }

    async fn write(&mut self, scope: &Scope) -> Result<(), SinkError> {
        if !self.versions.contains_key(scope) {
            let existing = self.sink.get(self.format, scope).await?;
            let version = existing
                .as_ref()
                .and_then(|r| r["metadata"]["resourceVersion"].as_str())
                .map(str::to_string);
            if let Some(existing) = &existing {
                self.book.load(scope, existing);
            }
            self.versions.insert(scope.clone(), version);
        }
        let mut report = self.book.render(scope, self.format);
        if let Some(Some(version)) = self.versions.get(scope) {
            report["metadata"]["resourceVersion"] = Value::String(version.clone());
        }
        let version = self.sink.put(self.format, scope, report).await?;
        self.versions.insert(scope.clone(), Some(version));
        self.book.written(scope);
        Ok(())
    }

    /// Removes the results of pods that no longer exist (or exist under
    /// the same name as a new pod), looking up at most `limit` pods, the
    /// next ones on each call; returns how many pods were gone. A pod that
    /// cannot be looked up keeps its results.
    pub async fn prune(&mut self, limit: usize) -> usize {
        let pods = self.book.pods();
        if pods.is_empty() {
            return 0;
        }
        let start = self.prune_from % pods.len();
        let take = limit.min(pods.len());
        self.prune_from = start + take;
        let mut gone = 0;
        for pod in pods.into_iter().cycle().skip(start).take(take) {
            let exists = match self.sink.pod_uid(&pod).await {
                Ok(Some(uid)) => pod.uid.is_empty() || uid == pod.uid,
                Ok(None) => false,
                Err(_) => true,
            };
            if !exists {
                self.book.remove_pod(&pod);
                gone += 1;
            }
        }
        gone
    }
}

/// `kind namespace/name`, for logs.
pub fn name(format: Format, scope: &Scope) -> String {
    match scope {
        Scope::Namespace(namespace) => {
            format!("{} {namespace}/{REPORT_NAME}", format.kind(true))
        }
        Scope::Cluster => format!("{} {REPORT_NAME}", format.kind(false)),
    }
}

/// The apiserver, through kube-rs's dynamic objects (the report kinds are
/// CRDs: no generated types).
pub struct KubeReports {
    pub client: kube::Client,
}

impl KubeReports {
    fn api(&self, format: Format, scope: &Scope) -> Api<DynamicObject> {
        let resource: ApiResource = format.api_resource(matches!(scope, Scope::Namespace(_)));
        match scope {
            Scope::Namespace(namespace) => {
                Api::namespaced_with(self.client.clone(), namespace, &resource)
            }
            Scope::Cluster => Api::all_with(self.client.clone(), &resource),
        }
    }
}

fn sink_error(e: kube::Error) -> SinkError {
    match &e {
        kube::Error::Api(status) if status.code == 409 => SinkError::Conflict,
        kube::Error::Api(status) if status.code == 404 => SinkError::NotFound,
        _ => SinkError::Api(imagegate_plumbing::errors::error_chain(&e)),
    }
}

impl ReportSink for KubeReports {
    async fn served(&self, format: Format) -> Result<bool, SinkError> {
        let resources = match self
            .client
            .list_api_group_resources(&format.group_version())
            .await
        {
            Ok(resources) => resources,
            Err(e) => {
                return match sink_error(e) {
                    SinkError::NotFound => Ok(false),
                    e => Err(e),
                };
            }
        };
        let served: HashSet<&str> = resources
            .resources
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        Ok([true, false]
            .into_iter()
            .all(|namespaced| served.contains(format.api_resource(namespaced).plural.as_str())))
    }

    async fn get(&self, format: Format, scope: &Scope) -> Result<Option<Value>, SinkError> {
        let found = self
            .api(format, scope)
            .get_opt(REPORT_NAME)
            .await
            .map_err(sink_error)?;
        found
            .map(|o| serde_json::to_value(o).map_err(|e| SinkError::Api(e.to_string())))
            .transpose()
    }

    async fn put(&self, format: Format, scope: &Scope, report: Value) -> Result<String, SinkError> {
        let replace = report["metadata"]["resourceVersion"].is_string();
        let object: DynamicObject =
            serde_json::from_value(report).map_err(|e| SinkError::Api(e.to_string()))?;
        let api = self.api(format, scope);
        let params = PostParams::default();
        let written = if replace {
            api.replace(REPORT_NAME, &params, &object).await
        } else {
            api.create(&params, &object).await
        }
        .map_err(sink_error)?;
        Ok(written.metadata.resource_version.unwrap_or_default())
    }

    async fn pod_uid(&self, pod: &PodRef) -> Result<Option<String>, SinkError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        Ok(api
            .get_opt(&pod.name)
            .await
            .map_err(sink_error)?
            .map(|p| p.metadata.uid.unwrap_or_default()))
    }
}
