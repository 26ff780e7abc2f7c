//! One reporter per cluster: the webhook replica that holds a
//! `coordination.k8s.io/v1` Lease, as client-go's leader election holds
//! one. The holder renews it every [`LeaseConfig::renew_every`]; another
//! replica takes it over when it has not seen it change for the lease's
//! duration (time as each replica observes it, so clocks need not agree),
//! or at once when the holder released it on its way out. A holder that
//! cannot renew for the whole duration stops reporting before anyone else
//! can start, so two writers never overlap for longer than one write.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, api::PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's name in `holderIdentity` (its pod name).
    pub identity: String,
    pub duration: Duration,
    pub renew_every: Duration,
    /// How often a replica that does not hold the lease looks again.
    pub retry_every: Duration,
}

/// The last lease record another replica was seen to write, and when it
/// was seen: the lease is free once it has not changed for its duration.
struct Observed {
    version: String,
    at: Instant,
}

/// Holds the lease whenever it can, until `stop`; `leading` says whether it
/// does. On `stop` a held lease is released so another replica takes over
/// at once.
pub async fn run(
    client: kube::Client,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut observed: Option<Observed> = None;
    let mut renewed: Option<Instant> = None;
    loop {
        let holds = match try_hold(&api, &config, &mut observed).await {
            Ok(holds) => {
                if holds {
                    renewed = Some(Instant::now());
                }
                holds
            }
            Err(e) => {
                warn!(lease = %config.name, error = %e, "leader election: cannot read or write the Lease");
                // Keep leading only while the last renewal still holds.
                renewed.is_some_and(|at| at.elapsed() < config.duration)
            }
        };
        if !holds {
            renewed = None;
        }
        leading.send_if_modified(|was| {
            let changed = *was != holds;
            if changed {
                if holds {
                    info!(lease = %config.name, identity = %config.identity, "leader election: this replica reports now");
                } else {
                    info!(lease = %config.name, identity = %config.identity, "leader election: another replica reports");
                }
            }
            *was = holds;
            changed
        });
        let wait = if holds {
            config.renew_every
        } else {
            config.retry_every
        };
        let stopped = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopped {
            if holds {
                leading.send_replace(false);
                release(&api, &config).await;
            }
            return;
        }
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// One round: takes, renews or leaves the lease; whether this replica
/// holds it now.
async fn try_hold(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let duration_seconds = i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Another replica created it first.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder != config.identity {
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let changed = observed.as_ref().is_none_or(|o| o.version != version);
        if changed {
            *observed = Some(Observed {
                version,
                at: Instant::now(),
            });
        }
        let held_for = spec
            .lease_duration_seconds
            .map_or(config.duration, |s| Duration::from_secs(s.max(0) as u64));
        let free = holder.is_empty()
            || observed
                .as_ref()
                .is_some_and(|o| o.at.elapsed() >= held_for);
        if !free {
            return Ok(false);
        }
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(duration_seconds);
    // The version read goes back with the update: if anyone wrote in
    // between, the apiserver refuses it (409) and this round is lost.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up on the way out, as client-go's ReleaseOnCancel does:
/// no holder, so the next replica need not wait out the duration.
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => info!(lease = %config.name, "leader election: lease released"),
        Err(e) => {
            warn!(lease = %config.name, error = %e, "leader election: could not release the lease; the next replica waits out its duration")
        }
    }
}
