//! Embeds the eBPF object that `cargo xtask build` produced.
//!
//! The object is built by a different compiler (Debian's rustc, the only one
//! here with a BPF standard library), so cargo cannot build it as a normal
//! dependency. xtask builds it and names it in `IMAGEGATE_EBPF_OBJECT`; this
//! script copies it into OUT_DIR, where `include_bytes_aligned!` finds it.
//! Without it (a plain `cargo check` or `cargo test --lib`) an empty object
//! is embedded, which the probe refuses to load with a message.

use std::{env, fs, path::PathBuf, process::ExitCode};

const OBJECT_ENV: &str = "IMAGEGATE_EBPF_OBJECT";

fn main() -> ExitCode {
    println!("cargo:rerun-if-env-changed={OBJECT_ENV}");
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("imagegate-ebpf.o");
    let Some(object) = env::var_os(OBJECT_ENV).map(PathBuf::from) else {
        // `cargo check`, `cargo clippy` and the unit tests need no object:
        // an empty one is embedded, and a binary built this way says at
        // start that it cannot watch anything and how to build it.
        println!(
            "cargo:warning={OBJECT_ENV} is not set: this agent embeds no eBPF object and will \
             refuse to start; build it with `cargo xtask build` (or `cargo xtask test`)"
        );
        if let Err(e) = fs::write(&out, b"") {
            eprintln!("error: cannot write {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    };
    println!("cargo:rerun-if-changed={}", object.display());
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
