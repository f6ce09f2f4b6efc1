-- Exactly-once local delivery (Requirement: QS-DEDUP-1). The QS remembers the dedup key of
-- every outbox entry it enqueued, per client, for a week after the delivery, instead of
-- only while the queue row exists: an outbox entry delivered again after its recipient
-- already acknowledged (deleted) the row (a crash between the enqueue and the outbox
-- delete, then the claim's lease running out) is recognised and not enqueued twice. The
-- key is 16 random bytes per entry: it links nothing. Pruned by the jobs loop after 7 days.
CREATE TABLE qs_delivered (
    client_id BYTEA NOT NULL,
    dedup BYTEA NOT NULL,
    delivered_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, dedup)
);
CREATE INDEX qs_delivered_at ON qs_delivered (delivered_at);
