//! `register`: a new user registers with its first client. The client sends an ID-CSR for
//! its FID and client id; the AS checks the CSR's self-signature, that the FID belongs to
//! this domain and is free, and issues the client's ID-Cert.

use rand_core::OsRng;
use tls_codec::VLBytes;

use phoenix_types::certs;
use phoenix_types::codec;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::as_::{RegisterRequest, RegisterResponse};

use crate::auth::Request;
use crate::server::Server;
use crate::store::{AsClientRecord, AsStore, CreateUser};

pub async fn register(server: &Server, request: &Request, now: u64) -> Result<Vec<u8>, WireError> {
    request.require_anonymous()?;
    let req: RegisterRequest = request.payload()?;
    let csr = certs::verify_csr(req.csr.as_slice())
        .map_err(|e| WireError::new(ErrorCode::InvalidCsr, format!("invalid CSR: {e}")))?;
    let fid = &csr.subject.fid;
    if fid.domain() != &server.domain {
        return Err(WireError::new(
            ErrorCode::WrongDomain,
            format!("{fid} does not belong to this server ({})", server.domain),
        ));
    }
    let serial = certs::random_serial(&mut OsRng);
    let not_before = now.saturating_sub(60);
    let not_after = now + server.limits.client_cert_lifetime;
    let der = certs::issue_client_certificate(
        &csr,
        &server.ca.signing_key,
        &server.ca.certificate,
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
        fid: fid.to_string(),
        client_id: csr.subject.client_id.to_string(),
        certificate: der.clone(),
        public_key: csr.public_key,
        serial: issued.serial_hex(),
        not_before: issued.not_before,
        not_after: issued.not_after,
    };
    match server
        .store
        .create_user(&record, now)
        .await
        .map_err(server.internal())?
    {
        CreateUser::Created => {}
        CreateUser::UserExists => {
            return Err(WireError::new(
                ErrorCode::UserExists,
                format!("{fid} is already registered"),
            ));
        }
    }
    tracing::info!(serial = %record.serial, "registered a user");
    codec::encode(&RegisterResponse {
        client_certificate: VLBytes::new(der),
        ca_certificate: VLBytes::new(server.ca.certificate.der.clone()),
    })
}
