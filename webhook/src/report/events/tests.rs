use std::{collections::BTreeMap, sync::Mutex};

use super::*;
use crate::report::model::PodRef;

/// The apiserver's Events as a map, answering as the apiserver does.
#[derive(Default)]
struct FakeApi {
    events: Mutex<BTreeMap<(String, String), Event>>,
}

impl EventSink for &FakeApi {
    async fn create(&self, event: &Event) -> Result<(), SinkError> {
        let key = (
            event.metadata.namespace.clone().unwrap(),
            event.metadata.name.clone().unwrap(),
        );
        let mut events = self.events.lock().unwrap();
        if events.contains_key(&key) {
            return Err(SinkError::AlreadyExists);
        }
        events.insert(key, event.clone());
        Ok(())
    }
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Event>, SinkError> {
        Ok(self
            .events
            .lock()
            .unwrap()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned())
    }
    async fn recount(
        &self,
        namespace: &str,
        name: &str,
        count: i32,
        last: &Time,
        message: &str,
    ) -> Result<(), SinkError> {
        let mut events = self.events.lock().unwrap();
        let event = events
            .get_mut(&(namespace.to_string(), name.to_string()))
            .ok_or_else(|| SinkError::Api("404".into()))?;
        event.count = Some(count);
        event.last_timestamp = Some(last.clone());
        event.message = Some(message.to_string());
        Ok(())
    }
}

fn violation(pod: &str, digest: &str, at_ms: i64) -> NodeViolation {
    NodeViolation {
        node: "node-1".into(),
        seq: 1,
        at_ms,
        pod: Some(PodRef {
            namespace: "shop".into(),
            name: pod.into(),
            uid: format!("uid-{pod}"),
        }),
        container: "main".into(),
        image: "registry.local/app:1".into(),
        digest: digest.into(),
        kind: Kind::NeverAdmitted,
        reason: "no approval for this digest".into(),
    }
}

const T0: i64 = 1_800_000_000_000;

#[tokio::test]
async fn a_repeat_is_counted_once_and_a_new_leader_counts_nothing_twice() {
    let api = FakeApi::default();
    let mut recorder = Recorder::new(&api);
    let first = violation("web", "sha256:aa", T0);
    let Recorded::Created { name } = recorder.record(&first, T0).await.unwrap() else {
        panic!("not created");
    };
    assert!(name.starts_with("web.imagegate."), "{name}");
    assert_eq!(
        recorder.record(&first, T0).await.unwrap(),
        Recorded::AlreadyCounted
    );
    let again = violation("web", "sha256:aa", T0 + 1_000);
    assert_eq!(
        recorder.record(&again, T0 + 1_000).await.unwrap(),
        Recorded::Counted {
            name: name.clone(),
            count: 2
        }
    );
    // Another replica takes over and reads the agents from the start.
    let mut next = Recorder::new(&api);
    assert_eq!(
        next.record(&first, T0 + 5_000).await.unwrap(),
        Recorded::AlreadyCounted
    );
    assert_eq!(
        next.record(&again, T0 + 5_000).await.unwrap(),
        Recorded::AlreadyCounted
    );
    let third = violation("web", "sha256:aa", T0 + 9_000);
    assert_eq!(
        next.record(&third, T0 + 9_000).await.unwrap(),
        Recorded::Counted {
            name: name.clone(),
            count: 3
        }
    );
    let events = api.events.lock().unwrap();
    assert_eq!(events.len(), 1);
    let event = events.values().next().unwrap();
    assert_eq!(event.count, Some(3));
    assert_eq!(event.reason.as_deref(), Some("NeverAdmitted"));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.involved_object.uid.as_deref(), Some("uid-web"));
    assert_eq!(
        event.last_timestamp.as_ref().unwrap().0.as_millisecond(),
        T0 + 9_000
    );
    assert_eq!(
        event.first_timestamp.as_ref().unwrap().0.as_millisecond(),
        T0
    );
}

#[tokio::test]
async fn reasons_and_images_are_events_of_their_own_and_podless_containers_none() {
    let api = FakeApi::default();
    let mut recorder = Recorder::new(&api);
    let flagged = violation("web", "sha256:aa", T0);
    let mut killed = flagged.clone();
    killed.kind = Kind::Killed;
    let other_image = violation("web", "sha256:bb", T0);
    for v in [&flagged, &killed, &other_image] {
        assert!(matches!(
            recorder.record(v, T0).await.unwrap(),
            Recorded::Created { .. }
        ));
    }
    let mut podless = flagged.clone();
    podless.pod = None;
    assert_eq!(
        recorder.record(&podless, T0).await.unwrap(),
        Recorded::NoPod
    );
    let events = api.events.lock().unwrap();
    assert_eq!(events.len(), 3);
    let killed_event = events
        .values()
        .find(|e| e.reason.as_deref() == Some("Killed"))
        .unwrap();
    assert!(
        killed_event
            .message
            .as_ref()
            .unwrap()
            .contains("stopped on node node-1 (enforce mode)"),
        "{killed_event:?}"
    );
}

#[tokio::test]
async fn a_pod_gets_a_burst_then_one_event_per_five_minutes() {
    let api = FakeApi::default();
    let mut recorder = Recorder::new(&api);
    let mut outcomes = Vec::new();
    // Repeats of one violation, each later than the last: each would count.
    for i in 0..30 {
        let v = violation("web", "sha256:aa", T0 + i);
        outcomes.push(recorder.record(&v, T0 + i).await.unwrap());
    }
    let limited = outcomes
        .iter()
        .filter(|o| **o == Recorded::RateLimited)
        .count();
    assert_eq!(
        limited, 5,
        "25 pass, then the bucket is empty: {outcomes:?}"
    );
    // Another pod has its own bucket.
    let other = violation("api", "sha256:aa", T0 + 30);
    assert!(matches!(
        recorder.record(&other, T0 + 30).await.unwrap(),
        Recorded::Created { .. }
    ));
    // Five minutes later one more passes, and only one.
    let later = T0 + 30 + 300_000;
    let v = violation("web", "sha256:aa", later);
    assert!(matches!(
        recorder.record(&v, later).await.unwrap(),
        Recorded::Counted { count: 26, .. }
    ));
    let v = violation("web", "sha256:aa", later + 1);
    assert_eq!(
        recorder.record(&v, later + 1).await.unwrap(),
        Recorded::RateLimited
    );
}

#[tokio::test]
async fn many_different_images_on_one_pod_fold_into_one_combined_event() {
    let api = FakeApi::default();
    let mut recorder = Recorder::new(&api);
    for i in 0..SIMILAR_LIMIT + 2 {
        let v = violation("web", &format!("sha256:{i:02}"), T0 + i as i64);
        recorder.record(&v, T0 + i as i64).await.unwrap();
    }
    {
        let events = api.events.lock().unwrap();
        assert_eq!(
            events.len(),
            SIMILAR_LIMIT + 1,
            "ten apart, then one combined"
        );
        let combined: Vec<_> = events
            .values()
            .filter(|e| {
                e.message
                    .as_ref()
                    .unwrap()
                    .starts_with("(combined from similar events): ")
            })
            .collect();
        assert_eq!(combined.len(), 1);
        assert_eq!(combined[0].count, Some(2));
        assert!(combined[0].message.as_ref().unwrap().contains("sha256:11"));
    }
    // A known image still counts into its own Event.
    let known = violation("web", "sha256:03", T0 + 100);
    assert!(matches!(
        recorder.record(&known, T0 + 100).await.unwrap(),
        Recorded::Counted { count: 2, .. }
    ));
    // After the window, a new image is an Event of its own again.
    let after = T0 + SIMILAR_WINDOW_MS + 1_000;
    let fresh = violation("web", "sha256:99", after);
    recorder.record(&fresh, after).await.unwrap();
    let events = api.events.lock().unwrap();
    assert!(events.values().any(|e| {
        let m = e.message.as_ref().unwrap();
        m.contains("sha256:99") && !m.starts_with("(combined")
    }));
}

#[tokio::test]
async fn memory_stays_bounded_however_many_pods_violate() {
    let api = FakeApi::default();
    let mut recorder = Recorder::new(&api);
    for i in 0..(TRACKED as i64 * 2) {
        let v = violation(&format!("pod-{i}"), "sha256:aa", T0 + i);
        recorder.record(&v, T0 + i).await.unwrap();
    }
    assert!(recorder.seen.len() <= TRACKED);
    assert!(recorder.buckets.len() <= TRACKED);
    assert!(recorder.similar.len() <= TRACKED);
    assert_eq!(api.events.lock().unwrap().len(), TRACKED * 2);
}

#[test]
fn names_are_valid_object_names_and_stable() {
    let long = "p".repeat(253);
    let pod = PodRef {
        namespace: "shop".into(),
        name: long,
        uid: "u".into(),
    };
    let name = event_name(&Subject::pod(&pod), "u|NeverAdmitted|sha256:aa");
    assert!(name.len() <= 253, "{}", name.len());
    // FNV-1a of a fixed key: the same in every process and release.
    assert_eq!(
        event_name(&Subject::pod(&pod), "u|NeverAdmitted|sha256:aa"),
        event_name(&Subject::pod(&pod), "u|NeverAdmitted|sha256:aa")
    );
    let mut hasher = Fnv64::default();
    hasher.write(b"a");
    assert_eq!(hasher.finish(), 0xaf63_dc4c_8601_ec8c);
}
