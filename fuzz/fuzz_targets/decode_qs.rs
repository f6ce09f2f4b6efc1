//! Every Queuing Service request and response type, listen-stream frame and queue entry at
//! rest, chosen by the first byte.
#![no_main]

use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::check::{decodes, dispatch};
use phoenix_types::messages::qs::*;
use phoenix_types::messages::{DequeueRequest, DequeueResponse, QueueMessage};
use phoenix_types::queue_ratchet::{QueueEntry, QueueReader, SealedQueueEntry};

/// A queue owner opens whatever its QS served as entry 0: an error, never a panic, and
/// nothing opens without the chain's key.
fn opens(data: &[u8]) {
    let mut reader = QueueReader::new([1; 16], vec![2; 32], 0, [3; 32]);
    assert!(
        reader.open(0, data).is_err(),
        "an entry opened without its key"
    );
}

/// A push endpoint as a client sends it is checked without panicking; a stored (sealed)
/// endpoint record that is not one opens to nothing.
fn push_endpoint(data: &[u8]) {
    use phoenix_server::qs::push::{check_endpoint, open_endpoint};
    if let Ok(endpoint) = phoenix_types::codec::decode::<PushEndpoint>(data, 4096) {
        let _ = check_endpoint(&endpoint, false);
        let _ = check_endpoint(&endpoint, true);
    }
    assert!(
        open_endpoint(&[5; 32], &[1; 16], data).is_none(),
        "a push endpoint record opened without the QS's key"
    );
}

fuzz_target!(|data: &[u8]| {
    dispatch(
        &[
            decodes::<QueueConfigKeyResponse>,
            decodes::<CreateUserRequest>,
            decodes::<CreateUserResponse>,
            decodes::<QueueConfig>,
            decodes::<AddPackage>,
            decodes::<PublishKeyPackagesRequest>,
            decodes::<FetchKeyPackagesRequest>,
            decodes::<FetchKeyPackagesResponse>,
            decodes::<DequeueRequest>,
            decodes::<DequeueResponse>,
            decodes::<QueueMessage>,
            decodes::<KeyPackageStatusRequest>,
            decodes::<KeyPackageStatusResponse>,
            // The listen stream's frames (appended: earlier corpus entries keep their type).
            decodes::<ListenChallenge>,
            decodes::<ListenInit>,
            decodes::<ListenInitTbs>,
            decodes::<ListenAck>,
            decodes::<ListenFrame>,
            // Queue entries at rest (QS-ENC-1): decoded, and opened by a queue owner.
            decodes::<QueueEntry>,
            decodes::<SealedQueueEntry>,
            opens,
            decodes::<RekeyQueueRequest>,
            decodes::<RekeyQueueResponse>,
            // Push notifications (QS-PUSH-1).
            decodes::<SetPushEndpointRequest>,
            decodes::<PushEndpoint>,
            push_endpoint,
            decodes::<DeleteClientRequest>,
            decodes::<DeleteClientResponse>,
        ],
        data,
    );
});
