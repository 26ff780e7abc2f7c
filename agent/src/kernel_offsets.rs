//! Kernel struct offsets read from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocation of field offsets, so the agent looks up
//! the few offsets its programs need in `/sys/kernel/btf/vmlinux` at start-up
//! and passes them in as read-only globals.

use std::path::Path;

use btf_rs::{Btf, Type};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// A field the programs need could not be located.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    /// The BTF file is missing or unreadable.
    #[error(
        "cannot read kernel BTF at {path}: {source}; imagegate needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.4 are)"
    )]
    Read {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    /// The struct is not in the BTF.
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    /// The struct has no such member, even inside anonymous members.
    #[error("kernel BTF: struct `{strukt}` has no member `{member}`")]
    NoMember { strukt: String, member: String },
    /// The member is a bit field, which the programs cannot read by offset.
    #[error("kernel BTF: `{strukt}.{member}` is a bit field")]
    BitField { strukt: String, member: String },
    /// BTF that does not follow its own format.
    #[error("kernel BTF is malformed: {0}")]
    Malformed(#[from] btf_rs::Error),
}

/// Offsets into `struct task_struct` used by the exec program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `task_struct.real_parent` (a `struct task_struct *`).
    pub real_parent: u32,
    /// `task_struct.tgid` (a `pid_t`).
    pub tgid: u32,
}

impl TaskOffsets {
    /// Reads the offsets from a BTF file (normally [`VMLINUX_BTF`]).
    pub fn from_file(path: &Path) -> Result<Self, OffsetError> {
        let btf = Btf::from_file(path).map_err(|source| OffsetError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_btf(&btf)
    }

    /// Reads the offsets from parsed BTF.
    pub fn from_btf(btf: &Btf) -> Result<Self, OffsetError> {
        Ok(Self {
            real_parent: member_offset(btf, "task_struct", "real_parent")?,
            tgid: member_offset(btf, "task_struct", "tgid")?,
        })
    }
}

/// Byte offset of `member` in `struct strukt`, looking through anonymous
/// struct and union members (kernels built with struct layout randomisation
/// wrap most of `task_struct` in one).
pub fn member_offset(btf: &Btf, strukt: &str, member: &str) -> Result<u32, OffsetError> {
    let found = btf
        .resolve_types_by_name(strukt)
        .map_err(|_| OffsetError::NoStruct(strukt.to_string()))?;
    // A name may also be a typedef or a forward declaration: take the struct.
    let layout = found
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| OffsetError::NoStruct(strukt.to_string()))?;
    let bits =
        find_member_bits(btf, &layout, member, strukt)?.ok_or_else(|| OffsetError::NoMember {
            strukt: strukt.to_string(),
            member: member.to_string(),
        })?;
    if bits % 8 != 0 {
        return Err(OffsetError::BitField {
            strukt: strukt.to_string(),
            member: member.to_string(),
        });
    }
    Ok(bits / 8)
}

/// Bit offset of `member` in `layout`, if it is there.
fn find_member_bits(
    btf: &Btf,
    layout: &btf_rs::Struct,
    member: &str,
    strukt: &str,
) -> Result<Option<u32>, OffsetError> {
    for m in &layout.members {
        let name = btf.resolve_name(m)?;
        if name == member {
            if m.bitfield_size().is_some_and(|size| size != 0) {
                return Err(OffsetError::BitField {
                    strukt: strukt.to_string(),
                    member: member.to_string(),
                });
            }
            return Ok(Some(m.bit_offset()));
        }
        if name.is_empty() {
            let inner = match btf.resolve_chained_type(m)? {
                Type::Struct(s) | Type::Union(s) => s,
                _ => continue,
            };
            if let Some(bits) = find_member_bits(btf, &inner, member, strukt)? {
                return Ok(Some(m.bit_offset() + bits));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    // These read the running kernel's own BTF (world-readable, no root
    // needed): the point is that the lookup works on a real kernel layout.
    fn vmlinux() -> Btf {
        Btf::from_file(VMLINUX_BTF).expect("this machine's kernel exposes BTF")
    }

    #[test]
    fn finds_task_struct_offsets() {
        let offsets = TaskOffsets::from_btf(&vmlinux()).expect("task_struct offsets");
        assert!(offsets.tgid > 0 && offsets.real_parent > 0);
        // `real_parent` follows `pid` and `tgid` in every kernel layout.
        assert!(offsets.real_parent > offsets.tgid, "{offsets:?}");
        assert_eq!(offsets.tgid % 4, 0, "pid_t is 4-byte aligned");
        assert_eq!(offsets.real_parent % 8, 0, "pointers are 8-byte aligned");
    }

    #[test]
    fn finds_a_member_at_offset_zero() {
        // `struct list_head { struct list_head *next, *prev; }`
        let btf = vmlinux();
        assert_eq!(member_offset(&btf, "list_head", "next").unwrap(), 0);
        assert_eq!(member_offset(&btf, "list_head", "prev").unwrap(), 8);
    }

    #[test]
    fn names_what_is_missing() {
        let btf = vmlinux();
        let err = member_offset(&btf, "task_struct", "no_such_member").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel BTF: struct `task_struct` has no member `no_such_member`"
        );
        let err = member_offset(&btf, "imagegate_no_such_struct", "x").unwrap_err();
        assert!(matches!(err, OffsetError::NoStruct(_)), "{err}");
    }

    #[test]
    fn missing_btf_file_says_what_the_kernel_needs() {
        let err = TaskOffsets::from_file(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }
}
