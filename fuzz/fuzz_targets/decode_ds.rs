//! Every Delivery Service request and response type, chosen by the first byte.
#![no_main]

use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::check::{decodes, dispatch};
use phoenix_types::messages::ds::*;

/// A decoded `request_group_id` goes through the DS's token check under a fixed key.
fn request_group_id(data: &[u8]) {
    if let Some(request) = phoenix_fuzz::check::canonical::<RequestGroupIdRequest>(data) {
        let key = phoenix_types::tokens::TokenKey::from_private(&[7u8; 32]).expect("a key");
        assert!(!key.check(
            request.token.input.as_slice(),
            request.token.output.as_slice()
        ));
    }
}

fuzz_target!(|data: &[u8]| {
    dispatch(
        &[
            decodes::<RequestGroupIdResponse>,
            decodes::<MemberInfo>,
            decodes::<LeafCredential>,
            decodes::<CreateGroupRequest>,
            decodes::<ExternalCommitInfoRequest>,
            decodes::<ExternalCommitInfoResponse>,
            decodes::<JoinConnectionGroupRequest>,
            decodes::<AddedMember>,
            decodes::<AddUsersRequest>,
            decodes::<CommitRequest>,
            decodes::<SendMessageRequest>,
            request_group_id,
            decodes::<ResyncRequest>,
        ],
        data,
    );
});
