//! The exec event as the rest of the agent sees it, converted from the raw
//! `#[repr(C)]` record at the ring buffer boundary.

use std::fmt;

use imagegate_common::{COMM_LEN, ExecEvent};
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
    /// Command name after exec (at most 15 bytes, the kernel's limit).
    pub comm: String,
    /// The path given to execve; `None` when the kernel could not read it.
    pub filename: Option<String>,
    /// The path was longer than the program keeps and was cut.
    pub filename_truncated: bool,
}

/// A ring buffer record that is not an [`ExecEvent`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("exec event of {got} bytes, expected {expected}: agent and eBPF object disagree")]
pub struct SizeMismatch {
    pub got: usize,
    pub expected: usize,
}

impl Exec {
    /// Decodes one ring buffer record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SizeMismatch> {
        let expected = size_of::<ExecEvent>();
        if bytes.len() != expected {
            return Err(SizeMismatch {
                got: bytes.len(),
                expected,
            });
        }
        // SAFETY: the length is checked above and `ExecEvent` is plain old
        // data (any bit pattern is valid); `read_unaligned` needs no alignment.
        let raw = unsafe { bytes.as_ptr().cast::<ExecEvent>().read_unaligned() };
        Ok(Self::from(&raw))
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
        Self {
            pid: raw.pid,
            tgid: raw.tgid,
            ppid: (raw.flags & ExecEvent::FLAG_PPID_UNKNOWN == 0).then_some(raw.ppid),
            cgroup_id: raw.cgroup_id,
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
            filename_len: path.len() as u32,
            _reserved: 0,
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
        let flags = ExecEvent::FLAG_PPID_UNKNOWN | ExecEvent::FLAG_FILENAME_UNREADABLE;
        let event = Exec::from(&raw(b"", b"x", flags));
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
