//! Reading a response body up to a bound: refused at once when the
//! declared length is larger, stopped as soon as the bytes that arrive are.

use bytes::{Bytes, BytesMut};

/// A body larger than its bound, or one that broke off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("{what} is larger than the {limit} bytes imagegate reads")]
    TooLarge { what: String, limit: usize },
    #[error("reading {what}: {reason}")]
    Read { what: String, reason: String },
    #[error("reading {what}: timed out")]
    TimedOut { what: String },
}

/// Reads `response`'s body, at most `limit` bytes; `what` names it in
/// errors ("the manifest registry.example/app:1").
pub async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
    what: &str,
) -> Result<Bytes, BodyError> {
    let too_large = || BodyError::TooLarge {
        what: what.to_string(),
        limit,
    };
    if response
        .content_length()
        .is_some_and(|declared| declared > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    loop {
        let chunk = response.chunk().await.map_err(|e| {
            if e.is_timeout() {
                BodyError::TimedOut {
                    what: what.to_string(),
                }
            } else {
                BodyError::Read {
                    what: what.to_string(),
                    reason: imagegate_plumbing::errors::error_chain(&e),
                }
            }
        })?;
        let Some(chunk) = chunk else {
            return Ok(body.freeze());
        };
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
}

/// The first bytes of an error body, as text for a message; empty when
/// unreadable.
pub async fn error_text(response: reqwest::Response) -> String {
    let mut response = response;
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = super::MAX_ERROR_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    String::from_utf8_lossy(&body).trim().to_string()
}
