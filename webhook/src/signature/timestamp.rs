//! RFC 3161 signed timestamps: a timestamp authority's word that a
//! signature existed at a time. Sigstore bundles carry them
//! (`timestampVerificationData.rfc3161Timestamps`) and, with Rekor v2 (whose
//! entries carry no time), they are the only source of the time of signing.
//!
//! A timestamp counts when: the response is granted; its token is a CMS
//! SignedData around a TSTInfo; the TSTInfo's message imprint is the hash of
//! the signature being timestamped; one signer signed the TSTInfo (through
//! the content-type and message-digest attributes) with the key of a
//! timestamp authority the trusted root lists, whose certificate chains to
//! that authority's root for time stamping at the time it names; and that
//! time is within the authority's `validFor`. Certificates embedded in the
//! token are never trusted; a nonce is not required (there was no request
//! to match). Decoded with RustCrypto's `x509-tsp` and `cms`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cms::{content_info::ContentInfo, signed_data::SignedData};
use der::{Decode, Encode, asn1::ObjectIdentifier};
use rustls::pki_types::UnixTime;
use x509_parser::prelude::FromDer;
use x509_tsp::{TimeStampResp, TstInfo};

use super::{
    key::{Hash, PublicKey},
    trust_root::{TimestampAuthority, TrustedRoot},
};

/// Most timestamps read per signature (Sigstore's clients attach one).
pub const MAX_TIMESTAMPS: usize = 32;
/// Largest timestamp response read.
pub const MAX_TIMESTAMP_BYTES: usize = 32 * 1024;

const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_CT_TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
/// id-kp-timeStamping (1.3.6.1.5.5.7.3.8), as webpki takes an EKU.
const TIME_STAMPING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08];

/// A timestamp that verified.
#[derive(Clone, Debug)]
pub struct Stamped {
    pub time: SystemTime,
    /// The authority that signed it (its name in the trusted root).
    pub authority: String,
}

/// Checks `response` (a DER TimeStampResp, or a bare TimeStampToken) for
/// `signature` against `root`'s timestamp authorities: the time it
/// vouches for and who, or why it vouches for nothing.
pub fn verify(root: &TrustedRoot, response: &[u8], signature: &[u8]) -> Result<Stamped, String> {
    if response.len() > MAX_TIMESTAMP_BYTES {
        return Err(format!(
            "its timestamp is {} bytes, more than the {MAX_TIMESTAMP_BYTES} imagegate reads",
            response.len()
        ));
    }
    let token = token(response)?;
    let signed = SignedData::from_der(&token.content.to_der().map_err(der_error)?)
        .map_err(|_| "its timestamp's token is not a CMS SignedData".to_string())?;
    if signed.encap_content_info.econtent_type != ID_CT_TST_INFO {
        return Err("its timestamp's token does not hold a TSTInfo".into());
    }
    let content = signed
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or("its timestamp's token holds no content")?;
    let tst_der = content.value();
    let tst =
        TstInfo::from_der(tst_der).map_err(|_| "its timestamp's TSTInfo is not DER".to_string())?;
    let at = UNIX_EPOCH + tst.gen_time.to_unix_duration();

    let imprint = &tst.message_imprint;
    let hash = Hash::from_oid(&imprint.hash_algorithm.oid.to_string()).ok_or_else(|| {
        format!(
            "its timestamp hashes with {}, which imagegate does not read (SHA-256, SHA-384, \
             SHA-512)",
            imprint.hash_algorithm.oid
        )
    })?;
    if imprint.hashed_message.as_bytes() != hash.digest(signature) {
        return Err("its timestamp is of another signature (the message imprint differs)".into());
    }

    let signers: Vec<_> = signed.signer_infos.0.iter().collect();
    let [signer] = signers.as_slice() else {
        return Err(format!(
            "its timestamp has {} signers; a timestamp has one",
            signers.len()
        ));
    };
    let digest = Hash::from_oid(&signer.digest_alg.oid.to_string())
        .ok_or("its timestamp's signer uses a digest imagegate does not read")?;
    let attributes = signer
        .signed_attrs
        .as_ref()
        .ok_or("its timestamp's signer signs no attributes")?;
    let attribute = |oid: ObjectIdentifier| {
        attributes
            .iter()
            .find(|a| a.oid == oid)
            .and_then(|a| a.values.iter().next())
    };
    let content_type = attribute(ID_CONTENT_TYPE)
        .and_then(|v| v.decode_as::<ObjectIdentifier>().ok())
        .ok_or("its timestamp's signed attributes name no content type")?;
    if content_type != ID_CT_TST_INFO {
        return Err("its timestamp's signed attributes are about other content".into());
    }
    let message_digest = attribute(ID_MESSAGE_DIGEST)
        .and_then(|v| v.decode_as::<der::asn1::OctetString>().ok())
        .ok_or("its timestamp's signed attributes carry no message digest")?;
    if message_digest.as_bytes() != digest.digest(tst_der) {
        return Err("its timestamp's signature is over another TSTInfo".into());
    }
    let signed_attributes = attributes.to_der().map_err(der_error)?;
    let scheme = signature_hash(&signer.signature_algorithm.oid.to_string(), digest)?;

    let mut why = Vec::new();
    for authority in &root.timestamp_authorities {
        match by_authority(
            authority,
            &signed_attributes,
            signer.signature.as_bytes(),
            scheme,
            at,
        ) {
            Ok(()) => {
                return Ok(Stamped {
                    time: at,
                    authority: authority.name.clone(),
                });
            }
            Err(e) => why.push(e),
        }
    }
    if root.timestamp_authorities.is_empty() {
        return Err("it has a timestamp, and the trusted root lists no timestamp authority".into());
    }
    why.sort();
    why.dedup();
    Err(format!(
        "its timestamp ({}) is not from a timestamp authority of the trusted root: {}",
        humantime::format_rfc3339_seconds(at),
        why.join("; ")
    ))
}

fn der_error(_: der::Error) -> String {
    "its timestamp is not well-formed DER".into()
}

/// The token: inside a granted response, or given bare.
fn token(bytes: &[u8]) -> Result<ContentInfo, String> {
    let token = match TimeStampResp::from_der(bytes) {
        Ok(response) => {
            // 0 granted, 1 granted with modifications.
            let status = response.status.status as u8;
            if status > 1 {
                return Err(format!(
                    "its timestamp response was not granted (status {status})"
                ));
            }
            response
                .time_stamp_token
                .ok_or("its timestamp response carries no token")?
        }
        Err(_) => ContentInfo::from_der(bytes)
            .map_err(|_| "its timestamp is neither a TimeStampResp nor a token".to_string())?,
    };
    if token.content_type != ID_SIGNED_DATA {
        return Err("its timestamp's token is not a SignedData".into());
    }
    Ok(token)
}

/// The hash a signer's signature algorithm applies: named by it
/// (`ecdsa-with-SHA384`, `sha256WithRSAEncryption`), or the digest
/// algorithm's for a bare key algorithm (`id-ecPublicKey`,
/// `rsaEncryption`); Ed25519 hashes in its own way.
fn signature_hash(oid: &str, digest: Hash) -> Result<Hash, String> {
    Ok(match oid {
        "1.2.840.10045.4.3.2" | "1.2.840.113549.1.1.11" => Hash::Sha256,
        "1.2.840.10045.4.3.3" | "1.2.840.113549.1.1.12" => Hash::Sha384,
        "1.2.840.10045.4.3.4" | "1.2.840.113549.1.1.13" => Hash::Sha512,
        "1.2.840.10045.2.1" | "1.2.840.113549.1.1.1" | "1.3.101.112" => digest,
        other => {
            return Err(format!(
                "its timestamp is signed with algorithm {other}, which imagegate does not verify"
            ));
        }
    })
}

/// Whether `authority` signed: its signing certificate's key verifies the
/// attributes, and that certificate chains to its root for time stamping
/// at `at`, within its `validFor`.
fn by_authority(
    authority: &TimestampAuthority,
    signed_attributes: &[u8],
    signature: &[u8],
    hash: Hash,
    at: SystemTime,
) -> Result<(), String> {
    let name = &authority.name;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&authority.signer)
        .map_err(|_| format!("{name}'s certificate in the trusted root is not DER"))?;
    let key = PublicKey::from_parsed("", cert.public_key(), cert.public_key().raw)
        .map_err(|e| format!("{name}'s key: {e}"))?;
    if !key.verifies_with(hash, signed_attributes, signature) {
        return Err(format!("not signed by {name}"));
    }
    if !authority.valid.contains(at) {
        return Err(format!(
            "signed by {name} at a time the trusted root does not trust it for"
        ));
    }
    let has_time_stamping = cert
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|eku| eku.value.time_stamping);
    if !has_time_stamping {
        return Err(format!(
            "signed by {name}, whose certificate is not for time stamping"
        ));
    }
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let leaf = webpki::EndEntityCert::try_from(&authority.signer)
        .map_err(|_| format!("{name}'s certificate cannot be read"))?;
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        std::slice::from_ref(&authority.anchor),
        &authority.intermediates,
        UnixTime::since_unix_epoch(since),
        webpki::KeyUsage::required_if_present(TIME_STAMPING),
        None,
        None,
    )
    .map_err(|e| {
        format!(
            "signed by {name}, but {}",
            super::certificate::describe(&e, "at the time it names", "time stamping")
        )
    })?;
    Ok(())
}
