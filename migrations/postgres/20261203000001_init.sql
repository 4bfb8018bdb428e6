-- Core schema for the PostgreSQL backend: the same tables as SQLite's, with native UUIDs.
-- Times are Unix milliseconds (BIGINT), as on SQLite, so both backends share their rules.

CREATE TABLE api_keys (
    prefix       TEXT PRIMARY KEY,
    secret_hash  BYTEA NOT NULL,
    org_id       UUID,
    is_platform  BOOLEAN NOT NULL,
    name         TEXT,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);

CREATE TABLE webhooks (
    id               UUID PRIMARY KEY,
    org_id           UUID NOT NULL,
    name             TEXT NOT NULL,
    description      TEXT,
    url              TEXT NOT NULL,
    events           TEXT NOT NULL,  -- JSON array of subscriptions
    format           TEXT NOT NULL,
    status           TEXT NOT NULL,
    disabled_reason  TEXT,
    disabled_at      BIGINT,
    headers          TEXT NOT NULL,  -- JSON object
    secret           TEXT NOT NULL,  -- sealed
    failing_since    BIGINT,
    failed_attempts  BIGINT NOT NULL DEFAULT 0,
    version          BIGINT NOT NULL DEFAULT 0,  -- bumped by every write: optimistic concurrency
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX webhooks_by_org ON webhooks (org_id, id);

CREATE TABLE events (
    id               UUID PRIMARY KEY,
    org_id           UUID NOT NULL,
    type             TEXT NOT NULL,
    data             TEXT NOT NULL,  -- verbatim JSON text (JSONB would reorder keys)
    idempotency_key  TEXT,
    deliveries       BIGINT NOT NULL,
    created_at       BIGINT NOT NULL
);
CREATE UNIQUE INDEX events_idempotency ON events (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX events_by_age ON events (created_at);

CREATE TABLE deliveries (
    id                  UUID PRIMARY KEY,
    webhook_id          UUID NOT NULL,
    org_id              UUID NOT NULL,
    event_id            UUID NOT NULL REFERENCES events (id),
    event_type          TEXT NOT NULL,
    status              TEXT NOT NULL,
    attempts            BIGINT NOT NULL DEFAULT 0,
    last_status_code    BIGINT,
    last_error          TEXT,
    last_response_body  TEXT,
    last_duration_ms    BIGINT,
    next_attempt_at     BIGINT,
    lease_until         BIGINT,
    lease_token         UUID,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    delivered_at        BIGINT
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'retrying');
CREATE INDEX deliveries_leased ON deliveries (webhook_id, lease_until) WHERE lease_until IS NOT NULL;
CREATE INDEX deliveries_history ON deliveries (webhook_id, id);
CREATE INDEX deliveries_by_event ON deliveries (event_id);

CREATE TABLE attempts (
    id             UUID PRIMARY KEY,
    delivery_id    UUID NOT NULL,
    attempted_at   BIGINT NOT NULL,
    duration_ms    BIGINT NOT NULL,
    status_code    BIGINT,
    outcome        TEXT NOT NULL,
    error          TEXT,
    response_body  TEXT
);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id, attempted_at);

CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
