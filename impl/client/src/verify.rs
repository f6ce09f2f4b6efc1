//! The authentication chain of a group member, checked by the client on every received
//! message and for every member of a group it joins:
//!
//! 1. the MLS message signature verifies with the sender's leaf key (openmls checks this
//!    when it processes the message);
//! 2. the leaf key is bound to a client ID-Cert: the member's encrypted credential info,
//!    decrypted with the group's credential key, names the same leaf key and carries the
//!    ID-Cert key's signature over it ([`check_binding`]);
//! 3. the ID-Cert was issued by a CA certificate of its FID's domain and is valid at the
//!    time in question ([`verify_chain`]); a domain's CA key rotates, so every CA
//!    certificate seen for it is kept and the one that issued the certificate is used.
//!
//! How the CA certificates are obtained (and re-obtained when a check fails) is the
//! client's business ([`crate::client`]); this module only checks.

use phoenix_types::certs::{ActorSubject, CertError, ParsedCert};
use phoenix_types::codec;
use phoenix_types::crypto::{self, SymmetricKey, label};
use phoenix_types::messages::client::ClientCredentialInfo;

use crate::error::{ClientError, verification};

/// A member whose chain verified.
#[derive(Debug, Clone)]
pub struct VerifiedMember {
    pub fid: String,
    pub client_id: String,
    pub certificate: Vec<u8>,
    pub fingerprint: String,
}

impl VerifiedMember {
    pub fn new(cert: &ParsedCert, subject: &ActorSubject) -> Self {
        Self {
            fid: subject.fid.to_string(),
            client_id: subject.client_id.to_string(),
            fingerprint: hex::encode(cert.fingerprint()),
            certificate: cert.der.clone(),
        }
    }
}

/// Associated data of a credential encrypted under a group's credential key.
pub fn credential_aad(group_id: &[u8]) -> Vec<u8> {
    let mut aad = b"phoenix-v1 group credential ".to_vec();
    aad.extend_from_slice(group_id);
    aad
}

/// Check that `info` binds `leaf_signature_key` to its client certificate: same leaf key,
/// and the certificate's key signed it. Returns the (not yet chain-verified) certificate.
// Requirement: ID-CHAIN-1 (leaf key bound by the ID-Cert key)
pub fn check_binding(
    info: &ClientCredentialInfo,
    leaf_signature_key: &[u8],
) -> Result<ParsedCert, ClientError> {
    if info.leaf_signature_key.as_slice() != leaf_signature_key {
        return Err(verification("the credential is bound to another leaf key"));
    }
    let cert = ParsedCert::parse(info.client_certificate.as_slice())
        .map_err(|e| verification(format!("malformed client certificate: {e}")))?;
    crypto::verify(
        &cert.public_key,
        label::LEAF_BINDING,
        leaf_signature_key,
        info.binding_signature.as_slice(),
    )
    .map_err(|_| verification("the leaf is not signed by the client's certificate key"))?;
    Ok(cert)
}

// Requirement: ID-CHAIN-1, ID-CHAIN-2
/// Verify an actor certificate against the CA certificates `cas` of its issuer's domain,
/// as of time `at`: one of them must be a valid self-signed CA of that domain that signed
/// it, and the certificate (nested in the CA's validity) must be valid at `at`.
pub fn verify_chain(
    cert: &ParsedCert,
    cas: &[Vec<u8>],
    at: u64,
) -> Result<ActorSubject, ClientError> {
    let mut expired = None;
    for ca_der in cas {
        let Ok(ca) = ParsedCert::parse(ca_der) else {
            continue;
        };
        if ca.verify_self_signed_ca(&cert.issuer_domain).is_err() {
            continue;
        }
        match cert.verify_issued_by(&ca, Some(at)) {
            Ok(subject) => return Ok(subject.clone()),
            Err(e @ (CertError::Expired | CertError::ValidityNotNested)) => expired = Some(e),
            Err(_) => {}
        }
    }
    Err(match expired {
        Some(e) => verification(format!("client certificate of {}: {e}", cert.issuer_domain)),
        None => verification(format!(
            "the client certificate was not issued by any known CA certificate of {}",
            cert.issuer_domain
        )),
    })
}

/// Decrypt a member's credential info with the group's credential key.
pub fn decrypt_credential(
    credential_key: &SymmetricKey,
    group_id: &[u8],
    encrypted: &[u8],
) -> Result<ClientCredentialInfo, ClientError> {
    let plain =
        crypto::open_aead(credential_key, &credential_aad(group_id), encrypted).map_err(|_| {
            verification("the member's credential does not decrypt with the group's credential key")
        })?;
    codec::decode(&plain, 8192)
        .map_err(|e| verification(format!("malformed credential info: {}", e.detail)))
}

/// Domain-separation label of [`fingerprint_code`].
pub const FINGERPRINT_LABEL: &[u8] = b"phoenix-v1 client fingerprint";

// Requirement: ID-OOB-1
/// The code two users compare out of band for `fid`'s client certificates: SHA-256 over
/// `FINGERPRINT_LABEL || 0x00 || fid || 0x00`, then each distinct certificate DER in
/// ascending byte order as a 4-byte big-endian length and the DER; the first 24 bytes of
/// the hash as 12 big-endian 16-bit numbers, each written as 5 decimal digits (00000 to
/// 65535), separated by spaces.
pub fn fingerprint_code(fid: &str, certificates: &[Vec<u8>]) -> String {
    let mut sorted: Vec<&Vec<u8>> = certificates.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut input = FINGERPRINT_LABEL.to_vec();
    input.push(0);
    input.extend_from_slice(fid.as_bytes());
    input.push(0);
    for der in sorted {
        let len = u32::try_from(der.len()).unwrap_or(u32::MAX);
        input.extend_from_slice(&len.to_be_bytes());
        input.extend_from_slice(der);
    }
    let hash = crypto::sha256(&input);
    hash.chunks_exact(2)
        .take(12)
        .map(|pair| match pair {
            [hi, lo] => format!("{:05}", u16::from_be_bytes([*hi, *lo])),
            _ => String::new(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The digits of a code as typed (spaces, dashes and other separators ignored).
pub fn normalize_code(code: &str) -> String {
    code.chars().filter(char::is_ascii_digit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_code_is_12_groups_of_5_digits_independent_of_order() {
        let a = vec![1u8, 2, 3];
        let b = vec![4u8, 5];
        let code = fingerprint_code("bob@a.test", &[a.clone(), b.clone()]);
        assert_eq!(code.split(' ').count(), 12);
        assert!(code.split(' ').all(|g| g.len() == 5));
        assert_eq!(
            code,
            fingerprint_code("bob@a.test", &[b.clone(), a.clone()])
        );
        assert_ne!(
            code,
            fingerprint_code("bob@a.test", std::slice::from_ref(&a))
        );
        assert_ne!(code, fingerprint_code("eve@a.test", &[a, b]));
        assert_eq!(normalize_code(&code).len(), 60);
    }
}
