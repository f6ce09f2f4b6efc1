//! `request_group_id`: hand out a fresh group id of this DS and reserve it (in the
//! database, so the reservation survives restarts and is shared between processes).

use rand_core::{OsRng, RngCore};
use tls_codec::VLBytes;

use phoenix_types::codec;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::{GROUP_ID_RANDOM_LEN, QualifiedGroupId};
use phoenix_types::messages::Empty;
use phoenix_types::messages::ds::RequestGroupIdResponse;

use crate::auth::Request;
use crate::server::Server;
use crate::store::DsStore;

// Requirement: DS-GID-1
pub async fn request_group_id(
    server: &Server,
    request: &Request,
    now: u64,
) -> Result<Vec<u8>, WireError> {
    request.require_anonymous()?;
    let _: Empty = request.payload()?;
    // 128 random bits make a collision practically impossible; retry a few times anyway
    // rather than trust it.
    for _ in 0..4 {
        let mut random = [0u8; GROUP_ID_RANDOM_LEN];
        OsRng.fill_bytes(&mut random);
        let group_id = QualifiedGroupId::new(random, server.domain.clone()).to_bytes();
        let expires_at = now + server.limits.group_id_reservation;
        if server
            .store
            .reserve_group_id(&group_id, expires_at)
            .await
            .map_err(server.internal())?
        {
            // Requirement: ADV-OP-2
            observe!([Observed::GroupId(group_id.clone())]);
            return codec::encode(&RequestGroupIdResponse {
                group_id: VLBytes::new(group_id),
            });
        }
    }
    Err(WireError::new(
        ErrorCode::Internal,
        "could not reserve a group id",
    ))
}
