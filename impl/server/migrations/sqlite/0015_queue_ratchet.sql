-- Queue encryption at rest (Requirement: QS-ENC-1, QS-ENC-2, QS-ENC-3). Each client record
-- keeps its queue's HPKE public key (the client holds the private half) and the secret of
-- its queue's HKDF chain for the entry next_seq; each enqueue seals the entry under the
-- chain and replaces the secret with the next one (the old one is gone: forward secrecy;
-- secure_delete, set by the store on every connection, overwrites the freed bytes).
-- Records created before this migration have neither (NULL) until their client re-keys;
-- their entries are stored as they came (sealed = 0).
ALTER TABLE qs_clients ADD COLUMN queue_key BLOB;
ALTER TABLE qs_clients ADD COLUMN ratchet_secret BLOB;
-- 1: payload is an encoded QueueEntry::Sealed; 0: the payload as the DS sent it.
ALTER TABLE qs_queue ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0 CHECK (sealed IN (0, 1));
