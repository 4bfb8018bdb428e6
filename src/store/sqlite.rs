//! The embedded SQLite backend (the default). SQLite has one writer at a time, so writes go
//! through a pool of one connection (no `SQLITE_BUSY` storms between our own writers) and
//! reads through a small pool of their own; WAL mode lets both run together. Commits use
//! `synchronous=FULL`: an event answered 202 survives a power cut, not just a crash.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::Notify;
use uuid::Uuid;

use super::cipher::{Cipher, EncryptionKey};
use super::{
    ApiKeyRecord, Attempt, AttemptRecord, ClaimRequest, ClaimedDelivery, Delivery, DeliveryQuery, DisablePolicy,
    NewEvent, NextStep, PublishedEvent, Result, Store, StoreError, Webhook, WebhookUpdate,
};
use crate::domain::{
    api_key::Scope,
    delivery::{DeliveryStatus, Outcome},
    event_type,
    time::Timestamp,
    webhook::{Format, Headers, Status, WebhookSecret},
};

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    signal: Arc<Notify>,
    cipher: Cipher,
}

/// The key in the file beside the database (`<database>.key`), created on first use. An
/// in-memory database gets a key that lives as long as the process.
pub(super) fn key_from_file(url: &str) -> Result<EncryptionKey> {
    let options = SqliteConnectOptions::from_str(url)?;
    let db = options.get_filename();
    if db.as_os_str().is_empty() || db.to_string_lossy().contains(":memory:") {
        return Ok(EncryptionKey::generate());
    }
    let mut name = db.as_os_str().to_owned();
    name.push(".key");
    let path = std::path::PathBuf::from(name);
    let (key, created) = EncryptionKey::load_or_create(&path).map_err(StoreError::KeyFile)?;
    if created {
        tracing::warn!(path = %path.display(), "no MOSEND_WEBHOOKS_ENCRYPTION_KEY configured: generated a key file for webhook secrets; back it up with the database");
    }
    Ok(key)
}

impl SqliteStore {
    /// Proves the key is the one the database was first used with, by opening a value
    /// sealed then (and sealing one on first use), so a wrong key fails at start, not on
    /// the first delivery.
    pub(super) async fn check_key(&self) -> Result<()> {
        const CHECK: &str = "mosend-webhooks key check";
        let stored: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'key_check'").fetch_optional(&self.writer).await?;
        match stored {
            Some(sealed) => match self.cipher.open(&sealed, "meta") {
                Ok(text) if text == CHECK => Ok(()),
                _ => Err(StoreError::WrongKey),
            },
            None => {
                sqlx::query("INSERT INTO meta (key, value) VALUES ('key_check', ?)")
                    .bind(self.cipher.seal(CHECK, "meta"))
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }
        }
    }

    pub async fn open(url: &str, cipher: Cipher) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let writer =
            SqlitePoolOptions::new().max_connections(1).min_connections(1).connect_with(options.clone()).await?;
        let reader = SqlitePoolOptions::new().max_connections(4).connect_with(options.read_only(false)).await?;
        Ok(Self { writer, reader, signal: Arc::new(Notify::new()), cipher })
    }
}

const WEBHOOK_COLUMNS: &str = "id, org_id, name, description, url, events, format, status, disabled_reason, disabled_at, headers, secret, created_at, updated_at";
const DELIVERY_COLUMNS: &str = "id, webhook_id, event_id, event_type, status, attempts, last_status_code, last_error, last_response_body, last_duration_ms, next_attempt_at, created_at, updated_at, delivered_at";
const OPEN: &str = "('pending', 'retrying')";

fn uuid(row: &SqliteRow, col: &str) -> Result<Uuid> {
    let s: String = row.try_get(col)?;
    Uuid::parse_str(&s).map_err(|_| StoreError::Corrupt(format!("{col} is not a UUID: {s}")))
}

fn ts(row: &SqliteRow, col: &str) -> Result<Timestamp> {
    Ok(Timestamp(row.try_get(col)?))
}

fn opt_ts(row: &SqliteRow, col: &str) -> Result<Option<Timestamp>> {
    Ok(row.try_get::<Option<i64>, _>(col)?.map(Timestamp))
}

/// Opens a sealed webhook secret, bound to its webhook's id.
fn open_secret(cipher: &Cipher, sealed: &str, webhook_id: Uuid) -> Result<WebhookSecret> {
    let plain = cipher.open(sealed, &webhook_id.to_string()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    WebhookSecret::parse(&plain).map_err(|_| StoreError::Corrupt("webhook secret".into()))
}

fn webhook_from_row(row: &SqliteRow, cipher: &Cipher) -> Result<Webhook> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("webhook {what}"));
    let events: String = row.try_get("events")?;
    let headers: String = row.try_get("headers")?;
    let sealed: String = row.try_get("secret")?;
    let id = uuid(row, "id")?;
    Ok(Webhook {
        id,
        org_id: uuid(row, "org_id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        url: row.try_get("url")?,
        events: serde_json::from_str(&events).map_err(|_| corrupt("events"))?,
        format: Format::parse(row.try_get("format")?).map_err(|_| corrupt("format"))?,
        status: Status::parse(row.try_get("status")?).map_err(|_| corrupt("status"))?,
        disabled_reason: row.try_get("disabled_reason")?,
        disabled_at: opt_ts(row, "disabled_at")?,
        headers: serde_json::from_str(&headers).map_err(|_| corrupt("headers"))?,
        secret: open_secret(cipher, &sealed, id)?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

fn delivery_from_row(row: &SqliteRow) -> Result<Delivery> {
    let status: String = row.try_get("status")?;
    Ok(Delivery {
        id: uuid(row, "id")?,
        webhook_id: uuid(row, "webhook_id")?,
        event_id: uuid(row, "event_id")?,
        event_type: row.try_get("event_type")?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery status {status}")))?,
        attempts: row.try_get::<i64, _>("attempts")?.try_into().unwrap_or(u32::MAX),
        last_status_code: row.try_get::<Option<i64>, _>("last_status_code")?.and_then(|c| u16::try_from(c).ok()),
        last_error: row.try_get("last_error")?,
        last_response_body: row.try_get("last_response_body")?,
        last_duration_ms: row.try_get("last_duration_ms")?,
        next_attempt_at: opt_ts(row, "next_attempt_at")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
        delivered_at: opt_ts(row, "delivered_at")?,
    })
}

fn api_key_from_row(row: &SqliteRow) -> Result<ApiKeyRecord> {
    let scope = if row.try_get::<bool, _>("is_platform")? {
        Scope::Platform
    } else {
        Scope::Organization(uuid(row, "org_id")?)
    };
    Ok(ApiKeyRecord {
        prefix: row.try_get("prefix")?,
        secret_hash: row.try_get("secret_hash")?,
        scope,
        name: row.try_get("name")?,
        created_at: ts(row, "created_at")?,
        revoked_at: opt_ts(row, "revoked_at")?,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serialising strings and maps of strings cannot fail")
}

/// Cancels the open deliveries of a webhook (deleted or disabled).
async fn cancel_open(tx: &mut sqlx::SqliteConnection, webhook_id: Uuid, at: Timestamp) -> Result<u64> {
    let done = sqlx::query(&format!(
        "UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL, lease_until = NULL, lease_token = NULL, updated_at = ?
         WHERE webhook_id = ? AND status IN {OPEN}"
    ))
    .bind(at.0)
    .bind(webhook_id.to_string())
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected())
}

async fn disable(tx: &mut sqlx::SqliteConnection, webhook_id: Uuid, reason: &str, at: Timestamp) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE webhooks SET status = 'disabled', disabled_reason = ?, disabled_at = ?, updated_at = ? WHERE id = ? AND status != 'disabled'",
    )
    .bind(reason)
    .bind(at.0)
    .bind(at.0)
    .bind(webhook_id.to_string())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    cancel_open(tx, webhook_id, at).await?;
    Ok(true)
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations/sqlite").run(&self.writer).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    fn work_signal(&self) -> Arc<Notify> {
        self.signal.clone()
    }

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        let (org, platform) = match key.scope {
            Scope::Platform => (None, true),
            Scope::Organization(org) => (Some(org.to_string()), false),
        };
        sqlx::query("INSERT INTO api_keys (prefix, secret_hash, org_id, is_platform, name, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&key.prefix)
            .bind(&key.secret_hash)
            .bind(org)
            .bind(platform)
            .bind(&key.name)
            .bind(key.created_at.0)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn find_api_key(&self, prefix: &str) -> Result<Option<ApiKeyRecord>> {
        let row =
            sqlx::query("SELECT * FROM api_keys WHERE prefix = ?").bind(prefix).fetch_optional(&self.reader).await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        let rows = sqlx::query("SELECT * FROM api_keys ORDER BY created_at, prefix").fetch_all(&self.reader).await?;
        rows.iter().map(api_key_from_row).collect()
    }

    async fn revoke_api_key(&self, prefix: &str, at: Timestamp) -> Result<bool> {
        let done = sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE prefix = ? AND revoked_at IS NULL")
            .bind(at.0)
            .bind(prefix)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_webhook(&self, w: &Webhook) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(w.id.to_string())
        .bind(w.org_id.to_string())
        .bind(&w.name)
        .bind(&w.description)
        .bind(&w.url)
        .bind(to_json(&w.events))
        .bind(w.format.as_str())
        .bind(w.status.as_str())
        .bind(&w.disabled_reason)
        .bind(w.disabled_at.map(|t| t.0))
        .bind(to_json(&w.headers))
        .bind(self.cipher.seal(w.secret.expose(), &w.id.to_string()))
        .bind(w.created_at.0)
        .bind(w.updated_at.0)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn list_webhooks(&self, org_id: Uuid) -> Result<Vec<Webhook>> {
        let rows = sqlx::query(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE org_id = ? ORDER BY id"))
            .bind(org_id.to_string())
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(|r| webhook_from_row(r, &self.cipher)).collect()
    }

    async fn get_webhook(&self, org_id: Uuid, id: Uuid) -> Result<Option<Webhook>> {
        let row = sqlx::query(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ? AND org_id = ?"))
            .bind(id.to_string())
            .bind(org_id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(|r| webhook_from_row(r, &self.cipher)).transpose()
    }

    async fn update_webhook(&self, u: &WebhookUpdate) -> Result<bool> {
        let w = &u.webhook;
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE webhooks SET name = ?, description = ?, url = ?, events = ?, format = ?, status = ?, disabled_reason = ?,
             disabled_at = ?, headers = ?, updated_at = ?,
             failing_since = CASE WHEN ? THEN NULL ELSE failing_since END,
             failed_attempts = CASE WHEN ? THEN 0 ELSE failed_attempts END
             WHERE id = ? AND org_id = ?",
        )
        .bind(&w.name)
        .bind(&w.description)
        .bind(&w.url)
        .bind(to_json(&w.events))
        .bind(w.format.as_str())
        .bind(w.status.as_str())
        .bind(&w.disabled_reason)
        .bind(w.disabled_at.map(|t| t.0))
        .bind(to_json(&w.headers))
        .bind(w.updated_at.0)
        .bind(u.reset_failures)
        .bind(u.reset_failures)
        .bind(w.id.to_string())
        .bind(w.org_id.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        if u.cancel_open_deliveries {
            cancel_open(&mut tx, w.id, w.updated_at).await?;
        }
        tx.commit().await?;
        // A resumed webhook's held deliveries are due now.
        self.signal.notify_one();
        Ok(true)
    }

    async fn delete_webhook(&self, org_id: Uuid, id: Uuid, at: Timestamp) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query("DELETE FROM webhooks WHERE id = ? AND org_id = ?")
            .bind(id.to_string())
            .bind(org_id.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        cancel_open(&mut tx, id, at).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn publish_event(&self, e: &NewEvent, window: Duration) -> Result<PublishedEvent> {
        let org = e.org_id.to_string();
        let mut tx = self.writer.begin().await?;
        if let Some(key) = &e.idempotency_key {
            let existing = sqlx::query(
                "SELECT id, type, created_at, deliveries FROM events WHERE org_id = ? AND idempotency_key = ?",
            )
            .bind(&org)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                let created_at = ts(&row, "created_at")?;
                if created_at > e.created_at.minus(window) {
                    return Ok(PublishedEvent {
                        id: uuid(&row, "id")?,
                        event_type: row.try_get("type")?,
                        created_at,
                        deliveries: row.try_get::<i64, _>("deliveries")?.try_into().unwrap_or(0),
                        duplicate: true,
                    });
                }
                // Past the window the key is free again.
                sqlx::query("UPDATE events SET idempotency_key = NULL WHERE org_id = ? AND idempotency_key = ?")
                    .bind(&org)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let candidates =
            sqlx::query("SELECT id, events FROM webhooks WHERE org_id = ? AND status IN ('active', 'paused')")
                .bind(&org)
                .fetch_all(&mut *tx)
                .await?;
        let mut targets = Vec::new();
        for row in &candidates {
            let events: Vec<String> = serde_json::from_str(row.try_get("events")?)
                .map_err(|_| StoreError::Corrupt("webhook events".into()))?;
            if event_type::matches(&events, &e.event_type) {
                targets.push(uuid(row, "id")?);
            }
        }
        let deliveries = u32::try_from(targets.len()).unwrap_or(u32::MAX);
        let event_id = e.id.to_string();
        sqlx::query("INSERT INTO events (id, org_id, type, data, idempotency_key, deliveries, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(&event_id)
            .bind(&org)
            .bind(&e.event_type)
            .bind(&e.data)
            .bind(&e.idempotency_key)
            .bind(i64::from(deliveries))
            .bind(e.created_at.0)
            .execute(&mut *tx)
            .await?;
        for webhook_id in &targets {
            sqlx::query(
                "INSERT INTO deliveries (id, webhook_id, org_id, event_id, event_type, status, next_attempt_at, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
            )
            .bind(Uuid::now_v7().to_string())
            .bind(webhook_id.to_string())
            .bind(&org)
            .bind(&event_id)
            .bind(&e.event_type)
            .bind(e.created_at.0)
            .bind(e.created_at.0)
            .bind(e.created_at.0)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if deliveries > 0 {
            self.signal.notify_one();
        }
        Ok(PublishedEvent {
            id: e.id,
            event_type: e.event_type.clone(),
            created_at: e.created_at,
            deliveries,
            duplicate: false,
        })
    }

    async fn list_deliveries(&self, webhook_id: Uuid, q: &DeliveryQuery) -> Result<Vec<Delivery>> {
        let mut sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE webhook_id = ?");
        if q.status.is_some() {
            sql.push_str(" AND status = ?");
        }
        if q.event_type.is_some() {
            sql.push_str(" AND event_type = ?");
        }
        if q.before.is_some() {
            sql.push_str(" AND id < ?");
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        let mut query = sqlx::query(&sql).bind(webhook_id.to_string());
        if let Some(s) = q.status {
            query = query.bind(s.as_str());
        }
        if let Some(t) = &q.event_type {
            query = query.bind(t);
        }
        if let Some(b) = q.before {
            query = query.bind(b.to_string());
        }
        let rows = query.bind(i64::from(q.limit)).fetch_all(&self.reader).await?;
        rows.iter().map(delivery_from_row).collect()
    }

    async fn get_delivery(&self, webhook_id: Uuid, id: Uuid) -> Result<Option<Delivery>> {
        let row = sqlx::query(&format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ? AND webhook_id = ?"))
            .bind(id.to_string())
            .bind(webhook_id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    async fn list_attempts(&self, delivery_id: Uuid) -> Result<Vec<Attempt>> {
        let rows = sqlx::query("SELECT * FROM attempts WHERE delivery_id = ? ORDER BY attempted_at, id")
            .bind(delivery_id.to_string())
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Attempt {
                    id: uuid(row, "id")?,
                    delivery_id: uuid(row, "delivery_id")?,
                    attempted_at: ts(row, "attempted_at")?,
                    duration_ms: row.try_get("duration_ms")?,
                    status_code: row.try_get::<Option<i64>, _>("status_code")?.and_then(|c| u16::try_from(c).ok()),
                    outcome: row.try_get("outcome")?,
                    error: row.try_get("error")?,
                    response_body: row.try_get("response_body")?,
                })
            })
            .collect()
    }

    async fn claim_due(&self, r: &ClaimRequest) -> Result<Vec<ClaimedDelivery>> {
        let mut tx = self.writer.begin().await?;
        // Due deliveries of active webhooks, at most `per_webhook` per webhook counting the
        // ones already leased (in flight here or in another process).
        let ids: Vec<String> = sqlx::query_scalar(&format!(
            "WITH inflight AS (
                 SELECT webhook_id, COUNT(*) AS n FROM deliveries
                 WHERE lease_until > ?1 AND status IN {OPEN} GROUP BY webhook_id
             ),
             due AS (
                 SELECT d.id, d.webhook_id, d.next_attempt_at,
                        ROW_NUMBER() OVER (PARTITION BY d.webhook_id ORDER BY d.next_attempt_at, d.id) AS rn
                 FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
                 WHERE d.status IN {OPEN} AND d.next_attempt_at <= ?1
                   AND (d.lease_until IS NULL OR d.lease_until <= ?1) AND w.status = 'active'
             )
             SELECT due.id FROM due LEFT JOIN inflight i ON i.webhook_id = due.webhook_id
             WHERE due.rn + COALESCE(i.n, 0) <= ?2
             ORDER BY due.next_attempt_at, due.id LIMIT ?3"
        ))
        .bind(r.now.0)
        .bind(i64::from(r.per_webhook))
        .bind(i64::from(r.batch))
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids_json = to_json(&ids);
        sqlx::query(
            "UPDATE deliveries SET lease_until = ?, lease_token = ? WHERE id IN (SELECT value FROM json_each(?))",
        )
        .bind(r.lease_until.0)
        .bind(r.token.to_string())
        .bind(&ids_json)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT d.id, d.webhook_id, d.event_id, d.event_type, d.attempts, e.data, e.created_at AS event_created_at,
                    w.url, w.format, w.secret, w.headers
             FROM deliveries d JOIN events e ON e.id = d.event_id JOIN webhooks w ON w.id = d.webhook_id
             WHERE d.id IN (SELECT value FROM json_each(?))",
        )
        .bind(&ids_json)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                let corrupt = |what: &str| StoreError::Corrupt(format!("claimed delivery {what}"));
                let headers: String = row.try_get("headers")?;
                let sealed: String = row.try_get("secret")?;
                let webhook_id = uuid(row, "webhook_id")?;
                Ok(ClaimedDelivery {
                    id: uuid(row, "id")?,
                    webhook_id,
                    event_id: uuid(row, "event_id")?,
                    event_type: row.try_get("event_type")?,
                    event_data: row.try_get("data")?,
                    event_created_at: ts(row, "event_created_at")?,
                    attempts: row.try_get::<i64, _>("attempts")?.try_into().unwrap_or(u32::MAX),
                    url: row.try_get("url")?,
                    format: Format::parse(row.try_get("format")?).map_err(|_| corrupt("format"))?,
                    secret: open_secret(&self.cipher, &sealed, webhook_id)?,
                    headers: serde_json::from_str::<Headers>(&headers).map_err(|_| corrupt("headers"))?,
                })
            })
            .collect()
    }

    async fn record_attempt(&self, a: &AttemptRecord, policy: &DisablePolicy) -> Result<Option<String>> {
        let now = a.attempted_at.plus(Duration::from_millis(u64::try_from(a.duration_ms).unwrap_or(0)));
        let (status, next_at, delivered_at) = match a.next {
            NextStep::Succeeded => (DeliveryStatus::Succeeded, None, Some(now.0)),
            NextStep::RetryAt(at) => (DeliveryStatus::Retrying, Some(at.0), None),
            NextStep::Failed => (DeliveryStatus::Failed, None, None),
        };
        let mut tx = self.writer.begin().await?;
        // A delivery cancelled while its attempt was in flight stays cancelled; a lease lost
        // to another worker (it expired) is not ours to record.
        let done = sqlx::query(
            "UPDATE deliveries SET attempts = attempts + 1, last_status_code = ?, last_error = ?, last_response_body = ?,
                 last_duration_ms = ?, updated_at = ?,
                 status = CASE WHEN status = 'cancelled' THEN status ELSE ? END,
                 next_attempt_at = CASE WHEN status = 'cancelled' THEN NULL ELSE ? END,
                 delivered_at = COALESCE(delivered_at, ?),
                 lease_until = NULL, lease_token = NULL
             WHERE id = ? AND (lease_token = ? OR status = 'cancelled')",
        )
        .bind(a.status_code.map(i64::from))
        .bind(&a.error)
        .bind(&a.response_body)
        .bind(a.duration_ms)
        .bind(now.0)
        .bind(status.as_str())
        .bind(next_at)
        .bind(delivered_at)
        .bind(a.delivery_id.to_string())
        .bind(a.token.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO attempts (id, delivery_id, attempted_at, duration_ms, status_code, outcome, error, response_body)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(a.delivery_id.to_string())
        .bind(a.attempted_at.0)
        .bind(a.duration_ms)
        .bind(a.status_code.map(i64::from))
        .bind(a.outcome.code())
        .bind(&a.error)
        .bind(&a.response_body)
        .execute(&mut *tx)
        .await?;

        let webhook = a.webhook_id.to_string();
        let mut disabled = None;
        if a.outcome == Outcome::Success {
            sqlx::query(
                "UPDATE webhooks SET failing_since = NULL, failed_attempts = 0 WHERE id = ? AND failed_attempts > 0",
            )
            .bind(&webhook)
            .execute(&mut *tx)
            .await?;
        } else {
            let streak = sqlx::query(
                "UPDATE webhooks SET failing_since = COALESCE(failing_since, ?), failed_attempts = failed_attempts + 1
                 WHERE id = ? RETURNING failing_since, failed_attempts",
            )
            .bind(a.attempted_at.0)
            .bind(&webhook)
            .fetch_optional(&mut *tx)
            .await?;
            let reason = if a.outcome == Outcome::Gone {
                Some("the receiver answered 410 Gone".to_string())
            } else if let Some(row) = streak {
                let since: i64 = row.try_get("failing_since")?;
                let count: i64 = row.try_get("failed_attempts")?;
                let long_enough =
                    now.0.saturating_sub(since) >= i64::try_from(policy.after.as_millis()).unwrap_or(i64::MAX);
                (long_enough && count >= i64::from(policy.min_attempts)).then(|| {
                    format!(
                        "every attempt failed for {} ({count} attempts); last error: {}",
                        humantime::format_duration(Duration::from_secs(
                            u64::try_from((now.0 - since) / 1000).unwrap_or(0)
                        )),
                        a.error.as_deref().unwrap_or("unknown")
                    )
                })
            } else {
                None
            };
            if let Some(reason) = reason {
                if disable(&mut tx, a.webhook_id, &reason, now).await? {
                    disabled = Some(reason);
                }
            }
        }
        tx.commit().await?;
        Ok(disabled)
    }

    async fn release_leases(&self, token: Uuid) -> Result<u64> {
        let done = sqlx::query("UPDATE deliveries SET lease_until = NULL, lease_token = NULL WHERE lease_token = ?")
            .bind(token.to_string())
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }
}
