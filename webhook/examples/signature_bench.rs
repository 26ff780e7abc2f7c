//! Signature figures, for `cargo xtask bench webhook`: starts Debian's
//! docker-registry on loopback (testkit), pushes 200 images each with a
//! Sigstore bundle (DSSE, P-256) in its tag index, then prints one JSON
//! object with
//! - cold: the signature stage for a digest seen for the first time
//!   (resolution already cached): lookup in the registry and verification,
//!   per image;
//! - warm: the signature stage once the lookup is cached, per image, call by
//!   call in process (what a signature requirement adds to an admission);
//! - cpu: process CPU seconds for 10,000 one-image reviews through the
//!   whole pipeline, warm, with the requirement and without it;
//! - keyless_v1, keyless_v2_tsa: cold and warm again for keyless bundles as
//!   Sigstore issues them (a certificate with an SCT from the test Fulcio's
//!   CT log; Rekor v1 with a SET, inclusion proof and checkpoint; or Rekor
//!   v2 with a checkpoint and an RFC 3161 timestamp, by `openssl ts`).
//!
//! Usage: signature_bench (root: it starts docker-registry)

use std::time::{Duration, Instant};

use base64::{Engine, engine::general_purpose::STANDARD};
use imagegate_testkit::{
    registry::Registry,
    sigstore::{
        Fulcio, Issue, KeyPair, KeylessBundle, Log, LogTo, LogV2, TrustedRoot, Tsa, attach_bundle,
    },
};
use imagegate_webhook::{
    admit,
    policy::Policy,
    resolve::{Resolver, Settings},
    review::{Api, ContainerKind, ImageUse, Review, Subject},
    server::metrics::Metrics,
    signature::formats::pae,
};
use serde_json::json;

const IMAGES: usize = 200;
const OIDC: &str = "https://issuer.imagegate.test";
const SUBJECT: &str = "bench@imagegate.test";
const WARM_CALLS: usize = 100_000;
const CPU_REVIEWS: usize = 10_000;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

fn review(image: &str) -> Review {
    Review {
        api: Api::AdmissionReview,
        subject: Subject {
            namespace: "bench".into(),
            ..Default::default()
        },
        images: vec![ImageUse {
            image: image.to_string(),
            container: Some("c".into()),
            kind: ContainerKind::Container,
            pointer: None,
            changed: true,
        }],
        kind: Some("Pod".into()),
        name: Some("p".into()),
        user: None,
        dry_run: true,
        object: None,
        controller: None,
    }
}

fn bundle(key: &KeyPair, digest: &str) -> Vec<u8> {
    let statement = serde_json::to_vec(&json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "bench", "digest": {"sha256": digest.trim_start_matches("sha256:")}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {}
    }))
    .unwrap();
    let signature = key.sign(&pae("application/vnd.in-toto+json", &statement));
    serde_json::to_vec(&json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "bench"}},
        "dsseEnvelope": {
            "payload": STANDARD.encode(&statement),
            "payloadType": "application/vnd.in-toto+json",
            "signatures": [{"sig": STANDARD.encode(&signature), "keyid": ""}]
        }
    }))
    .unwrap()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = Registry::plain();
    let host = registry.host.clone();
    let dir = tempfile::tempdir()?;
    let key = KeyPair::generate();
    let key_file = dir.path().join("bench.pub");
    std::fs::write(&key_file, &key.public_pem)?;
    let mut images = Vec::new();
    for i in 0..IMAGES {
        let tag = format!("t{i}");
        let digest = registry.push_image("bench/signed", &tag, &tag).await;
        attach_bundle(&registry, "bench/signed", &digest, &bundle(&key, &digest)).await;
        images.push(format!("{host}/bench/signed:{tag}"));
    }
    let rule = format!(
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: bench\n    registries: ['{host}']\n"
    );
    let without = Policy::from_yaml(&rule)?;
    let with = Policy::from_yaml(&format!(
        "{rule}    signatures:\n      - name: bench\n        keys:\n          - name: bench\n            file: {}\n",
        key_file.display()
    ))?;
    let mut metrics = Metrics::new();
    let resolver = Resolver::new(
        Settings {
            plain_http: vec![host.clone()],
            ..Default::default()
        },
        imagegate_webhook::resolve::ResolverMetrics::register(metrics.registry()),
    )
    .map_err(anyhow::Error::msg)?;

    let (_, cold, warm) = stage(&without, &with, &resolver, &images).await?;

    let mut cpu = serde_json::Map::new();
    for (label, policy) in [("without_s", &without), ("with_s", &with)] {
        let started = cpu_seconds();
        for i in 0..CPU_REVIEWS {
            let decision =
                admit::decide(policy, Some(&resolver), &review(&images[i % images.len()])).await;
            anyhow::ensure!(decision.allowed, "{}", decision.message);
        }
        cpu.insert(label.into(), json!(cpu_seconds() - started));
    }
    println!(
        "{}",
        json!({
            "cold": {"images": cold.len(), "p50_ms": percentile(&cold, 0.5), "p99_ms": percentile(&cold, 0.99), "max_ms": percentile(&cold, 1.0)},
            "warm": {"calls": warm.len(), "p50_us": percentile(&warm, 0.5) * 1e3, "p99_us": percentile(&warm, 0.99) * 1e3},
            "cpu": {"reviews": CPU_REVIEWS, "without_s": cpu["without_s"], "with_s": cpu["with_s"]},
            "keyless_v1": keyless(&registry, &resolver, &without, dir.path(), false).await?,
            "keyless_v2_tsa": keyless(&registry, &resolver, &without, dir.path(), true).await?,
        })
    );
    Ok(())
}

/// The signature stage for `images` (resolution cached first, so the cold
/// figure is the stage alone): per image cold (lookup and verification),
/// then warm (cached) for [`WARM_CALLS`] calls. Every image must verify.
async fn stage(
    without: &Policy,
    with: &Policy,
    resolver: &Resolver,
    images: &[String],
) -> anyhow::Result<(
    Vec<std::sync::Arc<imagegate_webhook::policy::ImageDecision>>,
    Vec<Duration>,
    Vec<Duration>,
)> {
    let mut decisions = Vec::new();
    for image in images {
        let (mut d, _) = admit::decide_images(without, Some(resolver), &review(image)).await;
        anyhow::ensure!(d[0].resolved.is_some(), "{image} did not resolve");
        decisions.push(d.remove(0));
    }
    let mut cold = Vec::new();
    for decision in &decisions {
        let asks = [with.signature_ask(decision)];
        let started = Instant::now();
        let outcomes = resolver.signatures().check_each(&asks).await;
        cold.push(started.elapsed());
        let ok = matches!(&outcomes[0], imagegate_webhook::signature::Outcome::Checked(c) if c.iter().all(|(_, v)| v.is_ok()));
        anyhow::ensure!(ok, "{} is not verified: {outcomes:?}", decision.image);
    }
    cold.sort();
    let mut warm = Vec::with_capacity(WARM_CALLS);
    for i in 0..WARM_CALLS {
        let asks = [with.signature_ask(&decisions[i % decisions.len()])];
        let started = Instant::now();
        let outcomes = resolver.signatures().check_each(&asks).await;
        warm.push(started.elapsed());
        std::hint::black_box(outcomes);
    }
    warm.sort();
    Ok((decisions, cold, warm))
}

/// Cold and warm figures for keyless bundles: Rekor v1 (SET, proof,
/// checkpoint) or, with `v2`, Rekor v2 and a timestamp authority; every
/// certificate with its SCT.
async fn keyless(
    registry: &Registry,
    resolver: &Resolver,
    without: &Policy,
    dir: &std::path::Path,
    v2: bool,
) -> anyhow::Result<serde_json::Value> {
    let fulcio = Fulcio::with_intermediate("bench fulcio");
    let tsa = Tsa::valid_now("bench-tsa");
    let mut log = Log::new(1000);
    let mut log_v2 = LogV2::new("log.bench.test", 1000);
    let root = dir.join(if v2 { "root-v2.json" } else { "root-v1.json" });
    std::fs::write(
        &root,
        TrustedRoot {
            authorities: vec![&fulcio],
            logs: vec![&log],
            v2_logs: vec![&log_v2],
            timestamp_authorities: vec![&tsa],
            ..TrustedRoot::default()
        }
        .json(),
    )?;
    let repo = if v2 {
        "bench/keyless-v2"
    } else {
        "bench/keyless-v1"
    };
    let now = time::OffsetDateTime::now_utc();
    let mut images = Vec::new();
    for i in 0..IMAGES {
        let tag = format!("k{i}");
        let digest = registry
            .push_image(repo, &tag, &format!("{repo}-{tag}"))
            .await;
        let bundle = KeylessBundle {
            fulcio: &fulcio,
            oidc_issuer: OIDC,
            subject: SUBJECT,
            certificate: Issue::at(now - time::Duration::minutes(1)),
            digest: &digest,
            predicate_type: "https://sigstore.dev/cosign/sign/v1",
            log: if v2 {
                LogTo::V2HashedRekord(&mut log_v2)
            } else {
                LogTo::V1(&mut log, now.unix_timestamp())
            },
            stamps: if v2 { vec![&tsa] } else { Vec::new() },
            stamp_other: false,
        }
        .make();
        attach_bundle(registry, repo, &digest, &bundle).await;
        images.push(format!("{}/{repo}:{tag}", registry.host));
    }
    let with = Policy::from_yaml(&format!(
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nrules:\n  - name: bench\n    registries: ['{}']\n    signatures:\n      - name: ci\n        keyless:\n          issuer: {OIDC}\n          subject: {SUBJECT}\n        trustedRoot: {}\n",
        registry.host,
        root.display()
    ))?;
    let (_, cold, warm) = stage(without, &with, resolver, &images).await?;
    Ok(json!({
        "cold": {"images": cold.len(), "p50_ms": percentile(&cold, 0.5), "p99_ms": percentile(&cold, 0.99), "max_ms": percentile(&cold, 1.0)},
        "warm": {"calls": warm.len(), "p50_us": percentile(&warm, 0.5) * 1e3, "p99_us": percentile(&warm, 0.99) * 1e3},
    }))
}
