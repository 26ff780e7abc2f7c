//! The skim is held to serde_json: on every body it reads, it must read
//! what serde_json reads; on every body serde_json refuses, it must give
//! up. Real apiserver bodies, hand-made edge cases, random edits of a rich
//! body, and random JSON in the places the skim skips.

use std::fmt::Debug;

use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{MAX_DEPTH, from_str};
use crate::review::{admission, image_review};

/// Whether the skim read `text` as `T`, after checking that what it read
/// is what serde_json reads.
fn skims_as<T: DeserializeOwned + PartialEq + Debug>(text: &str) -> bool {
    let skimmed: Option<T> = from_str(text);
    let full = serde_json::from_str::<T>(text);
    match skimmed {
        Some(skimmed) => {
            assert_eq!(
                Some(&skimmed),
                full.as_ref().ok(),
                "the skim read {text:?} differently from serde_json ({full:?})"
            );
            true
        }
        None => false,
    }
}

/// Both review types, checked; whether the skim read it as an AdmissionReview.
fn skims(text: &str) -> bool {
    skims_as::<image_review::Envelope>(text);
    skims_as::<admission::Envelope>(text)
}

/// Whether serde_json reads it as an AdmissionReview.
fn serde_reads(text: &str) -> bool {
    serde_json::from_str::<admission::Envelope>(text).is_ok()
}

/// A Pod CREATE with what a real one carries and more: managedFields,
/// numbers of every form, escapes in kept and skipped strings, init and
/// ephemeral containers, an image volume, owner references, user info.
fn rich_pod() -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b4c5e7e-6c2b-4a39-9d3c-8a1f6d2e9b10",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "5e1b", "groups": ["system:serviceaccounts", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/pod-name": ["x"]}
            },
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "generateName": "web-7d4b9c-",
                    "namespace": "team-a",
                    "labels": {"app": "web", "pod-template-hash": "7d4b9c"},
                    "annotations": {
                        "kubectl.kubernetes.io/last-applied-configuration":
                            "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"web\"}}\n",
                        "note": "caf\u{e9} \u{1f600} tab\there \\ slash/"
                    },
                    "ownerReferences": [{
                        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c",
                        "uid": "a1b2", "controller": true, "blockOwnerDeletion": true
                    }],
                    "managedFields": [{
                        "manager": "kube-controller-manager", "operation": "Update",
                        "apiVersion": "v1", "time": "2026-11-22T06:45:55Z", "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:metadata": {"f:ownerReferences": {
                            ".": {}, "k:{\"uid\":\"a1b2\"}": {}
                        }}}
                    }]
                },
                "spec": {
                    "initContainers": [{"name": "init", "image": "registry.example/init@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}],
                    "containers": [
                        {"name": "web", "image": "registry.example/web:1.2", "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                         "resources": {"limits": {"cpu": "500m"}, "requests": {"cpu": 0.25}},
                         "env": [{"name": "RATIO", "value": "1"}], "tty": false, "stdin": null},
                        {"name": "sidecar", "image": "registry.example/sidecar:3"}
                    ],
                    "ephemeralContainers": [{"name": "debug", "image": "busybox:1.36"}],
                    "volumes": [
                        {"name": "data", "emptyDir": {}},
                        {"name": "model", "image": {"reference": "registry.example/model:v1", "pullPolicy": "IfNotPresent"}}
                    ],
                    "terminationGracePeriodSeconds": 30,
                    "priority": -1,
                    "overhead": {"x": 1.5e3, "y": -0.0, "z": 2E-2, "w": 10E+1},
                    "securityContext": {}
                },
                "status": {"phase": "Pending", "conditions": []}
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

fn fixture_bodies() -> Vec<(String, Value)> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apiserver-v1.28");
    let mut bodies = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let path = entry.expect("fixture").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("fixture text");
            let fixture: Value = serde_json::from_str(&text).expect("fixture JSON");
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            bodies.push((name, fixture["body"].clone()));
        }
    }
    assert_eq!(bodies.len(), 6, "the six apiserver fixtures");
    bodies
}

#[test]
fn reads_every_apiserver_body_as_serde_json_does() {
    for (name, body) in fixture_bodies() {
        for text in [
            serde_json::to_string(&body).unwrap(),
            serde_json::to_string_pretty(&body).unwrap(),
        ] {
            let read = if name.starts_with("admission") {
                skims_as::<admission::Envelope>(&text)
            } else {
                skims_as::<image_review::Envelope>(&text)
            };
            assert!(read, "the skim gave up on {name}");
        }
    }
}

#[test]
fn reads_a_rich_pod_as_serde_json_does() {
    let body = rich_pod();
    assert!(skims(&serde_json::to_string(&body).unwrap()));
    assert!(skims(&serde_json::to_string_pretty(&body).unwrap()));
    // Whitespace of every kind JSON allows, between every token.
    let spaced = serde_json::to_string_pretty(&body)
        .unwrap()
        .replace("\n", "\r\n\t");
    assert!(skims(&spaced));
}

#[test]
fn unescapes_kept_strings_as_serde_json_does() {
    let mut body = rich_pod();
    body["request"]["object"]["metadata"]["annotations"]["pair"] = json!("\u{1f600}");
    let text = serde_json::to_string(&body)
        .unwrap()
        // The same character written as a surrogate pair escape.
        .replace("\"pair\":\"\u{1f600}\"", "\"pair\":\"\\ud83d\\ude00\"")
        .replace("\"note\":\"caf\u{e9}", "\"note\":\"caf\\u00e9\\/");
    assert!(text.contains("\\ud83d\\ude00") && text.contains("\\u00e9\\/"));
    assert!(skims(&text));
}

#[test]
fn gives_up_where_serde_json_refuses() {
    let good = serde_json::to_string(&rich_pod()).unwrap();
    let edit = |from: &str, to: &str| {
        assert!(good.contains(from), "{from:?} is in the body");
        good.replacen(from, to, 1)
    };
    let refused = [
        // Numbers that are not JSON, in skipped fields.
        edit(
            "\"terminationGracePeriodSeconds\":30",
            "\"terminationGracePeriodSeconds\":030",
        ),
        edit(
            "\"terminationGracePeriodSeconds\":30",
            "\"terminationGracePeriodSeconds\":30.",
        ),
        edit(
            "\"terminationGracePeriodSeconds\":30",
            "\"terminationGracePeriodSeconds\":-",
        ),
        edit(
            "\"terminationGracePeriodSeconds\":30",
            "\"terminationGracePeriodSeconds\":.5",
        ),
        edit(
            "\"terminationGracePeriodSeconds\":30",
            "\"terminationGracePeriodSeconds\":+1",
        ),
        edit(
            "\"terminationGracePeriodSeconds\":30",
            "\"terminationGracePeriodSeconds\":1e",
        ),
        edit(
            "\"terminationGracePeriodSeconds\":30",
            "\"terminationGracePeriodSeconds\":1e+",
        ),
        // Literals cut short or misspelt.
        edit("\"tty\":false", "\"tty\":fals"),
        edit("\"stdin\":null", "\"stdin\":nul"),
        edit("\"controller\":true", "\"controller\":True"),
        // Strings: a raw control character, a bad escape, a short \u.
        edit("\"phase\":\"Pending\"", "\"phase\":\"Pen\u{1}ding\""),
        edit("\"phase\":\"Pending\"", "\"phase\":\"Pen\\xding\""),
        edit("\"phase\":\"Pending\"", "\"phase\":\"Pen\\u12G4\""),
        edit("\"phase\":\"Pending\"", "\"phase\":\"Pen\\u12\""),
        // A lone surrogate in a kept string (serde_json refuses it there).
        edit("\"app\":\"web\"", "\"app\":\"\\ud800\""),
        // Structure: trailing commas, a missing comma or colon, a stray
        // closing bracket, an unclosed body, content after the body.
        edit("\"securityContext\":{}", "\"securityContext\":{},"),
        edit("\"conditions\":[]", "\"conditions\":[1,]"),
        edit("\"emptyDir\":{}", "\"emptyDir\":{\"a\":1,}"),
        edit("\"emptyDir\":{}", "\"emptyDir\":{,}"),
        edit("\"emptyDir\":{}", "\"emptyDir\":{\"a\" 1}"),
        edit("\"emptyDir\":{}", "\"emptyDir\":{\"a\":1 \"b\":2}"),
        edit("\"emptyDir\":{}", "\"emptyDir\":{1:2}"),
        edit("\"stdin\":null,", "\"stdin\":null "),
        edit("\"stdin\":null", "\"stdin\" null"),
        edit("\"conditions\":[]", "\"conditions\":[]]"),
        good[..good.len() - 1].to_string(),
        format!("{good} {{}}"),
        format!("\u{feff}{good}"),
        // Types: the uid a number, dryRun a string, a label value null.
        edit(
            "\"uid\":\"0b4c5e7e-6c2b-4a39-9d3c-8a1f6d2e9b10\"",
            "\"uid\":7",
        ),
        edit("\"dryRun\":false", "\"dryRun\":\"yes\""),
        edit("\"app\":\"web\"", "\"app\":null"),
        // A field twice in a struct.
        edit(
            "\"operation\":\"CREATE\"",
            "\"operation\":\"CREATE\",\"operation\":\"DELETE\"",
        ),
    ];
    for text in refused {
        assert!(
            !serde_reads(&text),
            "serde_json reads {text:?}: not a refusal"
        );
        assert!(
            !skims(&text),
            "the skim read {text:?}, which serde_json refuses"
        );
    }
}

#[test]
fn leaves_to_serde_json_what_it_does_not_read_itself() {
    let good = serde_json::to_string(&rich_pod()).unwrap();
    let mut deep = String::new();
    for _ in 0..MAX_DEPTH + 1 {
        deep.push('[');
    }
    for _ in 0..MAX_DEPTH + 1 {
        deep.push(']');
    }
    let left = [
        // Nesting past the skim's depth, within serde_json's.
        good.replacen(
            "\"securityContext\":{}",
            &format!("\"securityContext\":{deep}"),
            1,
        ),
        // A key with an escape ("uid").
        good.replacen("\"uid\":\"0b4c", "\"ui\\u0064\":\"0b4c", 1),
        // A struct written as an array, which serde_json accepts.
        r#"["admission.k8s.io/v1","AdmissionReview",null]"#.to_string(),
    ];
    for text in left {
        assert!(serde_reads(&text), "serde_json reads {text:?}");
        assert!(!skims(&text), "the skim leaves {text:?} to serde_json");
    }
}

#[test]
fn a_label_given_twice_keeps_the_last_as_serde_json_does() {
    let good = serde_json::to_string(&rich_pod()).unwrap();
    let text = good.replacen("\"app\":\"web\"", "\"app\":\"web\",\"app\":\"other\"", 1);
    assert!(skims(&text));
}

/// A stop at every position of a string of up to 44 bytes, kept and
/// skipped: every lane of the 16- and 8-byte scans, with the closing quote
/// in every lane too.
#[test]
fn finds_a_stop_at_every_position_of_a_string() {
    let good = serde_json::to_string(&rich_pod()).unwrap();
    // What each insert is, written raw into the JSON text, and whether
    // that makes JSON serde_json reads.
    let inserts = [
        ("\\\"", true),
        ("\\\\", true),
        ("\\u00e9", true),
        ("\\n", true),
        ("\u{1}", false),
        ("\u{1f}", false),
        ("\n", false),
        ("\t", false),
        ("\u{7f}", true),
        (" ", true),
        ("\u{e9}", true),
        ("\\x", false),
    ];
    let places = [
        // An annotation, kept.
        "\"note\":\"",
        // The phase in the status, skipped.
        "\"phase\":\"",
        // A key in managedFields, skipped.
        "\"f:metadata\":{\"",
    ];
    for at in 0..40 {
        for (insert, valid) in inserts {
            for place in places {
                let filler = format!("{}{insert}{}", "a".repeat(at), "b".repeat(at % 5));
                let text = good.replacen(place, &format!("{place}{filler}"), 1);
                assert_ne!(text, good, "{place} is in the body");
                assert_eq!(
                    serde_reads(&text),
                    valid,
                    "serde_json on {insert:?} at {at}"
                );
                assert_eq!(
                    skims(&text),
                    valid,
                    "the skim on {insert:?} at {at} after {place}"
                );
            }
        }
    }
}

/// Bytes that change what JSON means, for the random edits.
const SIGNIFICANT: &[char] = &[
    '"', '\\', '{', '}', '[', ']', ',', ':', '0', '1', '-', '+', '.', 'e', 'E', ' ', '\n', 'n',
    't', 'f', 'u', '/', '\u{1}', '\u{7f}', 'é',
];

/// Random JSON: every kind of value, nested, with escapes and numbers.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "(?s).{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("(?s).{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// Random edits of a rich body: whatever the skim reads, serde_json
    /// reads the same (`skims` asserts it); the edits make every kind of
    /// broken and odd JSON.
    #[test]
    fn never_reads_an_edited_body_differently(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0..3u8, prop::sample::select(SIGNIFICANT)), 1..4),
        pretty in any::<bool>(),
    ) {
        let body = rich_pod();
        let mut text: Vec<char> = if pretty {
            serde_json::to_string_pretty(&body).unwrap()
        } else {
            serde_json::to_string(&body).unwrap()
        }.chars().collect();
        for (at, how, c) in edits {
            let i = at.index(text.len());
            match how {
                0 => text.insert(i, c),
                1 => text[i] = c,
                _ => { text.remove(i); }
            }
        }
        let text: String = text.into_iter().collect();
        skims(&text);
    }

    /// Any JSON in a field the review skips is skimmed over, and the rest
    /// read as serde_json reads it.
    #[test]
    fn skims_over_any_json_in_a_skipped_field(value in any_json(), pretty in any::<bool>()) {
        let mut body = rich_pod();
        body["request"]["object"]["spec"]["containers"][0]["args"] = value.clone();
        body["request"]["object"]["status"] = value;
        let text = if pretty {
            serde_json::to_string_pretty(&body).unwrap()
        } else {
            serde_json::to_string(&body).unwrap()
        };
        prop_assert!(skims(&text), "the skim gave up on {}", text);
    }

    /// Any string as an annotation (a kept string): escapes of every kind.
    #[test]
    fn reads_any_annotation_as_serde_json_does(value in "(?s).{0,24}", key in "(?s).{0,12}") {
        let mut body = rich_pod();
        body["request"]["object"]["metadata"]["annotations"][key.as_str()] = json!(value);
        let text = serde_json::to_string(&body).unwrap();
        let read = skims(&text);
        // Keys are given up on only when they carry an escape.
        let escaped_key = serde_json::to_string(&key).unwrap().contains('\\');
        prop_assert_eq!(read, !escaped_key);
    }
}
