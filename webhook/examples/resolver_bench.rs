//! Resolver figures against a registry on loopback, for `cargo xtask bench
//! webhook`: fills the registry, then prints one JSON object with
//! - warm resolutions (the reference cached): per-call latency, what
//!   resolution adds to an admission per image;
//! - cold resolutions one at a time (each tag asked for the first time):
//!   latency percentiles;
//! - a burst of 1,000 distinct tags asked concurrently, each by 3 callers:
//!   wall time, and registry lookups against requests (the cache shares one
//!   lookup among concurrent callers).
//!
//! Usage: resolver_bench REGISTRY_HOST:PORT

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use imagegate_webhook::{
    reference::Reference,
    resolve::{Resolver, Settings},
    server::metrics::Metrics,
};
use oci_client::{
    Client, Reference as OciReference,
    client::{ClientConfig, ClientProtocol},
    secrets::RegistryAuth,
};
use serde_json::json;

fn sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    format!(
        "sha256:{}",
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Pushes one small image and tags it `tags` times; returns the tags.
async fn fill(host: &str, repo: &str, tags: usize) -> anyhow::Result<Vec<String>> {
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let auth = RegistryAuth::Anonymous;
    let base: OciReference = format!("{host}/{repo}:base").parse()?;
    client.store_auth_if_needed(host, &auth).await;
    let layer = b"imagegate bench layer".to_vec();
    let config = serde_json::to_vec(
        &json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]}}),
    )?;
    client
        .push_blob(&base, layer.clone(), &sha256(&layer))
        .await?;
    client
        .push_blob(&base, config.clone(), &sha256(&config))
        .await?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len()}]
    }))?;
    let mut names = Vec::new();
    for i in 0..tags {
        let tag = format!("t{i}");
        let target: OciReference = format!("{host}/{repo}:{tag}").parse()?;
        client
            .push_manifest_raw(
                &target,
                manifest.clone(),
                "application/vnd.oci.image.manifest.v1+json".parse()?,
            )
            .await?;
        names.push(format!("{host}/{repo}:{tag}"));
    }
    Ok(names)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let host = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: resolver_bench HOST:PORT"))?;
    let settings = || Settings {
        plain_http: vec![host.clone()],
        ..Default::default()
    };

    // Cold, one at a time.
    let cold_tags = fill(&host, "bench/cold", 300).await?;
    let mut metrics = Metrics::new();
    let resolver = Resolver::new(
        settings(),
        imagegate_webhook::resolve::ResolverMetrics::register(metrics.registry()),
    )
    .map_err(anyhow::Error::msg)?;
    let mut latencies = Vec::new();
    for tag in &cold_tags {
        let reference = Reference::parse(tag)?;
        let started = Instant::now();
        resolver.resolve(&reference, false).await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();

    // Warm: what resolution adds to an admission once the cache holds the
    // reference, per image, measured call by call in process.
    let references: Vec<Reference> = cold_tags
        .iter()
        .map(|t| Reference::parse(t))
        .collect::<Result<_, _>>()?;
    let mut warm = Vec::with_capacity(100_000);
    for i in 0..100_000 {
        let reference = &references[i % references.len()];
        let started = Instant::now();
        resolver.resolve(reference, false).await?;
        warm.push(started.elapsed());
    }
    warm.sort();

    // A burst: 1,000 distinct tags, each asked by 3 concurrent callers.
    let burst_tags = fill(&host, "bench/burst", 1000).await?;
    let mut metrics = Metrics::new();
    let resolver = Arc::new(
        Resolver::new(
            settings(),
            imagegate_webhook::resolve::ResolverMetrics::register(metrics.registry()),
        )
        .map_err(anyhow::Error::msg)?,
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for tag in burst_tags.iter().flat_map(|t| [t, t, t]) {
        let (resolver, reference) = (resolver.clone(), Reference::parse(tag)?);
        tasks.push(tokio::spawn(async move {
            resolver.resolve(&reference, false).await.is_ok()
        }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += usize::from(task.await?);
    }
    let burst_seconds = started.elapsed().as_secs_f64();
    let text = metrics.render();
    let lookups: f64 = text
        .lines()
        .filter(|l| l.starts_with("imagegate_webhook_registry_lookups_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();

    println!(
        "{}",
        json!({
            "cold": {
                "lookups": latencies.len(),
                "p50_ms": percentile(&latencies, 0.50),
                "p99_ms": percentile(&latencies, 0.99),
                "max_ms": percentile(&latencies, 1.0),
            },
            "warm": {
                "calls": warm.len(),
                "p50_us": percentile(&warm, 0.50) * 1e3,
                "p99_us": percentile(&warm, 0.99) * 1e3,
            },
            "burst": {
                "distinct_tags": burst_tags.len(),
                "requests": burst_tags.len() * 3,
                "resolved": ok,
                "registry_lookups": lookups,
                "seconds": burst_seconds,
            },
        })
    );
    Ok(())
}
