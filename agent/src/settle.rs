//! When enforce mode may start killing.
//!
//! A new agent does not know what already ran on its node before imagegate
//! was installed: those containers have no approval until a webhook has
//! rebuilt the admitted set from the cluster (every running pod's images,
//! checked against the policy) and pushed it. Killing before then would kill
//! workloads that were admitted long ago. So in enforce mode the agent
//! *settles* first: it flags violations as audit mode does and kills
//! nothing until it holds a webhook's cluster set, or until a settle window
//! counted from its first start on this node has passed. Settled is
//! forever (kept in the store): a restart, or a webhook that loses its
//! ledger, does not reopen the window.

use std::{
    sync::RwLock,
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use imagegate_plumbing::clock::now_ms;

use crate::{
    model::{Mode, SettleRecord, Settled},
    store::{StoreError, StoreWriter},
};

/// Whether violations are stopped now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// Audit mode: flagged, never stopped.
    Audit,
    /// Enforce mode, settling: flagged, not stopped, until `deadline_ms`
    /// at the latest.
    Settling { deadline_ms: u64 },
    /// Enforce mode: stopped.
    Enforcing { since_ms: u64, by: String },
}

impl Enforcement {
    pub fn kills(&self) -> bool {
        matches!(self, Enforcement::Enforcing { .. })
    }
}

/// The enforcement state for `record` at `now_ms`. A window that has
/// passed settles even before anyone writes it down.
pub fn enforcement(
    mode: Mode,
    record: &SettleRecord,
    window: Duration,
    now_ms: u64,
) -> Enforcement {
    if mode == Mode::Audit {
        return Enforcement::Audit;
    }
    if let Some(settled) = &record.settled {
        return Enforcement::Enforcing {
            since_ms: settled.at_ms,
            by: settled.by.clone(),
        };
    }
    let deadline_ms = record
        .first_start_ms
        .saturating_add(window.as_millis() as u64);
    if now_ms >= deadline_ms {
        Enforcement::Enforcing {
            since_ms: deadline_ms,
            by: window_reason(window),
        }
    } else {
        Enforcement::Settling { deadline_ms }
    }
}

fn window_reason(window: Duration) -> String {
    format!(
        "the settle window ({}) after the agent's first start passed",
        humantime::format_duration(window)
    )
}

/// The agent's settle state, shared by the engine (which acts on it) and
/// the API (which learns of cluster sets).
pub struct Gate {
    mode: Mode,
    window: Duration,
    record: RwLock<SettleRecord>,
    /// Notified when the agent settles.
    pub settled: Notify,
}

impl Gate {
    /// Reads the record, writing the first start if this is it.
    pub fn open(mode: Mode, window: Duration, store: &StoreWriter) -> Result<Self, StoreError> {
        let record = match store.settle_record()? {
            Some(record) => record,
            None => {
                let record = SettleRecord {
                    first_start_ms: now_ms(),
                    settled: None,
                };
                store.put_settle_record(&record)?;
                record
            }
        };
        Ok(Self {
            mode,
            window,
            record: RwLock::new(record),
            settled: Notify::new(),
        })
    }

    pub fn now(&self) -> Enforcement {
        let record = self.record.read().unwrap_or_else(|e| e.into_inner());
        enforcement(self.mode, &record, self.window, now_ms())
    }

    /// Whether violations are stopped now.
    pub fn kills(&self) -> bool {
        self.now().kills()
    }

    /// When the window ends, if the agent is still settling.
    pub fn deadline(&self) -> Option<Instant> {
        match self.now() {
            Enforcement::Settling { deadline_ms } => {
                Some(Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms())))
            }
            _ => None,
        }
    }

    /// Settles for the window, once it has passed.
    pub fn settle_by_window(&self, store: &StoreWriter) -> bool {
        match self.now() {
            Enforcement::Enforcing { by, .. } => self.settle(by, store),
            _ => false,
        }
    }

    /// Records that the agent settled (`by` says why); true if it was not
    /// settled before. Notifies the engine. Written by the store's one
    /// writer (the engine's writer thread).
    pub fn settle(&self, by: String, store: &StoreWriter) -> bool {
        if self.mode == Mode::Audit {
            return false;
        }
        let record = {
            let mut record = self.record.write().unwrap_or_else(|e| e.into_inner());
            if record.settled.is_some() {
                return false;
            }
            record.settled = Some(Settled {
                at_ms: now_ms(),
                by,
            });
            record.clone()
        };
        if let Err(e) = store.put_settle_record(&record) {
            // In memory it holds; a restart would settle again the same way.
            tracing::warn!(error = %e, "could not store that the agent settled");
        }
        self.settled.notify_one();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    const MIN: u64 = 60_000;

    fn record(first: u64, settled: Option<(u64, &str)>) -> SettleRecord {
        SettleRecord {
            first_start_ms: first,
            settled: settled.map(|(at_ms, by)| Settled {
                at_ms,
                by: by.into(),
            }),
        }
    }

    #[test]
    fn audit_never_kills() {
        let e = enforcement(Mode::Audit, &record(0, None), Duration::ZERO, 10 * MIN);
        assert_eq!(e, Enforcement::Audit);
        assert!(!e.kills());
    }

    #[test]
    fn enforce_settles_first_then_kills_after_the_window() {
        let window = Duration::from_secs(300);
        let r = record(1_000, None);
        let e = enforcement(Mode::Enforce, &r, window, 1_000 + 4 * MIN);
        assert_eq!(
            e,
            Enforcement::Settling {
                deadline_ms: 1_000 + 5 * MIN
            }
        );
        assert!(!e.kills());
        let e = enforcement(Mode::Enforce, &r, window, 1_000 + 5 * MIN);
        assert!(e.kills(), "{e:?}");
        assert!(
            matches!(&e, Enforcement::Enforcing { since_ms, by } if *since_ms == 1_000 + 5 * MIN && by.contains("5m")),
            "{e:?}"
        );
    }

    #[test]
    fn a_cluster_set_settles_before_the_window_and_for_good() {
        let r = record(
            1_000,
            Some((2_000, "cluster set from imagegate-webhook/l1")),
        );
        let e = enforcement(Mode::Enforce, &r, Duration::from_secs(3600), 3_000);
        assert_eq!(
            e,
            Enforcement::Enforcing {
                since_ms: 2_000,
                by: "cluster set from imagegate-webhook/l1".into()
            }
        );
    }

    #[test]
    fn the_gate_keeps_its_first_start_and_settling_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let first;
        {
            let (_, store) = Store::open(&path).unwrap();
            let gate = Gate::open(Mode::Enforce, Duration::from_secs(3600), &store).unwrap();
            assert!(matches!(gate.now(), Enforcement::Settling { .. }));
            assert!(gate.deadline().is_some());
            first = gate.record.read().unwrap().first_start_ms;
            assert!(gate.settle("cluster set".into(), &store));
            assert!(!gate.settle("again".into(), &store), "settles once");
            assert!(gate.kills());
        }
        let (_, store) = Store::open(&path).unwrap();
        let gate = Gate::open(Mode::Enforce, Duration::from_secs(3600), &store).unwrap();
        assert_eq!(gate.record.read().unwrap().first_start_ms, first);
        assert!(matches!(gate.now(), Enforcement::Enforcing { by, .. } if by == "cluster set"));
        assert_eq!(gate.deadline(), None);
    }
}
