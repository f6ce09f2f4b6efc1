//! `enqueue_connection` and `dequeue_connection`: each client's direct queue on the AS.
//! Anyone may enqueue an HPKE-encrypted connection establishment package (the AS cannot
//! read it); only the client, authenticated by its ID-Cert key, dequeues.

use phoenix_types::codec;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::{ClientId, Fid};
use phoenix_types::messages::as_::{EnqueueConnectionRequest, MAX_CONNECTION_CIPHERTEXT};
use phoenix_types::messages::{DequeueRequest, DequeueResponse, Empty};

use crate::auth::{Request, check_fresh};
use crate::server::Server;
use crate::store::AsStore;

// Requirement: AS-DQ-1
// Requirement: AS-CONN-1 (anonymous, sealed to the recipient: the AS learns no sender)
// Requirement: CL-AMBIG-3 (the identical request again is `REPLAYED`, never a second copy
// in the queue: a client whose answer was lost sends the same bytes again)
pub async fn enqueue(server: &Server, request: &Request, now: u64) -> Result<Vec<u8>, WireError> {
    request.require_anonymous()?;
    let req: EnqueueConnectionRequest = request.payload()?;
    let fid =
        Fid::parse(&req.fid).map_err(|e| WireError::new(ErrorCode::InvalidFid, e.to_string()))?;
    let client_id = ClientId::parse(&req.client_id)
        .map_err(|e| WireError::new(ErrorCode::Malformed, e.to_string()))?;
    // Requirement: ADV-OP-1
    observe!([
        Observed::Fid(fid.to_string()),
        Observed::AsClientId(client_id.to_string()),
    ]);
    if req.ciphertext.kem_output.as_slice().len() != 32 {
        return Err(WireError::new(
            ErrorCode::Malformed,
            "kem_output must be an X25519 public key",
        ));
    }
    if req.ciphertext.ciphertext.as_slice().len() > MAX_CONNECTION_CIPHERTEXT {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            "connection establishment package is too large",
        ));
    }
    let payload = codec::encode(&req.ciphertext)?;
    server
        .store
        .enqueue_direct(
            &fid.to_string(),
            client_id.as_str(),
            &payload,
            &crate::replay::record(request, now)?,
        )
        .await
        .map_err(server.internal())?
        .ok_or_else(|| WireError::new(ErrorCode::UnknownClient, "no such client"))?;
    codec::encode(&Empty {})
}

// Requirement: AS-DQ-2, QS-DEQ-1, QS-DEQ-2, QS-DEQ-3
pub async fn dequeue(server: &Server, request: &Request, now: u64) -> Result<Vec<u8>, WireError> {
    let client = request.as_client(server, now).await?;
    let req: DequeueRequest = request.payload()?;
    check_fresh(req.timestamp, now)?;
    let max = u32::from(req.max).min(server.limits.max_dequeue);
    let (messages, remaining) = server
        .store
        .dequeue_direct(
            &client.fid,
            &client.client_id,
            req.sequence_number_start,
            max,
        )
        .await
        .map_err(server.internal())?;
    codec::encode(&DequeueResponse {
        messages,
        remaining,
    })
}
