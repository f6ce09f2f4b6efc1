//! What the DS fans out into queues and clients decode from them: `QueuePayload` and its
//! `GroupMessage` and `WelcomeBundle`, and the queue message around them.
#![no_main]

use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::check::{decodes, dispatch};
use phoenix_types::messages::QueueMessage;
use phoenix_types::messages::ds::{GroupMessage, QueuePayload, WelcomeBundle};

fuzz_target!(|data: &[u8]| {
    dispatch(
        &[
            decodes::<QueuePayload>,
            decodes::<GroupMessage>,
            decodes::<WelcomeBundle>,
            decodes::<QueueMessage>,
        ],
        data,
    );
});
