//! Whether what was found satisfies a requirement: each artifact's claim
//! must name the admitted digest, its signature must verify with a key the
//! policy names or a certificate that chains to the policy's trusted root
//! with the expected identity, its log entry must verify as the
//! requirement says, and an attestation's predicate must meet its
//! conditions.
//!
//! A keyless certificate is checked at the time of signing, and that time
//! must be verified: by a log entry's signed entry timestamp (Rekor v1)
//! and/or RFC 3161 timestamps from the trusted root's timestamp
//! authorities (the only source with Rekor v2), as many as the requirement
//! asks (`verifiedTimes`, 1 by default, as cosign); the chain and the
//! certificate's validity must hold at every one of them. Its signed
//! certificate timestamp must verify against the root's CT logs unless the
//! requirement says `sct: off`. Pure: no I/O, the time is passed in.

use std::{collections::BTreeMap, time::SystemTime};

use imagegate_proto::digest::Digest;

use super::{
    certificate::{self, Identity},
    key::short,
    model::{Artifact, ClaimKind, Found, Material, Signer},
    rekor::{self, Binding, body::Verifier},
    requirement::{Condition, Rekor, Requirement, Sct, Test, What},
    sct, timestamp,
    trust_root::TrustedRoot,
};

/// Checks `found` against `requirement` for `digest`: the signers that
/// satisfy it, or why it is not satisfied (a sentence for the denial).
pub fn evaluate(
    requirement: &Requirement,
    digest: &Digest,
    found: &Found,
    now: SystemTime,
) -> Result<Vec<Signer>, String> {
    let mut signers = BTreeMap::new();
    let mut seen = Vec::new();
    let mut relevant = 0;
    for artifact in &found.artifacts {
        if !is_wanted(requirement, &artifact.claim.kind) {
            continue;
        }
        relevant += 1;
        if !artifact.claim.subjects.contains(digest) {
            let named = artifact
                .claim
                .subjects
                .first()
                .map(|d| short(d.as_str()))
                .unwrap_or_else(|| "nothing".into());
            seen.push(format!("one signs {named}, not this digest"));
            continue;
        }
        match check(requirement, artifact, now) {
            Ok(identity) => {
                signers.insert(
                    identity.clone(),
                    Signer {
                        requirement: requirement.name.clone(),
                        identity,
                        format: artifact.format.as_str().to_string(),
                    },
                );
            }
            Err(why) => seen.push(why),
        }
    }
    if signers.len() >= requirement.threshold {
        return Ok(signers.into_values().collect());
    }
    let noun = match &requirement.what {
        What::Signature => "signature".to_string(),
        What::Attestation { predicate_type, .. } => format!("attestation of type {predicate_type}"),
    };
    let wanted = if requirement.threshold > 1 {
        format!(
            "{} of the {} {noun}s needed by {}",
            signers.len(),
            requirement.threshold,
            requirement.trusted()
        )
    } else {
        format!("no {noun} by {}", requirement.trusted())
    };
    let mut what_was_found = if relevant == 0 {
        format!("the image has no {noun}")
    } else {
        seen.dedup();
        format!(
            "found {relevant} {noun}{}: {}",
            if relevant == 1 { "" } else { "s" },
            seen.join("; ")
        )
    };
    if !found.unreadable.is_empty() {
        what_was_found.push_str(&format!(
            "; {} unreadable: {}",
            found.unreadable.len(),
            found
                .unreadable
                .first()
                .map(String::as_str)
                .unwrap_or_default()
        ));
    }
    if found.truncated {
        what_was_found.push_str("; more are attached than imagegate reads");
    }
    Err(format!("{wanted} ({what_was_found})"))
}

fn is_wanted(requirement: &Requirement, kind: &ClaimKind) -> bool {
    match (&requirement.what, kind) {
        (What::Signature, ClaimKind::ImageSignature) => true,
        (
            What::Attestation { predicate_type, .. },
            ClaimKind::Attestation {
                predicate_type: p, ..
            },
        ) => predicate_type == p,
        _ => false,
    }
}

/// The identity of a trusted signature on `artifact`, or why it is not.
fn check(
    requirement: &Requirement,
    artifact: &Artifact,
    now: SystemTime,
) -> Result<String, String> {
    let mut why = Vec::new();
    for signature in &artifact.signatures {
        let result = match &artifact.material {
            Material::Key { hint } => {
                by_key(requirement, artifact, signature, hint.as_deref(), now)
            }
            Material::Certificate { der } => {
                by_certificate(requirement, artifact, signature, der, now)
            }
        };
        match result {
            Ok(identity) => {
                if let (
                    What::Attestation { conditions, .. },
                    ClaimKind::Attestation { predicate, .. },
                ) = (&requirement.what, &artifact.claim.kind)
                {
                    for condition in conditions {
                        meets(condition, predicate, now)
                            .map_err(|e| format!("by {identity}, but {e}"))?;
                    }
                }
                return Ok(identity);
            }
            Err(e) => why.push(e),
        }
    }
    Err(why.join("; "))
}

fn by_key(
    requirement: &Requirement,
    artifact: &Artifact,
    signature: &[u8],
    hint: Option<&str>,
    now: SystemTime,
) -> Result<String, String> {
    let Some(key) = requirement
        .keys
        .iter()
        .find(|k| k.verifies(&artifact.signed, signature))
    else {
        return Err(match hint {
            Some(hint) => format!("by key {}, not trusted here", short(hint)),
            None => "by a key that is not trusted here".to_string(),
        });
    };
    let identity = format!("key {:?} ({})", key.name, key.short_fingerprint());
    let binding = binding(artifact, signature, Verifier::Key { key_id: key.id });
    logged(requirement, artifact, &binding, now).map_err(|e| format!("by {identity}, but {e}"))?;
    Ok(identity)
}

fn binding<'a>(artifact: &'a Artifact, signature: &'a [u8], verifier: Verifier<'a>) -> Binding<'a> {
    Binding {
        payload: &artifact.payload,
        signed: &artifact.signed,
        signature,
        signatures: &artifact.signatures,
        verifier,
    }
}

fn by_certificate(
    requirement: &Requirement,
    artifact: &Artifact,
    signature: &[u8],
    der: &[u8],
    now: SystemTime,
) -> Result<String, String> {
    let leaf = certificate::read_leaf(der)?;
    let who = leaf.identity.to_string();
    let Some(keyless) = &requirement.keyless else {
        return Err(format!(
            "by certificate {who}; this requirement trusts keys only"
        ));
    };
    if !leaf.key.verifies(&artifact.signed, signature) {
        return Err(format!(
            "one claiming {who} does not verify with its certificate"
        ));
    }
    let Some(root) = &requirement.root else {
        return Err("keyless, and the requirement has no trusted root".into());
    };
    let binding = binding(
        artifact,
        signature,
        Verifier::Certificate {
            der,
            key_id: leaf.key.id,
        },
    );
    let logged =
        logged(requirement, artifact, &binding, now).map_err(|e| format!("by {who}, but {e}"))?;
    let times = times_of_signing(requirement, root, artifact, signature, logged, now)
        .map_err(|e| format!("by {who}, but {e}"))?;
    let mut issuer = None;
    for (at, source) in &times {
        if *at < leaf.not_before || *at > leaf.not_after {
            return Err(format!(
                "by {who}, but signed at {} ({source}), outside its certificate's validity ({} \
                 to {})",
                humantime::format_rfc3339_seconds(*at),
                humantime::format_rfc3339_seconds(leaf.not_before),
                humantime::format_rfc3339_seconds(leaf.not_after),
            ));
        }
        issuer = Some(
            certificate::verify_chain(root, der, &artifact.chain, *at)
                .map_err(|e| format!("by {who}, but {e}"))?,
        );
    }
    if requirement.sct == Sct::Required
        && let Some(issuer) = &issuer
    {
        sct::verify(root, der, &issuer.der).map_err(|e| format!("by {who}, but {e}"))?;
    }
    check_identity(keyless, &leaf.identity).map_err(|e| format!("by {who}: {e}"))?;
    Ok(who)
}

/// The verified times of signing, each with where it comes from: the log's
/// (from a SET) and the timestamp authorities'; at least as many as the
/// requirement asks, or why not. With `verifiedTimes: 0` and none, the
/// present time.
fn times_of_signing(
    requirement: &Requirement,
    root: &TrustedRoot,
    artifact: &Artifact,
    signature: &[u8],
    logged: Option<rekor::Logged>,
    now: SystemTime,
) -> Result<Vec<(SystemTime, String)>, String> {
    let mut times: Vec<(SystemTime, String)> = logged
        .and_then(|l| l.time)
        .map(|t| (t, "the transparency log's time".to_string()))
        .into_iter()
        .collect();
    let mut failed = Vec::new();
    let mut seen = Vec::new();
    for stamp in artifact.timestamps.iter().take(timestamp::MAX_TIMESTAMPS) {
        // The same timestamp twice is one source of time, not two.
        if seen.contains(&stamp) {
            continue;
        }
        seen.push(stamp);
        match timestamp::verify(root, stamp, signature) {
            Ok(stamped) => times.push((
                stamped.time,
                format!("timestamp authority {}'s time", stamped.authority),
            )),
            Err(e) => failed.push(e),
        }
    }
    if times.len() >= requirement.verified_times {
        if times.is_empty() {
            times.push((
                now,
                "the present time: nothing says when it was signed, and the requirement \
                 accepts that (verifiedTimes: 0)"
                    .to_string(),
            ));
        }
        return Ok(times);
    }
    let wanted = requirement.verified_times;
    let mut why = if artifact.timestamps.is_empty() && logged.and_then(|l| l.time).is_none() {
        "nothing says when it was signed: it has no transparency log entry with a signed entry \
         timestamp (Rekor v2 entries carry none) and no RFC 3161 timestamp; sign with a \
         timestamp authority, or log it to a Rekor v1 log"
            .to_string()
    } else {
        format!(
            "{} verified time{} of signing, and the requirement needs {wanted}",
            times.len(),
            if times.len() == 1 { "" } else { "s" }
        )
    };
    failed.dedup();
    if !failed.is_empty() {
        why.push_str(&format!(" ({})", failed.join("; ")));
    }
    Err(why)
}

fn check_identity(
    keyless: &super::requirement::Keyless,
    identity: &Identity,
) -> Result<(), String> {
    if identity.issuer != keyless.issuer {
        return Err(format!(
            "issuer {:?} is not the trusted {:?}",
            identity.issuer, keyless.issuer
        ));
    }
    if !keyless.subject.matches(&identity.subject) {
        return Err(format!(
            "subject {:?} is not {}",
            identity.subject, keyless.subject
        ));
    }
    Ok(())
}

/// The log entries as the requirement says: the entry that verified (its
/// SET's time, if any), none when none is needed, or an error when one is
/// required and none verifies, or one present does not.
fn logged(
    requirement: &Requirement,
    artifact: &Artifact,
    binding: &Binding<'_>,
    now: SystemTime,
) -> Result<Option<rekor::Logged>, String> {
    if requirement.rekor == Rekor::Off {
        return Ok(None);
    }
    let Some(root) = &requirement.root else {
        return match requirement.rekor {
            Rekor::Required => {
                Err("a log entry is required and the requirement has no trusted root".into())
            }
            _ => Ok(None),
        };
    };
    if artifact.tlog.is_empty() {
        return match requirement.rekor {
            Rekor::Required => Err("it has no transparency log entry (rekor: required)".into()),
            _ => Ok(None),
        };
    }
    let mut last = String::new();
    for entry in &artifact.tlog {
        match rekor::verify(root, entry, binding, now) {
            Ok(logged) => return Ok(Some(logged)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The predicate's values at `path` (`a.b[].c`).
fn values<'a>(predicate: &'a serde_json::Value, path: &str) -> Vec<&'a serde_json::Value> {
    let mut current = vec![predicate];
    for step in path.split('.').filter(|s| !s.is_empty()) {
        let (name, each) = match step.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (step, false),
        };
        current = current
            .into_iter()
            .filter_map(|v| v.get(name))
            .flat_map(|v| match (each, v.as_array()) {
                (true, Some(items)) => items.iter().collect(),
                _ => vec![v],
            })
            .collect();
    }
    current
}

fn meets(
    condition: &Condition,
    predicate: &serde_json::Value,
    now: SystemTime,
) -> Result<(), String> {
    let found = values(predicate, &condition.path);
    match &condition.test {
        Test::MaxAge(max) => {
            let Some(text) = found.first().and_then(|v| v.as_str()) else {
                return Err(format!("its predicate has no time at {}", condition.path));
            };
            let at = humantime::parse_rfc3339_weak(text).map_err(|_| {
                format!("its {} ({text:?}) is not an RFC 3339 time", condition.path)
            })?;
            let age = now.duration_since(at).unwrap_or_default();
            if age > *max {
                return Err(format!(
                    "its {} is {} old, more than the {} allowed",
                    condition.path,
                    humantime::format_duration(std::time::Duration::from_secs(age.as_secs())),
                    humantime::format_duration(*max)
                ));
            }
            Ok(())
        }
        Test::DenyValues(denied) => {
            let hit = found
                .iter()
                .filter_map(|v| v.as_str())
                .find(|v| denied.iter().any(|d| d.eq_ignore_ascii_case(v)));
            match hit {
                Some(v) => Err(format!(
                    "its {} includes {v:?}, which the policy denies",
                    condition.path
                )),
                None => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_read_nested_fields_and_every_array_element() {
        let predicate =
            json!({"a": {"b": [{"c": "x"}, {"c": "y"}, {"d": 1}]}, "t": "2026-01-01T00:00:00Z"});
        let found: Vec<_> = values(&predicate, "a.b[].c").into_iter().cloned().collect();
        assert_eq!(found, vec![json!("x"), json!("y")]);
        assert_eq!(
            values(&predicate, "t"),
            vec![&json!("2026-01-01T00:00:00Z")]
        );
        assert!(values(&predicate, "a.missing").is_empty());
    }

    #[test]
    fn conditions_say_what_failed() {
        let now = humantime::parse_rfc3339("2026-01-03T00:00:00Z").unwrap();
        let predicate = json!({"at": "2026-01-01T00:00:00Z", "sev": ["LOW", "critical"]});
        let max_age = |hours: u64| Condition {
            path: "at".into(),
            test: Test::MaxAge(std::time::Duration::from_secs(hours * 3600)),
        };
        assert!(meets(&max_age(72), &predicate, now).is_ok());
        let e = meets(&max_age(24), &predicate, now).unwrap_err();
        assert!(
            e.contains("its at is 2days old, more than the 1day allowed"),
            "{e}"
        );
        let deny = Condition {
            path: "sev[]".into(),
            test: Test::DenyValues(vec!["CRITICAL".into()]),
        };
        let e = meets(&deny, &predicate, now).unwrap_err();
        assert!(e.contains("includes \"critical\""), "{e}");
        let missing = Condition {
            path: "nowhere".into(),
            test: Test::MaxAge(std::time::Duration::from_secs(1)),
        };
        assert!(
            meets(&missing, &predicate, now)
                .unwrap_err()
                .contains("has no time at nowhere")
        );
        // A deny list on a missing field has nothing to deny.
        let absent = Condition {
            path: "nowhere".into(),
            test: Test::DenyValues(vec!["x".into()]),
        };
        assert!(meets(&absent, &predicate, now).is_ok());
    }
}
