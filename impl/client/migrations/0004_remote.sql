-- Foreign sessions this client holds on other homeservers (polyproto session tokens,
-- obtained with a key trial), sent as bearer tokens with the rate-limited operations there;
-- renewed when they lapse or the certificate they were opened with changed.
CREATE TABLE sessions (
    domain TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    serial TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);

-- Other domains' users' certificates as their home server vouched for them (verified
-- cacheable ID-Certs), kept until the end of the window the home server signed.
CREATE TABLE vouched_certificates (
    fid TEXT NOT NULL,
    certificate BLOB NOT NULL,
    invalidated_at INTEGER,
    valid_until INTEGER NOT NULL,
    PRIMARY KEY (fid, certificate)
);
