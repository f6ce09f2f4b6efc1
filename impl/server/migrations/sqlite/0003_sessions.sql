-- polyproto foreign sessions: key trials (pending, then completed once, public per
-- polyproto §4.3), session tokens stored only as their SHA-256 hash, and this server's
-- view of the actor certificates sessions were opened with, including when each was
-- invalidated (revoked). Serials are unsigned decimal strings (polyproto's form).

CREATE TABLE p2_key_trials (
    trial TEXT PRIMARY KEY,
    -- The requesting address (IPv6: its /64), to bound pending trials per address.
    ip TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    -- NULL while pending; then who answered, with which certificate and signature.
    completed_at INTEGER,
    fid TEXT,
    serial TEXT,
    signature TEXT
) STRICT;

CREATE INDEX p2_key_trials_ip ON p2_key_trials (ip, created_at);
CREATE INDEX p2_key_trials_expiry ON p2_key_trials (expires_at);

CREATE TABLE p2_sessions (
    token_hash BLOB PRIMARY KEY,
    fid TEXT NOT NULL,
    client_id TEXT NOT NULL,
    serial TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    verified_until INTEGER NOT NULL
) STRICT;

-- One active session token per certificate.
CREATE UNIQUE INDEX p2_sessions_certificate ON p2_sessions (fid, serial);
CREATE INDEX p2_sessions_expiry ON p2_sessions (expires_at);

CREATE TABLE p2_certificates (
    fid TEXT NOT NULL,
    serial TEXT NOT NULL,
    client_id TEXT NOT NULL,
    certificate BLOB NOT NULL,
    not_after INTEGER NOT NULL,
    invalidated_at INTEGER,
    PRIMARY KEY (fid, serial)
) STRICT;
