-- Anonymous group-creation tokens (phoenix-types `tokens`; Requirements: DS-GID-3,
-- AS-TOKEN-1, AS-TOKEN-2).
--
-- The DS records each spent token by a digest of its input, with the group id it reserved:
-- presenting the same token again returns that reservation while it is unused (a lost
-- reply retried), and INVALID_TOKEN after. The digest says nothing about who was issued
-- the token: the AS never saw the input. Records are kept as long as the token key that
-- issued them (the key does not rotate yet, so for now: for good; at most
-- group_tokens_per_day rows per client and day).
CREATE TABLE ds_spent_tokens (
    digest BLOB PRIMARY KEY,
    group_id BLOB NOT NULL,
    spent_at INTEGER NOT NULL
);

-- The AS counts the tokens it issued to each client on the current day (UTC day number),
-- against the client's daily allowance; one row per client, reset on a new day.
CREATE TABLE as_token_issuance (
    fid TEXT NOT NULL,
    client_id TEXT NOT NULL,
    day INTEGER NOT NULL,
    issued INTEGER NOT NULL,
    PRIMARY KEY (fid, client_id)
);
