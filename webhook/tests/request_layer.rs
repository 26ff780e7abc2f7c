//! The request layer: every review runs in a span that carries its uid,
//! and every endpoint is counted and timed. A test binary of its own: a
//! log subscriber set for one test races with callsites other tests'
//! threads register at the same time (tracing caches each callsite's
//! interest process-wide), which dropped the span now and then.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::{EXAMPLE_POLICY, app_with, fixture, send};
use imagegate_webhook::server::Routes;
use serde_json::Value;

fn app() -> Routes {
    app_with(EXAMPLE_POLICY)
}

async fn post(app: &Routes, path: &str, body: &Value) -> Value {
    let (status, bytes) = send(app, "POST", path, serde_json::to_vec(body).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&bytes).expect("JSON")
}

/// Log lines written to memory, for the test below.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_log_line_of_a_review_carries_its_uid_and_every_endpoint_is_timed() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = app();
    // A denial: the handler logs it, inside the request's span.
    let (_, body) = fixture("admissionreview-1.json");
    let uid = body["request"]["uid"].as_str().unwrap().to_string();
    let answer = post(&app, "/validate", &body).await;
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    post(&app, "/mutate", &body).await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let denied: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("denied:"))
        })
        .collect();
    assert_eq!(denied.len(), 1, "{text}");
    assert_eq!(denied[0]["span"]["name"], "review", "{text}");
    assert_eq!(denied[0]["span"]["uid"], uid.as_str(), "{text}");
    assert_eq!(denied[0]["span"]["endpoint"], "validate", "{text}");

    let (_, bytes) = send(&app, "GET", "/metrics", Vec::new()).await;
    let metrics = String::from_utf8(bytes).unwrap();
    for line in [
        r#"imagegate_webhook_responses_total{endpoint="validate",code="200"} 1"#,
        r#"imagegate_webhook_responses_total{endpoint="mutate",code="200"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line}\n{metrics}"
        );
    }
}
