//! `fetch_key_packages`: a contact presents the user's friendship token and gets one add
//! package per client of that user, consumed unless last-resort. The token is looked up by
//! its hash and compared in constant time; the store hands out each package once even
//! under concurrent fetches.

use phoenix_types::codec;
use phoenix_types::crypto;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::qs::{AddPackage, FetchKeyPackagesRequest, FetchKeyPackagesResponse};

use crate::auth::Request;
use crate::server::Server;
use crate::store::QsStore;

// Requirement: QS-KP-3, QS-KP-4, QS-KP-6, QS-USER-2
pub async fn fetch_key_packages(server: &Server, request: &Request) -> Result<Vec<u8>, WireError> {
    request.require_anonymous()?;
    let req: FetchKeyPackagesRequest = request.payload()?;
    let hash = crypto::sha256(&req.friendship_token);
    let unknown = || {
        WireError::new(
            ErrorCode::UnknownFriendshipToken,
            "unknown friendship token",
        )
    };
    let user = server
        .store
        .user_by_friendship_token_hash(&hash)
        .await
        .map_err(server.internal())?
        .ok_or_else(unknown)?;
    if !crypto::ct_eq(&user.friendship_token_hash, &hash) {
        return Err(unknown());
    }
    // Requirement: ADV-OP-1
    observe!([
        Observed::FriendshipTokenHash(hash),
        Observed::QsUserId(user.user_id),
    ]);
    let packages = server
        .store
        .take_key_packages(&user.user_id)
        .await
        .map_err(server.internal())?;
    if packages.is_empty() {
        return Err(WireError::new(
            ErrorCode::NoKeyPackage,
            "the user has no key packages",
        ));
    }
    let add_packages = packages
        .iter()
        .map(|(_, bytes)| codec::decode::<AddPackage>(bytes, usize::MAX))
        .collect::<Result<Vec<_>, _>>()?;
    observe!(
        packages
            .iter()
            .zip(&add_packages)
            .flat_map(|((client_id, _), p)| [
                Observed::QsClientId(*client_id),
                Observed::key_package(p.key_package.as_slice()),
            ])
    );
    codec::encode(&FetchKeyPackagesResponse { add_packages })
}
