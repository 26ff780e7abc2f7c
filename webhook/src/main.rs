//! `imagegate-webhook`: the admission webhook. Its server arrives with the
//! webhook issue; today the binary offers its command-line surface and
//! version only, and says so rather than pretending to serve.

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

/// Checks container images at admission and pushes approved digests to nodes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve ImageReview and AdmissionReview over HTTPS.
    Serve,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Serve => bail!("`serve` is not built yet in this version of imagegate-webhook"),
    }
}
