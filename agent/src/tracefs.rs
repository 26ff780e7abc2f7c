//! Facts read from tracefs: where it is mounted and the layout of a
//! tracepoint's record (its `format` file).

use std::path::{Path, PathBuf};

/// Where tracefs is normally mounted, newest convention first.
const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// A tracepoint format could not be read or did not hold the field.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// tracefs is not mounted anywhere we look.
    #[error(
        "tracefs is not mounted (looked in /sys/kernel/tracing and /sys/kernel/debug/tracing); \
         mount it with `mount -t tracefs nodev /sys/kernel/tracing`"
    )]
    NotMounted,
    /// The format file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The format has no such field.
    #[error("tracepoint format has no field `{0}`")]
    NoField(String),
    /// A field line did not carry a readable offset.
    #[error("tracepoint format: field `{0}` has no readable offset")]
    BadOffset(String),
}

/// The mounted tracefs root.
pub fn root() -> Result<PathBuf, FormatError> {
    TRACEFS_ROOTS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
        .ok_or(FormatError::NotMounted)
}

/// Reads `events/<category>/<name>/format` under the tracefs root.
pub fn read_format(root: &Path, category: &str, name: &str) -> Result<String, FormatError> {
    let path = root.join("events").join(category).join(name).join("format");
    std::fs::read_to_string(&path).map_err(|source| FormatError::Read { path, source })
}

/// Byte offset of `field` in a tracepoint record, from its format text.
///
/// Field lines look like
/// `field:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;`:
/// the field's name is the last word of its declaration (after any `[]`).
pub fn field_offset(format: &str, field: &str) -> Result<u32, FormatError> {
    for line in format.lines() {
        let mut parts = line.trim().split(';').map(str::trim);
        let Some(decl) = parts.next().and_then(|d| d.strip_prefix("field:")) else {
            continue;
        };
        let name = decl
            .rsplit(|c: char| c.is_whitespace())
            .next()
            .unwrap_or_default()
            .split('[')
            .next()
            .unwrap_or_default();
        if name != field {
            continue;
        }
        return parts
            .find_map(|p| p.strip_prefix("offset:"))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| FormatError::BadOffset(field.to_string()));
    }
    Err(FormatError::NoField(field.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The layout of sched_process_exec on 6.x kernels, written out by hand.
    const EXEC_FORMAT: &str = "name: sched_process_exec\nID: 365\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
        \tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
        \tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n\
        \tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;\n\n\
        print fmt: \"filename=%s pid=%d old_pid=%d\", __get_str(filename), REC->pid, REC->old_pid\n";

    #[test]
    fn reads_field_offsets() {
        assert_eq!(field_offset(EXEC_FORMAT, "filename").unwrap(), 8);
        assert_eq!(field_offset(EXEC_FORMAT, "pid").unwrap(), 12);
        assert_eq!(field_offset(EXEC_FORMAT, "old_pid").unwrap(), 16);
        assert_eq!(field_offset(EXEC_FORMAT, "common_pid").unwrap(), 4);
    }

    #[test]
    fn array_fields_are_named_without_brackets() {
        let format = "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n";
        assert_eq!(field_offset(format, "comm").unwrap(), 8);
    }

    #[test]
    fn missing_and_broken_fields_are_errors() {
        assert!(matches!(
            field_offset(EXEC_FORMAT, "file"),
            Err(FormatError::NoField(f)) if f == "file"
        ));
        let broken = "\tfield:pid_t pid;\toffset:x;\tsize:4;\n";
        assert!(matches!(
            field_offset(broken, "pid"),
            Err(FormatError::BadOffset(_))
        ));
        // `print fmt` mentions REC->pid but is not a field line.
        assert!(field_offset("print fmt: \"%d\", REC->pid\n", "pid").is_err());
    }
}
