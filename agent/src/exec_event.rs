//! The probe's events as the rest of the agent sees them, converted from
//! the raw `#[repr(C)]` records at the ring buffer boundary.

use std::fmt;

use imagegate_common::{COMM_LEN, CgroupEvent, ExecEvent, action};
use serde::Serialize;

/// A process that called execve, as reported by `sched/sched_process_exec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exec {
    pub pid: u32,
    pub tgid: u32,
    /// `None` when the kernel's parent pointer could not be read.
    pub ppid: Option<u32>,
    /// cgroup v2 id (1 is the root of the unified hierarchy).
    pub cgroup_id: u64,
    /// Id of the v1 memory cgroup (equal to `cgroup_id` on cgroup v2 only
    /// hosts); `None` when the kernel has no memory controller.
    pub memcg_id: Option<u64>,
    /// Inodes of the pid and mount namespaces; `None` if unreadable.
    pub pid_ns: Option<u32>,
    pub mnt_ns: Option<u32>,
    /// What the kernel program did with this exec.
    pub action: KernelAction,
    /// Command name after exec (at most 15 bytes, the kernel's limit).
    pub comm: String,
    /// The path given to execve; `None` when the kernel could not read it.
    pub filename: Option<String>,
    /// The path was longer than the program keeps and was cut.
    pub filename_truncated: bool,
}

/// A ring buffer record of the wrong size for its type.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("event record of {got} bytes, expected {expected}: agent and eBPF object disagree")]
pub struct SizeMismatch {
    pub got: usize,
    pub expected: usize,
}

/// What the exec program did, from the `action` it stored for the cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelAction {
    /// The cgroup was new to the kernel (or filtering is off).
    New,
    /// Seen before, not yet classified by the agent.
    Pending,
    /// A container under watch.
    Watch,
    /// The task was sent SIGKILL.
    Killed,
    /// A value this agent does not know (object and agent out of step).
    Other(u32),
}

impl KernelAction {
    fn from_raw(raw: u32) -> Self {
        match raw {
            action::NEW => Self::New,
            action::PENDING => Self::Pending,
            action::WATCH => Self::Watch,
            action::KILL => Self::Killed,
            other => Self::Other(other),
        }
    }
}

/// A new cgroup, as reported by `cgroup/cgroup_mkdir`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NewCgroup {
    /// The cgroup's id (the folder's inode in its hierarchy).
    pub id: u64,
    /// 0 for cgroup v2, else the v1 hierarchy's number.
    pub hierarchy: u32,
    pub level: u32,
    /// The path inside the hierarchy; `None` if unreadable.
    pub path: Option<String>,
    pub path_truncated: bool,
}

impl From<&CgroupEvent> for NewCgroup {
    fn from(raw: &CgroupEvent) -> Self {
        let path = (raw.flags & CgroupEvent::FLAG_PATH_UNREADABLE == 0).then(|| {
            let len = (raw.path_len as usize).min(raw.path.len());
            String::from_utf8_lossy(&raw.path[..len]).into_owned()
        });
        Self {
            id: raw.id,
            hierarchy: raw.hierarchy,
            level: raw.level,
            path,
            path_truncated: raw.flags & CgroupEvent::FLAG_PATH_TRUNCATED != 0,
        }
    }
}

/// Decodes one ring buffer record of type `T`. `aya::Pod` (an unsafe
/// trait the kernel ABI types implement) is the promise that any bit
/// pattern of the right size is a valid `T`.
fn decode<T: aya::Pod>(bytes: &[u8]) -> Result<T, SizeMismatch> {
    let expected = size_of::<T>();
    if bytes.len() != expected {
        return Err(SizeMismatch {
            got: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length is checked above, `T: Pod` makes any bit pattern
    // valid, and `read_unaligned` needs no alignment.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

impl Exec {
    /// Decodes one ring buffer record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SizeMismatch> {
        Ok(Self::from(&decode::<ExecEvent>(bytes)?))
    }
}

impl NewCgroup {
    /// Decodes one ring buffer record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SizeMismatch> {
        Ok(Self::from(&decode::<CgroupEvent>(bytes)?))
    }
}

impl From<&ExecEvent> for Exec {
    fn from(raw: &ExecEvent) -> Self {
        let comm_len = raw.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        let filename = if raw.flags & ExecEvent::FLAG_FILENAME_UNREADABLE != 0 {
            None
        } else {
            let len = (raw.filename_len as usize).min(raw.filename.len());
            Some(String::from_utf8_lossy(&raw.filename[..len]).into_owned())
        };
        let ns_known = raw.flags & ExecEvent::FLAG_NS_UNKNOWN == 0;
        Self {
            pid: raw.pid,
            tgid: raw.tgid,
            ppid: (raw.flags & ExecEvent::FLAG_PPID_UNKNOWN == 0).then_some(raw.ppid),
            cgroup_id: raw.cgroup_id,
            memcg_id: (raw.flags & ExecEvent::FLAG_MEMCG_UNKNOWN == 0).then_some(raw.memcg_id),
            pid_ns: ns_known.then_some(raw.pid_ns),
            mnt_ns: ns_known.then_some(raw.mnt_ns),
            action: KernelAction::from_raw(raw.action),
            comm: String::from_utf8_lossy(&raw.comm[..comm_len]).into_owned(),
            filename,
            filename_truncated: raw.flags & ExecEvent::FLAG_FILENAME_TRUNCATED != 0,
        }
    }
}

/// One line, with strings quoted so that odd bytes in a path cannot forge
/// another field or line.
impl fmt::Display for Exec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exec pid={} tgid={} ppid=", self.pid, self.tgid)?;
        match self.ppid {
            Some(ppid) => write!(f, "{ppid}")?,
            None => f.write_str("?")?,
        }
        write!(
            f,
            " cgroup={} comm={:?} filename=",
            self.cgroup_id, self.comm
        )?;
        match &self.filename {
            Some(name) => write!(f, "{name:?}")?,
            None => f.write_str("?")?,
        }
        if self.filename_truncated {
            f.write_str(" (truncated)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use imagegate_common::FILENAME_CAP;

    use super::*;

    fn raw(path: &[u8], comm: &[u8], flags: u32) -> ExecEvent {
        let mut event = ExecEvent {
            pid: 42,
            tgid: 42,
            ppid: 7,
            flags,
            cgroup_id: 1234,
            memcg_id: 99,
            pid_ns: 4026531836,
            mnt_ns: 4026531841,
            filename_len: path.len() as u32,
            action: action::WATCH,
            comm: [0; COMM_LEN],
            filename: [0xAA; FILENAME_CAP],
        };
        event.comm[..comm.len()].copy_from_slice(comm);
        event.filename[..path.len()].copy_from_slice(path);
        event
    }

    fn bytes_of(event: &ExecEvent) -> Vec<u8> {
        // SAFETY: ExecEvent is plain old data without padding.
        unsafe {
            std::slice::from_raw_parts(
                (event as *const ExecEvent).cast::<u8>(),
                size_of::<ExecEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_record() {
        let event = Exec::from_bytes(&bytes_of(&raw(b"/usr/bin/true", b"true", 0))).unwrap();
        assert_eq!(
            event,
            Exec {
                pid: 42,
                tgid: 42,
                ppid: Some(7),
                cgroup_id: 1234,
                memcg_id: Some(99),
                pid_ns: Some(4026531836),
                mnt_ns: Some(4026531841),
                action: KernelAction::Watch,
                comm: "true".into(),
                filename: Some("/usr/bin/true".into()),
                filename_truncated: false,
            }
        );
        assert_eq!(
            event.to_string(),
            r#"exec pid=42 tgid=42 ppid=7 cgroup=1234 comm="true" filename="/usr/bin/true""#
        );
    }

    #[test]
    fn flags_become_options() {
        let flags = ExecEvent::FLAG_PPID_UNKNOWN
            | ExecEvent::FLAG_FILENAME_UNREADABLE
            | ExecEvent::FLAG_MEMCG_UNKNOWN
            | ExecEvent::FLAG_NS_UNKNOWN;
        let event = Exec::from(&raw(b"", b"x", flags));
        assert_eq!(
            (event.memcg_id, event.pid_ns, event.mnt_ns),
            (None, None, None)
        );
        assert_eq!(event.ppid, None);
        assert_eq!(event.filename, None);
        assert_eq!(
            event.to_string(),
            r#"exec pid=42 tgid=42 ppid=? cgroup=1234 comm="x" filename=?"#
        );
    }

    #[test]
    fn a_full_comm_has_no_nul_and_is_kept_whole() {
        let event = Exec::from(&raw(b"/x", b"0123456789abcdef", 0));
        assert_eq!(event.comm, "0123456789abcdef");
    }

    #[test]
    fn odd_bytes_are_quoted_not_printed_raw() {
        let event = Exec::from(&raw(
            b"/tmp/a\nexec pid=1",
            b"a",
            ExecEvent::FLAG_FILENAME_TRUNCATED,
        ));
        let line = event.to_string();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.ends_with(r#"filename="/tmp/a\nexec pid=1" (truncated)"#),
            "{line}"
        );
    }

    #[test]
    fn a_length_past_the_buffer_is_clamped() {
        let mut event = raw(b"/x", b"x", 0);
        event.filename = [b'x'; FILENAME_CAP];
        event.filename_len = u32::MAX;
        let decoded = Exec::from(&event);
        assert_eq!(decoded.filename.unwrap().len(), FILENAME_CAP);
    }

    #[test]
    fn decodes_a_new_cgroup_and_an_unknown_action() {
        let mut raw_cgroup = CgroupEvent {
            id: 77,
            hierarchy: 0,
            level: 2,
            path_len: 10,
            flags: 0,
            path: [0; imagegate_common::CGROUP_PATH_CAP],
        };
        raw_cgroup.path[..10].copy_from_slice(b"/default/x");
        let cgroup = NewCgroup::from(&raw_cgroup);
        assert_eq!(cgroup.path.as_deref(), Some("/default/x"));
        assert_eq!((cgroup.id, cgroup.level), (77, 2));
        assert_eq!(KernelAction::from_raw(99), KernelAction::Other(99));
    }

    #[test]
    fn a_record_of_the_wrong_size_is_refused() {
        assert_eq!(
            Exec::from_bytes(&[0; 8]),
            Err(SizeMismatch {
                got: 8,
                expected: size_of::<ExecEvent>()
            })
        );
    }
}
