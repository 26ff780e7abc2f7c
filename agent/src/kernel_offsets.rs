//! Kernel struct offsets read from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocation of field offsets, so the agent looks up
//! the few offsets its programs need in `/sys/kernel/btf/vmlinux` at start-up
//! and passes them in as read-only globals.

use std::path::Path;

use btf_rs::{Btf, Type};
use imagegate_common::KernelLayout;

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

/// The struct offsets the programs need, read from BTF. The tracepoint
/// record offsets (from tracefs) and the filter settings are filled in by
/// the probe.
pub fn kernel_layout(btf: &Btf) -> Result<KernelLayout, OffsetError> {
    Ok(KernelLayout {
        task_real_parent: member_offset(btf, "task_struct", "real_parent")?,
        task_tgid: member_offset(btf, "task_struct", "tgid")?,
        task_cgroups: member_offset(btf, "task_struct", "cgroups")?,
        task_thread_pid: member_offset(btf, "task_struct", "thread_pid")?,
        task_nsproxy: member_offset(btf, "task_struct", "nsproxy")?,
        css_set_subsys: member_offset(btf, "css_set", "subsys")?,
        // A kernel without the memory controller has no `memory_cgrp_id`;
        // the programs then report memcg id 0 with a flag.
        memory_cgrp_index: enum_value(btf, "cgroup_subsys_id", "memory_cgrp_id")?
            .unwrap_or(u32::MAX),
        css_cgroup: member_offset(btf, "cgroup_subsys_state", "cgroup")?,
        cgroup_kn: member_offset(btf, "cgroup", "kn")?,
        kernfs_node_id: member_offset(btf, "kernfs_node", "id")?,
        pid_level: member_offset(btf, "pid", "level")?,
        pid_numbers: member_offset(btf, "pid", "numbers")?,
        upid_size: struct_size(btf, "upid")?,
        upid_ns: member_offset(btf, "upid", "ns")?,
        pid_namespace_ns: member_offset(btf, "pid_namespace", "ns")?,
        nsproxy_mnt_ns: member_offset(btf, "nsproxy", "mnt_ns")?,
        mnt_namespace_ns: member_offset(btf, "mnt_namespace", "ns")?,
        ns_common_inum: member_offset(btf, "ns_common", "inum")?,
        ..KernelLayout::default()
    })
}

/// Reads BTF from a file (normally [`VMLINUX_BTF`]).
pub fn read_btf(path: &Path) -> Result<Btf, OffsetError> {
    Btf::from_file(path).map_err(|source| OffsetError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn find_struct(btf: &Btf, strukt: &str) -> Result<btf_rs::Struct, OffsetError> {
    let found = btf
        .resolve_types_by_name(strukt)
        .map_err(|_| OffsetError::NoStruct(strukt.to_string()))?;
    // A name may also be a typedef or a forward declaration: take the struct.
    found
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| OffsetError::NoStruct(strukt.to_string()))
}

/// `sizeof(struct strukt)`.
pub fn struct_size(btf: &Btf, strukt: &str) -> Result<u32, OffsetError> {
    Ok(find_struct(btf, strukt)?.size() as u32)
}

/// The value of `member` in `enum name`, or `None` when the enum or the
/// member is not in this kernel.
pub fn enum_value(btf: &Btf, name: &str, member: &str) -> Result<Option<u32>, OffsetError> {
    let Ok(found) = btf.resolve_types_by_name(name) else {
        return Ok(None);
    };
    for t in found {
        if let Type::Enum(e) = t {
            for m in &e.members {
                if btf.resolve_name(m)? == member {
                    return Ok(Some(m.val()));
                }
            }
        }
    }
    Ok(None)
}

/// Byte offset of `member` in `struct strukt`, looking through anonymous
/// struct and union members (kernels built with struct layout randomisation
/// wrap most of `task_struct` in one).
pub fn member_offset(btf: &Btf, strukt: &str, member: &str) -> Result<u32, OffsetError> {
    let layout = find_struct(btf, strukt)?;
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
    fn reads_the_whole_layout_from_this_kernel() {
        let layout = kernel_layout(&vmlinux()).expect("kernel layout");
        assert!(layout.task_tgid > 0 && layout.task_real_parent > 0);
        // `real_parent` follows `pid` and `tgid` in every kernel layout.
        assert!(layout.task_real_parent > layout.task_tgid, "{layout:?}");
        assert_eq!(layout.task_tgid % 4, 0, "pid_t is 4-byte aligned");
        for pointer in [
            layout.task_real_parent,
            layout.task_cgroups,
            layout.task_thread_pid,
            layout.task_nsproxy,
            layout.cgroup_kn,
            layout.upid_ns,
        ] {
            assert_eq!(pointer % 8, 0, "pointers are 8-byte aligned: {layout:?}");
        }
        // `struct upid { int nr; struct pid_namespace *ns; }` on 64-bit.
        assert_eq!((layout.upid_size, layout.upid_ns), (16, 8));
        // This machine's kernel has the memory controller (cgroup v1 memory
        // hierarchy is mounted here).
        assert!(layout.memory_cgrp_index < 16, "{layout:?}");
    }

    #[test]
    fn finds_a_member_at_offset_zero() {
        // `struct list_head { struct list_head *next, *prev; }`
        let btf = vmlinux();
        assert_eq!(member_offset(&btf, "list_head", "next").unwrap(), 0);
        assert_eq!(member_offset(&btf, "list_head", "prev").unwrap(), 8);
    }

    #[test]
    fn an_absent_enum_member_is_none_not_an_error() {
        let btf = vmlinux();
        assert_eq!(
            enum_value(&btf, "cgroup_subsys_id", "no_such_cgrp_id").unwrap(),
            None
        );
        assert_eq!(
            enum_value(&btf, "imagegate_no_such_enum", "x").unwrap(),
            None
        );
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
        let err = read_btf(Path::new("/nonexistent/vmlinux"))
            .err()
            .expect("no BTF there");
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }
}
