//! Who sent approvals to an agent: the sender's identity (the DNS name its
//! client certificate is valid for) and its ledger. The agent keys what it
//! holds per source; the webhook finds its own ledger's generation by it.
//! Written `identity/ledger` on the wire and in the agent's store.

use std::fmt;

/// The longest ledger id.
pub const MAX_LEDGER_ID: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub identity: String,
    pub ledger: String,
}

/// A ledger id or source key that is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("ledger is required")]
    NoLedger,
    #[error("ledger: at most {MAX_LEDGER_ID} characters from [A-Za-z0-9._-]")]
    BadLedger,
    #[error("{0:?} is not a source (identity/ledger)")]
    NotASource(String),
}

impl SourceKey {
    /// The source `identity` pushes from with `ledger`, the ledger id
    /// checked.
    pub fn new(identity: &str, ledger: &str) -> Result<Self, SourceError> {
        if ledger.is_empty() {
            return Err(SourceError::NoLedger);
        }
        if ledger.len() > MAX_LEDGER_ID
            || !ledger
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(SourceError::BadLedger);
        }
        Ok(Self {
            identity: identity.to_string(),
            ledger: ledger.to_string(),
        })
    }

    /// A key as [`fmt::Display`] writes it. The ledger id has no `/`, so
    /// the last `/` splits it.
    pub fn parse(text: &str) -> Result<Self, SourceError> {
        let (identity, ledger) = text
            .rsplit_once('/')
            .ok_or_else(|| SourceError::NotASource(text.to_string()))?;
        Self::new(identity, ledger)
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.identity, self.ledger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_round_trips_through_its_text() {
        let key = SourceKey::new("imagegate-webhook", "ledger-1.a_b").unwrap();
        assert_eq!(key.to_string(), "imagegate-webhook/ledger-1.a_b");
        assert_eq!(SourceKey::parse(&key.to_string()).unwrap(), key);
    }

    #[test]
    fn ledger_ids_are_checked() {
        assert_eq!(SourceKey::new("w", ""), Err(SourceError::NoLedger));
        assert_eq!(SourceKey::new("w", "a/b"), Err(SourceError::BadLedger));
        assert_eq!(
            SourceKey::new("w", &"x".repeat(MAX_LEDGER_ID + 1)),
            Err(SourceError::BadLedger)
        );
        assert!(SourceKey::new("w", &"x".repeat(MAX_LEDGER_ID)).is_ok());
        assert!(matches!(
            SourceKey::parse("no-slash"),
            Err(SourceError::NotASource(_))
        ));
    }
}
