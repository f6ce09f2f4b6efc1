//! QS-to-QS federation messages as `POST /phoenix/v1/federation/enqueue` receives them:
//! the signed `FederatedEnqueue`, its `FederatedEnqueueTbs`, and the sealed queue config
//! and queue payload inside, each decoded with the limits the receiver uses.
#![no_main]

use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::check::{canonical, decodes, dispatch};
use phoenix_types::codec;
use phoenix_types::ids::Domain;
use phoenix_types::messages::ds::QueuePayload;
use phoenix_types::messages::federation::{
    FederatedEnqueue, FederatedEnqueueTbs, MAX_FEDERATED_MESSAGE,
};
use phoenix_types::messages::qs::SealedQueueConfig;

fn signed(data: &[u8]) {
    let Some(message) = canonical::<FederatedEnqueue>(data) else {
        return;
    };
    let Ok(tbs) =
        codec::decode::<FederatedEnqueueTbs>(message.tbs.as_slice(), MAX_FEDERATED_MESSAGE)
    else {
        return;
    };
    let _ = Domain::parse(&tbs.sender);
    let _ = Domain::parse(&tbs.destination);
    let _ = codec::decode::<SealedQueueConfig>(tbs.queue_config.as_slice(), 1024);
    let _ = codec::decode::<QueuePayload>(tbs.payload.as_slice(), MAX_FEDERATED_MESSAGE);
}

fuzz_target!(|data: &[u8]| {
    dispatch(&[signed, decodes::<FederatedEnqueueTbs>], data);
});
