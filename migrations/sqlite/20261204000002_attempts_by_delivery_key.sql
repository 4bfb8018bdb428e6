-- Attempts are read only by delivery (a delivery's history, in order) and deleted only by
-- delivery (retention). Keyed by (delivery_id, attempted_at, id) in a table without a rowid,
-- writing an attempt is one B-tree insert instead of three (the table, the index of the `id`
-- key, and `attempts_by_delivery`).
CREATE TABLE attempts_by_key (
    id             BLOB NOT NULL,
    delivery_id    BLOB NOT NULL,
    attempted_at   INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    status_code    INTEGER,
    outcome        TEXT NOT NULL,
    error          TEXT,
    response_body  TEXT,
    PRIMARY KEY (delivery_id, attempted_at, id)
) WITHOUT ROWID;
INSERT INTO attempts_by_key (id, delivery_id, attempted_at, duration_ms, status_code, outcome, error, response_body)
    SELECT id, delivery_id, attempted_at, duration_ms, status_code, outcome, error, response_body FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_by_key RENAME TO attempts;
