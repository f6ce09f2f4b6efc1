//! `delete_client`: a client deletes its own QS client record (QS-REC-1), with its queue,
//! key packages, push endpoint and delivery records; its user record goes too when no other
//! client is left (nothing else could sign for it). Afterwards the record's requests are
//! refused (`UNKNOWN_CLIENT`), and fan-out addressed to it is undeliverable (the DS drops
//! those outbox entries; removing the member from its groups is the DS's part).
//!
//! Mirrors the model's `QsCall::DeleteClient` (model/src/qs.rs).

use phoenix_types::codec;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::qs::{DeleteClientRequest, DeleteClientResponse};

use crate::auth::{Request, check_fresh};
use crate::server::Server;
use crate::store::qs_records::{Deleted, QsRecordStore};

// Requirement: QS-REC-1, ADV-REPLAY-3
pub async fn delete_client(
    server: &Server,
    request: &Request,
    now: u64,
) -> Result<Vec<u8>, WireError> {
    let client = request.qs_client(server).await?;
    let req: DeleteClientRequest = request.payload()?;
    check_fresh(req.timestamp, now)?;
    let deleted = server
        .store
        .delete_client(&client.client_id, &crate::replay::record(request, now)?)
        .await
        .map_err(server.internal())?;
    match deleted {
        Deleted::Client { user } => {
            // A live stream of this queue finds nothing more; wake it so it notices.
            server.queue_wakeup.wake(&client.client_id);
            codec::encode(&DeleteClientResponse {
                user_deleted: u8::from(user),
            })
        }
        Deleted::Unknown => Err(WireError::new(
            ErrorCode::UnknownClient,
            "no such QS client record",
        )),
    }
}
