-- The client's local state. Secrets are stored in clear: the state directory is created
-- with mode 0700 and belongs to the user (encrypting it under a passphrase is future work).
CREATE TABLE identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    fid TEXT NOT NULL,
    client_id TEXT NOT NULL,
    server_url TEXT NOT NULL,
    certificate BLOB NOT NULL,
    signing_key BLOB NOT NULL,
    qs_user_id BLOB NOT NULL,
    qs_client_id BLOB NOT NULL,
    qs_user_key BLOB NOT NULL,
    qs_client_key BLOB NOT NULL,
    friendship_token BLOB NOT NULL,
    friendship_key BLOB NOT NULL,
    qs_domain TEXT NOT NULL,
    queue_config_key BLOB NOT NULL,
    qs_next_seq INTEGER NOT NULL DEFAULT 0,
    as_next_seq INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE ca_certificates (
    domain TEXT PRIMARY KEY,
    certificate BLOB NOT NULL
);

CREATE TABLE connection_keys (
    public_key BLOB PRIMARY KEY,
    private_key BLOB NOT NULL
);

CREATE TABLE contacts (
    fid TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    friendship_token BLOB,
    friendship_key BLOB,
    qs_domain TEXT,
    connection_group_id BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

-- The contact's clients as pinned when the connection was made (certificate DER).
CREATE TABLE contact_clients (
    fid TEXT NOT NULL,
    client_id TEXT NOT NULL,
    certificate BLOB NOT NULL,
    PRIMARY KEY (fid, client_id)
);

CREATE TABLE groups (
    group_id BLOB PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    ear_key BLOB NOT NULL,
    credential_key BLOB NOT NULL,
    kind TEXT NOT NULL,
    contact TEXT,
    active INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE group_members (
    group_id BLOB NOT NULL,
    leaf_index INTEGER NOT NULL,
    encrypted_credential BLOB NOT NULL,
    PRIMARY KEY (group_id, leaf_index)
);

CREATE TABLE requests (
    fid TEXT NOT NULL,
    client_id TEXT NOT NULL,
    certificate BLOB NOT NULL,
    group_id BLOB NOT NULL,
    ear_key BLOB NOT NULL,
    credential_key BLOB NOT NULL,
    friendship_token BLOB NOT NULL,
    friendship_key BLOB NOT NULL,
    qs_domain TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (fid, client_id)
);

-- Events received while doing something else (e.g. the sync before a send), shown by the
-- next `sync`.
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL
);

-- openmls's storage provider, as key/value pairs.
CREATE TABLE mls_kv (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL
);
