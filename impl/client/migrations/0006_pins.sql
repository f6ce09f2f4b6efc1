-- Requirement: ID-PIN-1, ID-PIN-2, ID-OOB-1
-- Every certificate ever pinned for a contact's client (at connect/accept, and each renewal
-- the client announced in our connection group), so that a message the contact sent before
-- a renewal, delivered or re-verified after it, still counts as from a pinned client.
CREATE TABLE pinned_certificates (
    fid TEXT NOT NULL,
    client_id TEXT NOT NULL,
    certificate BLOB NOT NULL,
    PRIMARY KEY (fid, client_id, certificate)
);
INSERT INTO pinned_certificates (fid, client_id, certificate)
    SELECT fid, client_id, certificate FROM contact_clients;

-- Trust on first use for group members who are not contacts: every certificate seen per
-- FID; the first one (lowest seq) is the one trusted, any other is reported as a change.
CREATE TABLE seen_certificates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    fid TEXT NOT NULL,
    certificate BLOB NOT NULL,
    first_seen_at INTEGER NOT NULL,
    UNIQUE (fid, certificate)
);

-- Contacts verified out of band (`phoenix verify FID CODE`): the code compared then. The
-- contact counts as verified while its pinned clients still give this code, as changed
-- once they do not.
CREATE TABLE verified_contacts (
    fid TEXT PRIMARY KEY,
    code TEXT NOT NULL,
    verified_at INTEGER NOT NULL
);
