use super::*;

/// The store's writer, which reads too.
fn open_writer(path: &Path) -> Result<StoreWriter, StoreError> {
    Store::open(path).map(|(_, writer)| writer)
}
use crate::model::Origin;

fn digest(n: u8) -> Digest {
    Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
}

fn approval(n: u8) -> Approval {
    Approval {
        digest: digest(n),
        reference: Some(format!("registry.test/app:{n}")),
        namespace: Some("default".into()),
        source: "test".into(),
        received_at_ms: now_ms(),
        rule: None,
        admitted_at_ms: 0,
        origin: Origin::Admission,
        unverified: false,
        break_glass: false,
        expires_at_ms: None,
        refreshed_at_ms: 0,
        signers: Vec::new(),
    }
}

#[test]
fn approvals_are_idempotent_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = open_writer(&path).unwrap();
        assert_eq!(store.add_approvals(&[approval(1), approval(2)]).unwrap(), 2);
        assert_eq!(store.add_approvals(&[approval(2), approval(3)]).unwrap(), 1);
        assert!(store.is_approved(digest(3).as_str()));
    }
    let store = open_writer(&path).unwrap();
    assert_eq!(store.approval_count(), 3);
    assert!(store.is_approved(digest(1).as_str()));
    assert!(!store.is_approved(digest(4).as_str()));
    assert!(!store.is_approved("sha256:not-a-digest"));
}

#[test]
fn sources_keep_the_highest_generation_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = open_writer(&path).unwrap();
        let r = store
            .add_approvals_from("webhook/a", &[approval(1), approval(2)], 7, None, 0)
            .unwrap();
        assert_eq!((r.added, r.generation), (2, 7));
        assert!(!r.holds_cluster_set);
        // Another replica's ledger counts on its own.
        let r = store
            .add_approvals_from("webhook/b", &[approval(2), approval(3)], 3, Some(9), 0)
            .unwrap();
        assert_eq!((r.added, r.generation), (1, 3));
        assert!(
            !r.holds_cluster_set,
            "told of its cluster set at 9, holds 3"
        );
        // An older push does not move a generation back.
        let r = store
            .add_approvals_from("webhook/a", &[], 5, None, 0)
            .unwrap();
        assert_eq!(r.generation, 7);
        let r = store
            .add_approvals_from("webhook/b", &[], 9, None, 0)
            .unwrap();
        assert!(r.holds_cluster_set, "reaches the generation it was told of");
    }
    let store = open_writer(&path).unwrap();
    assert_eq!(store.source_generation("webhook/a").unwrap(), 7);
    assert_eq!(store.source_generation("nobody").unwrap(), 0);
    assert_eq!(store.sources().unwrap().len(), 2);
    assert_eq!(store.approval_count(), 3);
}

#[test]
fn an_unverified_approval_says_so_until_a_verified_one_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let unverified = Approval {
        unverified: true,
        ..approval(1)
    };
    {
        let store = open_writer(&path).unwrap();
        store
            .add_approvals_from("w/a", &[unverified.clone(), approval(2)], 2, None, 0)
            .unwrap();
        assert!(store.approved(digest(1).as_str()).unwrap().unverified);
        assert!(!store.approved(digest(2).as_str()).unwrap().unverified);
        assert_eq!(store.approved(digest(3).as_str()), None);
    }
    // Kept across a restart...
    let store = open_writer(&path).unwrap();
    assert!(store.approved(digest(1).as_str()).unwrap().unverified);
    // ...until the registry confirms it in another approval.
    store
        .add_approvals_from("w/b", &[approval(1)], 1, None, 0)
        .unwrap();
    assert!(!store.approved(digest(1).as_str()).unwrap().unverified);
    drop(store);
    let store = open_writer(&path).unwrap();
    assert!(!store.approved(digest(1).as_str()).unwrap().unverified);
}

#[test]
fn a_break_glass_approval_ends_when_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_writer(&dir.path().join("state.redb")).unwrap();
    let glass = |n, expires_at_ms| Approval {
        break_glass: true,
        expires_at_ms,
        ..approval(n)
    };
    store
        .add_approvals_from(
            "w/a",
            &[glass(1, Some(now_ms() + 60_000)), glass(2, Some(1))],
            2,
            None,
            0,
        )
        .unwrap();
    assert!(store.approved(digest(1).as_str()).unwrap().break_glass);
    assert_eq!(store.approved(digest(2).as_str()), None, "expired");
    // An approval by a rule outlives it.
    store
        .add_approvals_from("w/b", &[approval(2)], 1, None, 0)
        .unwrap();
    assert_eq!(store.approved(digest(2).as_str()), Some(Caveats::default()));
}

#[test]
fn violations_are_numbered_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let violation = Violation {
        seq: 0,
        at_ms: 1,
        container: "default/x".into(),
        pod: None,
        image: Some("registry.test/x:1".into()),
        digest: Some(digest(9)),
        verdict: ContainerVerdict::NeverAdmitted,
        reason: "never admitted".into(),
        enforced: false,
    };
    {
        let store = open_writer(&path).unwrap();
        assert_eq!(store.add_violation(violation.clone()).unwrap().seq, 1);
        assert_eq!(store.add_violation(violation.clone()).unwrap().seq, 2);
    }
    let store = open_writer(&path).unwrap();
    assert_eq!(store.add_violation(violation).unwrap().seq, 3);
    let all = store.violations().unwrap();
    assert_eq!(all.iter().map(|v| v.seq).collect::<Vec<_>>(), [1, 2, 3]);
}

#[test]
fn a_second_open_of_the_same_file_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let _first = open_writer(&path).unwrap();
    let err = open_writer(&path).err().expect("second open refused");
    assert!(err.to_string().contains("--state-dir"), "{err}");
}

fn container(key: &str, cgroup: &str, verdict: ContainerVerdict, d: Option<u8>) -> ContainerRecord {
    ContainerRecord {
        key: key.into(),
        runtime_namespace: Some("k8s.io".into()),
        id: Some(key.into()),
        image: None,
        digest: d.map(digest),
        platform_digest: None,
        pod: None,
        cgroup: cgroup.into(),
        verdict,
        reason: String::new(),
        first_seen_ms: 1,
        decided_at_ms: 1,
        gone_at_ms: None,
    }
}

const DAY: u64 = 86_400_000;

#[test]
fn retention_drops_gone_containers_never_running_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_writer(&dir.path().join("state.redb")).unwrap();
    for (key, verdict) in [
        ("running", ContainerVerdict::Admitted),
        ("long-gone", ContainerVerdict::NeverAdmitted),
        ("just-gone", ContainerVerdict::NeverAdmitted),
    ] {
        store
            .put_container(&container(key, &format!("/{key}"), verdict, None))
            .unwrap();
    }
    assert_eq!(
        store
            .count_with_verdict(ContainerVerdict::NeverAdmitted)
            .unwrap(),
        2
    );
    let now = now_ms();
    store
        .mark_gone(&["long-gone".into()], now - 8 * DAY)
        .unwrap();
    let keep = Retention {
        records_ms: 7 * DAY,
        max_containers: 100,
        max_violations: 100,
    };
    // "just-gone"'s cgroup is gone: marked now, kept for the retention.
    let pruned = store.prune(now, &keep, |c| c.cgroup == "/running").unwrap();
    assert_eq!(pruned.containers, 1, "{pruned:?}");
    let left = store.containers_page(None, "", 10, |_| true).unwrap().items;
    let keys: Vec<&str> = left.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["just-gone", "running"]);
    assert_eq!(left[0].gone_at_ms, Some(now));
    assert_eq!(left[1].gone_at_ms, None);
    assert_eq!(
        store
            .count_with_verdict(ContainerVerdict::NeverAdmitted)
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .count_with_verdict(ContainerVerdict::Admitted)
            .unwrap(),
        1
    );

    // Over the count: gone records go, running ones never do.
    let tight = Retention {
        max_containers: 0,
        ..keep
    };
    let pruned = store
        .prune(now, &tight, |c| c.cgroup == "/running")
        .unwrap();
    assert_eq!(pruned.containers, 1);
    let left = store.containers_page(None, "", 10, |_| true).unwrap().items;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key, "running");
    assert_eq!(store.pruned().unwrap().0, 2, "counted across passes");
}

#[test]
fn retention_drops_the_oldest_violations_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_writer(&dir.path().join("state.redb")).unwrap();
    let now = now_ms();
    for at_ms in [now - 9 * DAY, now - 3, now - 2, now - 1] {
        store
            .add_violation(Violation {
                seq: 0,
                at_ms,
                container: "default/x".into(),
                pod: None,
                image: None,
                digest: None,
                verdict: ContainerVerdict::NeverAdmitted,
                reason: "never admitted".into(),
                enforced: false,
            })
            .unwrap();
    }
    let keep = Retention {
        records_ms: 7 * DAY,
        max_containers: 100,
        max_violations: 2,
    };
    let pruned = store.prune(now, &keep, |_| true).unwrap();
    assert_eq!(pruned.violations, 2, "one too old, one over the count");
    let left = store.violations_page(0, 10, |_| true).unwrap().items;
    let ats: Vec<u64> = left.iter().map(|v| v.at_ms).collect();
    assert_eq!(ats, [now - 2, now - 1]);
}

#[test]
fn approvals_expire_after_the_senders_retention_unless_running_or_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_writer(&dir.path().join("state.redb")).unwrap();
    let retention = 30 * DAY;
    store
        .add_approvals_from(
            "w/a",
            &[approval(1), approval(2), approval(3)],
            3,
            None,
            retention,
        )
        .unwrap();
    // 3 is also listed in the approvals file: the file's from now on.
    store
        .add_approvals(&[Approval {
            source: "file:/etc/approvals".into(),
            ..approval(3)
        }])
        .unwrap();
    store
        .put_container(&container(
            "uses-2",
            "/uses-2",
            ContainerVerdict::Admitted,
            Some(2),
        ))
        .unwrap();
    let keep = Retention {
        records_ms: 7 * DAY,
        max_containers: 100,
        max_violations: 100,
    };
    let now = now_ms();
    // Inside the retention: nothing expires.
    assert_eq!(
        store.prune(now + DAY, &keep, |_| true).unwrap(),
        Pruned::default()
    );
    let pruned = store.prune(now + retention + DAY, &keep, |_| true).unwrap();
    assert_eq!(pruned.approvals, [digest(1)]);
    assert!(
        !store.is_approved(digest(1).as_str()),
        "gone from memory too"
    );
    assert!(
        store.is_approved(digest(2).as_str()),
        "a running container uses it"
    );
    assert!(store.is_approved(digest(3).as_str()), "a file's approval");
    assert_eq!(store.approval_count(), 2);
    // Once the container is gone, its digest expires too.
    let pruned = store
        .prune(now + retention + 2 * DAY, &keep, |_| false)
        .unwrap();
    assert_eq!(pruned.approvals, [digest(2)]);
    // A reopened store agrees.
    drop(store);
    let store = open_writer(&dir.path().join("state.redb")).unwrap();
    assert_eq!(store.approval_count(), 1);
    assert_eq!(store.pruned().unwrap().2, 2);
}

#[test]
fn without_a_sender_retention_approvals_never_expire() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_writer(&dir.path().join("state.redb")).unwrap();
    store
        .add_approvals_from("w/old", &[approval(1)], 1, None, 0)
        .unwrap();
    let keep = Retention {
        records_ms: DAY,
        max_containers: 10,
        max_violations: 10,
    };
    let pruned = store.prune(now_ms() + 3650 * DAY, &keep, |_| true).unwrap();
    assert!(pruned.approvals.is_empty());
    assert!(store.is_approved(digest(1).as_str()));
}

#[test]
fn pages_follow_their_tokens_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_writer(&dir.path().join("state.redb")).unwrap();
    for n in 0..7u8 {
        let verdict = if n % 2 == 0 {
            ContainerVerdict::Admitted
        } else {
            ContainerVerdict::NeverAdmitted
        };
        store
            .put_container(&container(&format!("ns/c{n}"), "/x", verdict, None))
            .unwrap();
    }
    store
        .put_container(&container(
            "other/c",
            "/x",
            ContainerVerdict::Admitted,
            None,
        ))
        .unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .containers_page(after.as_deref(), "ns/", 2, |c| {
                c.verdict == ContainerVerdict::Admitted
            })
            .unwrap();
        seen.extend(page.items.into_iter().map(|c| c.key));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["ns/c0", "ns/c2", "ns/c4", "ns/c6"]);
    // A verdict that changes moves between counts.
    assert_eq!(
        store
            .count_with_verdict(ContainerVerdict::Admitted)
            .unwrap(),
        5
    );
    store
        .put_container(&container("ns/c1", "/x", ContainerVerdict::Admitted, None))
        .unwrap();
    assert_eq!(
        store
            .count_with_verdict(ContainerVerdict::Admitted)
            .unwrap(),
        6
    );
    assert_eq!(
        store
            .count_with_verdict(ContainerVerdict::NeverAdmitted)
            .unwrap(),
        2
    );
}

#[test]
fn a_page_reads_at_most_max_scan_records() {
    let rows = || (0..25_000u64).map(|n| Ok((n, n)));
    // A filter that matches nothing: a short (empty) page that says
    // where to go on from, after MAX_SCAN reads.
    let page_of_none = page(rows(), 100, |_| false).unwrap();
    assert!(page_of_none.items.is_empty());
    assert_eq!(page_of_none.next, Some(MAX_SCAN as u64 - 1));
    // A full page stops at its limit.
    let full = page(rows(), 3, |n| n % 2 == 0).unwrap();
    assert_eq!(full.items, [0, 2, 4]);
    assert_eq!(full.next, Some(4));
    // The last page says nothing follows.
    let last = page((0..5u64).map(|n| Ok((n, n))), 10, |_| true).unwrap();
    assert_eq!((last.items.len(), last.next), (5, None));
}

#[test]
fn what_changed_between_the_scan_and_the_drop_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_writer(&dir.path().join("state.redb")).unwrap();
    let now = now_ms();
    store
        .put_container(&container(
            "k8s.io/x",
            "/x",
            ContainerVerdict::NeverAdmitted,
            None,
        ))
        .unwrap();
    store
        .mark_gone(&["k8s.io/x".into()], now - 8 * DAY)
        .unwrap();
    let keep = Retention {
        records_ms: 7 * DAY,
        max_containers: 100,
        max_violations: 100,
    };
    let plan = store.plan_prune(now, &keep, |_| true).unwrap();
    assert_eq!(plan.containers, ["k8s.io/x"]);
    // The key is a running container again before the drop.
    store
        .put_container(&container(
            "k8s.io/x",
            "/x",
            ContainerVerdict::Admitted,
            None,
        ))
        .unwrap();
    let pruned = store.apply_prune(now, &plan).unwrap();
    assert_eq!(pruned.containers, 0);
    let kept = store.container("k8s.io/x").unwrap().expect("kept");
    assert_eq!(
        (kept.verdict, kept.gone_at_ms),
        (ContainerVerdict::Admitted, None)
    );
    assert_eq!(
        store
            .count_with_verdict(ContainerVerdict::Admitted)
            .unwrap(),
        1
    );
}
