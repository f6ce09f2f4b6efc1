//! `create_user`: create a pseudonymous QS user record with its first client record. The
//! ids are random and the request names no FID, so nothing links the record to the AS.
//! The friendship token is stored only as its hash.

use rand_core::{OsRng, RngCore};

use phoenix_types::codec;
use phoenix_types::crypto;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::qs::{CreateUserRequest, CreateUserResponse};

use crate::auth::Request;
use crate::server::Server;
use phoenix_types::queue_ratchet::QueueRatchet;

use crate::store::{CreateQsUser, QsClientRecord, QsStore, QsUserRecord, QueueKeys};

fn auth_key(bytes: &[u8]) -> Result<[u8; 32], WireError> {
    crypto::verifying_key(bytes)
        .map(|k| k.to_bytes())
        .map_err(|_| {
            WireError::new(
                ErrorCode::Malformed,
                "auth keys must be Ed25519 public keys",
            )
        })
}

/// An X25519 public key (any 32 bytes are one).
pub(crate) fn queue_key(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    if bytes.len() != 32 {
        return Err(WireError::new(
            ErrorCode::Malformed,
            "the queue key must be an X25519 public key (32 bytes)",
        ));
    }
    Ok(bytes.to_vec())
}

// Requirement: QS-USER-1, QS-USER-2, CL-AMBIG-2
pub async fn create_user(server: &Server, request: &Request) -> Result<Vec<u8>, WireError> {
    request.require_anonymous()?;
    let req: CreateUserRequest = request.payload()?;
    let mut user_id = [0u8; 16];
    let mut client_id = [0u8; 16];
    OsRng.fill_bytes(&mut user_id);
    OsRng.fill_bytes(&mut client_id);
    let user = QsUserRecord {
        user_id,
        auth_key: auth_key(req.user_auth_key.as_slice())?,
        friendship_token_hash: crypto::sha256(&req.friendship_token),
    };
    let client = QsClientRecord {
        client_id,
        user_id,
        auth_key: auth_key(req.client_auth_key.as_slice())?,
        // Requirement: QS-ENC-1
        queue: Some(QueueKeys {
            queue_key: queue_key(req.queue_key.as_slice())?,
            ratchet: QueueRatchet::from_secret(req.queue_ratchet_secret),
        }),
    };
    // Requirement: ADV-OP-1
    observe!([
        Observed::QsUserId(user.user_id),
        Observed::QsClientId(client.client_id),
        Observed::QsAuthKey(user.auth_key),
        Observed::QsAuthKey(client.auth_key),
        Observed::FriendshipTokenHash(user.friendship_token_hash),
    ]);
    match QsStore::create_user(&server.store, &user, &client)
        .await
        .map_err(server.internal())?
    {
        CreateQsUser::Created => codec::encode(&CreateUserResponse { user_id, client_id }),
        CreateQsUser::DuplicateFriendshipToken => {
            // Requirement: CL-AMBIG-2
            // A retry of a creation that took effect (its answer was lost): the user with
            // this token has exactly these auth keys. Answer with its ids again. Whoever
            // sends these bytes holds the friendship token already, which is what the ids
            // would let them reach (`fetch_key_packages`); every other QS operation on the
            // ids needs a signature by the auth keys' private halves.
            if let Some(existing) = repeated_creation(server, &user, &client).await? {
                return codec::encode(&existing);
            }
            Err(WireError::new(
                ErrorCode::DuplicateFriendshipToken,
                "this friendship token is taken; choose a fresh random one",
            ))
        }
    }
}

/// The ids of the user created before by a request identical in effect to this one (same
/// friendship token, user auth key and client auth key, and still its only client), if any.
async fn repeated_creation(
    server: &Server,
    user: &QsUserRecord,
    client: &QsClientRecord,
) -> Result<Option<CreateUserResponse>, WireError> {
    let Some(existing) = server
        .store
        .user_by_friendship_token_hash(&user.friendship_token_hash)
        .await
        .map_err(server.internal())?
    else {
        return Ok(None);
    };
    if existing.auth_key != user.auth_key {
        return Ok(None);
    }
    let clients = server
        .store
        .clients_of_user(&existing.user_id)
        .await
        .map_err(server.internal())?;
    match clients.as_slice() {
        [only] if only.auth_key == client.auth_key => Ok(Some(CreateUserResponse {
            user_id: existing.user_id,
            client_id: only.client_id,
        })),
        _ => Ok(None),
    }
}
