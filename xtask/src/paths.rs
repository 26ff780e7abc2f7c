//! Where things are: the workspace, its target folder, the tools folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cmd;

pub struct Paths {
    /// The workspace root (holds the top-level Cargo.toml).
    pub root: PathBuf,
    /// cargo's target folder, wherever CARGO_TARGET_DIR or config puts it.
    pub target: PathBuf,
    /// Tools installed by `setup` for this checkout (bpf-linker, grpcurl).
    pub tools: PathBuf,
}

impl Paths {
    pub fn discover() -> Result<Self> {
        // xtask's manifest sits one level below the workspace root.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent folder")?
            .to_path_buf();
        let metadata = cmd::output(cmd::cargo().current_dir(&root).args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
        ]))?;
        let metadata: serde_json::Value =
            serde_json::from_str(&metadata).context("parsing `cargo metadata` output")?;
        let Some(target) = metadata["target_directory"].as_str() else {
            bail!("`cargo metadata` did not report a target_directory");
        };
        Ok(Self {
            tools: root.join(".tools"),
            target: PathBuf::from(target),
            root,
        })
    }

    pub fn tools_bin(&self) -> PathBuf {
        self.tools.join("bin")
    }

    pub fn bpf_linker(&self) -> PathBuf {
        self.tools_bin().join("bpf-linker")
    }

    pub fn venv(&self) -> PathBuf {
        self.tools.join("venv")
    }

    /// sigstore-python's own venv (testkit::sigstore_python finds it here).
    pub fn sigstore_python(&self) -> PathBuf {
        self.tools.join("sigstore-python")
    }

    pub fn grpcurl(&self) -> PathBuf {
        self.venv().join("bin").join("grpcurl")
    }
}
