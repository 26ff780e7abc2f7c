//! Root integration tests: the real agent binary, the real kernel's eBPF.
//!
//! Each test starts `imagegate-agent --print-events --event-format json`,
//! waits until it reports the tracepoint attached, execs known binaries, and
//! looks for their events by pid (the machine's other execs are ignored).

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running agent; killed and reaped on drop.
struct Agent {
    child: Child,
    events: Receiver<Value>,
}

impl Agent {
    fn start() -> Self {
        require_root();
        let mut child = Command::new(env!("CARGO_BIN_EXE_imagegate-agent"))
            .args(["--print-events", "--event-format", "json"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start imagegate-agent");

        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("agent: {line}");
                if line.contains("ready: sched/sched_process_exec attached") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let (event_tx, events) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let event = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("agent printed a line that is not JSON ({e}): {line}")
                });
                if event_tx.send(event).is_err() {
                    break;
                }
            }
        });

        let mut agent = Agent { child, events };
        if ready_rx.recv_timeout(READY_TIMEOUT).is_err() {
            let status = agent.child.try_wait().expect("poll agent");
            panic!(
                "the agent did not report ready within {READY_TIMEOUT:?} (exit status: {status:?})"
            );
        }
        agent
    }

    /// The first event whose pid is `pid`; panics after [`EVENT_TIMEOUT`].
    fn event_for(&self, pid: u32) -> Value {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        let mut others = 0;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(event) if event["pid"] == pid => return event,
                Ok(_) => others += 1,
                Err(_) => break,
            }
        }
        panic!("no exec event for pid {pid} within {EVENT_TIMEOUT:?} ({others} other events seen)");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn require_root() {
    imagegate_testkit::require_root("these tests load eBPF programs");
}

/// A copy of `true` under a name and path of our choosing, so that its exec
/// event is recognisable.
fn marker_binary(dir: &Path, name: &str) -> PathBuf {
    let source = ["/usr/bin/true", "/bin/true"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("coreutils `true`");
    let path = dir.join(name);
    std::fs::copy(source, &path).expect("copy true");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Runs `program` to completion and returns its pid.
fn run(program: &mut Command) -> u32 {
    let mut child = program.spawn().expect("spawn");
    let pid = child.id();
    let status = child.wait().expect("wait");
    assert!(status.success(), "{program:?} failed: {status}");
    pid
}

/// Where the unified (v2) cgroup hierarchy is mounted: /sys/fs/cgroup on a
/// pure v2 host, /sys/fs/cgroup/unified on a hybrid one like this.
fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .map(|f| PathBuf::from(f[1]))
        .expect("a cgroup2 mount")
}

/// The cgroup v2 id of this process: the inode of its folder in the unified
/// hierarchy (what `bpf_get_current_cgroup_id` returns).
fn own_cgroup_v2_id() -> u64 {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let path = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line in /proc/self/cgroup");
    let folder = cgroup2_mount().join(path.trim_start_matches('/'));
    std::fs::metadata(&folder)
        .unwrap_or_else(|e| panic!("stat {}: {e}", folder.display()))
        .ino()
}

/// A fresh cgroup v2 folder, removed on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn create(name: &str) -> Self {
        let path = cgroup2_mount().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup(path)
    }

    fn id(&self) -> u64 {
        std::fs::metadata(&self.0).expect("stat cgroup").ino()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A command that, between fork and exec, moves itself into `cgroup`
/// (writing "0" to cgroup.procs moves the writer).
fn in_cgroup(program: &Path, cgroup: &Cgroup) -> Command {
    use std::os::unix::process::CommandExt;

    let procs = std::ffi::CString::new(
        cgroup
            .0
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .expect("no NUL in path");
    let mut command = Command::new(program);
    // SAFETY: the closure only calls open/write/close, which are
    // async-signal-safe, on memory prepared before the fork (the child of a
    // multi-threaded process must not allocate).
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

#[tokio::test]
async fn the_kill_action_stops_execs_in_its_cgroup_and_nowhere_else() {
    use std::os::unix::process::ExitStatusExt;

    use imagegate_agent::{
        cgroups::Layout,
        kernel_offsets::VMLINUX_BTF,
        model::Action,
        probe::{Probe, ProbeOptions},
    };

    require_root();
    let layout = Layout::detect().expect("cgroups");
    let probe = Probe::attach(&ProbeOptions {
        btf: VMLINUX_BTF.into(),
        filter_key: layout.filter_key(),
        report_all: false,
        attach_lsm: false,
    })
    .expect("attach the probe");
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = marker_binary(dir.path(), "ig-kill");
    let doomed = Cgroup::create("imagegate-kill");
    let watched = Cgroup::create("imagegate-watch");
    probe.actions().set(doomed.id(), Action::Kill).unwrap();
    probe.actions().set(watched.id(), Action::Watch).unwrap();

    let status = in_cgroup(&marker, &doomed).status().expect("spawn");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "exec in a KILL cgroup: {status}"
    );
    let status = in_cgroup(&marker, &watched).status().expect("spawn");
    assert!(status.success(), "exec in a WATCH cgroup runs: {status}");
    // Host processes (this test's own cgroup) run on.
    let status = Command::new(&marker).status().expect("spawn");
    assert!(status.success(), "host exec runs: {status}");
}

#[test]
fn reports_an_exec_with_its_pid_parent_path_and_cgroup() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = marker_binary(dir.path(), "ig-marker");

    let pid = run(&mut Command::new(&marker));

    let event = agent.event_for(pid);
    assert_eq!(event["tgid"], pid, "{event}");
    assert_eq!(event["ppid"], std::process::id(), "{event}");
    assert_eq!(event["filename"], marker.to_str().unwrap(), "{event}");
    assert_eq!(event["filename_truncated"], false, "{event}");
    assert_eq!(event["comm"], "ig-marker", "{event}");
    assert_eq!(event["cgroup_id"], own_cgroup_v2_id(), "{event}");
    // The namespaces and memory cgroup it inherited from this process.
    let ns_inode = |kind: &str| {
        std::fs::metadata(format!("/proc/self/ns/{kind}"))
            .expect("stat ns")
            .ino()
    };
    assert_eq!(event["pid_ns"], ns_inode("pid"), "{event}");
    assert_eq!(event["mnt_ns"], ns_inode("mnt"), "{event}");
    let layout = imagegate_agent::cgroups::Layout::detect().expect("cgroups");
    if let Some(memory) = &layout.memory_root {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
            .expect("a memory line on a host with the v1 memory controller");
        let inode = std::fs::metadata(memory.join(path.trim_start_matches('/')))
            .expect("stat memory cgroup")
            .ino();
        assert_eq!(event["memcg_id"], inode, "{event}");
    }
}

#[test]
fn reports_the_real_parent_of_a_grandchild() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = marker_binary(dir.path(), "ig-grandchild");
    let pid_file = dir.path().join("pid");

    // The shell forks the marker and records its pid; the marker's parent is
    // the shell, not this test.
    let script = format!(
        "{} & echo $! > {}; wait",
        marker.display(),
        pid_file.display()
    );
    let shell = run(Command::new("/bin/sh").args(["-c", &script]));
    let marker_pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid");

    let shell_event = agent.event_for(shell);
    assert_eq!(shell_event["ppid"], std::process::id(), "{shell_event}");
    let event = agent.event_for(marker_pid);
    assert_eq!(event["ppid"], shell, "{event}");
    assert_eq!(event["filename"], marker.to_str().unwrap(), "{event}");
}

#[test]
fn reports_the_cgroup_the_process_execs_in() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = marker_binary(dir.path(), "ig-cgroup");
    let cgroup = Cgroup::create("imagegate-test");
    assert_ne!(cgroup.id(), own_cgroup_v2_id());

    let mut command = in_cgroup(&marker, &cgroup);
    let pid = run(&mut command);

    let event = agent.event_for(pid);
    assert_eq!(event["cgroup_id"], cgroup.id(), "{event}");
    assert_eq!(event["filename"], marker.to_str().unwrap(), "{event}");
}

#[test]
fn cuts_a_long_path_and_says_so() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // Nested folders make a path well over the 256 bytes an event keeps.
    let mut deep = dir.path().to_path_buf();
    for _ in 0..8 {
        deep.push("a-folder-name-of-forty-bytes-0123456789");
    }
    std::fs::create_dir_all(&deep).expect("mkdir -p");
    let marker = marker_binary(&deep, "ig-long");
    let full = marker.to_str().unwrap();
    assert!(full.len() > 300);

    let pid = run(&mut Command::new(&marker));

    let event = agent.event_for(pid);
    assert_eq!(event["filename_truncated"], true, "{event}");
    let kept = event["filename"].as_str().expect("a filename");
    assert!(full.starts_with(kept), "{kept} is not a prefix of {full}");
    assert!(
        kept.len() >= 250 && kept.len() < full.len(),
        "kept {} bytes",
        kept.len()
    );
    assert_eq!(event["comm"], "ig-long", "{event}");
}

#[test]
fn a_kernel_without_btf_is_a_clear_error() {
    // Point the agent at a BTF file that does not exist, as on a kernel
    // built without CONFIG_DEBUG_INFO_BTF.
    let out = Command::new(env!("CARGO_BIN_EXE_imagegate-agent"))
        .args(["--btf", "/nonexistent/vmlinux"])
        .output()
        .expect("run imagegate-agent");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/vmlinux") && stderr.contains("CONFIG_DEBUG_INFO_BTF"),
        "{stderr}"
    );
}
