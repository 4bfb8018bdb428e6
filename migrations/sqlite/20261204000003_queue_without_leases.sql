-- The queue holds only deliveries waiting for a worker: a leased delivery (in flight, or
-- handed to the local worker by its publish) leaves the index until its result or its lease
-- release. A claim then reads each webhook's due deliveries without stepping over the ones
-- in flight, and a delivery handed over at publish is never written into the queue at all.
-- Expired leases (a worker that died) are found through `deliveries_leased`. `status` and
-- `lease_until` are in the key only so that SQLite serves the claim's probe from the index
-- alone (it counts a partial index as covering only for `column = constant` conditions).
DROP INDEX deliveries_queue;
CREATE INDEX deliveries_queue ON deliveries (webhook_id, next_attempt_at, status, lease_until)
    WHERE status IN ('pending', 'retrying') AND lease_until IS NULL;
