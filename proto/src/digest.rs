//! Content digests, as approvals carry them: one type for both halves, so
//! the webhook never records a digest the agent would refuse.
//!
//! `algorithm:hex`, checked strictly, because a digest that is almost right
//! must never match: the algorithms go-digest knows (what containerd and
//! the registries use: sha256, sha384, sha512), each with its exact hex
//! length, lower case only.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A checked digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// Why a string is not a digest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error(
        "`{0}` is not a digest: expected `sha256:` followed by 64 lower-case hex digits \
         (or sha384 with 96, sha512 with 128)"
    )]
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

/// The algorithms and their hex lengths.
const ALGORITHMS: [(&str, usize); 3] = [("sha256", 64), ("sha384", 96), ("sha512", 128)];

impl Digest {
    pub fn parse(value: &str) -> Result<Self, DigestError> {
        let Some((algorithm, hex)) = value.split_once(':') else {
            return Err(DigestError::Shape(value.to_string()));
        };
        let Some(&(algorithm, expected)) = ALGORITHMS.iter().find(|(a, _)| *a == algorithm) else {
            return Err(DigestError::Shape(value.to_string()));
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

    /// `sha256`, `sha384` or `sha512`.
    pub fn algorithm(&self) -> &str {
        self.0
            .split_once(':')
            .map_or("", |(algorithm, _)| algorithm)
    }

    /// The 32 bytes of a sha256 digest; `None` for other algorithms.
    pub fn sha256_bytes(&self) -> Option<[u8; 32]> {
        let hex = self.0.strip_prefix("sha256:")?;
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            out[i] = (nibble(pair[0]) << 4) | nibble(pair[1]);
        }
        Some(out)
    }
}

/// A checked lower-case hex digit's value.
fn nibble(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        _ => b - b'a' + 10,
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> Self {
        digest.0
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Digest {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Digest {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
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
    fn accepts_what_go_digest_knows() {
        assert!(Digest::parse(&format!("sha256:{HEX64}")).is_ok());
        assert!(Digest::parse(&format!("sha384:{HEX64}{}", &HEX64[..32])).is_ok());
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
        assert!(matches!(
            Digest::parse(&format!("SHA256:{HEX64}")),
            Err(DigestError::Shape(_))
        ));
        assert!(matches!(Digest::parse(HEX64), Err(DigestError::Shape(_))));
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }

    #[test]
    fn sha256_bytes_round_trip() {
        let d = Digest::parse(&format!("sha256:{HEX64}")).unwrap();
        let bytes = d.sha256_bytes().unwrap();
        assert_eq!(bytes[0], 0x01);
        assert_eq!(bytes[31], 0xef);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, HEX64);
    }
}
