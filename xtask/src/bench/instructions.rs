//! User-space instructions per review, counted by callgrind: the one
//! webhook figure this shared, noisy machine cannot blur. Two builds that
//! differ by a few percent of CPU time are indistinguishable in time-boxed
//! runs here (the same build varies by 10-25% from run to run), while
//! callgrind counts the same instructions for the same binary, inputs and
//! environment, whatever else the machine is doing. It leaves out the
//! kernel (the TLS record's send and receive), which both builds pay alike.
//!
//! <https://valgrind.org/docs/manual/cl-manual.html> (`callgrind_control
//! -z` zeroes the counters, `-d` dumps them, so start-up and warm-up are
//! left out).

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cmd, paths::Paths};

/// Reviews sent before counting (connections, caches and allocator arenas
/// warm) and counted.
const WARM_UP: u64 = 500;
const COUNTED: u64 = 2_000;
/// Connections of the load: few, since under valgrind the server runs one
/// thread at a time.
const CONNECTIONS: u64 = 8;

/// Whether callgrind is installed (setup installs valgrind).
pub fn available() -> bool {
    cmd::probe(Command::new("callgrind_control").arg("--version")).is_some()
}

/// The webhook `bin` (decisions without registry lookups, `policy` and the
/// certificate in `work`) under callgrind, pinned to one CPU as the chart's
/// limit gives it one runtime worker: the instructions it runs per review
/// of `body` on `path`.
pub fn per_review(paths: &Paths, bin: &Path, work: &Path, path: &str, body: &Path) -> Result<f64> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dumps = work.join("callgrind");
    std::fs::create_dir_all(&dumps)?;
    let mut server = Running(
        Command::new("taskset")
            .args(["-c", "0", "valgrind", "--tool=callgrind"])
            .arg(format!(
                "--callgrind-out-file={}/callgrind.%p",
                dumps.display()
            ))
            .arg(bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--cert")
            .arg(work.join("tls.crt"))
            .arg("--key")
            .arg(work.join("tls.key"))
            .arg("--policy")
            .arg(work.join("policy.yaml"))
            .args(["--digest-resolution", "off"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} under callgrind", bin.display()))?,
    );
    wait_for(&mut server.0, port)?;
    let pid = server.0.id();
    let load = |n: u64| -> Result<u64> {
        let out = cmd::output(
            Command::new(paths.tools_bin().join("oha"))
                .args(["--no-tui", "--output-format", "json", "--insecure"])
                .args(["-n", &n.to_string(), "-c", &CONNECTIONS.to_string()])
                .args(["-m", "POST", "-H", "content-type: application/json", "-D"])
                .arg(body)
                .arg(format!("https://127.0.0.1:{port}{path}")),
        )?;
        let oha: Value = serde_json::from_str(&out).context("parsing oha's JSON output")?;
        Ok(oha["statusCodeDistribution"]["200"].as_u64().unwrap_or(0))
    };
    load(WARM_UP)?;
    control("-z", pid)?;
    let answered = load(COUNTED)?;
    control("-d", pid)?;
    if answered != COUNTED {
        bail!("{answered} of {COUNTED} reviews answered 200 under callgrind");
    }
    // The dump `-d` wrote: the counts since `-z`.
    let dump = dumps.join(format!("callgrind.{pid}.1"));
    let text = std::fs::read_to_string(&dump)
        .with_context(|| format!("reading callgrind's dump {}", dump.display()))?;
    let total: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no summary line in {}", dump.display()))?;
    Ok(total / answered as f64)
}

fn control(what: &str, pid: u32) -> Result<()> {
    cmd::output(Command::new("callgrind_control").args([what, &pid.to_string()]))?;
    Ok(())
}

/// Under valgrind the server takes seconds to start.
fn wait_for(child: &mut Child, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the webhook under callgrind exited before listening: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the webhook under callgrind did not listen on port {port} within 120 s")
}

/// The server, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
