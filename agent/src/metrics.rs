//! Prometheus metrics of the agent, served on `/metrics` of
//! `--metrics-address`.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    pub certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LedgerLabels {
    pub ledger: String,
}

pub struct Metrics {
    registry: Registry,
    /// Events read from the ring buffers, by kind (`exec`, `cgroup`).
    pub events: Family<EventLabels, Counter>,
    /// Events the kernel dropped because a ring buffer was full, by kind.
    pub lost_events: Family<EventLabels, Gauge>,
    /// Verdicts reached, by verdict.
    pub verdicts: Family<VerdictLabels, Counter>,
    /// From the first event of a container to its identity.
    pub identification_seconds: Histogram,
    /// Processes killed in violating containers (enforce mode).
    pub kills: Counter,
    /// Execs the kernel stopped with SIGKILL (enforce mode).
    pub kernel_kills: Counter,
    pub approvals: Gauge,
    /// Pushed approvals refused (a digest the agent does not accept).
    pub approvals_rejected: Counter,
    /// Webhook replicas whose approval feed the agent follows.
    pub feeds: Gauge,
    /// Approval feed streams open and caught up now (one per replica when
    /// all is well).
    pub feed_streams_open: Gauge,
    /// Approval feed streams reopened after they ended or failed.
    pub feed_reconnects: Counter,
    /// Containers whose stop (enforce mode) waited past the grace window
    /// for a webhook's approval feed.
    pub stops_waiting_for_feed: Counter,
    /// cgroups the agent keeps state for (hosts and containers), as of the
    /// last sweep of the gone ones.
    pub tracked_cgroups: Gauge,
    /// Records dropped by retention, by kind (`container`, `violation`,
    /// `approval`).
    pub pruned: Family<EventLabels, Counter>,
    /// Identifications dropped because too many were waiting.
    pub identifications_dropped: Counter,
    /// Identifications waiting for a free slot.
    pub identifications_waiting: Gauge,
    /// Scans of the runtime's running containers after dropped events.
    pub rescans: Counter,
    /// Per certificate file (grpc, client-ca), when its earliest
    /// certificate expires.
    pub certificate_expiry: Family<CertificateLabels, Gauge>,
    /// Per webhook ledger, the generation this agent holds: the webhook's
    /// `ledger_generation` minus this is how far behind it is.
    pub held_generation: Family<LedgerLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("imagegate_agent");
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "Events read from the eBPF ring buffers",
            events.clone(),
        );
        let lost_events = Family::<EventLabels, Gauge>::default();
        registry.register(
            "lost_events",
            "Events the kernel dropped because a ring buffer was full",
            lost_events.clone(),
        );
        let verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "verdicts",
            "Verdicts reached on containers",
            verdicts.clone(),
        );
        // Every verdict's series from the start, at 0: Prometheus's
        // increase() sees the first never-admitted container as a change
        // from 0, where a series born at 1 would show no increase at all.
        {
            use crate::model::ContainerVerdict as V;
            for verdict in [
                V::Admitted,
                V::NeverAdmitted,
                V::Exempt,
                V::Unknown,
                V::Pending,
            ] {
                let _ = verdicts.get_or_create(&VerdictLabels {
                    verdict: verdict.as_str(),
                });
            }
        }
        // 100 us to ~1.6 s, doubling.
        let identification_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 15),
        );
        registry.register(
            "identification_seconds",
            "Time from a container's first event to knowing its image digest",
            identification_seconds.clone(),
        );
        let kills = Counter::default();
        registry.register(
            "enforcement_kills",
            "Processes killed in violating containers",
            kills.clone(),
        );
        let kernel_kills = Counter::default();
        registry.register(
            "kernel_kills",
            "Execs stopped with SIGKILL by the exec program",
            kernel_kills.clone(),
        );
        let approvals = Gauge::default();
        registry.register("approvals", "Approved digests held", approvals.clone());
        let approvals_rejected = Counter::default();
        registry.register(
            "approvals_rejected",
            "Pushed approvals refused because a field was not acceptable",
            approvals_rejected.clone(),
        );
        let feeds = Gauge::default();
        registry.register(
            "feeds",
            "Webhook replicas whose approval feed the agent follows: alert on 0",
            feeds.clone(),
        );
        let feed_streams_open = Gauge::default();
        registry.register(
            "feed_streams_open",
            "Approval feed streams open now and caught up: fewer than feeds means approvals \
             from a replica may not have arrived (and in enforce mode stops wait, see \
             --feed-wait)",
            feed_streams_open.clone(),
        );
        let feed_reconnects = Counter::default();
        registry.register(
            "feed_reconnects",
            "Approval feed streams reopened after they ended or failed",
            feed_reconnects.clone(),
        );
        let stops_waiting_for_feed = Counter::default();
        registry.register(
            "stops_waiting_for_feed",
            "Containers whose stop waited past the grace window for a webhook's approval feed \
             (not open, or a replica to find): see --feed-wait",
            stops_waiting_for_feed.clone(),
        );
        let tracked_cgroups = Gauge::default();
        registry.register(
            "tracked_cgroups",
            "cgroups the agent keeps state for, as of the last sweep of gone ones",
            tracked_cgroups.clone(),
        );
        let pruned = Family::<EventLabels, Counter>::default();
        registry.register(
            "pruned_records",
            "Records dropped by retention: gone containers, old violations, expired approvals",
            pruned.clone(),
        );
        let identifications_dropped = Counter::default();
        registry.register(
            "identifications_dropped",
            "cgroup lookups dropped because too many were waiting (a burst of cgroups); \
             a scan of the runtime's running containers makes up for them",
            identifications_dropped.clone(),
        );
        let identifications_waiting = Gauge::default();
        registry.register(
            "identifications_waiting",
            "cgroup lookups waiting for a free slot",
            identifications_waiting.clone(),
        );
        let rescans = Counter::default();
        registry.register(
            "rescans",
            "Scans of the runtime's running containers after events were dropped",
            rescans.clone(),
        );
        let certificate_expiry = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the earliest certificate of each certificate file expires (Unix seconds)",
            certificate_expiry.clone(),
        );
        let held_generation = Family::<LedgerLabels, Gauge>::default();
        registry.register(
            "held_generation",
            "The generation of each webhook ledger the agent holds approvals up to",
            held_generation.clone(),
        );
        Self {
            registry,
            events,
            lost_events,
            verdicts,
            identification_seconds,
            kills,
            kernel_kills,
            approvals,
            approvals_rejected,
            feeds,
            feed_streams_open,
            feed_reconnects,
            stops_waiting_for_feed,
            tracked_cgroups,
            pruned,
            identifications_dropped,
            identifications_waiting,
            rescans,
            certificate_expiry,
            held_generation,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
