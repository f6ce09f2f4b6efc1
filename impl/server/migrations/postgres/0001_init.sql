-- Phoenix homeserver schema, PostgreSQL.
--
-- Tables are prefixed by the service that owns them (as_, qs_, ds_). Unsigned 64-bit
-- values (times, sequence numbers, versions) are stored as signed 64-bit BIGINTs; the
-- Rust side converts with checked conversions. Times are unix seconds.
--
-- Privacy: the AS knows users by their FID; nothing in a qs_ or ds_ table may contain an
-- FID or anything derived from one, so a snapshot of the QS and DS tables cannot be
-- joined with the AS tables.

-- Authentication Service ---------------------------------------------------------------

-- The home server's CA. id 1 is the first CA (insert-once, so concurrent first starts
-- agree on one); rotation adds higher ids and the highest is the current one.
CREATE TABLE as_ca (
    id BIGINT PRIMARY KEY,
    signing_key BYTEA NOT NULL,
    certificate BYTEA NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    created_at BIGINT NOT NULL DEFAULT (CAST(EXTRACT(EPOCH FROM now()) AS BIGINT))
);

CREATE TABLE as_users (
    fid TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

-- A client and its current ID-Cert.
CREATE TABLE as_clients (
    fid TEXT NOT NULL REFERENCES as_users (fid) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    certificate BYTEA NOT NULL,
    public_key BYTEA NOT NULL,
    serial TEXT NOT NULL UNIQUE,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    PRIMARY KEY (fid, client_id)
);

-- Every certificate ever issued, kept after the client or user is gone so that a key can
-- be looked up as it was at a given time. Deliberately no foreign key.
CREATE TABLE as_certificates (
    serial TEXT PRIMARY KEY,
    fid TEXT NOT NULL,
    client_id TEXT NOT NULL,
    certificate BYTEA NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL
);

CREATE INDEX as_certificates_fid ON as_certificates (fid, not_before);

CREATE TABLE as_connection_packages (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fid TEXT NOT NULL,
    client_id TEXT NOT NULL,
    package BYTEA NOT NULL,
    last_resort BOOLEAN NOT NULL,
    FOREIGN KEY (fid, client_id) REFERENCES as_clients (fid, client_id) ON DELETE CASCADE
);

CREATE INDEX as_connection_packages_take ON as_connection_packages (fid, last_resort, id);
CREATE INDEX as_connection_packages_client ON as_connection_packages (fid, client_id);

-- The next sequence number of a client's direct queue. Kept apart from the messages so
-- that numbers are never reused after the queue is emptied.
CREATE TABLE as_direct_queue_state (
    fid TEXT NOT NULL,
    client_id TEXT NOT NULL,
    next_seq BIGINT NOT NULL,
    PRIMARY KEY (fid, client_id),
    FOREIGN KEY (fid, client_id) REFERENCES as_clients (fid, client_id) ON DELETE CASCADE
);

CREATE TABLE as_direct_queue (
    fid TEXT NOT NULL,
    client_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    payload BYTEA NOT NULL,
    PRIMARY KEY (fid, client_id, seq),
    FOREIGN KEY (fid, client_id) REFERENCES as_clients (fid, client_id) ON DELETE CASCADE
);

-- Queuing Service ------------------------------------------------------------------------

-- The queue-config HPKE key pair; a singleton row.
CREATE TABLE qs_config (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    queue_config_private_key BYTEA NOT NULL,
    queue_config_public_key BYTEA NOT NULL
);

CREATE TABLE qs_users (
    user_id BYTEA PRIMARY KEY,
    auth_key BYTEA NOT NULL,
    friendship_token_hash BYTEA NOT NULL UNIQUE
);

-- next_seq is the next sequence number of the client's queue; the enqueue that takes it
-- holds this row's lock until it commits, which is what keeps numbers unique and gapless.
CREATE TABLE qs_clients (
    client_id BYTEA PRIMARY KEY,
    user_id BYTEA NOT NULL REFERENCES qs_users (user_id) ON DELETE CASCADE,
    auth_key BYTEA NOT NULL,
    next_seq BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX qs_clients_user ON qs_clients (user_id);

CREATE TABLE qs_key_packages (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id BYTEA NOT NULL REFERENCES qs_clients (client_id) ON DELETE CASCADE,
    add_package BYTEA NOT NULL,
    last_resort BOOLEAN NOT NULL
);

CREATE INDEX qs_key_packages_take ON qs_key_packages (client_id, last_resort, id);

-- dedup is the outbox's idempotency key; NULLs do not collide in a UNIQUE constraint.
CREATE TABLE qs_queue (
    client_id BYTEA NOT NULL REFERENCES qs_clients (client_id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    payload BYTEA NOT NULL,
    dedup BYTEA,
    PRIMARY KEY (client_id, seq),
    CONSTRAINT qs_queue_dedup UNIQUE (client_id, dedup)
);

-- Delivery Service -----------------------------------------------------------------------

CREATE TABLE ds_reservations (
    group_id BYTEA PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

-- Only the id, the encrypted state, a version for compare-and-swap and the month of last
-- activity are in clear.
CREATE TABLE ds_groups (
    group_id BYTEA PRIMARY KEY,
    ciphertext BYTEA NOT NULL,
    version BIGINT NOT NULL,
    last_active_month TEXT NOT NULL
);

-- Fan-out waiting for delivery. created_at is the database's clock, for operators;
-- scheduling uses next_attempt_at, which the caller supplies.
CREATE TABLE ds_outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination TEXT NOT NULL,
    queue_config BYTEA NOT NULL,
    payload BYTEA NOT NULL,
    dedup BYTEA NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL DEFAULT (CAST(EXTRACT(EPOCH FROM now()) AS BIGINT))
);

CREATE INDEX ds_outbox_due ON ds_outbox (next_attempt_at, id);
