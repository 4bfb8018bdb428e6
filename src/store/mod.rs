//! Storage: the only place with SQL. One trait, [`Store`], and one implementation per
//! backend (`sqlite` now; PostgreSQL builds on the same trait). The database is also the
//! delivery queue: deliveries are claimed in batches under a lease, sent with no
//! transaction open, and their results recorded in a second short transaction.

pub mod cipher;
pub mod handoff;
mod postgres;
mod publisher;
mod sending;
mod sql;
mod sqlite;
mod sqlite_writer;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::domain::{
    api_key::Scope,
    delivery::{DeliveryStatus, Outcome},
    payload::OutboundEvent,
    time::Timestamp,
    webhook::{Format, Headers, Status, WebhookSecret},
};

pub use cipher::{Cipher, EncryptionKey};
pub use handoff::{Gate, HandedOff, Handoff, Slot};
pub use postgres::PostgresStore;
pub use publisher::Publisher;
pub use sending::Sendable;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error("unsupported database URL: {0}")]
    UnsupportedUrl(String),
    #[error("encryption key file: {0}")]
    KeyFile(std::io::Error),
    #[error("the encryption key is not the one this database's secrets were sealed with")]
    WrongKey,
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot start the SQLite writing thread: {0}")]
    WriterThread(std::io::Error),
    /// A write grouped with others failed with the group (see `writer`).
    #[error("database error: {0}")]
    RoundFailed(String),
    #[error("PostgreSQL needs MOSEND_WEBHOOKS_ENCRYPTION_KEY (every instance must share it; there is no key file)")]
    KeyRequired,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a publish wrote: the events' answers, the deliveries leased to the local worker (to
/// hand over once committed) and the webhooks whose deliveries were left for the claim loop.
pub(crate) type Published = (Vec<PublishedEvent>, Vec<HandedOff>, Vec<Uuid>);

/// Opens the backend named by `url` (`sqlite://…`), creating and migrating it. Webhook
/// secrets are sealed under `key`; without one, the key file beside the SQLite database is
/// used, and created on first start.
pub async fn open(url: &str, key: Option<&EncryptionKey>) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        let key = match key {
            Some(k) => k.clone(),
            None => sqlite::key_from_file(url)?,
        };
        let store = SqliteStore::open(url, Cipher::new(&key)).await?;
        store.migrate().await?;
        store.check_key().await?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let key = key.ok_or(StoreError::KeyRequired)?;
        let store = PostgresStore::open(url, Cipher::new(key)).await?;
        store.migrate().await?;
        store.check_key().await?;
        Ok(Arc::new(store))
    } else {
        Err(StoreError::UnsupportedUrl(format!(
            "`{}`: use sqlite://path or postgres://…",
            url.split(['@', '?']).next().unwrap_or_default()
        )))
    }
}

/// The key file a SQLite database uses when no key is configured (`None` for PostgreSQL and
/// in-memory databases).
pub fn key_file(url: &str) -> Result<Option<std::path::PathBuf>> {
    if url.starts_with("sqlite:") {
        sqlite::key_file_path(url)
    } else {
        Ok(None)
    }
}

/// Why a failing webhook is disabled now, if it is (SPEC §4): every attempt since
/// `failing_since` failed, for at least `policy.after`, and at least `policy.min_attempts`.
pub(crate) fn disable_reason(
    policy: &DisablePolicy,
    failing_since: i64,
    now: i64,
    failed: u32,
    last_error: Option<&str>,
) -> Option<String> {
    let span = now.saturating_sub(failing_since);
    let long_enough = span >= i64::try_from(policy.after.as_millis()).unwrap_or(i64::MAX);
    (long_enough && failed >= policy.min_attempts).then(|| {
        format!(
            "every attempt failed for {} ({failed} attempts); last error: {}",
            humantime::format_duration(Duration::from_secs(u64::try_from(span / 1000).unwrap_or(0))),
            last_error.unwrap_or("unknown")
        )
    })
}

#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    pub scope: Scope,
    pub name: Option<String>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub url: String,
    pub events: Vec<String>,
    pub format: Format,
    pub status: Status,
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<Timestamp>,
    pub headers: Headers,
    pub secret: WebhookSecret,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Bumped by every write; an update applies only to the version it was computed from.
    pub version: i64,
}

/// What became of an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateResult {
    Applied,
    /// No such webhook (any more).
    Missing,
    /// Someone else wrote the webhook since it was read: read it again and re-apply.
    Stale,
}

/// A change to a webhook, with the side effects its status change implies.
#[derive(Debug)]
pub struct WebhookUpdate {
    pub webhook: Webhook,
    /// The webhook became `disabled`: its pending and retrying deliveries are cancelled.
    pub cancel_open_deliveries: bool,
    /// The webhook left `disabled`: its failure streak starts over.
    pub reset_failures: bool,
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: Uuid,
    pub org_id: Uuid,
    pub event_type: String,
    /// The `data` object as published (valid JSON text).
    pub data: String,
    pub idempotency_key: Option<String>,
    pub created_at: Timestamp,
}

/// The stored event a publish answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedEvent {
    pub id: Uuid,
    pub event_type: String,
    pub created_at: Timestamp,
    pub deliveries: u32,
    /// The idempotency key had been used within the window: nothing new was scheduled.
    pub duplicate: bool,
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub last_response_body: Option<String>,
    pub last_duration_ms: Option<i64>,
    pub next_attempt_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: Uuid,
    pub delivery_id: Uuid,
    pub attempted_at: Timestamp,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub outcome: String,
    pub error: Option<String>,
    pub response_body: Option<String>,
}

/// A page request of a webhook's deliveries, newest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    pub status: Option<DeliveryStatus>,
    pub event_type: Option<String>,
    /// Only deliveries older than this one (the cursor).
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// What a worker asks of the queue.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest {
    pub now: Timestamp,
    /// At most this many deliveries.
    pub batch: u32,
    /// At most this many leased deliveries per webhook, counting those already in flight.
    pub per_webhook: u32,
    pub lease_until: Timestamp,
    /// The worker's token; only its holder may record the result.
    pub token: Uuid,
}

/// A delivery handed to a worker, with everything needed to send it.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: Uuid,
    /// Attempts made before this one.
    pub attempts: u32,
    /// The lease ends then: an attempt that could outlast it is not started.
    pub lease_until: Timestamp,
    /// Shared by the deliveries of one event handed over together.
    pub event: Arc<OutboundEvent>,
    /// Shared by the deliveries to one webhook handed over or claimed together.
    pub webhook: Arc<Sendable>,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Succeeded,
    RetryAt(Timestamp),
    /// No more attempts: the schedule is exhausted, or the receiver answered 410.
    Failed,
}

/// When a failing webhook is disabled by the service (SPEC §4).
#[derive(Debug, Clone, Copy)]
pub struct DisablePolicy {
    pub after: Duration,
    pub min_attempts: u32,
}

/// One attempt's result, recorded in one short transaction.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: Uuid,
    pub webhook_id: Uuid,
    pub token: Uuid,
    pub attempted_at: Timestamp,
    pub duration_ms: i64,
    pub outcome: Outcome,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub next: NextStep,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies this backend's migrations.
    async fn migrate(&self) -> Result<()>;
    /// Is the database reachable?
    async fn ping(&self) -> Result<()>;
    /// Signalled whenever deliveries may have become due (a publish, a resume).
    fn work_signal(&self) -> Arc<Notify>;

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()>;
    async fn find_api_key(&self, prefix: &str) -> Result<Option<ApiKeyRecord>>;
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>>;
    /// Marks the key revoked; `false` when no unrevoked key has that prefix.
    async fn revoke_api_key(&self, prefix: &str, at: Timestamp) -> Result<bool>;

    async fn insert_webhook(&self, webhook: &Webhook) -> Result<()>;
    async fn list_webhooks(&self, org_id: Uuid) -> Result<Vec<Webhook>>;
    async fn get_webhook(&self, org_id: Uuid, id: Uuid) -> Result<Option<Webhook>>;
    /// Writes `update.webhook` if its `version` is still the stored one (and bumps it).
    async fn update_webhook(&self, update: &WebhookUpdate) -> Result<UpdateResult>;
    /// Replaces the signing secret; the old one keeps signing until `previous_expires_at`.
    /// `false` when the webhook does not exist.
    async fn rotate_secret(
        &self,
        org_id: Uuid,
        id: Uuid,
        secret: &WebhookSecret,
        previous_expires_at: Timestamp,
        at: Timestamp,
    ) -> Result<bool>;
    /// Deletes the webhook and cancels its open deliveries; `false` when it did not exist.
    async fn delete_webhook(&self, org_id: Uuid, id: Uuid, at: Timestamp) -> Result<bool>;

    /// Stores the event and one `pending` delivery per matching active or paused webhook,
    /// in one transaction, honouring the idempotency key within `idempotency_window`.
    async fn publish_event(&self, event: &NewEvent, idempotency_window: Duration) -> Result<PublishedEvent>;
    /// Publishes several events (any organizations) in one transaction, results in order.
    async fn publish_batch(&self, events: &[NewEvent], idempotency_window: Duration) -> Result<Vec<PublishedEvent>>;

    async fn list_deliveries(&self, webhook_id: Uuid, query: &DeliveryQuery) -> Result<Vec<Delivery>>;
    async fn get_delivery(&self, webhook_id: Uuid, id: Uuid) -> Result<Option<Delivery>>;
    async fn list_attempts(&self, delivery_id: Uuid) -> Result<Vec<Attempt>>;

    /// Leases up to `batch` due deliveries of active webhooks.
    async fn claim_due(&self, request: &ClaimRequest) -> Result<Vec<ClaimedDelivery>>;
    /// Records attempts and moves their deliveries on, all in one transaction; may disable
    /// webhooks (410, or the failure policy). Returns, per record, the reason when it
    /// disabled the webhook.
    async fn record_attempts(&self, records: &[AttemptRecord], policy: &DisablePolicy) -> Result<Vec<Option<String>>>;
    /// Records attempts, then leases up to `claim.batch` due deliveries. A backend that can
    /// write both in one transaction does (one commit for both, the results first so that the
    /// claim counts the leases they end); the others write them one after the other. The claim
    /// is not made if the records could not be written.
    async fn record_attempts_then_claim(
        &self,
        records: &[AttemptRecord],
        policy: &DisablePolicy,
        claim: &ClaimRequest,
    ) -> (Result<Vec<Option<String>>>, Result<Vec<ClaimedDelivery>>);
    /// Gives back every lease held by `token` (on shutdown).
    async fn release_leases(&self, token: Uuid) -> Result<u64>;
    /// Gives back the leases `token` holds on these deliveries (claimed, but not to be sent
    /// now).
    async fn release_claims(&self, ids: &[Uuid], token: Uuid) -> Result<u64>;
    /// Lets publishes hand fresh deliveries straight to the local worker (see
    /// [`handoff`]). Only a backend whose database has this one process as its only worker
    /// takes it (SQLite); the others answer `false` and every delivery goes through claims,
    /// so the per-webhook limit, counted from leases, holds across processes.
    fn attach_handoff(&self, handoff: Arc<Handoff>) -> bool;
    /// Stops handing deliveries over (the worker is stopping).
    fn detach_handoff(&self);
    /// Re-seals every webhook secret (and the key check) under `new`, in one transaction;
    /// returns how many webhooks were re-sealed. The store keeps its old cipher: reopen it
    /// with the new key afterwards.
    async fn reencrypt(&self, new: &Cipher) -> Result<u64>;
    /// Deletes up to `batch` finished events created before `cutoff`, with their
    /// deliveries and attempts; returns how many events went.
    async fn purge_older_than(&self, cutoff: Timestamp, batch: u32) -> Result<u64>;
}
