//! The policy in force, swapped atomically when the file changes. An invalid
//! new file keeps the old policy; it is logged and counted.

use std::{path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;
use imagegate_plumbing::files;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::watch;
use tracing::{error, info};

use crate::policy::Policy;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The policy file's metrics.
#[derive(Clone, Default)]
pub struct PolicyMetrics {
    reloads: Family<ResultLabels, Counter>,
    /// 1 while a valid policy is loaded.
    loaded: Gauge,
}

impl PolicyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "policy_reloads",
            "Policy file loads by result (success, failure)",
            metrics.reloads.clone(),
        );
        registry.register(
            "policy_loaded",
            "1 while a valid policy is loaded",
            metrics.loaded.clone(),
        );
        // At 0 from the start, so the first failure is an increase() an
        // alert sees.
        let _ = metrics
            .reloads
            .get_or_create(&ResultLabels { result: "failure" });
        metrics
    }

    fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }
}

pub struct PolicyStore {
    path: PathBuf,
    /// Namespaces exempt whatever the file says (`--exempt-namespace`).
    exempt: Vec<String>,
    current: ArcSwapOption<Policy>,
    /// What the policy in force was built from: the policy file's bytes
    /// and each file it named with the bytes compile read. Polling starts
    /// from these, so a file that changed while the policy was built is
    /// seen as changed.
    built_from: arc_swap::ArcSwap<files::Contents>,
}

impl PolicyStore {
    /// Loads the file once. A missing or invalid file is logged and leaves
    /// the store empty: the webhook then denies everything and is not ready
    /// until a valid file appears.
    pub async fn load(
        path: PathBuf,
        exempt: Vec<String>,
        metrics: &PolicyMetrics,
    ) -> (Arc<Self>, files::Contents) {
        let store = Arc::new(Self {
            path,
            exempt,
            current: ArcSwapOption::empty(),
            built_from: Default::default(),
        });
        let contents = files::read_all(std::slice::from_ref(&store.path)).await;
        let initial = files::seen(&contents);
        store.apply(contents.into_iter().next(), metrics);
        (store, initial)
    }

    /// A store holding `policy`, for tests and the offline checker.
    pub fn fixed(policy: Policy) -> Arc<Self> {
        Arc::new(Self {
            path: PathBuf::new(),
            exempt: Vec::new(),
            current: ArcSwapOption::from_pointee(policy),
            built_from: Default::default(),
        })
    }

    pub fn current(&self) -> Option<Arc<Policy>> {
        self.current.load_full()
    }

    /// Reloads whenever the file's contents change, until `shutdown`.
    pub async fn watch(
        self: Arc<Self>,
        initial: files::Contents,
        interval: Duration,
        metrics: PolicyMetrics,
        shutdown: watch::Receiver<bool>,
    ) {
        // The policy file and the files it names (signature keys, trusted
        // roots): a rotated key reloads the policy as an edit does. When a
        // reload names other files, polling starts over with the new list.
        let mut initial = Some(initial);
        loop {
            let named = self.named_files();
            let mut paths = vec![self.path.clone()];
            paths.extend(named.iter().cloned());
            let built_from = files::Contents::clone(&self.built_from.load());
            let start = match initial.take() {
                Some(initial) if named.is_empty() => initial,
                _ if built_from.len() == paths.len() => built_from,
                _ => files::seen(&files::read_all(&paths).await),
            };
            let (restart, restarted) = watch::channel(false);
            let mut stop = shutdown.clone();
            let poll = files::poll_files(paths, start, interval, restarted, |contents| {
                self.apply(contents.into_iter().next(), &metrics);
                if self.named_files() != named {
                    let _ = restart.send(true);
                }
            });
            tokio::select! {
                _ = poll => {}
                _ = stop.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// The files the policy in force names.
    fn named_files(&self) -> Vec<PathBuf> {
        self.current().map(|p| p.named_files()).unwrap_or_default()
    }

    fn apply(&self, contents: Option<std::io::Result<Vec<u8>>>, metrics: &PolicyMetrics) {
        let path = self.path.display();
        let mut read = Vec::new();
        let parsed = match contents {
            Some(Ok(bytes)) => match String::from_utf8(bytes) {
                Ok(text) => {
                    let mut reader = |named: &std::path::Path| {
                        let bytes = crate::policy::read_named_file(named);
                        read.push((named.to_path_buf(), bytes.as_ref().ok().cloned()));
                        bytes
                    };
                    let policy = Policy::from_yaml_reading(&text, &self.exempt, &mut reader)
                        .map_err(|e| e.to_string());
                    policy.map(|p| (p, text.into_bytes()))
                }
                Err(_) => Err("the file is not UTF-8".to_string()),
            },
            Some(Err(e)) => Err(format!("cannot read it: {e}")),
            None => Err("no file".to_string()),
        };
        match parsed {
            Ok((policy, text)) => {
                info!(policy = %path, rules = policy.rules.len(), mode = ?policy.mode, "policy loaded");
                // In the order `named_files` lists them (sorted, once each).
                let mut built_from = vec![Some(text)];
                for named in policy.named_files() {
                    built_from.push(
                        read.iter()
                            .find(|(p, _)| *p == named)
                            .and_then(|(_, b)| b.clone()),
                    );
                }
                self.built_from.store(Arc::new(built_from));
                self.current.store(Some(Arc::new(policy)));
                metrics.loaded.set(1);
                metrics.reload(true);
            }
            Err(reason) => {
                let keeping = if self.current.load().is_some() {
                    "keeping the policy loaded before"
                } else {
                    "no policy is loaded: every review is denied and /readyz fails"
                };
                error!(policy = %path, "policy not loaded: {reason}; {keeping}");
                metrics.reload(false);
            }
        }
    }
}
