-- This server's cache of other servers' users' client certificates (polyproto cacheable
-- ID-Certs), served to its own clients at /.p2/core/v1/idcert/actor/{fid}: one row per
-- foreign FID holding the home server's answer as it signed it (a JSON array of cacheable
-- ID-Certs, each with its cacheSignature), kept until the earliest cacheNotValidAfter in
-- it, then evicted (at read and by the periodic purge). Holds FIDs of other domains only,
-- never next to a QS or DS record.

CREATE TABLE p2_idcert_cache (
    fid TEXT PRIMARY KEY,
    answer TEXT NOT NULL,
    not_valid_after INTEGER NOT NULL,
    fetched_at INTEGER NOT NULL
) STRICT;

CREATE INDEX p2_idcert_cache_expiry ON p2_idcert_cache (not_valid_after);

-- Replay records of federated enqueues are pruned once they are older than the freshness
-- window allows a replay to be (a replay that old is refused as STALE_REQUEST anyway).
CREATE INDEX qs_federation_seen_received ON qs_federation_seen (received_at);
