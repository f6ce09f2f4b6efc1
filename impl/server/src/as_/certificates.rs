//! `client_certificates` and `server_certificate`: anyone may fetch the home server's CA
//! certificate and every certificate ever issued to a user's clients, to verify chains.

use tls_codec::VLBytes;

use phoenix_types::codec;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::Fid;
use phoenix_types::messages::Empty;
use phoenix_types::messages::as_::{
    ClientCertificatesRequest, ClientCertificatesResponse, ServerCertificateResponse,
};

use crate::auth::Request;
use crate::server::Server;
use crate::store::AsStore;

/// Most certificates one answer carries (oldest are dropped first).
const MAX_CERTIFICATES: usize = 256;

// Requirement: AS-CERT-2
pub async fn client_certificates(server: &Server, request: &Request) -> Result<Vec<u8>, WireError> {
    request.require_anonymous()?;
    let req: ClientCertificatesRequest = request.payload()?;
    let fid =
        Fid::parse(&req.fid).map_err(|e| WireError::new(ErrorCode::InvalidFid, e.to_string()))?;
    if fid.domain() != &server.domain {
        return Err(WireError::new(
            ErrorCode::WrongDomain,
            format!("{fid} is not a user of this server"),
        ));
    }
    let certs = server
        .store
        .user_certificates(&fid.to_string())
        .await
        .map_err(server.internal())?;
    if certs.is_empty() {
        return Err(WireError::new(
            ErrorCode::UnknownUser,
            format!("{fid} is not registered here"),
        ));
    }
    let skip = certs.len().saturating_sub(MAX_CERTIFICATES);
    // Requirement: ADV-OP-1
    observe!(
        std::iter::once(Observed::Fid(fid.to_string())).chain(certs.iter().flat_map(
            |(client_id, der, _, _)| [
                Observed::AsClientId(client_id.clone()),
                Observed::certificate(der)
            ]
        ))
    );
    codec::encode(&ClientCertificatesResponse {
        certificates: certs
            .into_iter()
            .skip(skip)
            .map(|(_, der, _, _)| VLBytes::new(der))
            .collect(),
    })
}

pub async fn server_certificate(server: &Server, request: &Request) -> Result<Vec<u8>, WireError> {
    request.require_anonymous()?;
    let _: Empty = request.payload()?;
    // Requirement: AS-CA-ROT-1
    let ca = server.current_ca().await?;
    codec::encode(&ServerCertificateResponse {
        ca_certificate: VLBytes::new(ca.certificate.der.clone()),
        history: server
            .store
            .ca_history()
            .await
            .map_err(server.internal())?
            .into_iter()
            .map(|ca| VLBytes::new(ca.certificate))
            .collect(),
    })
}

/// `domain_certificates`: the CA certificate history of this or another homeserver (the
/// latter from this server's cache, see [`crate::federation::certificates`]).
pub async fn domain_certificates(server: &Server, request: &Request) -> Result<Vec<u8>, WireError> {
    request.require_anonymous()?;
    let req: phoenix_types::messages::as_::DomainCertificatesRequest = request.payload()?;
    let domain = phoenix_types::ids::Domain::parse(&req.domain)
        .map_err(|e| WireError::new(ErrorCode::Malformed, e.to_string()))?;
    observe!([Observed::PeerDomain(domain.to_string())]);
    codec::encode(&crate::federation::certificates::domain_certificates(server, &domain).await?)
}
