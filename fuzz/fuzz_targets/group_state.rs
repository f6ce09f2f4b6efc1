//! The DS's stored group-state format: the AEAD-sealed ciphertext (opened with a fixed EAR
//! key, as `LoadedGroup::load` does), and the plaintext `GroupState` and the openmls
//! public group loaded from it. A corrupt state is the DS's own fault (5xx), but must
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

use openmls::prelude::{GroupId, PublicGroup};
use phoenix_fuzz::check::canonical;
use phoenix_server::ds::group_state::{self, GroupState, MAX_GROUP_STATE};
use phoenix_types::crypto::SymmetricKey;

fuzz_target!(|data: &[u8]| {
    let group_id = b"0123456789abcdeffuzz.test";
    let _ = group_state::open(&SymmetricKey([7; 32]), group_id, 1, data);
    if data.len() > MAX_GROUP_STATE {
        return;
    }
    if let Some(state) = canonical::<GroupState>(data) {
        let storage = group_state::storage_from(&state.mls);
        let _ = PublicGroup::load(&storage, &GroupId::from_slice(group_id));
        let entries = group_state::entries_of(&storage).expect("entries of a fresh storage");
        assert!(entries.len() <= state.mls.len());
    }
});
