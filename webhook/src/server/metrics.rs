//! Prometheus metrics of the webhook, served on `/metrics`.

use std::{collections::HashMap, sync::RwLock, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{policy::ImageVerdict, review::Api};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub api: &'static str,
    pub verdict: &'static str,
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub endpoint: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    pub certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LedgerLabels {
    pub ledger: String,
}

/// A review endpoint, as its metrics label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ImagePolicy,
    Validate,
    Mutate,
}

impl Endpoint {
    const ALL: [Endpoint; 3] = [Endpoint::ImagePolicy, Endpoint::Validate, Endpoint::Mutate];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ImagePolicy => "image_policy",
            Endpoint::Validate => "validate",
            Endpoint::Mutate => "mutate",
        }
    }
}

/// One endpoint's duration histogram and its count of 200 answers (every
/// review's answer but the HTTP errors), taken out of their families once:
/// a family lookup per review (a lock, a hash of the labels) is measurable
/// on the review path.
struct EndpointMetrics {
    seconds: Histogram,
    answered: Counter,
}

/// The image decisions' counters, by API, verdict and rule.
///
/// Each counter is taken out of its family once and then found by the
/// rule's name with a fast hash: the family's own lookup hashes all three
/// labels with SipHash under its lock, and needs the rule cloned into a
/// key, which was 1,300 user-space instructions per review of two images
/// (3% of an ImageReview, callgrind). A counter taken out is the family's
/// (they share one value), so `/metrics` shows every increment. The map
/// holds one entry per rule name ever counted, as the family does.
pub struct DecisionCounters {
    family: Family<DecisionLabels, Counter>,
    by_rule: RwLock<HashMap<Box<str>, RuleCounters, foldhash::fast::RandomState>>,
}

/// One rule's counters, indexed by `Api as usize` then `ImageVerdict as
/// usize`; `None` until first counted (the family shows only what was).
/// A verdict added past these bounds is counted through the family.
type RuleCounters = [[Option<Counter>; 6]; 2];

impl DecisionCounters {
    fn new(family: Family<DecisionLabels, Counter>) -> Self {
        Self {
            family,
            by_rule: RwLock::default(),
        }
    }

    /// Counts one image decided through `api` with `verdict` by `rule`.
    pub fn count(&self, api: Api, verdict: ImageVerdict, rule: &str) {
        let (a, v) = (api as usize, verdict as usize);
        {
            // A poisoned lock still holds whole counters: nothing is
            // written to it mid-way that a panic could leave half done.
            let by_rule = self.by_rule.read().unwrap_or_else(|e| e.into_inner());
            if let Some(counter) = by_rule.get(rule).and_then(|c| c.get(a)?.get(v)?.as_ref()) {
                counter.inc();
                return;
            }
        }
        let counter = self
            .family
            .get_or_create(&DecisionLabels {
                api: api.as_str(),
                verdict: verdict.as_str(),
                rule: rule.to_string(),
            })
            .clone();
        counter.inc();
        let mut by_rule = self.by_rule.write().unwrap_or_else(|e| e.into_inner());
        let counters = by_rule.entry(rule.into()).or_default();
        if let Some(slot) = counters.get_mut(a).and_then(|c| c.get_mut(v)) {
            *slot = Some(counter);
        }
    }
}

pub struct Metrics {
    registry: Registry,
    /// Indexed by `Endpoint as usize`.
    endpoints: [EndpointMetrics; 3],
    /// One per image decided, by API, verdict and rule.
    pub decisions: DecisionCounters,
    pub request_seconds: Family<EndpointLabels, Histogram>,
    pub responses: Family<ResponseLabels, Counter>,
    pub certificate_reloads: Family<ResultLabels, Counter>,
    /// Per certificate file (serving, push-identity, and the CAs), when its
    /// earliest certificate expires.
    pub certificate_expiry: Family<CertificateLabels, Gauge>,
    /// The ledger's generation: agents' held generation of the same ledger
    /// subtracted from it is how far behind they are.
    pub ledger_generation: Family<LedgerLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("imagegate_webhook");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Image decisions by API, verdict and the rule that decided",
            decisions.clone(),
        );
        // Denials for want of a digest, at 0 from the start: the first is
        // then an increase() the registry alert sees.
        for api in ["ImageReview", "AdmissionReview"] {
            let _ = decisions.get_or_create(&DecisionLabels {
                api,
                verdict: "denied",
                rule: crate::policy::decide::RULE_RESOLUTION.to_string(),
            });
        }
        // 25 µs to about 6.5 s: decisions without a registry lookup sit at
        // the low end, lookups in the middle.
        let request_seconds = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                25e-6, 2.0, 19,
            ))
        });
        registry.register(
            "request_duration_seconds",
            "Time from request body received to response ready, by endpoint",
            request_seconds.clone(),
        );
        let responses = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "responses",
            "HTTP responses by endpoint and status code",
            responses.clone(),
        );
        let certificate_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Serving certificate reloads by result (success, failure)",
            certificate_reloads.clone(),
        );
        let certificate_expiry = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the earliest certificate of each certificate file expires (Unix seconds)",
            certificate_expiry.clone(),
        );
        let ledger_generation = Family::<LedgerLabels, Gauge>::default();
        registry.register(
            "ledger_generation",
            "The generation of the ledger's last write, by ledger id",
            ledger_generation.clone(),
        );
        let endpoints = Endpoint::ALL.map(|endpoint| EndpointMetrics {
            seconds: request_seconds
                .get_or_create(&EndpointLabels {
                    endpoint: endpoint.as_str(),
                })
                .clone(),
            answered: responses
                .get_or_create(&ResponseLabels {
                    endpoint: endpoint.as_str(),
                    code: 200,
                })
                .clone(),
        });
        Self {
            registry,
            endpoints,
            decisions: DecisionCounters::new(decisions),
            request_seconds,
            responses,
            certificate_reloads,
            certificate_expiry,
            ledger_generation,
        }
    }

    pub fn observe(&self, endpoint: Endpoint, code: u16, elapsed: Duration) {
        let metrics = &self.endpoints[endpoint as usize];
        metrics.seconds.observe(elapsed.as_secs_f64());
        if code == 200 {
            metrics.answered.inc();
        } else {
            self.responses
                .get_or_create(&ResponseLabels {
                    endpoint: endpoint.as_str(),
                    code,
                })
                .inc();
        }
    }

    pub fn reload(family: &Family<ResultLabels, Counter>, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        family.get_or_create(&ResultLabels { result }).inc();
    }

    /// The registry other subsystems (resolution, push) register their
    /// own metrics in, before the server starts.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(text: &str, labels: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(&format!("imagegate_webhook_decisions_total{{{labels}}}")))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn decisions_counted_through_the_rule_map_are_the_familys_series() {
        let metrics = Metrics::new();
        let d = &metrics.decisions;
        for _ in 0..3 {
            d.count(Api::AdmissionReview, ImageVerdict::Allowed, "internal");
        }
        d.count(Api::ImageReview, ImageVerdict::Allowed, "internal");
        d.count(Api::AdmissionReview, ImageVerdict::Denied, "default");
        // The series made at start, at 0, is the one a count increments.
        d.count(
            Api::ImageReview,
            ImageVerdict::Denied,
            crate::policy::decide::RULE_RESOLUTION,
        );
        let text = metrics.render();
        let resolution = crate::policy::decide::RULE_RESOLUTION;
        for (labels, value) in [
            (
                r#"api="AdmissionReview",verdict="allowed",rule="internal""#,
                3,
            ),
            (r#"api="ImageReview",verdict="allowed",rule="internal""#, 1),
            (
                r#"api="AdmissionReview",verdict="denied",rule="default""#,
                1,
            ),
            (
                &format!(r#"api="ImageReview",verdict="denied",rule="{resolution}""#),
                1,
            ),
            (
                &format!(r#"api="AdmissionReview",verdict="denied",rule="{resolution}""#),
                0,
            ),
        ] {
            assert_eq!(
                line_of(&text, labels),
                vec![format!(
                    "imagegate_webhook_decisions_total{{{labels}}} {value}"
                )],
                "{text}"
            );
        }
    }
}
