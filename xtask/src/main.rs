//! imagegate's developer tasks. Run as root: eBPF and containerd need it.
//!
//! - `cargo xtask setup`: install what the project needs (idempotent).
//! - `cargo xtask build`: build the eBPF object, then the binaries.
//! - `cargo xtask test`: setup, then format, lints, unit and root integration tests.
//! - `cargo xtask demo`: setup, build, and show the product working.
//! - `cargo xtask bench [NAME]`: benchmarks, with a report under target/bench/.
//! - `cargo xtask images [--push PREFIX]`: the two container images, built here.
//! - `cargo xtask fuzz`: the webhook's fuzz targets (nightly).

mod bench;
mod build;
mod cmd;
mod demo;
mod fuzz;
mod images;
mod paths;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "imagegate's developer tasks (run as root)")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install, idempotently, everything the project needs on this machine.
    Setup,
    /// Build the eBPF object with Debian's rustc, then the agent that embeds it.
    Build {
        /// Build the host binaries in release mode.
        #[arg(long)]
        release: bool,
    },
    /// Run setup, then every check and test; ends with a summary line.
    Test,
    /// Run setup and build, then the whole product on this machine, told as it happens.
    Demo {
        /// Run the agent in enforce mode (the violating container is killed).
        #[arg(long)]
        enforce: bool,
    },
    /// Run benchmarks and write a report under target/bench/.
    Bench {
        /// One benchmark (webhook, agent, push, hostile); all when omitted.
        name: Option<String>,
        /// push: how many agents, comma-separated (lightweight in-process
        /// agents speaking the agent's side of the wire over mTLS).
        #[arg(long, value_delimiter = ',', default_values_t = [10usize, 200, 2000])]
        agents: Vec<usize>,
        /// push: which designs to compare, comma-separated: `feed` (agents
        /// follow the webhook) and `dial` (the webhook dials every agent).
        #[arg(long, value_delimiter = ',', default_values_t = ["dial".to_string(), "feed".to_string()])]
        designs: Vec<String>,
    },
    /// Build the webhook and agent container images as OCI layouts under
    /// target/images/, from nothing pulled; optionally push them.
    Images {
        /// From the debug build instead of a release build.
        #[arg(long)]
        debug: bool,
        /// Push to `<PREFIX>/webhook:<version>` and `<PREFIX>/agent:<version>`,
        /// e.g. registry.example:5000/imagegate.
        #[arg(long, value_name = "PREFIX")]
        push: Option<String>,
        /// The registry speaks plain HTTP or has a certificate not to verify.
        #[arg(long, requires = "push")]
        insecure: bool,
        /// Registry credentials, `user:password`.
        #[arg(long, requires = "push", env = "IMAGEGATE_PUSH_CREDS")]
        creds: Option<String>,
        /// A folder holding the registry's CA certificate (`*.crt`).
        #[arg(long, requires = "push")]
        cert_dir: Option<std::path::PathBuf>,
    },
    /// Fuzz the webhook's decoders, reference parser and policy loader.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run; all when omitted.
        targets: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let paths = paths::Paths::discover()?;
    match cli.task {
        Task::Setup => setup::run(&paths),
        Task::Build { release } => {
            setup::check_toolchain(&paths)?;
            build::all(&paths, release).map(drop)
        }
        Task::Test => test::run(&paths),
        Task::Demo { enforce } => demo::run(&paths, enforce),
        Task::Bench {
            name,
            agents,
            designs,
        } => bench::run(
            &paths,
            name.as_deref(),
            &bench::PushScale { agents, designs },
        ),
        Task::Fuzz { seconds, targets } => fuzz::run(&paths, seconds, &targets),
        Task::Images {
            debug,
            push,
            insecure,
            creds,
            cert_dir,
        } => {
            let push = push.map(|prefix| images::Push {
                prefix,
                insecure,
                creds,
                cert_dir,
            });
            images::run(&paths, debug, push.as_ref())
        }
    }
}
