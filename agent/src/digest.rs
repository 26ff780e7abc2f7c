//! Content digests as approvals carry them: `algorithm:hex`, checked
//! strictly, because a digest that is almost right must never match.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A checked digest: `sha256:` + 64 or `sha512:` + 128 lower-case hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// Why a string is not a digest.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("`{0}` is not a digest: expected `sha256:` followed by 64 lower-case hex digits")]
    Shape(String),
    #[error("`{value}`: a {algorithm} digest has {expected} hex digits, this one has {got}")]
    Length {
        value: String,
        algorithm: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("`{0}`: the hex part must be lower-case 0-9a-f")]
    Hex(String),
}

impl Digest {
    pub fn parse(value: &str) -> Result<Self, DigestError> {
        let Some((algorithm, hex)) = value.split_once(':') else {
            return Err(DigestError::Shape(value.to_string()));
        };
        let (algorithm, expected) = match algorithm {
            "sha256" => ("sha256", 64),
            "sha512" => ("sha512", 128),
            _ => return Err(DigestError::Shape(value.to_string())),
        };
        if hex.len() != expected {
            return Err(DigestError::Length {
                value: value.to_string(),
                algorithm,
                expected,
                got: hex.len(),
            });
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::Hex(value.to_string()));
        }
        Ok(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> Self {
        digest.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_sha256_and_sha512() {
        assert!(Digest::parse(&format!("sha256:{HEX64}")).is_ok());
        assert!(Digest::parse(&format!("sha512:{HEX64}{HEX64}")).is_ok());
    }

    #[test]
    fn refuses_near_misses_with_the_reason() {
        assert!(matches!(
            Digest::parse(&format!("sha256:{}", &HEX64[1..])),
            Err(DigestError::Length { got: 63, .. })
        ));
        // A sha256-length hex under sha512 is wrong for its algorithm.
        assert!(matches!(
            Digest::parse(&format!("sha512:{HEX64}")),
            Err(DigestError::Length { expected: 128, .. })
        ));
        assert!(matches!(
            Digest::parse(&format!("sha256:{}", HEX64.to_uppercase())),
            Err(DigestError::Hex(_))
        ));
        assert!(matches!(
            Digest::parse("md5:abc"),
            Err(DigestError::Shape(_))
        ));
        assert!(matches!(Digest::parse(HEX64), Err(DigestError::Shape(_))));
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }
}

/// A set of digests held compactly: sha256 digests (nearly all of them) as
/// their 32 raw bytes, others as text. 100,000 approvals take about 4 MiB.
#[derive(Default)]
pub struct DigestSet {
    sha256: std::collections::HashSet<[u8; 32]>,
    other: std::collections::HashSet<Box<str>>,
}

fn sha256_bytes(digest: &str) -> Option<[u8; 32]> {
    let hex = digest.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

impl DigestSet {
    /// Adds a checked digest; true if it was new.
    pub fn insert(&mut self, digest: &Digest) -> bool {
        match sha256_bytes(digest.as_str()) {
            Some(bytes) => self.sha256.insert(bytes),
            None => self.other.insert(digest.as_str().into()),
        }
    }

    /// Whether `digest` (any text) is in the set. Only exact lower-case
    /// digests match, as only checked digests were inserted.
    pub fn contains(&self, digest: &str) -> bool {
        if Digest::parse(digest).is_err() {
            return false;
        }
        match sha256_bytes(digest) {
            Some(bytes) => self.sha256.contains(&bytes),
            None => self.other.contains(digest),
        }
    }

    pub fn len(&self) -> usize {
        self.sha256.len() + self.other.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod set_tests {
    use super::*;

    #[test]
    fn holds_sha256_and_sha512_and_matches_exactly() {
        let a = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        let b = Digest::parse(&format!("sha512:{}", "cd".repeat(64))).unwrap();
        let mut set = DigestSet::default();
        assert!(set.insert(&a) && set.insert(&b) && !set.insert(&a));
        assert_eq!(set.len(), 2);
        assert!(set.contains(a.as_str()) && set.contains(b.as_str()));
        assert!(!set.contains(&a.as_str().to_uppercase()));
        assert!(!set.contains(&format!("sha256:{}", "ab".repeat(31))));
    }
}
