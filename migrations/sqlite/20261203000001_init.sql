-- Core schema for the embedded SQLite backend. Times are Unix milliseconds (INTEGER),
-- ids are UUIDs as 16-byte BLOBs (v7, so their byte order is their time order).

CREATE TABLE api_keys (
    prefix       TEXT PRIMARY KEY,
    secret_hash  BLOB NOT NULL,
    org_id       BLOB,              -- NULL for a platform key
    is_platform  INTEGER NOT NULL,
    name         TEXT,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);

CREATE TABLE webhooks (
    id               BLOB PRIMARY KEY,
    org_id           BLOB NOT NULL,
    name             TEXT NOT NULL,
    description      TEXT,
    url              TEXT NOT NULL,
    events           TEXT NOT NULL,  -- JSON array of subscriptions
    format           TEXT NOT NULL,
    status           TEXT NOT NULL,
    disabled_reason  TEXT,
    disabled_at      INTEGER,
    headers          TEXT NOT NULL,  -- JSON object
    secret           TEXT NOT NULL,
    failing_since    INTEGER,        -- first failed attempt since the last success
    failed_attempts  INTEGER NOT NULL DEFAULT 0,
    version          INTEGER NOT NULL DEFAULT 0,  -- bumped by every write: optimistic concurrency
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX webhooks_by_org ON webhooks (org_id, id);

CREATE TABLE events (
    id               BLOB PRIMARY KEY,
    org_id           BLOB NOT NULL,
    type             TEXT NOT NULL,
    data             TEXT NOT NULL,  -- the published `data` object, verbatim
    idempotency_key  TEXT,
    deliveries       INTEGER NOT NULL,
    created_at       INTEGER NOT NULL
);
CREATE UNIQUE INDEX events_idempotency ON events (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX events_by_age ON events (created_at);

CREATE TABLE deliveries (
    id                  BLOB PRIMARY KEY,
    webhook_id          BLOB NOT NULL,
    org_id              BLOB NOT NULL,
    event_id            BLOB NOT NULL REFERENCES events (id),
    event_type          TEXT NOT NULL,
    status              TEXT NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    last_status_code    INTEGER,
    last_error          TEXT,
    last_response_body  TEXT,
    last_duration_ms    INTEGER,
    next_attempt_at     INTEGER,
    lease_until         INTEGER,
    lease_token         BLOB,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    delivered_at        INTEGER
);
-- The queue: only open deliveries are indexed, by due time.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'retrying');
CREATE INDEX deliveries_leased ON deliveries (webhook_id, lease_until) WHERE lease_until IS NOT NULL;
-- The history endpoint: newest first per webhook.
CREATE INDEX deliveries_history ON deliveries (webhook_id, id);
CREATE INDEX deliveries_by_event ON deliveries (event_id);

CREATE TABLE attempts (
    id             BLOB PRIMARY KEY,
    delivery_id    BLOB NOT NULL,
    attempted_at   INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    status_code    INTEGER,
    outcome        TEXT NOT NULL,
    error          TEXT,
    response_body  TEXT
);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id, attempted_at);

-- Facts about this database, such as the check value that proves the encryption key is
-- the one its secrets were sealed with.
CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
