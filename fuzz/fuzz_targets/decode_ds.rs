//! Every Delivery Service request and response type, chosen by the first byte.
#![no_main]

use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::check::{decodes, dispatch};
use phoenix_types::messages::ds::*;

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
        ],
        data,
    );
});
