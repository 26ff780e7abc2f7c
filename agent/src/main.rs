//! `imagegate-agent`: the node agent. Runs as root (eBPF, containerd's
//! socket, killing processes in enforce mode).
//!
//! Over 500 lines: most of it is the flags, whose doc comments are the
//! `--help` text operators read.

use std::{
    io::{self, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use imagegate_agent::{
    api::{
        self, Listeners,
        service::{AgentApi, StaticStatus},
    },
    approvals_file,
    cgroups::{Layout, Mode as CgroupMode},
    engine::{self, Engine},
    events,
    exec_event::Exec,
    feed,
    kernel_offsets::VMLINUX_BTF,
    metrics::{CertificateLabels, Metrics},
    model::Mode,
    probe::{LsmStatus, Probe, ProbeEvent, ProbeOptions},
    requirements::{self, Environment, KernelVersion},
    retention,
    runtime::{self as node_runtime, NodeRuntime, RuntimeKind},
    settle::{Enforcement, Gate},
    store::{Retention, Store},
    verdict::Exemptions,
};
use imagegate_plumbing::expiry::Watched;
use imagegate_plumbing::grpc::mtls::TlsFiles;
use imagegate_plumbing::process::LogFormat;
use tokio::sync::Notify;
use tracing::{info, warn};

/// Watches container starts on this node with eBPF and flags every container
/// whose image digest was never admitted.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,

    /// Format of the agent's own log lines (on standard error).
    #[arg(long, env = "IMAGEGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the stored state (the agent must be stopped: the store is
    /// locked while it runs) as JSON lines.
    State {
        /// The agent's state folder.
        #[arg(
            long,
            env = "IMAGEGATE_STATE_DIR",
            default_value = "/var/lib/imagegate"
        )]
        state_dir: PathBuf,
        /// What to print.
        #[arg(value_enum, default_value_t = StateTable::Violations)]
        table: StateTable,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StateTable {
    Approvals,
    Containers,
    Violations,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Only print one line per exec on standard output (every exec on the
    /// host, no verdicts): a look at what the kernel reports.
    #[arg(long, env = "IMAGEGATE_PRINT_EVENTS")]
    print_events: bool,

    /// Format of the lines `--print-events` prints.
    #[arg(long, env = "IMAGEGATE_EVENT_FORMAT", value_enum, default_value_t = Format::Text)]
    event_format: Format,

    /// Kernel BTF to read struct offsets from.
    #[arg(long, env = "IMAGEGATE_BTF", default_value = VMLINUX_BTF)]
    btf: PathBuf,

    /// The container runtime: `containerd`, `cri-o`, or `auto` (the one
    /// whose socket is there: --runtime-socket, or the default sockets of
    /// both, asked its name through CRI).
    #[arg(long, env = "IMAGEGATE_RUNTIME", value_enum, default_value_t = RuntimeKind::Auto)]
    runtime: RuntimeKind,

    /// The runtime's socket (CRI, and containerd's own API on containerd).
    /// Default: /run/containerd/containerd.sock for containerd,
    /// /var/run/crio/crio.sock for CRI-O (k3s:
    /// /run/k3s/containerd/containerd.sock).
    #[arg(long, env = "IMAGEGATE_RUNTIME_SOCKET")]
    runtime_socket: Option<PathBuf>,

    /// Earlier name of --runtime-socket; it says the runtime is containerd.
    #[arg(long, env = "IMAGEGATE_CONTAINERD_SOCKET", hide = true)]
    containerd_socket: Option<PathBuf>,

    /// Folder for the agent's state (approvals, containers, violations).
    #[arg(
        long,
        env = "IMAGEGATE_STATE_DIR",
        default_value = "/var/lib/imagegate"
    )]
    state_dir: PathBuf,

    /// `audit` flags violations; `enforce` also kills their processes and
    /// stops their execs.
    #[arg(long, env = "IMAGEGATE_MODE", value_enum, default_value_t = Mode::Audit)]
    mode: Mode,

    /// How long a container may run before it is flagged when its digest is
    /// not approved yet (approvals can arrive just after a pod is created).
    #[arg(long, env = "IMAGEGATE_GRACE", default_value = "2s", value_parser = humantime::parse_duration)]
    grace: Duration,

    /// In enforce mode, how much longer than --grace a verdict that would
    /// stop a container waits while a webhook replica's approval feed is not
    /// open (the replica restarted and every node reconnects to it, or it
    /// was just found): its approval may be on the way. Bounded, so a
    /// webhook that stays away does not turn enforce mode into audit.
    #[arg(long, env = "IMAGEGATE_FEED_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    feed_wait: Duration,

    /// Enforce mode kills nothing until the agent holds the admitted set a
    /// webhook rebuilt from the cluster (what already ran before the
    /// install), or until this long after the agent's first start on this
    /// node; until then it flags, as audit mode does.
    #[arg(long, env = "IMAGEGATE_SETTLE", default_value = "10m", value_parser = humantime::parse_duration)]
    settle: Duration,

    /// How often the agent forgets cgroups that no longer exist.
    #[arg(long, env = "IMAGEGATE_FORGET_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    forget_interval: Duration,

    /// Exempt pod sandbox (pause) containers.
    #[arg(long, env = "IMAGEGATE_EXEMPT_SANDBOX", default_value_t = true, action = ArgAction::Set)]
    exempt_sandbox: bool,

    /// containerd namespaces whose containers are not checked (repeat, or
    /// comma-separated).
    #[arg(
        long,
        env = "IMAGEGATE_EXEMPT_RUNTIME_NAMESPACES",
        value_delimiter = ','
    )]
    exempt_runtime_namespace: Vec<String>,

    /// Kubernetes namespaces whose pods are not checked.
    #[arg(long, env = "IMAGEGATE_EXEMPT_POD_NAMESPACES", value_delimiter = ',')]
    exempt_pod_namespace: Vec<String>,

    /// Images that are not checked, by digest: `name@sha256:<digest>` (the
    /// name is for humans; names and tags are claims anyone with
    /// containerd's socket can make by re-tagging).
    #[arg(long, env = "IMAGEGATE_EXEMPT_IMAGES", value_delimiter = ',')]
    exempt_image: Vec<String>,

    /// In enforce mode, also stop containers containerd knows but whose
    /// image it cannot name (started from a root filesystem, or whose image
    /// record was deleted). Containers the agent could not identify at all
    /// are never stopped: that would be a guess.
    #[arg(long, env = "IMAGEGATE_ENFORCE_UNKNOWN")]
    enforce_unknown: bool,

    /// A file of approvals (digests, or JSON lines with `digest`), read at
    /// start and whenever it changes; they are kept in the store.
    #[arg(long, env = "IMAGEGATE_APPROVALS_FILE")]
    approvals_file: Option<PathBuf>,

    /// Where to serve Prometheus metrics (`/metrics`) and `/healthz`;
    /// `off` to disable.
    #[arg(
        long,
        env = "IMAGEGATE_METRICS_ADDRESS",
        default_value = "127.0.0.1:9464"
    )]
    metrics_address: String,

    /// The gRPC mTLS listener (the webhook pushes approvals here; every
    /// client needs a certificate from --grpc-client-ca).
    #[arg(long, env = "IMAGEGATE_GRPC_ADDRESS", requires_all = ["grpc_tls_cert", "grpc_tls_key", "grpc_client_ca"], value_parser = listen_address)]
    grpc_address: Option<SocketAddr>,

    /// The agent's serving certificate (PEM) for --grpc-address.
    #[arg(long, env = "IMAGEGATE_GRPC_TLS_CERT")]
    grpc_tls_cert: Option<PathBuf>,

    /// Its private key (PEM).
    #[arg(long, env = "IMAGEGATE_GRPC_TLS_KEY")]
    grpc_tls_key: Option<PathBuf>,

    /// The CA that clients' certificates must chain to (PEM).
    #[arg(long, env = "IMAGEGATE_GRPC_CLIENT_CA")]
    grpc_client_ca: Option<PathBuf>,

    /// The DNS name a client certificate must be valid for to push
    /// approvals.
    #[arg(
        long,
        env = "IMAGEGATE_PUSH_IDENTITY",
        default_value = imagegate_proto::WEBHOOK_IDENTITY
    )]
    push_identity: String,

    /// A webhook's approval feed to follow (`host:port`; a headless
    /// Service's name follows every replica it resolves to). Uses
    /// --grpc-tls-cert/--grpc-tls-key as this agent's client certificate and
    /// --grpc-client-ca for the webhook's. Repeatable.
    #[arg(long = "webhook-feed", env = "IMAGEGATE_WEBHOOK_FEEDS", value_delimiter = ',', requires_all = ["grpc_tls_cert", "grpc_tls_key", "grpc_client_ca"])]
    webhook_feeds: Vec<String>,

    /// How often --webhook-feed names are resolved again (replicas come
    /// and go).
    #[arg(long, env = "IMAGEGATE_WEBHOOK_FEED_RESOLVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    webhook_feed_resolve_interval: Duration,

    /// A plaintext gRPC listener for queries from the node itself (grpcurl,
    /// `kubectl port-forward`); loopback addresses only; it cannot push.
    #[arg(long, env = "IMAGEGATE_GRPC_PLAINTEXT_ADDRESS", value_parser = listen_address)]
    grpc_plaintext_address: Option<SocketAddr>,

    /// A plaintext listener that serves only `grpc.health.v1`: for the
    /// kubelet's gRPC liveness and readiness probes (the chart binds it to
    /// the pod's IP, which the kubelet probes).
    #[arg(long, env = "IMAGEGATE_GRPC_HEALTH_ADDRESS", value_parser = listen_address)]
    grpc_health_address: Option<SocketAddr>,

    /// This node's name, for the status (defaults to the host name).
    #[arg(long, env = "IMAGEGATE_NODE_NAME")]
    node_name: Option<String>,

    /// Gone containers and violations are kept this long.
    #[arg(long, env = "IMAGEGATE_RECORD_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    record_retention: Duration,
    /// Most container records kept (the longest gone dropped first; running
    /// containers are always kept).
    #[arg(
        long,
        env = "IMAGEGATE_MAX_CONTAINER_RECORDS",
        default_value_t = 20_000
    )]
    max_container_records: u64,
    /// Most violations kept (the oldest dropped first).
    #[arg(long, env = "IMAGEGATE_MAX_VIOLATIONS", default_value_t = 20_000)]
    max_violations: u64,
    /// How often retention drops what it no longer keeps.
    #[arg(long, env = "IMAGEGATE_PRUNE_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    prune_interval: Duration,
}

impl RunArgs {
    /// The runtime asked for: `--containerd-socket` (its earlier flag) says
    /// containerd.
    fn runtime_kind(&self) -> RuntimeKind {
        match (self.runtime, &self.containerd_socket) {
            (RuntimeKind::Auto, Some(_)) => RuntimeKind::Containerd,
            (kind, _) => kind,
        }
    }

    fn runtime_socket(&self) -> Option<PathBuf> {
        self.runtime_socket
            .clone()
            .or_else(|| self.containerd_socket.clone())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> Result<()> {
    imagegate_plumbing::allocator::return_large_blocks_when_freed();
    let args = Args::parse();
    imagegate_plumbing::process::init_logs(args.log_format);
    match args.command {
        Some(Command::State { state_dir, table }) => print_state(&state_dir, table),
        None if args.run.print_events => print_events(&args.run).await,
        None => run(args.run).await,
    }
}

async fn run(args: RunArgs) -> Result<()> {
    // Every task spawned below stops when this turns true (at SIGTERM).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(imagegate_plumbing::allocator::trim_every(
        imagegate_plumbing::allocator::TRIM_EVERY,
        stop_rx.clone(),
    ));
    check_requirements(&args)?;
    let node_runtime::Detected {
        kind: runtime_kind,
        socket: runtime_socket,
        version: runtime_version,
    } = node_runtime::detect(
        args.runtime_kind(),
        args.runtime_socket().as_deref(),
        // Long enough for a runtime restarting beside the agent.
        Duration::from_secs(30),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let runtime = Arc::new(NodeRuntime::new(runtime_kind, &runtime_socket));
    info!(
        runtime = runtime_kind.as_str(),
        socket = %runtime_socket.display(),
        version = runtime_version.as_ref().map_or("(not answering yet)", |v| v.version.as_str()),
        apis = if runtime.native.is_some() { "CRI and containerd's own" } else { "CRI" },
        "container runtime"
    );
    let layout = Layout::detect()?;
    let exemptions = Exemptions::new(
        args.exempt_sandbox,
        args.exempt_runtime_namespace.clone(),
        args.exempt_pod_namespace.clone(),
        args.exempt_image.clone(),
    )?;
    let (store, store_writer) = Store::open(&args.state_dir.join("state.redb"))?;
    let settle = Arc::new(Gate::open(args.mode, args.settle, &store_writer)?);
    match settle.now() {
        Enforcement::Audit => {}
        Enforcement::Settling { deadline_ms } => info!(
            until = %humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(deadline_ms)
            ),
            "enforce mode is settling: violations are flagged, not stopped, until the cluster's \
             admitted set arrives from a webhook or the settle window ends"
        ),
        Enforcement::Enforcing { by, .. } => {
            info!(since = %by, "enforce mode: violations are stopped")
        }
    }
    let metrics = Arc::new(Metrics::new());
    metrics.approvals.set(store.approval_count() as i64);

    let probe = Probe::attach(&ProbeOptions {
        btf: args.btf.clone(),
        filter_key: layout.filter_key(),
        report_all: false,
        attach_lsm: args.mode == Mode::Enforce,
    })?;
    report_startup(&args, &layout, &probe, &store);
    let kernel = kernel_status(&args, &layout, &probe);

    let approvals_changed = Arc::new(Notify::new());
    let events = events::channel();
    // The store's one writer; it stops once every handle is dropped.
    let (writer, writer_thread) = engine::writer::spawn(
        store_writer,
        engine::writer::Listeners {
            events: events.clone(),
            approvals_changed: approvals_changed.clone(),
            settle: settle.clone(),
        },
    )
    .context("could not start the store's writer thread")?;
    if let Some(path) = &args.approvals_file {
        let (file, loader) = (path.clone(), writer.clone());
        tokio::task::spawn_blocking(move || approvals_file::load(&file, &loader)).await?;
        tokio::spawn(approvals_file::follow(
            path.clone(),
            writer.clone(),
            stop_rx.clone(),
        ));
    }
    if args.metrics_address != "off" {
        let address = listen_address(&args.metrics_address)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("--metrics-address {:?}", args.metrics_address))?;
        serve_metrics(address, metrics.clone(), stop_rx.clone()).await?;
    }

    tokio::spawn(retention::run(
        store.clone(),
        writer.clone(),
        layout.key_root().to_path_buf(),
        metrics.clone(),
        retention::Config {
            keep: Retention {
                records_ms: args.record_retention.as_millis() as u64,
                max_containers: args.max_container_records,
                max_violations: args.max_violations,
            },
            every: args.prune_interval.max(Duration::from_secs(1)),
        },
        stop_rx.clone(),
    ));

    let counters = Arc::new(engine::Counters::default());
    // clap requires the TLS files with --webhook-feed.
    let feed_health = (!args.webhook_feeds.is_empty()).then(|| {
        Arc::new(feed::FeedHealth::counting_on(
            metrics.feeds.clone(),
            metrics.feed_streams_open.clone(),
        ))
    });
    let parts = engine::Parts {
        forget_every: args.forget_interval,
        layout,
        store: store.clone(),
        writer: writer.clone(),
        metrics: metrics.clone(),
        runtime: runtime.clone(),
        actions: probe.actions(),
        approvals_changed,
        events: events.clone(),
        counters: counters.clone(),
        settle: settle.clone(),
        feeds: feed_health.clone(),
    };
    let config = engine::Config {
        mode: args.mode,
        grace: args.grace,
        feed_wait: args.feed_wait,
        exemptions,
        enforce_unknown: args.enforce_unknown,
    };

    let tls = match (
        args.grpc_address,
        &args.grpc_tls_cert,
        &args.grpc_tls_key,
        &args.grpc_client_ca,
    ) {
        (Some(address), Some(cert), Some(key), Some(client_ca)) => Some((
            address,
            TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
            },
        )),
        _ => None,
    };
    let certificates: Vec<Watched> = [
        ("grpc", &args.grpc_tls_cert),
        ("client-ca", &args.grpc_client_ca),
    ]
    .into_iter()
    .filter_map(|(name, path)| path.clone().map(|path| Watched { name, path }))
    .collect();
    if !certificates.is_empty() {
        let metrics = metrics.clone();
        tokio::spawn(imagegate_plumbing::expiry::watch(
            certificates,
            stop_rx.clone(),
            move |certificate, not_after| {
                metrics
                    .certificate_expiry
                    .get_or_create(&CertificateLabels { certificate })
                    .set(not_after);
            },
        ));
    }
    if tls.is_none() && args.grpc_plaintext_address.is_none() {
        warn!("no gRPC listener (--grpc-address, --grpc-plaintext-address)");
    }
    let node = args.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    });
    let feed_status = feed_health.clone().map(|health| api::FeedStatus {
        health,
        names: args.webhook_feeds.clone(),
        feed_wait: args.feed_wait,
    });
    if let (Some(health), Some(cert), Some(key), Some(ca)) = (
        feed_health,
        &args.grpc_tls_cert,
        &args.grpc_tls_key,
        &args.grpc_client_ca,
    ) {
        info!(webhooks = ?args.webhook_feeds, "following the webhooks' approval feeds");
        tokio::spawn(feed::run(
            feed::Follower {
                config: feed::FeedConfig {
                    webhooks: args.webhook_feeds.clone(),
                    resolve_every: args.webhook_feed_resolve_interval,
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                    push_identity: args.push_identity.clone(),
                    node: node.clone(),
                },
                store: store.clone(),
                writer: writer.clone(),
                metrics: metrics.clone(),
                health,
            },
            stop_rx.clone(),
        ));
    }
    let api = AgentApi::new(
        api::Shared {
            store,
            writer,
            metrics,
            events,
            counters,
            settle,
            mode: args.mode,
            enforce_unknown: args.enforce_unknown,
            feeds: feed_status,
        },
        StaticStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            node,
            kernel,
            runtime: imagegate_proto::v1::Runtime {
                name: runtime_kind.as_str().to_string(),
                socket: runtime_socket.display().to_string(),
                version: runtime_version
                    .map(|v| format!("{} {}", v.name, v.version))
                    .unwrap_or_default(),
                apis: if runtime.native.is_some() {
                    vec!["CRI runtime.v1".into(), "containerd".into()]
                } else {
                    vec!["CRI runtime.v1".into()]
                },
            },
        },
        args.push_identity.clone(),
    );
    api::serve(
        api,
        Listeners {
            tls,
            plaintext: args.grpc_plaintext_address,
            health: args.grpc_health_address,
        },
        stop_rx,
    )
    .await?;

    // Tests and the demo wait for this line.
    info!(mode = ?args.mode, "ready: watching container starts");
    Engine::new(config, parts)
        .run(probe, imagegate_plumbing::process::shutdown_signal())
        .await?;
    let _ = stop_tx.send(true);
    info!("stopping");
    // What the writer holds is written before the agent exits; the writer
    // ends once the tasks stopped above have dropped their handles.
    let flushed = tokio::task::spawn_blocking(move || writer_thread.join());
    if tokio::time::timeout(Duration::from_secs(5), flushed)
        .await
        .is_err()
    {
        warn!("stopped without waiting longer for the store writer");
    }
    Ok(())
}

fn kernel_status(args: &RunArgs, layout: &Layout, probe: &Probe) -> imagegate_proto::v1::Kernel {
    let facts = probe.facts();
    let (lsm, enforcement) = lsm_and_enforcement(&facts.lsm, args.mode);
    imagegate_proto::v1::Kernel {
        release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        btf: args.btf.display().to_string(),
        programs: vec![
            "tracepoint/sched/sched_process_exec".into(),
            "tracepoint/cgroup/cgroup_mkdir".into(),
        ],
        lsm,
        enforcement: enforcement.into(),
        cgroup_mode: match layout.mode {
            CgroupMode::Unified => "unified",
            CgroupMode::Hybrid => "hybrid",
            CgroupMode::Legacy => "legacy",
        }
        .into(),
        filter_key: filter_key_name(layout).into(),
    }
}

fn filter_key_name(layout: &Layout) -> &'static str {
    if layout.filter_key() == imagegate_common::filter_key::MEMORY_V1 {
        "memory cgroup id"
    } else {
        "cgroup v2 id"
    }
}

fn lsm_and_enforcement(lsm: &LsmStatus, mode: Mode) -> (String, &'static str) {
    let text = match lsm {
        LsmStatus::Attached => "attached".to_string(),
        LsmStatus::Available => "available".to_string(),
        LsmStatus::Unavailable(reason) => format!("unavailable: {reason}"),
    };
    let enforcement = match (lsm, mode) {
        (_, Mode::Audit) => "none (audit mode)",
        (LsmStatus::Attached, Mode::Enforce) => "BPF LSM denies execs; SIGKILL on exec as well",
        (_, Mode::Enforce) => "SIGKILL from sched_process_exec (BPF LSM unavailable)",
    };
    (text, enforcement)
}

/// Everything the agent needs from its host, checked before anything is
/// loaded: a pod missing a capability or a mount stops here with a list of
/// what to add, instead of failing somewhere inside the kernel or runtime.
fn check_requirements(args: &RunArgs) -> Result<()> {
    let key_root_inode = Layout::detect().ok().and_then(|layout| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(layout.key_root()).ok().map(|m| m.ino())
    });
    let report = requirements::check(&Environment {
        mode: args.mode,
        btf: &args.btf,
        kernel: KernelVersion::running(),
        effective: requirements::effective_capabilities().ok(),
        tracefs: imagegate_agent::tracefs::root().is_ok(),
        cgroup_root_inode: key_root_inode,
        runtime_sockets: &node_runtime::candidate_sockets(
            args.runtime_kind(),
            args.runtime_socket().as_deref(),
        ),
        state_dir: &args.state_dir,
    });
    for warning in &report.warnings {
        warn!("{warning}");
    }
    let problems = report.problems;
    if problems.is_empty() {
        return Ok(());
    }
    for problem in &problems {
        tracing::error!("{problem}");
    }
    bail!(
        "the agent cannot run here; what is missing:\n  - {}",
        problems.join("\n  - ")
    )
}

fn report_startup(args: &RunArgs, layout: &Layout, probe: &Probe, store: &Store) {
    let facts = probe.facts();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    info!(
        kernel = release.trim(),
        btf = %args.btf.display(),
        tracefs = %facts.tracefs.display(),
        programs = "sched/sched_process_exec, cgroup/cgroup_mkdir",
        "kernel: offsets read from BTF and tracefs, tracepoints attached"
    );
    info!(
        cgroups = ?layout.mode,
        v2 = ?layout.v2_root,
        memory_v1 = ?layout.memory_root,
        filter_key = filter_key_name(layout),
        "kernel: cgroup layout"
    );
    let (_, enforcement) = lsm_and_enforcement(&facts.lsm, args.mode);
    match &facts.lsm {
        LsmStatus::Unavailable(reason) => info!(
            lsm = "unavailable",
            reason = %reason,
            enforcement,
            "kernel: BPF LSM probe"
        ),
        other => info!(lsm = ?other, enforcement, "kernel: BPF LSM probe"),
    }
    let (containers, violations) = store.counts().unwrap_or_default();
    info!(
        state_dir = %args.state_dir.display(),
        approvals = store.approval_count(),
        containers,
        violations,
        "state loaded"
    );
}

/// `IP:PORT`, with an IPv6 address bracketed or not: the chart writes
/// `$(POD_IP):PORT`, and a pod's IP may be IPv6 (the port is what follows
/// the last colon).
fn listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let expected = || format!("{text:?} is not an address to listen on: expected IP:PORT");
    let (ip, port) = text.rsplit_once(':').ok_or_else(expected)?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| expected())?;
    let port: u16 = port.parse().map_err(|_| expected())?;
    Ok(SocketAddr::new(ip, port))
}

async fn serve_metrics(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    use axum::{Router, routing::get};
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding --metrics-address {address}"))?;
    info!(address = %listener.local_addr()?, "metrics: serving /metrics and /healthz");
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.encode() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    tokio::spawn(imagegate_plumbing::http::serve(
        listener,
        app,
        imagegate_plumbing::http::HttpBounds::METRICS,
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        },
    ));
    Ok(())
}

fn print_state(state_dir: &Path, table: StateTable) -> Result<()> {
    let path = state_dir.join("state.redb");
    if !path.exists() {
        bail!("no state at {}: check --state-dir", path.display());
    }
    let (store, _) = Store::open(&path)?;
    let mut out = io::stdout().lock();
    match table {
        StateTable::Approvals => write_lines(&mut out, &store.approvals()?)?,
        StateTable::Containers => write_lines(&mut out, &store.containers()?)?,
        StateTable::Violations => write_lines(&mut out, &store.violations()?)?,
    }
    Ok(())
}

fn write_lines<T: serde::Serialize>(out: &mut impl Write, items: &[T]) -> Result<()> {
    for item in items {
        serde_json::to_writer(&mut *out, item)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// `--print-events`: every exec on the host, as the kernel reports it.
async fn print_events(args: &RunArgs) -> Result<()> {
    let layout = Layout::detect()?;
    let mut probe = Probe::attach(&ProbeOptions {
        btf: args.btf.clone(),
        filter_key: layout.filter_key(),
        report_all: true,
        attach_lsm: false,
    })?;
    // Tests and the demo wait for this line before they exec anything.
    info!("ready: sched/sched_process_exec attached");
    let shutdown = imagegate_plumbing::process::shutdown_signal();
    tokio::pin!(shutdown);
    let mut batch = Vec::new();
    let stdout = io::stdout();
    loop {
        tokio::select! {
            received = probe.recv(&mut batch) => {
                received?;
                let execs: Vec<&Exec> = batch
                    .iter()
                    .filter_map(|e| match e {
                        ProbeEvent::Exec(exec) => Some(exec),
                        ProbeEvent::NewCgroup(_) => None,
                    })
                    .collect();
                if let Err(e) = write_execs(&mut stdout.lock(), &execs, args.event_format) {
                    // A closed pipe means whoever read us is gone.
                    if e.kind() == io::ErrorKind::BrokenPipe {
                        break;
                    }
                    return Err(e).context("writing events to standard output");
                }
                batch.clear();
            }
            _ = &mut shutdown => break,
        }
    }
    let (lost, _) = probe.lost_events()?;
    if lost > 0 {
        warn!(lost, "the ring buffer was full and events were dropped");
    }
    Ok(())
}

fn write_execs(out: &mut impl Write, events: &[&Exec], format: Format) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_with_ipv6_bracketed_or_not() {
        assert_eq!(
            listen_address("10.1.2.3:9464").unwrap(),
            "10.1.2.3:9464".parse().unwrap()
        );
        assert_eq!(
            listen_address("fd00::1:9464").unwrap(),
            "[fd00::1]:9464".parse().unwrap()
        );
        assert_eq!(
            listen_address("[fd00::1]:9464").unwrap(),
            "[fd00::1]:9464".parse().unwrap()
        );
        assert!(listen_address("$(POD_IP):9464").is_err());
        assert!(listen_address("10.1.2.3").is_err());
    }
}
