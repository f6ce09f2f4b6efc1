-- Replay records of application messages the DS accepted (send_message): a digest of the
-- MLS message (SHA-256, domain-separated; the message is a PrivateMessage, the digest says
-- nothing the queued ciphertext does not) and when it was received. A request carrying the
-- same message again is refused as REPLAYED instead of being fanned out a second time.
-- Pruned once older than a replay could be and still pass the freshness check (a replay
-- that old is refused as STALE_REQUEST). No group id, no member, no queue: nothing links.

CREATE TABLE ds_seen_messages (
    digest BLOB PRIMARY KEY,
    received_at BIGINT NOT NULL
);

CREATE INDEX ds_seen_messages_received ON ds_seen_messages (received_at);
