//! Embeds the eBPF object that `cargo xtask build` produced.
//!
//! The object is built by a different compiler (Debian's rustc, the only one
//! here with a BPF standard library), so cargo cannot build it as a normal
//! dependency. xtask builds it and names it in `IMAGEGATE_EBPF_OBJECT`; this
//! script copies it into OUT_DIR, where `include_bytes_aligned!` finds it.

use std::{env, fs, path::PathBuf, process::ExitCode};

const OBJECT_ENV: &str = "IMAGEGATE_EBPF_OBJECT";

fn main() -> ExitCode {
    println!("cargo:rerun-if-env-changed={OBJECT_ENV}");
    let Some(object) = env::var_os(OBJECT_ENV).map(PathBuf::from) else {
        eprintln!(
            "error: {OBJECT_ENV} is not set.\n\
             The agent embeds an eBPF object built by Debian's rustc. Build through xtask, \
             which builds the object first and sets {OBJECT_ENV}:\n    \
             cargo xtask build      (or: cargo xtask test)"
        );
        return ExitCode::FAILURE;
    };
    println!("cargo:rerun-if-changed={}", object.display());
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("imagegate-ebpf.o");
    if let Err(e) = fs::copy(&object, &out) {
        eprintln!(
            "error: cannot copy the eBPF object {} named by {OBJECT_ENV}: {e}; \
             run `cargo xtask build` to build it",
            object.display()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
