//! Approvals from a local file, for tests, the demo and nodes without a
//! webhook connection: one approval per line, either a bare digest or a
//! JSON object `{"digest": ..., "reference": ..., "namespace": ...}`.
//! Blank lines and `#` comments are skipped; a bad line is reported with
//! its number and skipped, never taken as an approval.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use tracing::{info, warn};

use imagegate_plumbing::{clock::now_ms, files};

use crate::{
    digest::Digest,
    engine::Writer,
    model::{Approval, Origin},
};

#[derive(Deserialize)]
struct Line {
    digest: String,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// A line that is not an approval.
#[derive(Debug, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub reason: String,
}

/// Lines parsed and stored at a time, so a large file never sits in
/// memory as approvals all at once.
pub const CHUNK_LINES: usize = 5_000;

/// Parses the file's text; returns the approvals and the bad lines.
pub fn parse(text: &str, source: &str) -> (Vec<Approval>, Vec<BadLine>) {
    parse_lines(text.lines().enumerate(), source)
}

/// Parses numbered lines (0-based numbers, as `enumerate` gives them).
pub fn parse_lines<'a>(
    lines: impl Iterator<Item = (usize, &'a str)>,
    source: &str,
) -> (Vec<Approval>, Vec<BadLine>) {
    let mut approvals = Vec::new();
    let mut bad = Vec::new();
    for (index, raw) in lines {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = if line.starts_with('{') {
            serde_json::from_str::<Line>(line).map_err(|e| e.to_string())
        } else {
            Ok(Line {
                digest: line.to_string(),
                reference: None,
                namespace: None,
            })
        };
        match parsed.and_then(|l| {
            let digest = Digest::parse(&l.digest).map_err(|e| e.to_string())?;
            Ok(Approval {
                digest,
                reference: l.reference,
                namespace: l.namespace,
                source: source.to_string(),
                received_at_ms: now_ms(),
                rule: None,
                admitted_at_ms: 0,
                origin: Origin::Unspecified,
                unverified: false,
                break_glass: false,
                expires_at_ms: None,
                refreshed_at_ms: 0,
                signers: Vec::new(),
            })
        }) {
            Ok(approval) => approvals.push(approval),
            Err(reason) => bad.push(BadLine {
                line: index + 1,
                reason,
            }),
        }
    }
    (approvals, bad)
}

/// Reads `path` and hands its approvals to `sink` a chunk at a time;
/// returns the bad lines.
pub fn read_chunked(
    path: &Path,
    mut sink: impl FnMut(Vec<Approval>),
) -> std::io::Result<Vec<BadLine>> {
    let text = std::fs::read_to_string(path)?;
    let source = format!("file:{}", path.display());
    let mut bad = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while lines.peek().is_some() {
        let (approvals, mut bad_here) = parse_lines(lines.by_ref().take(CHUNK_LINES), &source);
        bad.append(&mut bad_here);
        sink(approvals);
    }
    Ok(bad)
}

/// Reads the file and sends its approvals to the store's writer, a chunk
/// at a time. Blocking: call from a blocking thread.
pub fn load(path: &Path, writer: &Writer) {
    let mut added = 0;
    let result = read_chunked(path, |chunk| match writer.blocking_from_file(chunk) {
        Ok(n) => added += n,
        Err(e) => warn!(error = %e, "could not store approvals"),
    });
    match result {
        Ok(bad) => {
            for line in bad {
                warn!(file = %path.display(), line = line.line, reason = %line.reason, "skipped an approval line");
            }
            if added > 0 {
                info!(file = %path.display(), added, "approvals loaded");
            }
        }
        // A file that does not exist yet is normal at start.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!(file = %path.display(), error = %e, "could not read approvals"),
    }
}

/// Loads the file again whenever it changes, until `stop` turns true.
/// Polled by stamp (size, modification time, inode: the file may be large),
/// following symlinks, as a mounted ConfigMap or Secret changes by a
/// symlink swap that inotify on the file itself misses.
pub async fn follow(path: PathBuf, writer: Writer, stop: tokio::sync::watch::Receiver<bool>) {
    let poll = Duration::from_millis(200);
    files::poll_stamps(path.clone(), poll, stop, || {
        let (path, writer) = (path.clone(), writer.clone());
        async move {
            if tokio::task::spawn_blocking(move || load(&path, &writer))
                .await
                .is_err()
            {
                warn!("loading the approvals file panicked");
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn reads_bare_digests_and_json_lines() {
        let text =
            format!("# approvals\n{D1}\n\n{{\"digest\":\"{D2}\",\"reference\":\"r.test/a:1\"}}\n");
        let (approvals, bad) = parse(&text, "file:x");
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(approvals.len(), 2);
        assert_eq!(approvals[1].reference.as_deref(), Some("r.test/a:1"));
        assert_eq!(approvals[0].source, "file:x");
    }

    #[test]
    fn bad_lines_are_reported_by_number_and_skipped() {
        let text = format!(
            "{D1}\nsha256:abc\n{{\"digest\": 5}}\n{}\n",
            D2.to_uppercase()
        );
        let (approvals, bad) = parse(&text, "f");
        assert_eq!(approvals.len(), 1);
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [2, 3, 4]);
        assert!(bad[0].reason.contains("64"), "{}", bad[0].reason);
    }
}
