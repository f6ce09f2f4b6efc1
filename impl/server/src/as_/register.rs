//! `register`: a new user registers with its first client. The client sends an ID-CSR for
//! its FID and client id; the AS checks the CSR's self-signature, that the FID belongs to
//! this domain and is free, and issues the client's ID-Cert.

use rand_core::OsRng;
use tls_codec::VLBytes;

use phoenix_types::certs;
use phoenix_types::codec;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::as_::{RegisterRequest, RegisterResponse, RenewCertificateRequest};

use crate::auth::{Request, check_fresh};
use crate::server::Server;
use crate::store::{AsClientRecord, AsStore, CreateUser};

/// A CSR larger than the configured limit is refused before it is parsed.
fn check_csr_size(server: &Server, csr: &[u8]) -> Result<(), WireError> {
    if csr.len() > server.limits.max_csr_bytes {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("CSRs are at most {} bytes", server.limits.max_csr_bytes),
        ));
    }
    Ok(())
}

// Requirement: AS-REG-1, AS-REG-2, AS-REG-3, AS-REG-4, AS-CERT-1, CL-AMBIG-2
pub async fn register(server: &Server, request: &Request, now: u64) -> Result<Vec<u8>, WireError> {
    request.require_anonymous()?;
    let req: RegisterRequest = request.payload()?;
    check_csr_size(server, req.csr.as_slice())?;
    let csr = certs::verify_csr(req.csr.as_slice())
        .map_err(|e| WireError::new(ErrorCode::InvalidCsr, format!("invalid CSR: {e}")))?;
    let fid = &csr.subject.fid;
    // Requirement: ADV-OP-1
    observe!([
        Observed::Fid(fid.to_string()),
        Observed::AsClientId(csr.subject.client_id.to_string()),
    ]);
    if fid.domain() != &server.domain {
        return Err(WireError::new(
            ErrorCode::WrongDomain,
            format!("{fid} does not belong to this server ({})", server.domain),
        ));
    }
    let (der, record) = issue(server, &csr, now).await?;
    observe!([
        Observed::certificate(&der),
        Observed::CertificateSerial(record.serial.clone()),
    ]);
    match server
        .store
        .create_user(&record, now)
        .await
        .map_err(server.internal())?
    {
        CreateUser::Created => {}
        CreateUser::UserExists => {
            // Requirement: CL-AMBIG-2
            // A retry of a registration that took effect (its answer was lost): the same
            // client id with the same key already holds a certificate. Answer with that
            // certificate (public: served by `client_certificates`), issue nothing new.
            // Any other CSR for a registered FID is refused.
            let existing = AsStore::client(&server.store, &record.fid, &record.client_id)
                .await
                .map_err(server.internal())?;
            if let Some(existing) = existing
                && existing.public_key == record.public_key
            {
                tracing::info!(serial = %existing.serial, "answered a repeated registration");
                return codec::encode(&RegisterResponse {
                    client_certificate: VLBytes::new(existing.certificate),
                    ca_certificate: VLBytes::new(server.ca().certificate.der.clone()),
                });
            }
            return Err(WireError::new(
                ErrorCode::UserExists,
                format!("{fid} is already registered"),
            ));
        }
    }
    tracing::info!(serial = %record.serial, "registered a user");
    codec::encode(&RegisterResponse {
        client_certificate: VLBytes::new(der),
        ca_certificate: VLBytes::new(server.ca().certificate.der.clone()),
    })
}

/// `renew_certificate`: a registered client, authenticated by its current certificate,
/// gets a new one for the same FID and client id (usually for a new key). The previous
/// certificate stays in the history. A certificate invalidated through polyproto
/// authenticates no renewal (its key counts as compromised): `as_client` refuses it with
/// `UNAUTHENTICATED`, by design (docs/identity.md).
// Requirement: AS-AUTH-3
pub async fn renew_certificate(
    server: &Server,
    request: &Request,
    now: u64,
) -> Result<Vec<u8>, WireError> {
    let client = request.as_client(server, now).await?;
    let req: RenewCertificateRequest = request.payload()?;
    check_fresh(req.timestamp, now)?;
    check_csr_size(server, req.csr.as_slice())?;
    let csr = certs::verify_csr(req.csr.as_slice())
        .map_err(|e| WireError::new(ErrorCode::InvalidCsr, format!("invalid CSR: {e}")))?;
    if csr.subject.fid.to_string() != client.fid
        || csr.subject.client_id.as_str() != client.client_id
    {
        return Err(WireError::new(
            ErrorCode::InvalidCsr,
            "a renewal CSR must name the same federation id and client id",
        ));
    }
    let (der, record) = issue(server, &csr, now).await?;
    // Requirement: ADV-OP-1
    observe!([
        Observed::certificate(&der),
        Observed::CertificateSerial(record.serial.clone()),
    ]);
    if !server
        .store
        // Requirement: ADV-REPLAY-3
        .renew_client(&record, &crate::replay::record(request, now)?)
        .await
        .map_err(server.internal())?
    {
        return Err(WireError::new(ErrorCode::UnknownClient, "no such client"));
    }
    tracing::info!(serial = %record.serial, "renewed a client certificate");
    codec::encode(&RegisterResponse {
        client_certificate: VLBytes::new(der),
        ca_certificate: VLBytes::new(server.ca().certificate.der.clone()),
    })
}

/// Issue an ID-Cert for a verified CSR with the current CA (picking up a CA rotated by
/// another process first).
async fn issue(
    server: &Server,
    csr: &certs::VerifiedCsr,
    now: u64,
) -> Result<(Vec<u8>, AsClientRecord), WireError> {
    if let Err(e) = server.reload_ca().await {
        tracing::error!(error = %e, "cannot reload the CA; issuing with the one in memory");
    }
    let ca = server.ca();
    let serial = certs::random_serial(&mut OsRng);
    let not_before = now.saturating_sub(60);
    // Requirement: AS-CERT-LIFE-1
    let lifetime = server
        .limits
        .client_cert_lifetime
        .min(crate::server::MAX_CLIENT_CERT_LIFETIME);
    let not_after = now.saturating_add(lifetime);
    let der = certs::issue_client_certificate(
        csr,
        &ca.signing_key,
        &ca.certificate,
        &serial,
        not_before,
        not_after,
    )
    .map_err(|e| {
        tracing::error!(error = %e, "certificate issuance failed");
        WireError::new(ErrorCode::Internal, "certificate issuance failed")
    })?;
    // Read back what was issued (issuance clamps the validity into the CA's).
    let issued = certs::ParsedCert::parse(&der)
        .map_err(|_| WireError::new(ErrorCode::Internal, "issued an unparsable certificate"))?;
    let record = AsClientRecord {
        fid: csr.subject.fid.to_string(),
        client_id: csr.subject.client_id.to_string(),
        certificate: der.clone(),
        public_key: csr.public_key,
        serial: issued.serial_hex(),
        not_before: issued.not_before,
        not_after: issued.not_after,
    };
    Ok((der, record))
}
