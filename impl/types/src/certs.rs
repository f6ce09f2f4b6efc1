//! The X.509 PKI of a homeserver, in polyproto's shape (see `docs/identity.md`):
//!
//! - the home server's self-signed Ed25519 CA certificate: subject and issuer are one `DC`
//!   per domain label (top-level label first), basicConstraints `cA TRUE, pathLen 0` and
//!   keyUsage `keyCertSign`, both critical;
//! - a client's ID-CSR (PKCS#10): subject `DC..., UID=local@domain, CN=local,
//!   uniqueIdentifier=<client id>`, self-signed;
//! - the client's ID-Cert: the CSR's subject and key, issued by the CA, with
//!   basicConstraints `cA FALSE` and keyUsage `digitalSignature`, both critical.
//!
//! Certificates are built and parsed with the `x509-cert` crate's types (no hand-written
//! DER). Signatures are verified over the exact `tbsCertificate` / `certificationRequestInfo`
//! bytes that were received, never over a re-encoding.

use std::time::{Duration, SystemTime};

use const_oid::ObjectIdentifier;
use der::asn1::{BitString, Ia5StringRef, OctetString, SetOfVec, Utf8StringRef};
use der::{Any, Decode, Encode, Reader, SliceReader, Tag};
use ed25519_dalek::SigningKey;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use thiserror::Error;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::request::{CertReq, CertReqInfo};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate};

use crate::UnixTime;
use crate::crypto;
use crate::ids::{ClientId, Domain, Fid};

/// Largest certificate or CSR we parse (bytes). Ours are about 400 bytes.
pub const MAX_CERT_LEN: usize = 4096;

pub const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
pub const OID_DOMAIN_COMPONENT: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.25");
pub const OID_UID: ObjectIdentifier = ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.1");
pub const OID_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
pub const OID_UNIQUE_IDENTIFIER: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.44");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");

/// Why a certificate or CSR was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CertError {
    #[error("too large")]
    TooLarge,
    #[error("malformed DER: {0}")]
    Der(String),
    #[error("unsupported algorithm (Ed25519 is required)")]
    Algorithm,
    #[error("bad subject: {0}")]
    Subject(&'static str),
    #[error("bad extensions: {0}")]
    Extensions(&'static str),
    #[error("signature does not verify")]
    Signature,
    #[error("issuer does not match the CA certificate")]
    Issuer,
    #[error("not valid at the given time")]
    Expired,
    #[error("validity is not inside the issuer's validity")]
    ValidityNotNested,
}

impl From<der::Error> for CertError {
    fn from(e: der::Error) -> Self {
        CertError::Der(e.to_string())
    }
}

fn ed25519_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: OID_ED25519,
        parameters: None,
    }
}

fn spki_for(public_key: &[u8; 32]) -> Result<SubjectPublicKeyInfoOwned, CertError> {
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: ed25519_algorithm(),
        subject_public_key: BitString::from_bytes(public_key)?,
    })
}

fn rdn(oid: ObjectIdentifier, value: Any) -> Result<RelativeDistinguishedName, CertError> {
    let mut set = SetOfVec::new();
    set.insert(AttributeTypeAndValue { oid, value })?;
    Ok(RelativeDistinguishedName(set))
}

fn domain_rdns(domain: &Domain) -> Result<Vec<RelativeDistinguishedName>, CertError> {
    domain
        .labels_top_first()
        .into_iter()
        .map(|label| {
            rdn(
                OID_DOMAIN_COMPONENT,
                Any::encode_from(&Ia5StringRef::new(label)?)?,
            )
        })
        .collect()
}

/// The distinguished name of a home server: one `DC` per label.
pub fn home_server_name(domain: &Domain) -> Result<Name, CertError> {
    Ok(RdnSequence(domain_rdns(domain)?))
}

/// The distinguished name of an actor's client: `DC...`, `UID`, `CN`, `uniqueIdentifier`.
pub fn actor_name(fid: &Fid, client_id: &ClientId) -> Result<Name, CertError> {
    let mut rdns = domain_rdns(fid.domain())?;
    let fid_str = fid.to_string();
    rdns.push(rdn(
        OID_UID,
        Any::encode_from(&Utf8StringRef::new(&fid_str)?)?,
    )?);
    rdns.push(rdn(
        OID_COMMON_NAME,
        Any::encode_from(&Utf8StringRef::new(fid.local())?)?,
    )?);
    rdns.push(rdn(
        OID_UNIQUE_IDENTIFIER,
        Any::encode_from(&Ia5StringRef::new(client_id.as_str())?)?,
    )?);
    Ok(RdnSequence(rdns))
}

fn time(at: UnixTime) -> Result<Time, CertError> {
    Ok(Time::try_from(
        SystemTime::UNIX_EPOCH + Duration::from_secs(at),
    )?)
}

fn extension<T: Encode>(oid: ObjectIdentifier, value: &T) -> Result<Extension, CertError> {
    Ok(Extension {
        extn_id: oid,
        critical: true,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

fn extensions(ca: bool) -> Result<Vec<Extension>, CertError> {
    let (constraints, usage) = if ca {
        (
            BasicConstraints {
                ca: true,
                path_len_constraint: Some(0),
            },
            KeyUsage(KeyUsages::KeyCertSign.into()),
        )
    } else {
        (
            BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
            KeyUsage(KeyUsages::DigitalSignature.into()),
        )
    };
    Ok(vec![
        extension(OID_BASIC_CONSTRAINTS, &constraints)?,
        extension(OID_KEY_USAGE, &usage)?,
    ])
}

/// A positive serial of 16 random bytes (the top bit cleared, the first byte non-zero).
pub fn random_serial(rng: &mut impl rand_core::CryptoRngCore) -> [u8; 16] {
    let mut serial = [0u8; 16];
    rng.fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x7f) | 0x01;
    serial
}

fn sign_tbs(tbs: TbsCertificate, key: &SigningKey) -> Result<Vec<u8>, CertError> {
    let tbs_der = tbs.to_der()?;
    let signature = ed25519_dalek::Signer::sign(key, &tbs_der).to_bytes();
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: ed25519_algorithm(),
        signature: BitString::from_bytes(&signature)?,
    };
    Ok(cert.to_der()?)
}

/// Create the home server's self-signed CA certificate.
pub fn create_ca_certificate(
    domain: &Domain,
    key: &SigningKey,
    serial: &[u8],
    not_before: UnixTime,
    not_after: UnixTime,
) -> Result<Vec<u8>, CertError> {
    let name = home_server_name(domain)?;
    let tbs = TbsCertificate {
        version: x509_cert::Version::V3,
        serial_number: SerialNumber::new(serial)?,
        signature: ed25519_algorithm(),
        issuer: name.clone(),
        validity: Validity {
            not_before: time(not_before)?,
            not_after: time(not_after)?,
        },
        subject: name,
        subject_public_key_info: spki_for(&key.verifying_key().to_bytes())?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions(true)?),
    };
    sign_tbs(tbs, key)
}

/// Create a client's ID-CSR for `fid` and `client_id`, self-signed with `key`.
pub fn create_csr(fid: &Fid, client_id: &ClientId, key: &SigningKey) -> Result<Vec<u8>, CertError> {
    let info = CertReqInfo {
        version: x509_cert::request::Version::V1,
        subject: actor_name(fid, client_id)?,
        public_key: spki_for(&key.verifying_key().to_bytes())?,
        attributes: Default::default(),
    };
    let info_der = info.to_der()?;
    let signature = ed25519_dalek::Signer::sign(key, &info_der).to_bytes();
    let req = CertReq {
        info,
        algorithm: ed25519_algorithm(),
        signature: BitString::from_bytes(&signature)?,
    };
    Ok(req.to_der()?)
}

/// The subject of an actor certificate or CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorSubject {
    pub fid: Fid,
    pub client_id: ClientId,
}

/// A CSR whose self-signature verified.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    pub subject: ActorSubject,
    pub public_key: [u8; 32],
}

/// The raw bytes of the first element inside the outer SEQUENCE of `der` (the signed part
/// of a certificate or CSR), exactly as received.
fn signed_part(der_bytes: &[u8]) -> Result<&[u8], CertError> {
    let mut reader = SliceReader::new(der_bytes)?;
    let header = der::Header::decode(&mut reader)?;
    if header.tag != Tag::Sequence {
        return Err(CertError::Der("expected a SEQUENCE".into()));
    }
    Ok(reader.tlv_bytes()?)
}

fn ed25519_key(spki: &SubjectPublicKeyInfoOwned) -> Result<[u8; 32], CertError> {
    if spki.algorithm.oid != OID_ED25519 || spki.algorithm.parameters.is_some() {
        return Err(CertError::Algorithm);
    }
    let bytes = spki
        .subject_public_key
        .as_bytes()
        .ok_or(CertError::Algorithm)?;
    let key: [u8; 32] = bytes.try_into().map_err(|_| CertError::Algorithm)?;
    crypto::verifying_key(&key).map_err(|_| CertError::Algorithm)?;
    Ok(key)
}

fn check_signature(
    public_key: &[u8; 32],
    message: &[u8],
    signature: &BitString,
) -> Result<(), CertError> {
    let sig = signature.as_bytes().ok_or(CertError::Signature)?;
    let key = crypto::verifying_key(public_key).map_err(|_| CertError::Signature)?;
    let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| CertError::Signature)?;
    key.verify_strict(message, &sig)
        .map_err(|_| CertError::Signature)
}

fn parse_actor_subject(name: &Name) -> Result<ActorSubject, CertError> {
    let mut dcs = Vec::new();
    let mut uid = None;
    let mut cn = None;
    let mut unique = None;
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == OID_DOMAIN_COMPONENT {
                dcs.push(
                    atv.value
                        .decode_as::<Ia5StringRef<'_>>()?
                        .as_str()
                        .to_owned(),
                );
            } else if atv.oid == OID_UID {
                uid = Some(
                    atv.value
                        .decode_as::<Utf8StringRef<'_>>()?
                        .as_str()
                        .to_owned(),
                );
            } else if atv.oid == OID_COMMON_NAME {
                cn = Some(
                    atv.value
                        .decode_as::<Utf8StringRef<'_>>()?
                        .as_str()
                        .to_owned(),
                );
            } else if atv.oid == OID_UNIQUE_IDENTIFIER {
                unique = Some(
                    atv.value
                        .decode_as::<Ia5StringRef<'_>>()?
                        .as_str()
                        .to_owned(),
                );
            }
        }
    }
    let uid = uid.ok_or(CertError::Subject("missing UID"))?;
    let fid =
        Fid::parse(&uid).map_err(|_| CertError::Subject("UID is not a valid federation id"))?;
    if fid.to_string() != uid {
        return Err(CertError::Subject("UID is not lowercase"));
    }
    if cn.as_deref() != Some(fid.local()) {
        return Err(CertError::Subject("CN does not match the UID's local name"));
    }
    dcs.reverse();
    if dcs.join(".") != fid.domain().as_str() {
        return Err(CertError::Subject(
            "DC components do not match the UID's domain",
        ));
    }
    let client_id = ClientId::parse(&unique.ok_or(CertError::Subject("missing uniqueIdentifier"))?)
        .map_err(|_| CertError::Subject("invalid uniqueIdentifier (client id)"))?;
    Ok(ActorSubject { fid, client_id })
}

/// Parse a CSR and check its self-signature over the exact received bytes.
pub fn verify_csr(der_bytes: &[u8]) -> Result<VerifiedCsr, CertError> {
    if der_bytes.len() > MAX_CERT_LEN {
        return Err(CertError::TooLarge);
    }
    let req = CertReq::from_der(der_bytes)?;
    if req.algorithm.oid != OID_ED25519 {
        return Err(CertError::Algorithm);
    }
    let public_key = ed25519_key(&req.info.public_key)?;
    check_signature(&public_key, signed_part(der_bytes)?, &req.signature)?;
    let subject = parse_actor_subject(&req.info.subject)?;
    Ok(VerifiedCsr {
        subject,
        public_key,
    })
}

/// A parsed certificate (not yet verified against an issuer).
#[derive(Debug, Clone)]
pub struct ParsedCert {
    pub der: Vec<u8>,
    pub serial: Vec<u8>,
    pub public_key: [u8; 32],
    pub not_before: UnixTime,
    pub not_after: UnixTime,
    pub is_ca: bool,
    /// The issuer's domain (from its `DC` components).
    pub issuer_domain: Domain,
    /// For actor certificates: the FID and client id.
    pub actor: Option<ActorSubject>,
    cert: Certificate,
}

fn name_domain(name: &Name) -> Result<Domain, CertError> {
    let mut dcs = Vec::new();
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == OID_DOMAIN_COMPONENT {
                dcs.push(
                    atv.value
                        .decode_as::<Ia5StringRef<'_>>()?
                        .as_str()
                        .to_owned(),
                );
            }
        }
    }
    dcs.reverse();
    Domain::parse(&dcs.join(".")).map_err(|_| CertError::Subject("DC components are not a domain"))
}

impl ParsedCert {
    pub fn parse(der_bytes: &[u8]) -> Result<Self, CertError> {
        if der_bytes.len() > MAX_CERT_LEN {
            return Err(CertError::TooLarge);
        }
        let cert = Certificate::from_der(der_bytes)?;
        let tbs = &cert.tbs_certificate;
        if tbs.version != x509_cert::Version::V3 {
            return Err(CertError::Der("not an X.509 v3 certificate".into()));
        }
        if cert.signature_algorithm.oid != OID_ED25519 || tbs.signature.oid != OID_ED25519 {
            return Err(CertError::Algorithm);
        }
        let public_key = ed25519_key(&tbs.subject_public_key_info)?;
        let mut basic = None;
        let mut usage = None;
        for ext in tbs.extensions.iter().flatten() {
            if ext.extn_id == OID_BASIC_CONSTRAINTS {
                if !ext.critical || basic.is_some() {
                    return Err(CertError::Extensions(
                        "basicConstraints must be critical and unique",
                    ));
                }
                basic = Some(BasicConstraints::from_der(ext.extn_value.as_bytes())?);
            } else if ext.extn_id == OID_KEY_USAGE {
                if !ext.critical || usage.is_some() {
                    return Err(CertError::Extensions(
                        "keyUsage must be critical and unique",
                    ));
                }
                usage = Some(KeyUsage::from_der(ext.extn_value.as_bytes())?);
            } else if ext.critical {
                return Err(CertError::Extensions("unknown critical extension"));
            }
        }
        let basic = basic.ok_or(CertError::Extensions("missing basicConstraints"))?;
        let usage = usage.ok_or(CertError::Extensions("missing keyUsage"))?;
        let is_ca = basic.ca;
        if basic.path_len_constraint.is_some() && !is_ca {
            return Err(CertError::Extensions("pathLen without cA"));
        }
        let actor = if is_ca {
            if !usage.0.contains(KeyUsages::KeyCertSign) {
                return Err(CertError::Extensions("CA certificate without keyCertSign"));
            }
            None
        } else {
            if usage.0.contains(KeyUsages::KeyCertSign)
                || !(usage.0.contains(KeyUsages::DigitalSignature)
                    || usage.0.contains(KeyUsages::NonRepudiation))
            {
                return Err(CertError::Extensions("actor certificate key usage"));
            }
            Some(parse_actor_subject(&tbs.subject)?)
        };
        Ok(Self {
            der: der_bytes.to_vec(),
            serial: tbs.serial_number.as_bytes().to_vec(),
            public_key,
            not_before: tbs.validity.not_before.to_unix_duration().as_secs(),
            not_after: tbs.validity.not_after.to_unix_duration().as_secs(),
            is_ca,
            issuer_domain: name_domain(&tbs.issuer)?,
            actor,
            cert,
        })
    }

    /// SHA-256 over the DER encoding.
    pub fn fingerprint(&self) -> [u8; 32] {
        crypto::sha256(&self.der)
    }

    pub fn serial_hex(&self) -> String {
        hex::encode(&self.serial)
    }

    pub fn valid_at(&self, at: UnixTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    /// Verify a self-signed home-server CA certificate for `domain`.
    pub fn verify_self_signed_ca(&self, domain: &Domain) -> Result<(), CertError> {
        if !self.is_ca {
            return Err(CertError::Extensions("not a CA certificate"));
        }
        let subject = name_domain(&self.cert.tbs_certificate.subject)?;
        if subject != *domain || self.issuer_domain != *domain {
            return Err(CertError::Issuer);
        }
        check_signature(
            &self.public_key,
            signed_part(&self.der)?,
            &self.cert.signature,
        )
    }

    /// Verify that this actor certificate was issued by `ca`, names a user of `ca`'s domain,
    /// nests inside `ca`'s validity, and (if `at` is given) is valid at that time.
    pub fn verify_issued_by(
        &self,
        ca: &ParsedCert,
        at: Option<UnixTime>,
    ) -> Result<&ActorSubject, CertError> {
        let actor = self
            .actor
            .as_ref()
            .ok_or(CertError::Extensions("not an actor certificate"))?;
        if !ca.is_ca {
            return Err(CertError::Issuer);
        }
        let ca_domain = name_domain(&ca.cert.tbs_certificate.subject)?;
        if self.issuer_domain != ca_domain || actor.fid.domain() != &ca_domain {
            return Err(CertError::Issuer);
        }
        check_signature(
            &ca.public_key,
            signed_part(&self.der)?,
            &self.cert.signature,
        )?;
        if self.not_before < ca.not_before || self.not_after > ca.not_after {
            return Err(CertError::ValidityNotNested);
        }
        if at.is_some_and(|at| !self.valid_at(at)) {
            return Err(CertError::Expired);
        }
        Ok(actor)
    }
}

/// A certificate as PEM (`CERTIFICATE`, base64 wrapped at 64 columns, LF line endings).
pub fn to_pem(der_bytes: &[u8]) -> Result<String, CertError> {
    der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der_bytes)
        .map_err(|e| CertError::Der(e.to_string()))
}

/// The DER of a PEM `CERTIFICATE` block.
pub fn from_pem(pem: &str) -> Result<Vec<u8>, CertError> {
    if pem.len() > 4 * MAX_CERT_LEN {
        return Err(CertError::TooLarge);
    }
    let (label, der_bytes) =
        der::pem::decode_vec(pem.as_bytes()).map_err(|e| CertError::Der(e.to_string()))?;
    if label != "CERTIFICATE" {
        return Err(CertError::Der(format!(
            "expected a CERTIFICATE PEM block, got {label}"
        )));
    }
    Ok(der_bytes)
}

/// Issue an ID-Cert for a verified CSR.
pub fn issue_client_certificate(
    csr: &VerifiedCsr,
    ca_key: &SigningKey,
    ca: &ParsedCert,
    serial: &[u8],
    not_before: UnixTime,
    not_after: UnixTime,
) -> Result<Vec<u8>, CertError> {
    let tbs = TbsCertificate {
        version: x509_cert::Version::V3,
        serial_number: SerialNumber::new(serial)?,
        signature: ed25519_algorithm(),
        issuer: ca.cert.tbs_certificate.subject.clone(),
        validity: Validity {
            not_before: time(not_before.max(ca.not_before))?,
            not_after: time(not_after.min(ca.not_after))?,
        },
        subject: actor_name(&csr.subject.fid, &csr.subject.client_id)?,
        subject_public_key_info: spki_for(&csr.public_key)?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions(false)?),
    };
    sign_tbs(tbs, ca_key)
}

#[cfg(test)]
mod tests {
    use rand_core::OsRng;

    use super::*;

    const NOW: UnixTime = 1_790_000_000;

    fn ca(domain: &str) -> (SigningKey, ParsedCert) {
        let key = crypto::generate_signing_key(&mut OsRng);
        let domain = Domain::parse(domain).unwrap();
        let der = create_ca_certificate(
            &domain,
            &key,
            &random_serial(&mut OsRng),
            NOW - 10,
            NOW + 1000,
        )
        .unwrap();
        let parsed = ParsedCert::parse(&der).unwrap();
        parsed.verify_self_signed_ca(&domain).unwrap();
        (key, parsed)
    }

    #[test]
    fn csr_to_cert_chain() {
        let (ca_key, ca_cert) = ca("a.test");
        let client_key = crypto::generate_signing_key(&mut OsRng);
        let fid = Fid::parse("alice@a.test").unwrap();
        let cid = ClientId::parse("c1").unwrap();
        let csr = verify_csr(&create_csr(&fid, &cid, &client_key).unwrap()).unwrap();
        assert_eq!(csr.subject.fid, fid);
        let der = issue_client_certificate(
            &csr,
            &ca_key,
            &ca_cert,
            &random_serial(&mut OsRng),
            NOW,
            NOW + 100,
        )
        .unwrap();
        let cert = ParsedCert::parse(&der).unwrap();
        let subject = cert.verify_issued_by(&ca_cert, Some(NOW + 50)).unwrap();
        assert_eq!(subject.client_id, cid);
        assert_eq!(cert.public_key, client_key.verifying_key().to_bytes());
        assert_eq!(
            cert.verify_issued_by(&ca_cert, Some(NOW + 101))
                .unwrap_err(),
            CertError::Expired
        );
        let (_, other_ca) = ca("a.test");
        assert_eq!(
            cert.verify_issued_by(&other_ca, Some(NOW)).unwrap_err(),
            CertError::Signature
        );
        let (_, b_ca) = ca("b.test");
        assert_eq!(
            cert.verify_issued_by(&b_ca, Some(NOW)).unwrap_err(),
            CertError::Issuer
        );
    }

    #[test]
    fn pem_roundtrip() {
        let (_, ca) = ca("a.test");
        let pem = to_pem(&ca.der).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(from_pem(&pem).unwrap(), ca.der);
        assert!(from_pem("-----BEGIN KEY-----\nAAAA\n-----END KEY-----\n").is_err());
    }

    #[test]
    fn tampered_csr_is_refused() {
        let key = crypto::generate_signing_key(&mut OsRng);
        let mut der = create_csr(
            &Fid::parse("bob@a.test").unwrap(),
            &ClientId::parse("x").unwrap(),
            &key,
        )
        .unwrap();
        let n = der.len();
        der[n - 1] ^= 1;
        assert!(verify_csr(&der).is_err());
        assert!(verify_csr(&der[..n - 5]).is_err());
        assert!(verify_csr(&[]).is_err());
    }
}
