//! The approved digests the exec path asks about, held compactly. The
//! digest type itself is shared with the webhook
//! ([`imagegate_proto::digest`]): both halves check digests the same way.

pub use imagegate_proto::digest::{Digest, DigestError};

/// A set of digests held compactly: sha256 digests (nearly all of them) as
/// their 32 raw bytes, others as text. 100,000 approvals take about 4 MiB.
#[derive(Default)]
pub struct DigestSet {
    sha256: std::collections::HashSet<[u8; 32]>,
    other: std::collections::HashSet<Box<str>>,
}

impl DigestSet {
    /// Adds a checked digest; true if it was new.
    pub fn insert(&mut self, digest: &Digest) -> bool {
        match digest.sha256_bytes() {
            Some(bytes) => self.sha256.insert(bytes),
            None => self.other.insert(digest.as_str().into()),
        }
    }

    /// Removes a digest; true if it was there.
    pub fn remove(&mut self, digest: &Digest) -> bool {
        match digest.sha256_bytes() {
            Some(bytes) => self.sha256.remove(&bytes),
            None => self.other.remove(digest.as_str()),
        }
    }

    /// Whether `digest` (any text) is in the set. Only exact lower-case
    /// digests match, as only checked digests were inserted.
    pub fn contains(&self, digest: &str) -> bool {
        let Ok(digest) = Digest::parse(digest) else {
            return false;
        };
        match digest.sha256_bytes() {
            Some(bytes) => self.sha256.contains(&bytes),
            None => self.other.contains(digest.as_str()),
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
