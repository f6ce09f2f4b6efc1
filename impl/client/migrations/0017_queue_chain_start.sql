-- Where this client's queue chain starts (QS-ENC-4): after `qs/rekey_queue`, the entries
-- below it were stored before the re-key (unsealed, for a client registered before queue
-- encryption). queue_ratchet is the chain's secret for max(qs_next_seq, queue_chain_start).
ALTER TABLE identity ADD COLUMN queue_chain_start INTEGER NOT NULL DEFAULT 0;
