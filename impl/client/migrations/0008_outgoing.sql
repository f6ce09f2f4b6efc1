-- Requests whose outcome the client does not know yet (issue: a lost answer). Written in
-- the same transaction as the MLS state the request leads to (the ratchet generation it
-- used, the pending commit it carries), before the request is sent, and deleted in the
-- same transaction as the state that settles it. A row here is sent again, byte for byte,
-- before anything else the client does with the server.
CREATE TABLE outgoing (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id BLOB NOT NULL,
    operation TEXT NOT NULL,
    -- the exact request envelope (signed): resent unchanged
    body BLOB NOT NULL,
    -- 'message' or 'commit'
    kind TEXT NOT NULL,
    -- for a message: its text (to name it if it cannot be confirmed); for a commit: JSON
    -- of what to record once it is merged (members' encrypted credentials)
    detail TEXT NOT NULL,
    -- for a commit: the group info it uploaded, to recognise it as the DS's current one
    group_info BLOB,
    created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
