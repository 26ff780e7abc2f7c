//! `cargo xtask images`: imagegate's two container images, built on this
//! machine as OCI image layouts without pulling anything.
//!
//! No base image can be pulled here, and none is needed: each image is one
//! layer holding the binary (debug info stripped), the shared libraries
//! `ldd` says it links, the CA certificates, `/etc/passwd` and `/etc/group`
//! with the non-root user, and `hosts: files dns` for the resolver. The
//! layer is an uncompressed tar written deterministically (fixed times and
//! owners, sorted entries), so the same binaries give the same digests.
//! `--push PREFIX` copies them to a registry with skopeo (Debian's).
//!
//! The Dockerfiles in deploy/docker stay for users who build with a
//! registry at hand; a test below checks they copy the same binaries to the
//! same paths with the same entrypoint and user as the images built here.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, ensure};
use serde_json::json;

use crate::{build, cmd, paths::Paths};

/// One image: which binary, where it goes, how it runs.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// The image's name under the repository prefix (`<prefix>/<name>:<tag>`).
    pub name: &'static str,
    /// The workspace binary it carries.
    pub binary: &'static str,
    /// Where the binary is in the image: the entrypoint.
    pub path: &'static str,
    /// `uid:gid` it runs as.
    pub user: &'static str,
    /// The default arguments; the chart passes its own.
    pub cmd: &'static [&'static str],
}

pub const IMAGES: [Spec; 2] = [
    Spec {
        name: "webhook",
        binary: "imagegate-webhook",
        path: "/usr/local/bin/imagegate-webhook",
        user: "65532:65532",
        cmd: &["serve"],
    },
    Spec {
        name: "agent",
        binary: "imagegate-agent",
        path: "/usr/local/bin/imagegate-agent",
        // Root, with only the capabilities the DaemonSet adds.
        user: "0:0",
        cmd: &[],
    },
];

/// Media types of what is written.
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
                      nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnonroot:x:65532:\n";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The image tag: the workspace's version.
pub const TAG: &str = env!("CARGO_PKG_VERSION");

/// What was built: an OCI layout folder per image.
#[derive(Debug)]
pub struct Built {
    pub spec: Spec,
    pub layout: PathBuf,
    pub manifest_digest: String,
}

/// Where the layouts of a build profile go.
pub fn out_dir(paths: &Paths, profile: &str) -> PathBuf {
    paths.target.join("images").join(profile)
}

/// `cargo xtask images [--debug] [--push PREFIX ...]`.
pub fn run(paths: &Paths, debug: bool, push: Option<&Push>) -> Result<()> {
    crate::setup::check_toolchain(paths)?;
    build::all(paths, !debug)?;
    let profile = if debug { "debug" } else { "release" };
    let built = build_all(paths, profile)?;
    for image in &built {
        println!(
            "image {}:{TAG} ({}) in {}",
            image.spec.name,
            image.manifest_digest,
            image.layout.display()
        );
    }
    if let Some(push) = push {
        for image in &built {
            let target = push.copy(image)?;
            println!("pushed {target}");
        }
    }
    Ok(())
}

/// Builds both images from `target/<profile>`'s binaries.
pub fn build_all(paths: &Paths, profile: &str) -> Result<Vec<Built>> {
    let bin_dir = paths.target.join(profile);
    let out = out_dir(paths, profile);
    IMAGES
        .iter()
        .map(|spec| build_one(*spec, &bin_dir.join(spec.binary), &out.join(spec.name)))
        .collect()
}

fn build_one(spec: Spec, binary: &Path, layout: &Path) -> Result<Built> {
    ensure!(
        binary.is_file(),
        "{} is not built: run `cargo xtask build`",
        binary.display()
    );
    let work = tempdir()?;
    // Debug info is most of a debug build and none of a running container.
    let stripped = work.join(spec.binary);
    cmd::run(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .arg(&stripped),
    )
    .context("objcopy (Debian binutils) strips the binary")?;

    let mut files: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    files.insert(
        spec.path.trim_start_matches('/').to_string(),
        (std::fs::read(&stripped)?, 0o755),
    );
    for library in linked_libraries(binary)? {
        let bytes = std::fs::read(&library).with_context(|| {
            format!("reading {}, which {} links", library.display(), spec.binary)
        })?;
        files.insert(
            library
                .to_string_lossy()
                .trim_start_matches('/')
                .to_string(),
            (bytes, 0o755),
        );
    }
    files.insert(
        CA_BUNDLE.trim_start_matches('/').into(),
        (
            std::fs::read(CA_BUNDLE)
                .with_context(|| format!("{CA_BUNDLE} (Debian ca-certificates)"))?,
            0o644,
        ),
    );
    files.insert("etc/passwd".into(), (PASSWD.as_bytes().to_vec(), 0o644));
    files.insert("etc/group".into(), (GROUP.as_bytes().to_vec(), 0o644));
    files.insert(
        "etc/nsswitch.conf".into(),
        (b"hosts: files dns\n".to_vec(), 0o644),
    );
    std::fs::remove_dir_all(&work).ok();

    let layer = layer_tar(&files)?;
    let layer_digest = sha256(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "User": spec.user,
            "Entrypoint": [spec.path],
            "Cmd": spec.cmd,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.title": format!("imagegate {}", spec.name),
                "org.opencontainers.image.version": TAG,
                "org.opencontainers.image.source": "https://github.com/imagegate/imagegate",
            }
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "cargo xtask images"}]
    }))?;
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": LAYER, "digest": layer_digest, "size": layer.len()}],
    }))?;
    let manifest_digest = sha256(&manifest);

    if layout.exists() {
        std::fs::remove_dir_all(layout)?;
    }
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for (digest, bytes) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        std::fs::write(blobs.join(&digest["sha256:".len()..]), bytes)?;
    }
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": MANIFEST,
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": TAG}
            }]
        }))?,
    )?;
    Ok(Built {
        spec,
        layout: layout.to_path_buf(),
        manifest_digest,
    })
}

/// The shared libraries `ldd` lists for `binary`, the dynamic loader
/// included, at the paths the binary asks for them.
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = cmd::output(Command::new("ldd").arg(binary))?;
    let mut libraries = Vec::new();
    for line in out.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    ensure!(
        !libraries.is_empty(),
        "ldd lists no libraries for {}: is it a dynamic executable?",
        binary.display()
    );
    Ok(libraries)
}

/// The layer: every folder (parents first), then the files, in path
/// order, owned by root, dated 0.
fn layer_tar(files: &BTreeMap<String, (Vec<u8>, u32)>) -> Result<Vec<u8>> {
    let mut folders: BTreeMap<String, u32> = BTreeMap::new();
    let mut add_with_parents = |path: &str, mode: u32| {
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        for end in 1..=parts.len() {
            let folder = format!("{}/", parts[..end].join("/"));
            let is_leaf = end == parts.len();
            let entry = folders.entry(folder).or_insert(0o755);
            if is_leaf {
                *entry = mode;
            }
        }
    };
    add_with_parents("tmp", 0o1777);
    add_with_parents("home/nonroot", 0o755);
    for path in files.keys() {
        if let Some((parent, _)) = path.rsplit_once('/') {
            add_with_parents(parent, 0o755);
        }
    }
    let mut tar = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    for (folder, mode) in &folders {
        let mut h = header(tar::EntryType::Directory, *mode, 0);
        tar.append_data(&mut h, folder, std::io::empty())?;
    }
    for (path, (bytes, mode)) in files {
        let mut h = header(tar::EntryType::Regular, *mode, bytes.len() as u64);
        tar.append_data(&mut h, path, bytes.as_slice())?;
    }
    Ok(tar.into_inner()?)
}

fn sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("imagegate-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Where `--push` sends the images, and how.
#[derive(Debug)]
pub struct Push {
    /// `registry[:port]/path`: images go to `<prefix>/<name>:<tag>`.
    pub prefix: String,
    /// Plain HTTP or an unverified certificate.
    pub insecure: bool,
    /// `user:password`.
    pub creds: Option<String>,
    /// A folder with the registry's CA (`*.crt`).
    pub cert_dir: Option<PathBuf>,
}

impl Push {
    fn copy(&self, image: &Built) -> Result<String> {
        let target = format!(
            "{}/{}:{TAG}",
            self.prefix.trim_end_matches('/'),
            image.spec.name
        );
        let mut skopeo = Command::new("skopeo");
        skopeo.args(["copy", "--quiet"]);
        if self.insecure {
            skopeo.arg("--dest-tls-verify=false");
        }
        if let Some(creds) = &self.creds {
            skopeo.arg("--dest-creds").arg(creds);
        }
        if let Some(dir) = &self.cert_dir {
            skopeo.arg("--dest-cert-dir").arg(dir);
        }
        skopeo
            .arg(format!("oci:{}:{TAG}", image.layout.display()))
            .arg(format!("docker://{target}"));
        cmd::run(&mut skopeo).context("skopeo copy (Debian skopeo)")?;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use anyhow::bail;
    use serde_json::Value;

    use super::*;

    /// The final stage of a Dockerfile: what it copies where, and how it runs.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct FinalStage {
        copies: Vec<(String, String)>,
        entrypoint: Vec<String>,
        cmd: Vec<String>,
        user: Option<String>,
    }

    fn final_stage(dockerfile: &str) -> Result<FinalStage> {
        let mut stage = FinalStage::default();
        for line in dockerfile.lines().map(str::trim) {
            let Some((instruction, rest)) = line.split_once(' ') else {
                continue;
            };
            let exec_form = |text: &str| -> Result<Vec<String>> {
                let value: Value = serde_json::from_str(text)
                    .with_context(|| format!("not an exec-form list: {text}"))?;
                Ok(value
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default())
            };
            match instruction {
                "FROM" => stage = FinalStage::default(),
                "COPY" => {
                    let words: Vec<&str> = rest.split_whitespace().collect();
                    if let [.., from, to] = words.as_slice() {
                        stage.copies.push((from.to_string(), to.to_string()));
                    }
                }
                "ENTRYPOINT" => stage.entrypoint = exec_form(rest)?,
                "CMD" => stage.cmd = exec_form(rest)?,
                "USER" => stage.user = Some(rest.trim().to_string()),
                _ => {}
            }
        }
        if stage.entrypoint.is_empty() {
            bail!("the final stage has no ENTRYPOINT");
        }
        Ok(stage)
    }

    fn dockerfile(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/docker")
            .join(format!("{name}.Dockerfile"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The Dockerfiles and the images built here must not drift apart: same
    /// binary, same path, same entrypoint, user and default arguments.
    #[test]
    fn the_dockerfiles_build_what_xtask_images_builds() {
        for spec in IMAGES {
            let stage = final_stage(&dockerfile(spec.name)).unwrap();
            assert_eq!(
                stage.copies,
                vec![(
                    format!("/src/target/release/{}", spec.binary),
                    spec.path.to_string()
                )],
                "{}: COPY",
                spec.name
            );
            assert_eq!(
                stage.entrypoint,
                vec![spec.path.to_string()],
                "{}",
                spec.name
            );
            assert_eq!(stage.cmd, spec.cmd, "{}: CMD", spec.name);
            let user = stage.user.unwrap_or_else(|| "0:0".into());
            assert_eq!(user, spec.user, "{}: USER", spec.name);
        }
    }

    #[test]
    fn the_layer_is_deterministic_with_every_parent_folder() {
        let mut files = BTreeMap::new();
        files.insert("usr/local/bin/x".to_string(), (b"bin".to_vec(), 0o755));
        files.insert(
            "etc/passwd".to_string(),
            (PASSWD.as_bytes().to_vec(), 0o644),
        );
        let a = layer_tar(&files).unwrap();
        assert_eq!(a, layer_tar(&files).unwrap());
        let mut archive = tar::Archive::new(a.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        for folder in [
            "usr",
            "usr/local",
            "usr/local/bin",
            "etc",
            "tmp",
            "home/nonroot",
        ] {
            assert!(
                names.iter().any(|n| n.trim_end_matches('/') == folder),
                "{folder} in {names:?}"
            );
        }
        let usr = names.iter().position(|n| n == "usr/").unwrap();
        let binary = names.iter().position(|n| n == "usr/local/bin/x").unwrap();
        assert!(usr < binary, "folders before their files");
    }

    #[test]
    fn reads_ldd_output() {
        // ldd of this test binary itself: it links libc and a loader.
        let libs = linked_libraries(&std::env::current_exe().unwrap()).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(libs.iter().all(|l| l.is_absolute()));
    }
}
