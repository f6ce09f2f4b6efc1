-- How often each QS client's last-resort key package was handed out because its pool of
-- one-time packages was empty (issue: key-package draining). Shown to the client, and
-- only to it, by `qs/key_package_status`; cumulative since the client record was created.
ALTER TABLE qs_clients ADD COLUMN last_resort_served BIGINT NOT NULL DEFAULT 0;
