//! imagegate parses image references exactly as the runtime does: every
//! line of `reference_parity/corpus.txt` is parsed by imagegate and by the
//! real distribution/reference (v2.8.2, Debian's Go sources, the parser the
//! kubelet and containerd's fork share), built here with Debian's Go; the
//! answers must agree. References the runtime reads as image IDs must be
//! refused (`ParseError::ImageId`); so are references Go reads as a path on
//! no registry at all (`ho_st.com/x`: `ParseError::NotAHost`).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use imagegate_webhook::reference::{ParseError, Reference};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Go {
    input: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    image_id: bool,
}

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference_parity")
}

/// Builds the Go program against the sources `cargo xtask setup` unpacked.
fn go_parser(out: &Path) -> PathBuf {
    let gopath = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/go-reference/usr/share/gocode")
        .canonicalize()
        .expect(
            ".tools/go-reference is missing: run `cargo xtask setup` (it unpacks Debian's \
             golang-github-docker-distribution-dev)",
        );
    let binary = out.join("parity");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(here().join("main.go"))
        .env("GO111MODULE", "off")
        .env("GOPATH", &gopath)
        .env("GOCACHE", out.join("cache"))
        .env("GOFLAGS", "")
        .output()
        .expect("go (Debian golang-go): run `cargo xtask setup`");
    assert!(
        built.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    binary
}

#[test]
fn imagegate_parses_every_reference_as_distribution_reference_does() {
    let corpus = std::fs::read_to_string(here().join("corpus.txt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut go = Command::new(go_parser(dir.path()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    go.stdin
        .take()
        .unwrap()
        .write_all(corpus.as_bytes())
        .unwrap();
    let out = go.wait_with_output().unwrap();
    assert!(out.status.success());
    let answers: Vec<Go> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), corpus.lines().count());
    assert!(answers.len() >= 200, "{} references", answers.len());

    let mut disagreements = Vec::new();
    for go in &answers {
        let ours = Reference::parse(&go.input);
        let agrees = match (&ours, go.image_id, go.error.is_empty()) {
            // The runtime runs a local image by that id: refused here.
            (Err(ParseError::ImageId(_)), true, _) => true,
            (_, true, _) => false,
            (Err(_), false, false) => true,
            // Go reads `ho_st.com/x` as a path on no registry; nothing can
            // pull that, and imagegate refuses it with the reason.
            (Err(ParseError::NotAHost(_)), false, true) => go.domain.is_empty(),
            (Ok(r), false, true) => {
                r.domain == go.domain
                    && r.path == go.path
                    && r.tag.as_deref().unwrap_or("") == go.tag
                    && r.digest.as_ref().map_or("", |d| d.as_str()) == go.digest
            }
            _ => false,
        };
        if !agrees {
            disagreements.push(format!("{:?}: imagegate {ours:?}, Go {go:?}", go.input));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} references parsed differently:\n{}",
        disagreements.len(),
        answers.len(),
        disagreements.join("\n")
    );
}
