-- Requirement: DS-OUTBOX-2, FED-ORDER-1
-- Claims on outbox entries: a deliverer (a request delivering the entries it wrote, or the
-- outbox worker of any server process sharing this database) sets claimed_until to the end
-- of its lease before it delivers an entry, and nobody else takes an entry whose lease has
-- not run out. A deliverer that crashes leaves a lease that runs out, after which the
-- worker takes the entry again. 0 = not claimed.
ALTER TABLE ds_outbox ADD COLUMN claimed_until INTEGER NOT NULL DEFAULT 0;

-- Delivery is in order per destination: an entry waits while an older one for the same
-- destination is pending; this index finds the older ones.
CREATE INDEX ds_outbox_destination ON ds_outbox (destination, id);
