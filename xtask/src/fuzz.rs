//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the webhook's fuzz
//! targets (webhook/fuzz) with cargo-fuzz and nightly, seeded with the
//! apiserver fixtures and the example policy. Not part of `test`: it runs
//! for minutes, on nightly.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cmd, paths::Paths, setup};

pub const TARGETS: [&str; 4] = ["reference", "admission_review", "image_review", "policy"];

pub fn run(paths: &Paths, seconds: u64, targets: &[String]) -> Result<()> {
    setup::fuzz_tools(paths)?;
    let fuzz_dir = paths.root.join("webhook/fuzz");
    seed(paths, &fuzz_dir.join("corpus"))?;
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    let mut failed = Vec::new();
    for target in targets {
        if !TARGETS.contains(&target) {
            bail!("no fuzz target {target:?}; known: {}", TARGETS.join(", "));
        }
        println!("\n==> fuzzing {target} for {seconds}s");
        let mut path = std::ffi::OsString::from(paths.tools_bin());
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let status = cmd::status(
            Command::new("cargo")
                .current_dir(paths.root.join("webhook"))
                .env("PATH", path)
                .args(["+nightly", "fuzz", "run", target, "--"])
                .arg(format!("-max_total_time={seconds}"))
                .arg("-rss_limit_mb=2048"),
        )?;
        if !status.success() {
            failed.push(target);
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets found failures: {} (inputs under webhook/fuzz/artifacts/)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Seeds each target's corpus with real inputs, so the fuzzer starts from
/// what an apiserver sends.
fn seed(paths: &Paths, corpus: &Path) -> Result<()> {
    let fixtures = paths.root.join("webhook/tests/fixtures/apiserver-v1.28");
    for entry in
        std::fs::read_dir(&fixtures).with_context(|| format!("reading {}", fixtures.display()))?
    {
        let file = entry?.path();
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let target = match name.split('-').next() {
            Some("admissionreview") => "admission_review",
            Some("imagereview") => "image_review",
            _ => continue,
        };
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
        write(
            &corpus.join(target),
            &name,
            &serde_json::to_vec(&doc["body"])?,
        )?;
        for (i, container) in doc["body"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(image) = container["image"].as_str() {
                write(
                    &corpus.join("reference"),
                    &format!("{name}-{i}"),
                    image.as_bytes(),
                )?;
            }
        }
    }
    let policy = std::fs::read(paths.root.join("deploy/policy/example-policy.yaml"))?;
    write(&corpus.join("policy"), "example-policy.yaml", &policy)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)
        .with_context(|| format!("writing the corpus in {}", dir.display()))
}
