-- Push notifications (Requirement: QS-PUSH-4): whether the recipient's QS may send a push
-- notification for this outbox entry (FALSE: the sender of an application message asked
-- for none). Entries written before this migration notify.
ALTER TABLE ds_outbox ADD COLUMN notify BOOLEAN NOT NULL DEFAULT TRUE;
