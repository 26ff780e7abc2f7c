//! The one layer runnable test images share: Debian's static busybox, with
//! `/bin/sh` and a few applets linked to it, as an uncompressed tar.
//! Built in memory, deterministically (fixed times and owners), so every
//! run gets the same layer digest.

use std::sync::OnceLock;

pub const BUSYBOX: &str = "/bin/busybox";

/// The layer's tar bytes.
pub fn busybox_layer() -> &'static [u8] {
    static LAYER: OnceLock<Vec<u8>> = OnceLock::new();
    LAYER.get_or_init(|| {
        let binary = std::fs::read(BUSYBOX).unwrap_or_else(|e| {
            panic!("{BUSYBOX}: {e}; run `cargo xtask setup` (Debian package busybox-static)")
        });
        let mut tar = tar::Builder::new(Vec::new());
        for dir in ["bin/", "tmp/", "proc/", "dev/", "sys/", "etc/"] {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            tar.append_data(&mut header, dir, std::io::empty()).unwrap();
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o755);
        header.set_size(binary.len() as u64);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        tar.append_data(&mut header, "bin/busybox", binary.as_slice())
            .unwrap();
        for applet in ["sh", "sleep", "true", "cat"] {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            tar.append_link(&mut header, format!("bin/{applet}"), "busybox")
                .unwrap();
        }
        tar.into_inner().unwrap()
    })
}

/// Unpacks the busybox layer into `dir`: a root filesystem for `ctr run
/// --rootfs`, a container with no image at all.
pub fn unpack_busybox(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    tar::Archive::new(busybox_layer()).unpack(dir).unwrap();
}
