//! imagegate's own binaries as tests run them: started with JSON logs on
//! standard error, every line kept, killed on drop.

use std::os::unix::process::CommandExt;
use std::{
    ffi::OsStr,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stop echoing the processes' log lines on standard error (the demo tells
/// its own story; tests keep the echo, which is what a failure shows).
pub fn quiet() {
    QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A running imagegate process (agent or webhook).
pub struct Process {
    pub child: Child,
    pub name: String,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Process {
    /// Starts `binary` with `args` and `--log-format json`; lines that are
    /// not JSON are kept as `{"raw": line}`.
    pub fn start<I, S>(name: &str, binary: &Path, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::start_with(name, binary, args, |_| {})
    }

    /// [`Process::start`], with `prepare` changing the command first (e.g.
    /// [`crate::cgroup::MemoryCgroup::run_inside`]).
    pub fn start_with<I, S>(
        name: &str,
        binary: &Path,
        args: I,
        prepare: impl FnOnce(&mut Command),
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        assert!(binary.exists(), "{} is not built", binary.display());
        let mut command = Command::new(binary);
        // A process group of its own: a Ctrl-C at the terminal reaches
        // only the test or demo, which stops everything in order.
        command
            .process_group(0)
            .args(args)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        prepare(&mut command);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = child.stderr.take().unwrap();
        let prefix = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
                    eprintln!("{prefix}: {line}");
                }
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                sink.lock().unwrap().push(value);
            }
        });
        Self {
            child,
            name: name.to_string(),
            lines,
        }
    }

    /// The first line whose `fields.message` is `message`, waiting up to
    /// `timeout`; panics with the exit status if the process died.
    pub fn wait_message(&mut self, message: &str, timeout: Duration) -> Value {
        let found = self.wait_for(timeout, |l| l["fields"]["message"] == message);
        match found {
            Some(line) => line,
            None => panic!(
                "{} did not log {message:?} within {timeout:?} (exit status: {:?})",
                self.name,
                self.child.try_wait()
            ),
        }
    }

    pub fn find(&self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.lines.lock().unwrap().iter().find(|l| pred(l)).cloned()
    }

    pub fn all(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| pred(l))
            .cloned()
            .collect()
    }

    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.find(&pred) {
                return Some(found);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{} exited with {status}", self.name);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A binary of this workspace next to `sibling` (another binary of the
/// same build, e.g. `env!("CARGO_BIN_EXE_imagegate-agent")`).
pub fn sibling_binary(sibling: &str, name: &str) -> PathBuf {
    let path = Path::new(sibling).with_file_name(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests through `cargo xtask test` (it builds every binary)",
        path.display()
    );
    path
}

/// A free loopback port below the kernel's ephemeral range, for a server
/// that must come back on the same port after a restart: a port from the
/// ephemeral range could meanwhile be taken by some outgoing connection
/// (the webhook retrying that very agent, say).
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let span = u32::from(low.saturating_sub(10_000)).max(1);
    // A cheap spread over the range: pid and time, no RNG dependency.
    let mut seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    for _ in 0..1000 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let port = 10_000 + (seed % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {low}");
}
