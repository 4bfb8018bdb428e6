-- The queue, per webhook: a claim reads the first few due deliveries of each active webhook
-- from this index (a few rows each), instead of ranking every due delivery, so its cost
-- does not grow with the backlog. It replaces the index by due time alone.
CREATE INDEX deliveries_queue ON deliveries (webhook_id, next_attempt_at) WHERE status IN ('pending', 'retrying');
DROP INDEX deliveries_due;
