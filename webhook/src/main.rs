//! `imagegate-webhook`: the admission webhook server, and an offline
//! checker that makes the same decisions.
//!
//! Over 500 lines: most of it is the flags of its four commands, whose doc
//! comments are the `--help` text operators read.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use imagegate_plumbing::expiry::Watched;
use imagegate_plumbing::process::LogFormat;
use imagegate_plumbing::tls::{ClientCerts, ReloadingTls, Settings as TlsSettings, TlsFiles};
use imagegate_webhook::{
    adopt::{self, cluster::Apiserver},
    check,
    ledger::Ledger,
    policy::Policy,
    policy_store::{PolicyMetrics, PolicyStore},
    push::{self, PushConfig, Pusher, followers::Followers},
    registry::Credentials,
    report, resolve,
    server::{
        self, AppState,
        client_auth::Required,
        limits::{self, Budgets, Limits},
        listener,
        metrics::{CertificateLabels, LedgerLabels, Metrics},
    },
};
use tokio::sync::watch;
use tracing::info;

/// jemalloc, not glibc's malloc: a review makes about 60 allocations, and
/// glibc's malloc and free were a sixth of its user-space instructions
/// (callgrind, ImageReview). With jemalloc a review takes 11% fewer
/// instructions (ImageReview 63,903 -> 56,732; AdmissionReview 142,645 ->
/// 128,048), and no more system calls.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at start (`_RJEM_MALLOC_CONF` in the
/// environment overrides them). Two arenas, not four per CPU, and freed
/// pages given back at once: with its defaults jemalloc held 280 MiB where
/// glibc held 245 MiB with 5,000 feed streams (`push_scale`); with these,
/// 220 MiB, and 231 MiB at the peak with 10% of agents stalled against
/// glibc's 295. The review path makes no more system calls for it (0.01
/// `madvise` per AdmissionReview). <https://jemalloc.net/jemalloc.3.html#tuning>
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: ConfString =
    ConfString(c"narenas:2,dirty_decay_ms:0,muzzy_decay_ms:0".as_ptr());

/// jemalloc reads its `malloc_conf` as a C string pointer.
#[repr(transparent)]
struct ConfString(*const std::ffi::c_char);

// SAFETY: it points at a string literal, never written.
unsafe impl Sync for ConfString {}

/// Checks container images at admission.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Format of log lines (on standard error).
    #[arg(long, env = "IMAGEGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve ImageReview (/image_policy) and AdmissionReview (/validate, /)
    /// over HTTPS.
    Serve(Box<ServeArgs>),
    /// Decide on images or a review file offline, as the server would.
    /// Exit status: 0 all allowed, 1 some denied, 2 usage or input error.
    Check(CheckArgs),
    /// Make a CA and every certificate imagegate uses (webhook serving and
    /// client, agent serving, the kube-apiserver's client certificate).
    Certs(CertsArgs),
    /// Write the kube-apiserver's ImagePolicyWebhook files: the
    /// AdmissionConfiguration, its kubeconfig, the CA and client certificate.
    ApiserverConfig(ApiserverArgs),
}

#[derive(Debug, Args)]
struct CertsArgs {
    /// Folder to write into.
    #[arg(long)]
    out: PathBuf,
    /// The namespace imagegate is installed in.
    #[arg(long, default_value = "imagegate")]
    namespace: String,
    /// The webhook's Service name.
    #[arg(long, default_value = "imagegate-webhook")]
    service: String,
    /// More DNS names or IP addresses for the webhook's serving certificate
    /// (how the kube-apiserver reaches it). Repeatable.
    #[arg(long = "extra-name")]
    extra_names: Vec<String>,
    /// How long the certificates are valid.
    #[arg(long, default_value = "365days", value_parser = humantime::parse_duration)]
    validity: Duration,
    /// Replace certificates already in --out.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct ApiserverArgs {
    /// The webhook's ImageReview URL as the kube-apiserver reaches it, e.g.
    /// https://imagegate-webhook.imagegate.svc:443/image_policy.
    #[arg(long)]
    server: String,
    /// Folder to write into.
    #[arg(long)]
    out: PathBuf,
    /// The folder `imagegate-webhook certs` wrote.
    #[arg(long)]
    certs: PathBuf,
    /// Where the files will be on the control plane node.
    #[arg(long, default_value = "/etc/kubernetes/imagegate")]
    host_dir: PathBuf,
    /// How long the apiserver caches an allow.
    #[arg(long, default_value = "50s", value_parser = humantime::parse_duration)]
    allow_ttl: Duration,
    /// How long the apiserver caches a deny.
    #[arg(long, default_value = "50s", value_parser = humantime::parse_duration)]
    deny_ttl: Duration,
    /// How long the apiserver waits before retrying a failed call.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    retry_backoff: Duration,
}

/// How the webhook reaches registries, for `serve` and `check --resolve`.
#[derive(Debug, Args)]
struct RegistryArgs {
    /// Budget of one resolution, auth and retries included; keep it well
    /// inside the webhook configuration's timeoutSeconds.
    #[arg(long, env = "IMAGEGATE_REGISTRY_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    registry_timeout: Duration,
    /// How long a resolved digest is trusted before the tag is asked again.
    #[arg(long, env = "IMAGEGATE_RESOLUTION_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    resolution_ttl: Duration,
    /// How long a failed resolution is remembered.
    #[arg(long, env = "IMAGEGATE_RESOLUTION_NEGATIVE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    resolution_negative_ttl: Duration,
    /// Most references the resolution cache keeps.
    #[arg(
        long,
        env = "IMAGEGATE_RESOLUTION_CACHE_ENTRIES",
        default_value_t = 10_000
    )]
    resolution_cache_entries: u64,
    /// Registry lookups in flight at once, all reviews together; more wait
    /// within --registry-timeout.
    #[arg(long, env = "IMAGEGATE_MAX_REGISTRY_LOOKUPS", default_value_t = 32)]
    max_registry_lookups: usize,
    /// Registry credentials: a dockerconfigjson file (a pull secret's
    /// `.dockerconfigjson`).
    #[arg(long, env = "IMAGEGATE_REGISTRY_CREDENTIALS")]
    registry_credentials: Option<PathBuf>,
    /// `HOST=FILE`: a CA bundle (PEM) trusted for that registry only. Repeatable.
    #[arg(long = "registry-ca", env = "IMAGEGATE_REGISTRY_CA", value_delimiter = ',', value_parser = parse_host_file)]
    registry_cas: Vec<(String, PathBuf)>,
    /// A registry host reached over plain HTTP; no other is. Repeatable.
    #[arg(
        long = "plain-http-registry",
        env = "IMAGEGATE_PLAIN_HTTP_REGISTRIES",
        value_delimiter = ','
    )]
    plain_http_registries: Vec<String>,
}

impl RegistryArgs {
    fn settings(&self) -> Result<resolve::Settings> {
        let credentials = match &self.registry_credentials {
            Some(path) => Credentials::load(path)?,
            None => Credentials::default(),
        };
        Ok(resolve::Settings {
            timeout: self.registry_timeout,
            ttl: self.resolution_ttl,
            negative_ttl: self.resolution_negative_ttl,
            cache_entries: self.resolution_cache_entries,
            max_lookups_in_flight: self.max_registry_lookups,
            plain_http: self
                .plain_http_registries
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            ca_bundles: self.registry_cas.clone(),
            credentials,
        })
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "IMAGEGATE_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Serving certificate chain (PEM); reloaded when it changes.
    #[arg(long, env = "IMAGEGATE_TLS_CERT")]
    cert: PathBuf,
    /// Private key of the serving certificate (PEM); reloaded with it.
    #[arg(long, env = "IMAGEGATE_TLS_KEY")]
    key: PathBuf,
    /// CA bundle (PEM) that client certificates must chain to. Required on
    /// every path, unless --client-cert-required-path names some; without
    /// it, no client certificate is asked for.
    #[arg(long, env = "IMAGEGATE_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// A path that requires a client certificate (from --client-ca), e.g.
    /// /image_policy, which the kube-apiserver calls with one; other paths
    /// then serve clients without one (the ValidatingWebhook path and the
    /// kubelet's probes present none). Repeatable.
    #[arg(
        long = "client-cert-required-path",
        env = "IMAGEGATE_CLIENT_CERT_REQUIRED_PATHS",
        value_delimiter = ',',
        requires = "client_ca"
    )]
    client_cert_required_paths: Vec<String>,
    /// A namespace never checked, whatever the policy says: the
    /// installation's own (imagegate's namespace, kube-system), the same
    /// list the webhook configurations leave out and the agents exempt.
    /// Repeatable.
    #[arg(
        long = "exempt-namespace",
        env = "IMAGEGATE_EXEMPT_NAMESPACES",
        value_delimiter = ','
    )]
    exempt_namespaces: Vec<String>,
    /// At start, rebuild the admitted set from the cluster: list the pods
    /// the apiserver holds (in-cluster service account, or --kubeconfig),
    /// decide their images as admission would, and record the digests they
    /// run, so agents in enforce mode do not kill workloads that ran before
    /// imagegate.
    #[arg(long, env = "IMAGEGATE_ADOPT_RUNNING_PODS", value_enum, default_value_t = OnOff::On)]
    adopt_running_pods: OnOff,
    /// Rebuild the admitted set again this often ("0s": only at start), so
    /// pods that run longer than --ledger-retention keep their approvals.
    /// Keep it well below --ledger-retention.
    #[arg(long, env = "IMAGEGATE_ADOPT_INTERVAL", default_value = "1day", value_parser = humantime::parse_duration)]
    adopt_interval: Duration,
    /// A kubeconfig to reach the apiserver with, outside a cluster.
    #[arg(long, env = "IMAGEGATE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Write a Warning Event on the pod for each violation the agents file
    /// (NeverAdmitted, Killed, ImageUnidentified). One replica writes: the
    /// holder of the Lease --report-lease in --report-namespace. Needs
    /// --feed-listen (agents are read where they follow from) and `create`,
    /// `get`, `patch` on events and `get`, `create`, `update` on leases.
    #[arg(long, env = "IMAGEGATE_REPORT_EVENTS", default_value = "off")]
    report_events: OnOff,
    /// Write a Warning Event for each admission decision operators should
    /// see: ImageDenied (on the denied pod's controller, or the pod),
    /// AuditWouldDeny and BreakGlass (on the pod admitted), Unverified (on a
    /// running pod whose image's signature no longer verifies, found when
    /// running pods are checked again). Every replica writes its own, never
    /// waiting on it during admission; with --report-format, the reporter
    /// also files them as report results. Needs `create`, `get`, `patch`
    /// on events (and `list`, `watch` for the reporter).
    #[arg(long, env = "IMAGEGATE_ADMISSION_EVENTS", default_value = "off")]
    admission_events: OnOff,
    /// How long an admission result with no pod to follow stays in the
    /// reports after its last occurrence: denials (a denied pod never
    /// exists, so no pod's deletion takes it out), and results on workloads
    /// and, for ImageReview, on namespaces.
    #[arg(long, env = "IMAGEGATE_DENIED_RESULT_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    denied_result_ttl: Duration,
    /// Write the violations the agents file as policy reports, one per
    /// namespace (and a cluster report for containers of no pod):
    /// `openreports` (openreports.io/v1alpha1 Report, ClusterReport),
    /// `wgpolicyk8s` (wgpolicyk8s.io/v1alpha2 PolicyReport,
    /// ClusterPolicyReport) or `off`. Written by the Lease holder, as
    /// Events are; needs the format's CRDs, `get`, `create`, `update` on
    /// its reports and `get` on pods (gone pods' results are removed).
    #[arg(long, env = "IMAGEGATE_REPORT_FORMAT", default_value = "off", value_parser = parse_report_format)]
    // (Spelled out: clap reads `Option<_>` as "may be absent"; this one
    // always has a value, `off` being `None`.)
    report_format: std::option::Option<report::reports::Format>,
    /// Results one report holds at most; the oldest go first.
    #[arg(long, env = "IMAGEGATE_REPORT_MAX_RESULTS", default_value_t = 1000)]
    report_max_results: usize,
    /// The namespace of the reporter's Lease (the webhook's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "imagegate")]
    report_namespace: String,
    #[arg(
        long,
        env = "IMAGEGATE_REPORT_LEASE",
        default_value = "imagegate-reporter"
    )]
    report_lease: String,
    /// This replica's name in the Lease (its pod name; the host name if
    /// unset).
    #[arg(long, env = "POD_NAME")]
    report_identity: Option<String>,
    /// The port of the agents' mTLS API, where the reporter reads their
    /// violations.
    #[arg(long, env = "IMAGEGATE_AGENT_API_PORT", default_value_t = 50051)]
    agent_api_port: u16,
    /// Policy file (YAML); reloaded when it changes.
    #[arg(long, env = "IMAGEGATE_POLICY")]
    policy: PathBuf,
    /// How often the certificate and policy files are checked for changes.
    #[arg(long, env = "IMAGEGATE_RELOAD_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    reload_interval: Duration,
    /// Resolve every allowed image to its digests against its registry
    /// (`off`: decide on references alone).
    #[arg(long, env = "IMAGEGATE_DIGEST_RESOLUTION", value_enum, default_value_t = OnOff::On)]
    digest_resolution: OnOff,
    #[command(flatten)]
    registry: RegistryArgs,
    /// The ledger of admitted digests (an embedded database file), what node
    /// agents are told. Without it nothing is recorded.
    #[arg(long, env = "IMAGEGATE_LEDGER")]
    ledger: Option<PathBuf>,
    /// Approvals not admitted again within this time are dropped.
    #[arg(long, env = "IMAGEGATE_LEDGER_RETENTION", default_value = "30days", value_parser = humantime::parse_duration)]
    ledger_retention: Duration,
    /// Most approvals kept; the least recently admitted go first.
    #[arg(long, env = "IMAGEGATE_LEDGER_MAX_ENTRIES", default_value_t = 100_000)]
    ledger_max_entries: u64,
    /// Serve the approval feed here (`0.0.0.0:50053`): node agents open one
    /// stream each and receive approvals over it (mTLS: --agent-client-cert
    /// is the feed's serving certificate, --agent-ca checks the agents').
    #[arg(long, env = "IMAGEGATE_FEED_LISTEN")]
    feed_listen: Option<SocketAddr>,
    /// Feed connections open at once: one per node agent, with room for
    /// reconnects; more are closed as they arrive.
    #[arg(long, env = "IMAGEGATE_FEED_MAX_CONNECTIONS", default_value_t = 12_000)]
    feed_max_connections: usize,
    /// A node agent to dial and push approvals to (`host:port`), for agents
    /// of releases before the feed. Repeatable.
    #[arg(long = "agent", env = "IMAGEGATE_AGENTS", value_delimiter = ',')]
    agents: Vec<String>,
    /// A headless Service whose A/AAAA records are the agents
    /// (`name.namespace.svc:50051`), resolved again periodically.
    #[arg(long, env = "IMAGEGATE_AGENT_SERVICE")]
    agent_service: Option<String>,
    /// How often --agent-service is resolved again.
    #[arg(long, env = "IMAGEGATE_AGENT_RESOLVE_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    agent_resolve_interval: Duration,
    /// CA the agents' certificates chain to (PEM).
    #[arg(long, env = "IMAGEGATE_AGENT_CA")]
    agent_ca: Option<PathBuf>,
    /// This webhook's push identity (PEM, valid for `imagegate-webhook`):
    /// the client certificate when dialing agents, the serving certificate
    /// of the feed.
    #[arg(long, env = "IMAGEGATE_AGENT_CLIENT_CERT")]
    agent_client_cert: Option<PathBuf>,
    /// The key of --agent-client-cert (PEM).
    #[arg(long, env = "IMAGEGATE_AGENT_CLIENT_KEY")]
    agent_client_key: Option<PathBuf>,
    /// The name the agents' serving certificates are issued for.
    #[arg(
        long,
        env = "IMAGEGATE_AGENT_SERVER_NAME",
        default_value = imagegate_proto::AGENT_IDENTITY
    )]
    agent_server_name: String,
    /// Connections open at once; more are closed as they arrive (each costs
    /// memory; the apiserver needs few).
    #[arg(long, env = "IMAGEGATE_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Connections open at once from one address (the apiserver connects
    /// from its own; a client holding connections open cannot take them all).
    #[arg(long, env = "IMAGEGATE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = Limits::default().max_connections_per_address)]
    max_connections_per_address: usize,
    /// Reviews decided at once (their bodies read); more wait up to 2 s, then
    /// are denied.
    #[arg(long, env = "IMAGEGATE_MAX_REVIEWS", default_value_t = Limits::default().max_reviews)]
    max_reviews: usize,
    /// MiB of request bodies held at once, all requests together (one
    /// client address: at most the largest review, 37 MiB).
    #[arg(long, env = "IMAGEGATE_BODY_BUDGET_MIB", default_value_t = Limits::default().body_budget_bytes / (1024 * 1024))]
    body_budget_mib: usize,
    /// Time a client has to send a request's headers, and its body.
    #[arg(long, env = "IMAGEGATE_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// A connection moving no byte for this long is closed.
    #[arg(long, env = "IMAGEGATE_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// How long open requests may take to finish after SIGTERM.
    #[arg(long, env = "IMAGEGATE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

fn parse_host_file(value: &str) -> Result<(String, PathBuf), String> {
    let (host, file) = value
        .split_once('=')
        .ok_or_else(|| format!("expected HOST=FILE, got {value:?}"))?;
    Ok((host.to_ascii_lowercase(), PathBuf::from(file)))
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Policy file (YAML).
    #[arg(long, env = "IMAGEGATE_POLICY")]
    policy: PathBuf,
    /// A namespace exempt whatever the policy says, as `serve` takes it.
    #[arg(
        long = "exempt-namespace",
        env = "IMAGEGATE_EXEMPT_NAMESPACES",
        value_delimiter = ','
    )]
    exempt_namespaces: Vec<String>,
    /// Namespace the images would run in.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Output format: one line, or one JSON object, per image.
    #[arg(long, value_enum, default_value_t = check::Output::Text)]
    output: check::Output,
    /// An AdmissionReview or ImageReview body to decide on, as the server
    /// would ("-" for standard input).
    #[arg(long, conflicts_with = "images")]
    review: Option<PathBuf>,
    /// Images to decide on.
    #[arg(required_unless_present = "review")]
    images: Vec<String>,
    /// Resolve allowed images against their registries, as `serve` does by
    /// default (so a resolution denial can be reproduced); the registry
    /// flags are `serve`'s.
    #[arg(long)]
    resolve: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

fn main() -> ExitCode {
    imagegate_plumbing::allocator::return_large_blocks_when_freed();
    let cli = Cli::parse();
    imagegate_plumbing::process::init_logs(cli.log_format);
    match cli.command {
        Command::Serve(args) => match serve(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Check(args) => ExitCode::from(run_check(args)),
        Command::Certs(args) => report(write_certs(args)),
        Command::ApiserverConfig(args) => report(write_apiserver_config(args)),
    }
}

fn run_check(args: CheckArgs) -> u8 {
    let policy = match std::fs::read_to_string(&args.policy)
        .with_context(|| format!("cannot read {}", args.policy.display()))
        .and_then(|text| {
            Policy::from_yaml_exempting(&text, &args.exempt_namespaces).map_err(anyhow::Error::from)
        }) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("error: {}: {e:#}", args.policy.display());
            return check::EXIT_USAGE;
        }
    };
    let resolver = if args.resolve {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut metrics = Metrics::new();
        let built = args.registry.settings().and_then(|settings| {
            resolve::Resolver::new(
                settings,
                resolve::ResolverMetrics::register(metrics.registry()),
            )
            .map_err(anyhow::Error::msg)
        });
        match built {
            Ok(resolver) => Some(resolver),
            Err(e) => {
                eprintln!("error: --resolve: {e:#}");
                return check::EXIT_USAGE;
            }
        }
    } else {
        None
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return check::EXIT_USAGE;
        }
    };
    let resolver = resolver.as_ref();
    let reports = match &args.review {
        None => runtime.block_on(check::images(
            &policy,
            resolver,
            &args.namespace,
            &args.images,
        )),
        Some(path) => {
            let body = if path.as_os_str() == "-" {
                let mut body = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut body).map(|_| body)
            } else {
                std::fs::read(path)
            };
            let reviewed = match body {
                Err(e) => Err(format!("cannot read {}: {e}", path.display())),
                Ok(body) => runtime
                    .block_on(check::review(&policy, resolver, &body))
                    .map_err(|e| e.to_string()),
            };
            match reviewed {
                Ok(reports) => reports,
                Err(e) => {
                    eprintln!("error: {}: {e}", path.display());
                    return check::EXIT_USAGE;
                }
            }
        }
    };
    match check::print(&reports, args.output, &mut std::io::stdout().lock()) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("error: writing the report: {e}");
            check::EXIT_USAGE
        }
    }
}

/// The certificate files whose expiry the webhook exports.
fn certificate_files(args: &ServeArgs) -> Vec<Watched> {
    let named = [
        ("serving", Some(&args.cert)),
        ("client-ca", args.client_ca.as_ref()),
        ("push-identity", args.agent_client_cert.as_ref()),
        ("agent-ca", args.agent_ca.as_ref()),
    ];
    named
        .into_iter()
        .filter_map(|(name, path)| {
            path.map(|path| Watched {
                name,
                path: path.clone(),
            })
        })
        .collect()
}

/// Keeps the ledger's generation gauge at the ledger's last write.
async fn export_generation(
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    // A handle of its own: the family's guard may not be held across an
    // await.
    let gauge = metrics
        .ledger_generation
        .get_or_create(&LedgerLabels {
            ledger: ledger.id().to_string(),
        })
        .clone();
    let mut changes = ledger.subscribe();
    loop {
        let generation = *changes.borrow_and_update();
        gauge.set(i64::try_from(generation).unwrap_or(i64::MAX));
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[tokio::main]
async fn serve(args: ServeArgs) -> Result<()> {
    // Every task spawned below stops when this turns true (at SIGTERM).
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(imagegate_plumbing::allocator::trim_every(
        imagegate_plumbing::allocator::TRIM_EVERY,
        stop_rx.clone(),
    ));
    // Exactly one crypto provider, installed before anything uses rustls.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let _ = provider.as_ref().clone().install_default();

    // The reference grammar is a large regex compiled on first use; compile
    // it now, not during the first admission request.
    let _ = imagegate_webhook::reference::Reference::parse("warm.up/regex:1");

    let mut metrics = Metrics::new();
    let resolver = match args.digest_resolution {
        OnOff::Off => None,
        OnOff::On => {
            let settings = args.registry.settings()?;
            let resolver_metrics = resolve::ResolverMetrics::register(metrics.registry());
            Some(Arc::new(
                resolve::Resolver::new(settings, resolver_metrics).map_err(anyhow::Error::msg)?,
            ))
        }
    };
    let push_metrics = push::PushMetrics::register(metrics.registry());
    let policy_metrics = PolicyMetrics::register(metrics.registry());
    let report_metrics = report::ReportMetrics::register(metrics.registry());
    let metrics = Arc::new(metrics);
    tokio::spawn(imagegate_plumbing::expiry::watch(
        certificate_files(&args),
        stop_rx.clone(),
        {
            let metrics = metrics.clone();
            move |certificate, not_after| {
                metrics
                    .certificate_expiry
                    .get_or_create(&CertificateLabels { certificate })
                    .set(not_after);
            }
        },
    ));
    let (policy, policy_seen) = PolicyStore::load(
        args.policy.clone(),
        args.exempt_namespaces.clone(),
        &policy_metrics,
    )
    .await;
    let client_certs = Required::from_paths(args.client_cert_required_paths.clone());
    let (tls, tls_seen) = ReloadingTls::load(
        TlsFiles {
            cert: args.cert.clone(),
            key: args.key.clone(),
            client_ca: args.client_ca.clone(),
        },
        TlsSettings {
            client_certs: if client_certs.in_handshake() {
                ClientCerts::Required
            } else {
                ClientCerts::Optional
            },
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        },
        provider,
    )
    .await
    .context("loading the serving certificate")?;

    tokio::spawn(policy.clone().watch(
        policy_seen,
        args.reload_interval,
        policy_metrics,
        stop_rx.clone(),
    ));
    let reload_metrics = metrics.clone();
    let cert_path = args.cert.display().to_string();
    tokio::spawn(tls.clone().follow(
        tls_seen,
        args.reload_interval,
        stop_rx.clone(),
        move |reloaded| {
            match &reloaded {
                Ok(()) => info!(cert = %cert_path, "serving certificate reloaded"),
                Err(e) => tracing::error!(
                    "new serving certificate not used, keeping the previous one: {e}"
                ),
            }
            Metrics::reload(&reload_metrics.certificate_reloads, reloaded.is_ok());
        },
    ));

    let ledger = match &args.ledger {
        None => {
            tracing::warn!(
                "no --ledger: admitted digests are not recorded, and node agents cannot learn them"
            );
            None
        }
        Some(path) => {
            let ledger = Ledger::open(path, args.ledger_retention, args.ledger_max_entries)?;
            info!(ledger = %path.display(), generation = ledger.generation()?, "ledger opened");
            Some(Arc::new(ledger))
        }
    };
    if let Some(ledger) = ledger.clone() {
        tokio::spawn(expire_ledger(ledger.clone(), stop_rx.clone()));
        tokio::spawn(export_generation(ledger, metrics.clone(), stop_rx.clone()));
    }
    let followers = Followers::default();
    if let Some(listen) = args.feed_listen {
        let (ledger, PushIdentity { ca, cert, key }) =
            push_identity(&args, ledger.as_ref(), "the approval feed")?;
        let address = push::feed::serve_apart(
            push::feed::FeedConfig {
                listen,
                cert,
                key,
                client_ca: ca,
                max_connections: args.feed_max_connections,
                followers: followers.clone(),
            },
            ledger,
            push_metrics.clone(),
            stop_rx.clone(),
        )
        .await?;
        info!(listen = %address, "approval feed: node agents follow approvals here");
    }
    if !args.agents.is_empty() || args.agent_service.is_some() {
        let (ledger, PushIdentity { ca, cert, key }) =
            push_identity(&args, ledger.as_ref(), "pushing to agents")?;
        let pusher = Arc::new(Pusher {
            config: PushConfig {
                agents: args.agents.clone(),
                service: args.agent_service.clone(),
                resolve_every: args.agent_resolve_interval,
                ca,
                cert,
                key,
                server_name: args.agent_server_name.clone(),
            },
            ledger,
            metrics: push_metrics.clone(),
        });
        info!(
            agents = ?args.agents,
            service = ?args.agent_service,
            "pushing approvals to node agents"
        );
        tokio::spawn(push::discover(pusher, stop_rx.clone()));
    }
    let identity = match &args.report_identity {
        Some(name) => name.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .context("--report-identity (POD_NAME) is unset and the host name unreadable")?,
    };
    let decisions = match args.admission_events {
        OnOff::Off => None,
        OnOff::On => {
            let apiserver = Apiserver::connect(args.kubeconfig.as_deref())
                .await
                .context("--admission-events: reaching the apiserver")?;
            let (queue, queued) = report::admission::queue(&report_metrics.admission_events);
            tokio::spawn(report::admission::run(
                apiserver.client(),
                queued,
                report_metrics.admission_events.clone(),
                stop_rx.clone(),
            ));
            info!(
                replica = %identity,
                "admission decisions (denied, audit, break-glass, unverified) are told as Events"
            );
            Some(queue)
        }
    };
    if args.report_events == OnOff::On || args.report_format.is_some() {
        if args.feed_listen.is_none() {
            bail!(
                "--report-events on and --report-format need --feed-listen: the reporter reads \
                 the agents that follow the approval feed"
            );
        }
        if args.report_max_results == 0 {
            bail!("--report-max-results 0: a report must hold at least one result");
        }
        let (_, PushIdentity { ca, cert, key }) =
            push_identity(&args, ledger.as_ref(), "reporting violations")?;
        let apiserver = Apiserver::connect(args.kubeconfig.as_deref())
            .await
            .context("--report-events, --report-format: reaching the apiserver")?;
        info!(
            lease = %args.report_lease,
            namespace = %args.report_namespace,
            %identity,
            events = ?args.report_events,
            reports = ?args.report_format,
            "violations reach the cluster (Events on their pods, policy reports), written by the \
             Lease holder"
        );
        tokio::spawn(report::run(
            report::Reporter {
                client: apiserver.client(),
                events: args.report_events == OnOff::On,
                reports: args.report_format.map(|format| report::ReportSettings {
                    format,
                    max_results: args.report_max_results,
                }),
                admission_results: decisions.is_some(),
                denied_result_ttl: args.denied_result_ttl,
                lease: report::lease::LeaseConfig {
                    namespace: args.report_namespace.clone(),
                    name: args.report_lease.clone(),
                    identity: identity.clone(),
                    duration: Duration::from_secs(15),
                    renew_every: Duration::from_secs(5),
                    retry_every: Duration::from_secs(2),
                },
                intake: report::intake::IntakeConfig {
                    agent_port: args.agent_api_port,
                    ca,
                    cert,
                    key,
                    server_name: args.agent_server_name.clone(),
                    poll_every: Duration::from_secs(30),
                    backfill: Duration::from_secs(3600),
                },
                followers: followers.clone(),
                metrics: report_metrics,
            },
            stop_rx.clone(),
        ));
    }
    match (&ledger, args.adopt_running_pods) {
        (Some(ledger), OnOff::On) => match Apiserver::connect(args.kubeconfig.as_deref()).await {
            Ok(apiserver) => {
                info!("rebuilding the admitted set from the pods the cluster runs");
                tokio::spawn(adopt::run(
                    apiserver,
                    policy.clone(),
                    resolver.clone(),
                    ledger.clone(),
                    Some(args.adopt_interval).filter(|d| !d.is_zero()),
                    decisions.clone().map(|queue| (queue, identity.clone())),
                ));
            }
            Err(e) => tracing::warn!(
                error = %e,
                "not rebuilding the admitted set from the cluster: agents in enforce mode \
                 kill nothing until their settle window has passed"
            ),
        },
        (None, OnOff::On) => tracing::warn!(
            "no --ledger: the admitted set is not rebuilt from the cluster (nothing to record it in)"
        ),
        (_, OnOff::Off) => {}
    }
    if !args.adopt_interval.is_zero() && args.adopt_interval >= args.ledger_retention {
        bail!(
            "--adopt-interval {} is not shorter than --ledger-retention {}: approvals of pods \
             running longer than the retention would expire between two rebuilds. Rebuild more \
             often, or keep records longer",
            humantime::format_duration(args.adopt_interval),
            humantime::format_duration(args.ledger_retention)
        );
    }
    let resolving = resolver.is_some();
    let largest_mib = limits::MAX_REVIEW_BYTES.div_ceil(1024 * 1024);
    if args.body_budget_mib < largest_mib {
        bail!(
            "--body-budget-mib {} is smaller than the largest review the apiserver can send \
             ({largest_mib} MiB); such a review could never be read. Set it to at least {largest_mib}",
            args.body_budget_mib
        );
    }
    if args.max_connections == 0 || args.max_reviews == 0 {
        bail!("--max-connections and --max-reviews must be at least 1");
    }
    let limits = Limits {
        max_connections: args.max_connections,
        max_connections_per_address: args.max_connections_per_address,
        header_timeout: args.request_timeout,
        body_timeout: args.request_timeout,
        idle_timeout: args.idle_timeout,
        body_budget_bytes: args.body_budget_mib * 1024 * 1024,
        max_reviews: args.max_reviews,
        ..Limits::default()
    };
    let state = Arc::new(AppState {
        policy,
        metrics,
        resolver,
        ledger,
        budgets: Budgets::new(limits.clone()),
        decisions,
        replica: identity,
    });
    let per_path = args.client_ca.is_some() && !client_certs.in_handshake();
    if per_path {
        info!(paths = ?args.client_cert_required_paths, "client certificates required on these paths only");
    }
    let routes = server::Routes::new(state, per_path.then(|| client_certs.clone()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(
        listen = %listener.local_addr()?,
        client_certificates = args.client_ca.is_some(),
        digest_resolution = resolving,
        "serving /image_policy, /validate, /, /healthz, /readyz, /metrics over HTTPS"
    );
    listener::serve(
        listener,
        tls,
        routes,
        &limits,
        imagegate_plumbing::process::shutdown_signal(),
        args.shutdown_grace,
    )
    .await;
    let _ = stop_tx.send(true);
    Ok(())
}

/// Drops approvals past their retention, every few minutes.
/// The files of this webhook's push identity, for the feed and for dialing.
struct PushIdentity {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// What the feed and the dial path both need: the ledger they send, and
/// the mTLS files; `what` names the one asking, for the error.
fn push_identity(
    args: &ServeArgs,
    ledger: Option<&Arc<Ledger>>,
    what: &str,
) -> Result<(Arc<Ledger>, PushIdentity)> {
    let (Some(ledger), Some(ca), Some(cert), Some(key)) = (
        ledger,
        &args.agent_ca,
        &args.agent_client_cert,
        &args.agent_client_key,
    ) else {
        bail!(
            "{what} needs --ledger (what is sent), --agent-ca, --agent-client-cert and \
             --agent-client-key (mTLS)"
        );
    };
    Ok((
        ledger.clone(),
        PushIdentity {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        },
    ))
}

async fn expire_ledger(ledger: Arc<Ledger>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(300));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let ledger = ledger.clone();
        match tokio::task::spawn_blocking(move || {
            ledger.expire(imagegate_plumbing::clock::now_ms())
        })
        .await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(dropped)) => info!(dropped, "ledger: approvals past their retention dropped"),
            Ok(Err(e)) => tracing::error!("ledger expiry failed: {e}"),
            Err(e) => tracing::error!("ledger expiry task failed: {e}"),
        }
    }
}

/// `--report-format`: `off` is `None`.
fn parse_report_format(value: &str) -> Result<Option<report::reports::Format>, String> {
    report::reports::Format::parse(value)
}

fn report(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn write_certs(args: CertsArgs) -> Result<()> {
    let written = imagegate_webhook::install::certs::write_all(
        &args.out,
        &imagegate_webhook::install::certs::CertsSpec {
            namespace: args.namespace,
            service: args.service,
            extra_names: args.extra_names,
            validity: args.validity,
            force: args.force,
        },
    )?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn write_apiserver_config(args: ApiserverArgs) -> Result<()> {
    use imagegate_webhook::install::apiserver;
    let host_dir = args.host_dir.clone();
    let written = apiserver::write(
        &args.out,
        &apiserver::ApiserverSpec {
            server: args.server,
            certs: args.certs,
            host_dir: args.host_dir,
            allow_ttl: args.allow_ttl,
            deny_ttl: args.deny_ttl,
            retry_backoff: args.retry_backoff,
        },
    )?;
    for path in written {
        println!("wrote {}", path.display());
    }
    println!(
        "\nCopy {out} to {dir} on every control plane node, then add to kube-apiserver:\n  \
         --enable-admission-plugins=...,ImagePolicyWebhook\n  \
         --admission-control-config-file={dir}/{config}\n\
         and mount {dir} into its static pod (README: \"The ImagePolicyWebhook path\").",
        out = args.out.display(),
        dir = host_dir.display(),
        config = apiserver::ADMISSION_CONFIG,
    );
    Ok(())
}
