-- Push notifications (QS-PUSH-1): the Web Push endpoint this client set at its QS, with the
-- RFC 8291 keys. push_private_key is the P-256 private key when this client generated the
-- subscription's keys itself (`phoenix push set URL`), so that `phoenix push decrypt` can
-- open what the push service delivers; NULL when another program holds it (--p256dh).
ALTER TABLE identity ADD COLUMN push_url TEXT;
ALTER TABLE identity ADD COLUMN push_p256dh BLOB;
ALTER TABLE identity ADD COLUMN push_auth BLOB;
ALTER TABLE identity ADD COLUMN push_private_key BLOB;
