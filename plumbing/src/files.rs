//! Noticing that files changed: the webhook's policy and both binaries'
//! certificates ([`poll_files`], by contents), and the agent's approvals
//! file ([`poll_stamps`], by size, time and inode: it may be too large to
//! read twice a second).
//!
//! Polling the contents rather than inotify: a Kubernetes Secret or
//! ConfigMap volume swaps a `..data` symlink, which file-level watches miss,
//! and reading two small files every second costs nothing. Contents, not
//! mtimes, are compared, so a swap to identical bytes is not a reload.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{io::AsyncReadExt, sync::watch};

/// What a set of files held: `None` for a file that could not be read.
pub type Contents = Vec<Option<Vec<u8>>>;

/// Largest file read: a policy or a certificate pair is kilobytes; a
/// ConfigMap holds at most 1 MiB.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Reads `paths`, keeping each file's error.
pub async fn read_all(paths: &[PathBuf]) -> Vec<std::io::Result<Vec<u8>>> {
    let mut contents = Vec::with_capacity(paths.len());
    for path in paths {
        contents.push(read_whole(path).await);
    }
    contents
}

/// A file's bytes, read only if the file did not change while being read
/// (same inode, size and modification time before and after, and the size
/// read): a writer still at work is read again a little later, and after a
/// few tries reported as an error rather than taken half-way.
async fn read_whole(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut tries = 0;
    loop {
        let before = Version::of(path).await?;
        if before.len > MAX_FILE_BYTES {
            return Err(std::io::Error::other(format!(
                "{} bytes, more than the {MAX_FILE_BYTES} read",
                before.len
            )));
        }
        let mut bytes = Vec::with_capacity(before.len as usize);
        tokio::fs::File::open(path)
            .await?
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .await?;
        let after = Version::of(path).await?;
        if before == after && bytes.len() as u64 == after.len {
            return Ok(bytes);
        }
        tries += 1;
        if tries == 5 {
            return Err(std::io::Error::other(
                "the file changed while being read; replace it atomically (write a new file, \
                 then rename it over this one)",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What identifies one version of a file.
#[derive(PartialEq, Eq)]
struct Version {
    device: u64,
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl Version {
    async fn of(path: &Path) -> std::io::Result<Self> {
        let meta = tokio::fs::metadata(path).await?;
        Ok(Self {
            device: meta.dev(),
            inode: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// What [`read_all`] found, errors forgotten: for comparing.
pub fn seen(contents: &[std::io::Result<Vec<u8>>]) -> Contents {
    contents.iter().map(|c| c.as_ref().ok().cloned()).collect()
}

/// Calls `changed` with the files' contents whenever they differ from the
/// last contents applied, starting from `initial` (what the caller loaded),
/// or a file appears or disappears. Runs until `shutdown` flips.
///
/// A change is taken only once two polls in a row read the same bytes: a
/// file still being written (an editor, `kubectl cp`, a slow writer) or a
/// pair swapped between reading one file and the next is never applied
/// half-way. Writers that replace files atomically (write then rename, as
/// Secret and ConfigMap volumes do) are applied one interval later.
pub async fn poll_files(
    paths: Vec<PathBuf>,
    initial: Contents,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut changed: impl FnMut(Vec<std::io::Result<Vec<u8>>>),
) {
    let mut last = initial;
    let mut pending: Option<Contents> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let contents = read_all(&paths).await;
        let now = seen(&contents);
        if now == last {
            pending = None;
        } else if pending.as_ref() == Some(&now) {
            pending = None;
            last = now;
            changed(contents);
        } else {
            pending = Some(now);
        }
    }
}

/// What identifies a version of a file without reading it: size,
/// modification time and inode, following symlinks.
fn stamp(path: &Path) -> Option<(u64, i64, i64, u64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
}

/// Calls `changed` whenever the file at `path` is replaced or rewritten
/// (its stamp differs from the last poll), until `shutdown` flips. For
/// files too large to compare by contents; `changed` reads the file itself.
pub async fn poll_stamps<F: Future<Output = ()>>(
    path: PathBuf,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut changed: impl FnMut() -> F,
) {
    let mut last = stamp(&path);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stopped| *stopped) => return,
        }
        let now = stamp(&path);
        if now != last {
            last = now;
            changed().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A writer that stops half-way for longer than a poll is not taken
    /// until what it wrote stays the same for two polls; one that is still
    /// writing when a poll reads is not taken at all.
    #[tokio::test]
    async fn a_file_is_taken_only_once_two_polls_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "old").unwrap();
        let initial = seen(&read_all(std::slice::from_ref(&path)).await);
        let (stop, shutdown) = watch::channel(false);
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let poller = tokio::spawn(poll_files(
            vec![path.clone()],
            initial,
            Duration::from_millis(100),
            shutdown,
            move |contents| {
                let text = contents.into_iter().next().unwrap().unwrap();
                seen_tx.send(String::from_utf8(text).unwrap()).unwrap();
            },
        ));
        // A writer appending a byte every 30 ms: never the same for two
        // polls, so nothing is taken while it writes.
        let mut file = std::fs::File::create(&path).unwrap();
        for byte in b"rules: [a, b, c, d, e, f]" {
            file.write_all(&[*byte]).unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert!(seen_rx.try_recv().is_err(), "taken while being written");
        }
        drop(file);
        let taken = tokio::time::timeout(Duration::from_secs(5), seen_rx.recv())
            .await
            .expect("the finished file is taken")
            .unwrap();
        assert_eq!(taken, "rules: [a, b, c, d, e, f]");
        stop.send(true).unwrap();
        poller.await.unwrap();
    }

    #[tokio::test]
    async fn files_larger_than_the_bound_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let error = read_all(&[path]).await.remove(0).unwrap_err();
        assert!(error.to_string().contains("more than"), "{error}");
    }
}
