//! polyproto "cacheable ID-Certs": a certificate as its home server vouches for it, with a
//! cache window and a `cacheSignature` by the home server's current CA key. Shared by the
//! server (which issues them for its own users and caches other servers' for its clients)
//! and the client (which verifies them whoever served them).
//!
//! The JSON object is
//! `{"cacheNotValidAfter","cacheNotValidBefore","cacheSignature","idCertPem"}` plus
//! `"invalidatedAt"` when the certificate was invalidated, every u64 a decimal string.
//! `cacheSignature` is the hex Ed25519 signature over
//! `"<serial> <cacheNotValidBefore> <cacheNotValidAfter>"` (+ `" <invalidatedAt>"`), the
//! serial being the certificate serial's unsigned decimal value ([`decimal`]), exactly what
//! polyproto 0.21's `CacheableIdCert::verify` rebuilds.
//!
//! What this module is not: HTTP, the clock, or any decision about which key is the right
//! one to verify with (the caller passes it) or whether a window contains now (the caller
//! compares [`VerifiedCacheable`]'s fields with its own clock).

use serde::{Deserialize, Serialize};

use crate::certs::{self, ParsedCert};
use crate::crypto;

/// A cacheable ID-Cert as received (not yet verified). Serialising it gives the JCS form
/// (the fields are strings, serialised in sorted order, `invalidatedAt` only when present),
/// so a cached object is served byte for byte as its home server signed it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheableIdCertIn {
    pub cache_not_valid_after: String,
    pub cache_not_valid_before: String,
    pub cache_signature: String,
    pub id_cert_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalidated_at: Option<String>,
}

/// A cacheable ID-Cert whose certificate parsed and whose `cacheSignature` verified with
/// the key the caller passed. The certificate's own chain is not checked here.
#[derive(Debug, Clone)]
pub struct VerifiedCacheable {
    pub cert: ParsedCert,
    pub not_valid_before: u64,
    pub not_valid_after: u64,
    pub invalidated_at: Option<u64>,
}

impl CacheableIdCertIn {
    /// Parse the certificate and the numbers.
    pub fn parse(&self) -> Result<(ParsedCert, u64, u64, Option<u64>), String> {
        let der = certs::from_pem(&self.id_cert_pem).map_err(|e| format!("idCertPem: {e}"))?;
        let cert = ParsedCert::parse(&der).map_err(|e| format!("idCertPem: {e}"))?;
        let before = parse_u64(&self.cache_not_valid_before)
            .ok_or("cacheNotValidBefore is not a u64 string")?;
        let after = parse_u64(&self.cache_not_valid_after)
            .ok_or("cacheNotValidAfter is not a u64 string")?;
        if after < before {
            return Err("the cache window ends before it starts".into());
        }
        let invalidated = match &self.invalidated_at {
            Some(at) => Some(parse_u64(at).ok_or("invalidatedAt is not a u64 string")?),
            None => None,
        };
        Ok((cert, before, after, invalidated))
    }

    /// Parse and check the `cacheSignature` with `home_key` (the home server's current CA
    /// key). Strict Ed25519.
    pub fn verify(&self, home_key: &[u8; 32]) -> Result<VerifiedCacheable, String> {
        let (cert, before, after, invalidated) = self.parse()?;
        let signature = hex::decode(&self.cache_signature)
            .ok()
            .and_then(|s| ed25519_dalek::Signature::from_slice(&s).ok())
            .ok_or("cacheSignature is not a hex Ed25519 signature")?;
        let key = crypto::verifying_key(home_key).map_err(|_| "bad home server key")?;
        let input = cache_signature_input(&decimal(&cert.serial), before, after, invalidated);
        key.verify_strict(input.as_bytes(), &signature)
            .map_err(|_| "cacheSignature does not verify with the home server's CA key")?;
        Ok(VerifiedCacheable {
            cert,
            not_valid_before: before,
            not_valid_after: after,
            invalidated_at: invalidated,
        })
    }
}

/// The string a `cacheSignature` signs: `"<serial> <notValidBefore> <notValidAfter>"` and
/// `" <invalidatedAt>"` if invalidated (polyproto 0.21; older versions concatenated without
/// separators).
pub fn cache_signature_input(
    serial_decimal: &str,
    not_valid_before: u64,
    not_valid_after: u64,
    invalidated_at: Option<u64>,
) -> String {
    let mut input = format!("{serial_decimal} {not_valid_before} {not_valid_after}");
    if let Some(at) = invalidated_at {
        input.push_str(&format!(" {at}"));
    }
    input
}

/// The unsigned decimal value of a big-endian integer (a certificate serial). polyproto
/// signs and sends serials in this form (`SerialNumber`'s `Display` is the `BigUint` of its
/// bytes), so leading zero bytes do not change it.
pub fn decimal(big_endian: &[u8]) -> String {
    let mut number: Vec<u8> = big_endian.iter().copied().skip_while(|b| *b == 0).collect();
    if number.is_empty() {
        return "0".to_owned();
    }
    let mut digits = Vec::new();
    // Long division by ten, most significant byte first; each quotient byte is below 256
    // because the running remainder is below 10.
    while !number.is_empty() {
        let mut remainder = 0u16;
        let mut quotient = Vec::with_capacity(number.len());
        for byte in &number {
            let current = remainder * 256 + u16::from(*byte);
            let q = current / 10;
            remainder = current % 10;
            if !(quotient.is_empty() && q == 0) {
                quotient.push(u8::try_from(q).unwrap_or(u8::MAX));
            }
        }
        digits.push(char::from(b'0' + u8::try_from(remainder).unwrap_or(0)));
        number = quotient;
    }
    digits.iter().rev().collect()
}

/// Parse a u64 sent as a decimal string (polyproto sends every u64 this way). Only
/// ASCII digits, at most 20 of them, no sign and no leading `+`.
pub fn parse_u64(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_matches_integer_formatting() {
        assert_eq!(decimal(&[]), "0");
        assert_eq!(decimal(&[0, 0]), "0");
        assert_eq!(decimal(&[1, 0]), "256");
        assert_eq!(decimal(&[0, 0xff]), "255");
        for value in [
            1u128,
            9,
            10,
            255,
            65_535,
            u64::MAX as u128,
            u128::MAX,
            1 << 100,
        ] {
            assert_eq!(decimal(&value.to_be_bytes()), value.to_string());
        }
        // 20 bytes, the longest serial: 2^160 - 1.
        assert_eq!(
            decimal(&[0xff; 20]),
            "1461501637330902918203684832716283019655932542975"
        );
    }

    #[test]
    fn u64_strings_are_strict() {
        assert_eq!(parse_u64("0"), Some(0));
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "-1", "+1", " 1", "1.0", "18446744073709551616", "1e3"] {
            assert_eq!(parse_u64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn serialisation_is_jcs_and_round_trips() {
        let object = CacheableIdCertIn {
            cache_not_valid_after: "2".into(),
            cache_not_valid_before: "1".into(),
            cache_signature: "ab".into(),
            id_cert_pem: "-----BEGIN CERTIFICATE-----\nAB/+\n".into(),
            invalidated_at: None,
        };
        let json = serde_json::to_string(&object).unwrap();
        assert_eq!(
            json,
            r#"{"cacheNotValidAfter":"2","cacheNotValidBefore":"1","cacheSignature":"ab","idCertPem":"-----BEGIN CERTIFICATE-----\nAB/+\n"}"#
        );
        let back: CacheableIdCertIn = serde_json::from_str(&json).unwrap();
        assert_eq!(back, object);
        let invalidated = CacheableIdCertIn {
            invalidated_at: Some("3".into()),
            ..object
        };
        assert!(
            serde_json::to_string(&invalidated)
                .unwrap()
                .ends_with(r#","invalidatedAt":"3"}"#)
        );
    }
}
