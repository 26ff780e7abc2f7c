//! `imagegate-agent`: the node agent. Runs as root (eBPF).

use std::{
    io::{self, IsTerminal, Write},
    path::PathBuf,
};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use imagegate_agent::{exec_event::Exec, exec_probe::ExecProbe, kernel_offsets::VMLINUX_BTF};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};
use tracing_subscriber::EnvFilter;

/// Watches container starts on this node with eBPF.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Print one line per exec on standard output.
    #[arg(long, env = "IMAGEGATE_PRINT_EVENTS")]
    print_events: bool,

    /// Format of the lines `--print-events` prints.
    #[arg(long, env = "IMAGEGATE_EVENT_FORMAT", value_enum, default_value_t = Format::Text)]
    event_format: Format,

    /// Kernel BTF to read struct offsets from.
    #[arg(long, env = "IMAGEGATE_BTF", default_value = VMLINUX_BTF)]
    btf: PathBuf,

    /// Format of the agent's own log lines (on standard error).
    #[arg(long, env = "IMAGEGATE_LOG_FORMAT", value_enum, default_value_t = Format::Text)]
    log_format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_logs(args.log_format);

    let mut probe = ExecProbe::attach(&args.btf)?;
    let facts = probe.facts();
    info!(
        task_real_parent_offset = facts.task_offsets.real_parent,
        task_tgid_offset = facts.task_offsets.tgid,
        exec_filename_loc_offset = facts.exec_filename_loc_offset,
        tracefs = %facts.tracefs.display(),
        btf = %args.btf.display(),
        "kernel: offsets read from BTF and tracefs"
    );
    // Tests and the demo wait for this line before they exec anything.
    info!("ready: sched/sched_process_exec attached");

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut seen: u64 = 0;
    let mut batch = Vec::new();
    let stdout = io::stdout();
    loop {
        tokio::select! {
            received = probe.recv(&mut batch) => {
                received?;
                seen += batch.len() as u64;
                if args.print_events {
                    if let Err(e) = print_events(&mut stdout.lock(), &batch, args.event_format) {
                        // A closed pipe means whoever read us is gone.
                        if e.kind() == io::ErrorKind::BrokenPipe {
                            break;
                        }
                        return Err(e).context("writing events to standard output");
                    }
                } else {
                    for exec in &batch {
                        debug!(%exec, "exec");
                    }
                }
                batch.clear();
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }

    let lost = probe.lost_events()?;
    if lost > 0 {
        warn!(lost, "the ring buffer was full and events were dropped");
    }
    info!(events = seen, lost, "stopping");
    Ok(())
}

fn print_events(out: &mut impl Write, events: &[Exec], format: Format) -> io::Result<()> {
    for exec in events {
        match format {
            Format::Text => writeln!(out, "{exec}")?,
            Format::Json => {
                serde_json::to_writer(&mut *out, exec)?;
                out.write_all(b"\n")?;
            }
        }
    }
    // Whoever reads a pipe sees each batch at once.
    out.flush()
}

fn init_logs(format: Format) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in files or pipes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(io::stderr);
    match format {
        Format::Text => builder.init(),
        Format::Json => builder.json().init(),
    }
}
