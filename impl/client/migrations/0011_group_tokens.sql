-- Anonymous group-creation tokens issued by the home AS (phoenix-types `tokens`), each
-- spent on one `ds/request_group_id`. A token stays here until the group it bought is
-- created (so a lost reply is retried with the same token and gets the same group id),
-- or the DS says it was spent.
CREATE TABLE group_tokens (
    input BLOB PRIMARY KEY,
    output BLOB NOT NULL,
    key_id BLOB NOT NULL,
    domain TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- The token key each server issued under, pinned at first use: a server that issued
-- another client's tokens under another key could tell its clients apart by the key.
CREATE TABLE token_keys (
    domain TEXT PRIMARY KEY,
    public_key BLOB NOT NULL
);
