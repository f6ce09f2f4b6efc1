-- Queue encryption at rest (QS-ENC-1): the private half of the HPKE key this client's QS
-- seals ratchet updates to, and the secret of the queue's chain for the entry
-- qs_next_seq (advanced together with qs_next_seq, in one statement). NULL for a client
-- registered before queue encryption: its QS stores its entries unsealed.
ALTER TABLE identity ADD COLUMN queue_private_key BLOB;
ALTER TABLE identity ADD COLUMN queue_ratchet BLOB;
