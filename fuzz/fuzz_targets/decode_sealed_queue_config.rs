//! Sealed queue configs: decoded as the QS decodes them from key package extensions and
//! outbox entries, then opened with the QS's key (which must fail cleanly for anything
//! not sealed to it).
#![no_main]

use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::check::{blames_caller, canonical};
use phoenix_fuzz::harness::Harness;
use phoenix_server::qs::open_queue_config;
use phoenix_types::messages::qs::{QueueConfig, SealedQueueConfig};

fuzz_target!(|data: &[u8]| {
    let _ = canonical::<QueueConfig>(data);
    if let Some(sealed) = canonical::<SealedQueueConfig>(data) {
        Harness::with(|h| {
            if let Err(e) = open_queue_config(&h.server, &sealed) {
                blames_caller("open_queue_config", &e);
            }
        });
    }
});
