-- Every CA certificate seen per domain (a domain's CA key rotates; certificates issued
-- before a rotation verify against the earlier CA).
CREATE TABLE cas (
    domain TEXT NOT NULL,
    certificate BLOB NOT NULL,
    PRIMARY KEY (domain, certificate)
);
INSERT INTO cas (domain, certificate) SELECT domain, certificate FROM ca_certificates;
DROP TABLE ca_certificates;

-- Received chat messages with the sender's credential as it was when received, so that
-- they can be re-verified later "as they were" (`phoenix history`).
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    sender_leaf INTEGER NOT NULL,
    sender_leaf_key BLOB NOT NULL,
    encrypted_credential BLOB NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX messages_group ON messages (group_id, id);
