-- The end of each connection package's validity (its signed not_after, Unix seconds),
-- so that the store never serves an expired package (last-resort ones included) and the
-- jobs loop purges them. Rows stored before this migration have no known expiry: they
-- get 0, i.e. expired, and are purged; their clients publish fresh packages.

ALTER TABLE as_connection_packages ADD COLUMN not_after INTEGER NOT NULL DEFAULT 0;

CREATE INDEX as_connection_packages_not_after ON as_connection_packages (not_after);

-- The jobs loop deletes group id reservations that expired unused (a reservation is
-- deleted when its group is created); the index keeps that purge a range scan.
CREATE INDEX ds_reservations_expires_at ON ds_reservations (expires_at);
