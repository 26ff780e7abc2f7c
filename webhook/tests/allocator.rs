//! The webhook binary runs on jemalloc with the settings its memory
//! figures were measured with (`webhook/src/main.rs`): jemalloc prints its
//! options at exit when asked to, and they must be the ones set there.

use std::process::Command;

#[test]
fn the_webhook_runs_on_jemalloc_with_its_settings() {
    let out = Command::new(env!("CARGO_BIN_EXE_imagegate-webhook"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("running the webhook binary");
    assert!(out.status.success(), "{out:?}");
    // jemalloc writes its statistics to standard error.
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(stats.contains("jemalloc statistics"), "{stats}");
    for option in [
        "opt.narenas: 2",
        "opt.dirty_decay_ms: 0",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(stats.contains(option), "{option} missing from:\n{stats}");
    }
}
