//! The authentication chain of a group member, checked by the client on every received
//! message and for every member of a group it joins:
//!
//! 1. the MLS message signature verifies with the sender's leaf key (openmls checks this
//!    when it processes the message);
//! 2. the leaf key is bound to a client ID-Cert: the member's encrypted credential info,
//!    decrypted with the group's credential key, names the same leaf key and carries the
//!    ID-Cert's signature over it;
//! 3. the ID-Cert was issued by the home server CA of the FID's domain, and is valid now;
//! 4. the CA certificate is the one this client pinned for that domain.

use phoenix_types::certs::ParsedCert;
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

/// Associated data of a credential encrypted under a group's credential key.
pub fn credential_aad(group_id: &[u8]) -> Vec<u8> {
    let mut aad = b"phoenix-v1 group credential ".to_vec();
    aad.extend_from_slice(group_id);
    aad
}

/// Check a client credential info against the leaf key it claims and the CA of its domain.
pub fn verify_credential_info(
    info: &ClientCredentialInfo,
    leaf_signature_key: &[u8],
    ca_der: &[u8],
    now: u64,
) -> Result<VerifiedMember, ClientError> {
    if info.leaf_signature_key.as_slice() != leaf_signature_key {
        return Err(verification("the credential is bound to another leaf key"));
    }
    let cert = ParsedCert::parse(info.client_certificate.as_slice())
        .map_err(|e| verification(format!("malformed client certificate: {e}")))?;
    let ca = ParsedCert::parse(ca_der)
        .map_err(|e| verification(format!("malformed CA certificate: {e}")))?;
    ca.verify_self_signed_ca(&cert.issuer_domain)
        .map_err(|e| verification(format!("CA certificate: {e}")))?;
    let subject = cert
        .verify_issued_by(&ca, Some(now))
        .map_err(|e| verification(format!("client certificate: {e}")))?
        .clone();
    crypto::verify(
        &cert.public_key,
        label::LEAF_BINDING,
        leaf_signature_key,
        info.binding_signature.as_slice(),
    )
    .map_err(|_| verification("the leaf is not signed by the client's certificate key"))?;
    Ok(VerifiedMember {
        fid: subject.fid.to_string(),
        client_id: subject.client_id.to_string(),
        fingerprint: hex::encode(cert.fingerprint()),
        certificate: cert.der.clone(),
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

/// Which CA domain a credential claims (to look up the right CA before verifying).
pub fn claimed_domain(info: &ClientCredentialInfo) -> Result<String, ClientError> {
    let cert = ParsedCert::parse(info.client_certificate.as_slice())
        .map_err(|e| verification(format!("malformed client certificate: {e}")))?;
    Ok(cert.issuer_domain.to_string())
}
