-- Requirement: CLI-HIST-1, CLI-GROUPS-1
-- Messages this client sent itself are kept in `messages` too (own = 1), so that
-- `phoenix history` shows them, marked as the user's own, in order.
ALTER TABLE messages ADD COLUMN own INTEGER NOT NULL DEFAULT 0;

-- The read mark of each group: the highest `messages.id` the user has seen with
-- `phoenix history`. `phoenix groups` counts the messages received since then as unread.
CREATE TABLE read_marks (
    group_id BLOB PRIMARY KEY,
    last_read INTEGER NOT NULL
);
