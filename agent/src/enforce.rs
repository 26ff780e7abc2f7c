//! Enforcement on processes that already run: SIGKILL to every process of
//! a violating container's cgroup. Stopping later execs is the kernel's
//! part (the exec program's KILL action).

use std::io;

use crate::{cgroups::Layout, container_ref};

/// Kills every process in the cgroup at `path`; returns how many were
/// signalled. Refuses anything that is not a container's cgroup, so a
/// mistake can never reach host processes.
pub fn kill_cgroup(layout: &Layout, path: &str) -> io::Result<usize> {
    if container_ref::parse(path).is_none() {
        return Err(io::Error::other(format!(
            "refusing to kill processes in {path:?}: not a container's cgroup"
        )));
    }
    let own = std::process::id();
    let mut killed = 0;
    for pid in layout.processes(path)? {
        // The pid is re-checked right before the signal: a process that
        // exited and whose pid was reused elsewhere is left alone.
        if pid == own || layout.path_of_process(pid).ok().as_deref() != Some(path) {
            continue;
        }
        // SAFETY: kill has no memory preconditions.
        if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
            killed += 1;
        }
    }
    Ok(killed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_host_cgroups() {
        let layout = Layout::detect().unwrap();
        for path in ["/", "/system.slice/ssh.service", "/kubepods/besteffort"] {
            let err = kill_cgroup(&layout, path).unwrap_err();
            assert!(err.to_string().contains("refusing"), "{err}");
        }
    }
}
