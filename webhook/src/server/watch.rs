//! Noticing that files changed, for the policy and the certificate.
//!
//! Polling the contents rather than inotify: a Kubernetes Secret or
//! ConfigMap volume swaps a `..data` symlink, which file-level watches miss,
//! and reading two small files every second costs nothing. Contents, not
//! mtimes, are compared, so a swap to identical bytes is not a reload.

use std::{path::PathBuf, time::Duration};

use tokio::sync::watch;

/// What a set of files held: `None` for a file that could not be read.
pub type Contents = Vec<Option<Vec<u8>>>;

/// Reads `paths`, keeping each file's error.
pub async fn read_all(paths: &[PathBuf]) -> Vec<std::io::Result<Vec<u8>>> {
    let mut contents = Vec::with_capacity(paths.len());
    for path in paths {
        contents.push(tokio::fs::read(path).await);
    }
    contents
}

/// What [`read_all`] found, errors forgotten: for comparing.
pub fn seen(contents: &[std::io::Result<Vec<u8>>]) -> Contents {
    contents.iter().map(|c| c.as_ref().ok().cloned()).collect()
}

/// Calls `changed` with the files' contents whenever they differ from the
/// last contents seen, starting from `initial` (what the caller loaded), or
/// a file appears or disappears. Runs until `shutdown` flips.
pub async fn poll_files(
    paths: Vec<PathBuf>,
    initial: Contents,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut changed: impl FnMut(Vec<std::io::Result<Vec<u8>>>),
) {
    let mut last = initial;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let contents = read_all(&paths).await;
        let now = seen(&contents);
        if now != last {
            last = now;
            changed(contents);
        }
    }
}
