-- Connection requests whose answer did not arrive (CL-AMBIG-3): the exact
-- `as/enqueue_connection` request, written before it is sent, with what the contact record
-- needs once it is settled. `phoenix connect FID` run again sends the same bytes (the AS
-- answers a copy with REPLAYED), so the recipient never gets two requests. Deleted when
-- the request is settled, either way.
CREATE TABLE pending_connections (
    fid TEXT PRIMARY KEY,
    -- The AS's domain, the encoded EnqueueConnectionRequest.
    domain TEXT NOT NULL,
    request BLOB NOT NULL,
    -- The recipient client and its certificate (pinned once settled), and the connection
    -- group created for it.
    client_id TEXT NOT NULL,
    certificate BLOB NOT NULL,
    connection_group_id BLOB NOT NULL
);
