//! The registry auth flows: a request without credentials gets `401` with
//! a `WWW-Authenticate` challenge; `Basic` means send the username and
//! password, `Bearer realm=..,service=..,scope=..` means ask the realm for
//! a token (with the username and password, if any) and send that.
//! <https://distribution.github.io/distribution/spec/auth/token/>
//!
//! Tokens are kept per host and scope until shortly before they expire, so
//! a lookup costs one request once a token is known.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine;
use serde::Deserialize;

/// What a registry asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// The challenges in `WWW-Authenticate` values that imagegate can answer,
/// Bearer first.
pub fn challenges<'a>(values: impl Iterator<Item = &'a str>) -> Vec<Challenge> {
    let mut found = Vec::new();
    for value in values {
        // A value that does not parse is skipped: the next may.
        let Ok(parsed) = http_auth::parse_challenges(value) else {
            continue;
        };
        for challenge in parsed {
            let param = |name: &str| {
                challenge
                    .params
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(name))
                    .map(|(_, value)| value.to_unescaped())
            };
            if challenge.scheme.eq_ignore_ascii_case("bearer") {
                if let Some(realm) = param("realm") {
                    found.push(Challenge::Bearer {
                        realm,
                        service: param("service"),
                        scope: param("scope"),
                    });
                }
            } else if challenge.scheme.eq_ignore_ascii_case("basic") {
                found.push(Challenge::Basic);
            }
        }
    }
    found.sort_by_key(|c| matches!(c, Challenge::Basic));
    found
}

/// `Authorization` for a username and password.
pub fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// A token endpoint's answer (`token` or, OAuth-style, `access_token`).
#[derive(Deserialize)]
pub struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Tokens without `expires_in` last 60 s (the spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Used until this long before they expire.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);
/// Most tokens (and Basic headers) kept; the cache is emptied when full.
const MAX_KEPT: usize = 4096;

impl TokenAnswer {
    /// The `Authorization` value and how long it may be used.
    pub fn authorization(self) -> Option<(String, Duration)> {
        let token = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        let lifetime = self
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
            .min(Duration::from_secs(3600));
        Some((
            format!("Bearer {token}"),
            lifetime.saturating_sub(TOKEN_MARGIN),
        ))
    }
}

/// `Authorization` values by host and scope, until they expire.
#[derive(Default)]
pub struct Kept {
    by_key: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl Kept {
    pub fn get(&self, host: &str, scope: &str) -> Option<String> {
        let kept = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        kept.get(&(host.to_string(), scope.to_string()))
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(value, _)| value.clone())
    }

    pub fn keep(&self, host: &str, scope: &str, value: String, lifetime: Duration) {
        let mut kept = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= MAX_KEPT {
            kept.clear();
        }
        kept.insert(
            (host.to_string(), scope.to_string()),
            (value, Instant::now() + lifetime),
        );
    }

    pub fn forget(&self, host: &str, scope: &str) {
        let mut kept = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        kept.remove(&(host.to_string(), scope.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_come_first_with_their_parameters() {
        let found = challenges(
            [
                r#"Basic realm="registry""#,
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:team/app:pull""#,
            ]
            .into_iter(),
        );
        assert_eq!(
            found,
            vec![
                Challenge::Bearer {
                    realm: "https://auth.example/token".into(),
                    service: Some("registry.example".into()),
                    scope: Some("repository:team/app:pull".into()),
                },
                Challenge::Basic
            ]
        );
        assert!(challenges(["garbage ,,, ="].into_iter()).is_empty());
        assert!(challenges([r#"Bearer service="x""#].into_iter()).is_empty());
    }

    #[test]
    fn tokens_expire_before_the_registry_says() {
        let answer: TokenAnswer =
            serde_json::from_str(r#"{"access_token":"abc","expires_in":300}"#).unwrap();
        let (value, lifetime) = answer.authorization().unwrap();
        assert_eq!(value, "Bearer abc");
        assert_eq!(lifetime, Duration::from_secs(290));
        let none: TokenAnswer = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert!(none.authorization().is_none());

        let kept = Kept::default();
        kept.keep("r", "s", "Bearer x".into(), Duration::from_secs(60));
        assert_eq!(kept.get("r", "s").as_deref(), Some("Bearer x"));
        assert_eq!(kept.get("r", "other"), None);
        kept.keep("r", "s", "Bearer y".into(), Duration::ZERO);
        assert_eq!(kept.get("r", "s"), None, "expired");
    }
}
