-- Operator administration (phoenix-server admin; Requirements: OPS-ADMIN-2, OPS-ADMIN-4).
--
-- A suspended user: the AS refuses every request signed by one of the user's clients with
-- USER_SUSPENDED until the operator lifts the suspension. Deleting the user deletes the row.
CREATE TABLE as_suspensions (
    fid TEXT PRIMARY KEY REFERENCES as_users (fid) ON DELETE CASCADE,
    suspended_at BIGINT NOT NULL
);

-- The last failed delivery attempt per outbox destination, for `admin outbox list`; the
-- outbox worker writes it on a failure and deletes it once the destination's entries went
-- through. Only the destination domain and the error text: nothing about the messages.
CREATE TABLE ds_outbox_errors (
    destination TEXT PRIMARY KEY,
    error TEXT NOT NULL,
    failed_at BIGINT NOT NULL
);
