-- Replay records of signed state-changing requests (ADV-REPLAY-3), one table per service
-- so that each service reads and writes only its own tables: a domain-separated SHA-256
-- over the operation label, the request's authentication (signer and signature) and the
-- exact payload bytes, and when the request was received. Written in the same
-- transaction as the request's effect, so a record exists only for a request that took
-- effect; a request whose record exists is refused as REPLAYED and changes nothing.
-- Pruned once older than a replay could be and still pass the freshness check. A digest
-- of a request says nothing the request's effect does not: no id, no key, nothing links.

CREATE TABLE as_seen_requests (
    digest BYTEA PRIMARY KEY,
    received_at BIGINT NOT NULL
);

CREATE INDEX as_seen_requests_received ON as_seen_requests (received_at);

CREATE TABLE qs_seen_requests (
    digest BYTEA PRIMARY KEY,
    received_at BIGINT NOT NULL
);

CREATE INDEX qs_seen_requests_received ON qs_seen_requests (received_at);

CREATE TABLE ds_seen_requests (
    digest BYTEA PRIMARY KEY,
    received_at BIGINT NOT NULL
);

CREATE INDEX ds_seen_requests_received ON ds_seen_requests (received_at);
