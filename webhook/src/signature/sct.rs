//! Certificate transparency for signing certificates: Fulcio logs every
//! certificate it issues to a CT log before issuing it, and embeds the
//! log's promise (a signed certificate timestamp, RFC 6962) in the
//! certificate. cosign checks it by default for keyless signatures, so does
//! imagegate (a requirement's `sct: off` turns it off): a certificate that
//! was never logged was never publicly visible to its subject.
//!
//! An embedded SCT is over the *pre*certificate: the certificate's TBS with
//! the SCT list extension removed, and the hash of the issuer's key. The
//! TBS is decoded and re-encoded without that extension with RustCrypto's
//! `x509-cert` (DER is canonical, so the bytes are the ones the log
//! signed).

use std::time::{Duration, UNIX_EPOCH};

use der::{Decode, Encode, asn1::ObjectIdentifier};
use x509_cert::Certificate;

use super::{
    key::{Hash, sha256},
    trust_root::TrustedRoot,
};

/// The embedded SCT list extension (1.3.6.1.4.1.11129.2.4.2).
const SCT_LIST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11129.2.4.2");
/// Most SCTs read from one certificate.
const MAX_SCTS: usize = 16;

/// One SCT, as the TLS encoding has it.
struct Sct<'a> {
    log_id: &'a [u8],
    timestamp_ms: u64,
    extensions: &'a [u8],
    hash: u8,
    signature: &'a [u8],
}

/// Checks that `leaf` (DER) carries an SCT from a CT log of `root`, over
/// it as issued by `issuer` (DER). At least one must verify; SCTs from logs
/// the root does not list do not count.
pub fn verify(root: &TrustedRoot, leaf: &[u8], issuer: &[u8]) -> Result<(), String> {
    let cert = Certificate::from_der(leaf)
        .map_err(|_| "its certificate cannot be read for its SCTs".to_string())?;
    let mut tbs = cert.tbs_certificate;
    let extensions = tbs.extensions.take().unwrap_or_default();
    let (list, rest): (Vec<_>, Vec<_>) =
        extensions.into_iter().partition(|e| e.extn_id == SCT_LIST);
    let Some(list) = list.first() else {
        return Err(
            "its certificate carries no signed certificate timestamp (it was not logged to a \
             certificate transparency log); if your CA does not log, set `sct: off`"
                .into(),
        );
    };
    tbs.extensions = (!rest.is_empty()).then_some(rest);
    let precert = tbs
        .to_der()
        .map_err(|_| "its certificate cannot be re-encoded for its SCTs".to_string())?;
    let issuer = Certificate::from_der(issuer)
        .map_err(|_| "its issuer's certificate cannot be read".to_string())?;
    let issuer_key = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| "its issuer's key cannot be re-encoded".to_string())?;
    let issuer_key_hash = sha256(&issuer_key);

    // The extension's value is an OCTET STRING holding the TLS-encoded list.
    let inner = der::asn1::OctetString::from_der(list.extn_value.as_bytes())
        .map_err(|_| "its SCT list is not an OCTET STRING".to_string())?;
    let scts = parse_list(inner.as_bytes()).ok_or("its SCT list is not well-formed")?;
    if scts.is_empty() {
        return Err("its SCT list is empty".into());
    }
    let mut why = Vec::new();
    for sct in scts.iter().take(MAX_SCTS) {
        let Some(log) = root.ct_log(sct.log_id) else {
            why.push("one from a CT log the trusted root does not list".to_string());
            continue;
        };
        let at = UNIX_EPOCH + Duration::from_millis(sct.timestamp_ms);
        if !log.valid.contains(at) {
            why.push("one from a CT log at a time the trusted root does not trust it".into());
            continue;
        }
        let hash = match sct.hash {
            4 => Hash::Sha256,
            5 => Hash::Sha384,
            6 => Hash::Sha512,
            _ => {
                why.push("one signed with a hash imagegate does not read".into());
                continue;
            }
        };
        let signed = signed_data(sct, &issuer_key_hash, &precert);
        if log.key.verifies_with(hash, &signed, sct.signature) {
            return Ok(());
        }
        why.push("one whose signature does not verify with its CT log's key".into());
    }
    why.sort();
    why.dedup();
    Err(format!(
        "none of its certificate's signed certificate timestamps verifies ({})",
        why.join("; ")
    ))
}

/// RFC 6962's `digitally-signed` struct for a precertificate entry.
fn signed_data(sct: &Sct<'_>, issuer_key_hash: &[u8; 32], precert: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(precert.len() + 64 + sct.extensions.len());
    out.push(0); // version v1
    out.push(0); // signature type: certificate_timestamp
    out.extend_from_slice(&sct.timestamp_ms.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // entry type: precert_entry
    out.extend_from_slice(issuer_key_hash);
    let len = precert.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]); // 24-bit length
    out.extend_from_slice(precert);
    out.extend_from_slice(&(sct.extensions.len() as u16).to_be_bytes());
    out.extend_from_slice(sct.extensions);
    out
}

/// A reader over TLS-encoded bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    fn vector16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// `SignedCertificateTimestampList`: a 16-bit length, then SCTs each with
/// a 16-bit length. `None` for anything malformed.
fn parse_list(bytes: &[u8]) -> Option<Vec<Sct<'_>>> {
    let mut outer = Reader(bytes);
    let mut list = Reader(outer.vector16()?);
    if !outer.0.is_empty() {
        return None;
    }
    let mut scts = Vec::new();
    while !list.0.is_empty() {
        let mut sct = Reader(list.vector16()?);
        if sct.u8()? != 0 {
            // Only v1 SCTs exist.
            continue;
        }
        let log_id = sct.take(32)?;
        let timestamp = sct.take(8)?;
        let extensions = sct.vector16()?;
        let hash = sct.u8()?;
        let _signature_algorithm = sct.u8()?;
        let signature = sct.vector16()?;
        if !sct.0.is_empty() {
            return None;
        }
        scts.push(Sct {
            log_id,
            timestamp_ms: u64::from_be_bytes(timestamp.try_into().ok()?),
            extensions,
            hash,
            signature,
        });
        if scts.len() > MAX_SCTS {
            break;
        }
    }
    Some(scts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lists_are_none_never_a_panic() {
        assert!(parse_list(&[]).is_none());
        assert!(parse_list(&[0, 5, 0, 3, 0]).is_none());
        // A list of one SCT, cut anywhere, never parses half-way.
        let mut sct = vec![0u8];
        sct.extend([7u8; 32]);
        sct.extend(1_700_000_000_000u64.to_be_bytes());
        sct.extend([0, 0, 4, 3, 0, 2, 0xaa, 0xbb]);
        let mut list = (sct.len() as u16).to_be_bytes().to_vec();
        list.extend(&sct);
        let mut whole = (list.len() as u16).to_be_bytes().to_vec();
        whole.extend(&list);
        let parsed = parse_list(&whole).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].timestamp_ms, 1_700_000_000_000);
        assert_eq!(parsed[0].signature, &[0xaa, 0xbb]);
        for cut in 1..whole.len() {
            assert!(parse_list(&whole[..cut]).is_none(), "cut at {cut}");
        }
    }
}
