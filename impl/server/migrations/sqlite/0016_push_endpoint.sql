-- Push notifications (Requirement: QS-PUSH-1). A client record's Web Push endpoint (URL,
-- p256dh key and auth secret of an RFC 8291 subscription), HPKE-sealed by the QS to its own
-- queue-config key with the client id as associated data: a snapshot of the database
-- without the key-encryption key does not show where a pseudonymous client is notified.
-- NULL: no endpoint.
ALTER TABLE qs_clients ADD COLUMN push_endpoint BLOB;
