-- Queue messages of a group that could not be processed (undecryptable, unverifiable,
-- malformed): `history` shows a gap at that time, with the reason, so that a loss is
-- visible where it happened and not only in the `sync` that met it.
CREATE TABLE history_gaps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id BLOB NOT NULL,
    at INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX history_gaps_group ON history_gaps (group_id, at);
