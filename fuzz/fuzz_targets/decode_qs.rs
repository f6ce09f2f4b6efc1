//! Every Queuing Service request and response type and listen-stream frame, chosen by the
//! first byte.
#![no_main]

use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::check::{decodes, dispatch};
use phoenix_types::messages::qs::*;
use phoenix_types::messages::{DequeueRequest, DequeueResponse, QueueMessage};

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
        ],
        data,
    );
});
