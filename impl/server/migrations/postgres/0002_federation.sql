-- Federation: the server's long-term keys besides the CA (the QS signing key that signs
-- QS-to-QS messages), and the ids of federated messages received, per sender domain,
-- which make delivery exactly-once and replays detectable.

CREATE TABLE server_keys (
    name TEXT PRIMARY KEY,
    private_key BYTEA NOT NULL,
    public_key BYTEA NOT NULL
);

CREATE TABLE qs_federation_seen (
    sender TEXT NOT NULL,
    message_id BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (sender, message_id)
);
