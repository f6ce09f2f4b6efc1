-- Members' credentials as they were in recent epochs: when a commit removes a leaf or
-- changes its signature key, the leaf's credential and key of the epoch that ended are
-- kept here, so that a message sent in that epoch (before the commit, delivered after it)
-- is still attributed to, and verified against, the member who sent it. Kept only for the
-- epochs whose messages openmls can still decrypt (mls::MAX_PAST_EPOCHS).
CREATE TABLE group_member_history (
    group_id BLOB NOT NULL,
    leaf_index INTEGER NOT NULL,
    -- the first epoch in which this credential no longer held for the leaf
    until_epoch INTEGER NOT NULL,
    leaf_key BLOB NOT NULL,
    encrypted_credential BLOB NOT NULL,
    PRIMARY KEY (group_id, leaf_index, until_epoch)
);
