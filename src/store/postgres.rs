//! The PostgreSQL backend, for running many instances on one database. Every instance
//! shares the queue: claims lease rows under `FOR UPDATE SKIP LOCKED`, and a
//! transaction-scoped advisory lock serialises the (short) claim transactions so the
//! per-webhook in-flight limit, counted from the leases, holds across instances.
//!
//! The statements shared with SQLite are in `sql.rs`; here are connecting, migrating and
//! the claim statement.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::Notify;

/// The advisory lock key claimers take (an arbitrary constant: "mwclaim" in ASCII).
const CLAIM_LOCK: i64 = 0x006d_7763_6c61_696d;

pub struct PostgresStore {
    pool: PgPool,
    signal: Arc<Notify>,
    cipher: super::Cipher,
}

impl PostgresStore {
    pub async fn open(url: &str, cipher: super::Cipher) -> super::Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self { pool, signal: Arc::new(Notify::new()), cipher })
    }

    const BEGIN_WRITE: &'static str = "BEGIN";

    /// Several processes share the queue, so deliveries always go through claims, whose
    /// per-webhook limit counts every process's leases.
    fn handoff(&self) -> Option<std::sync::Arc<super::handoff::Handoff>> {
        None
    }

    fn set_handoff(&self, _: Option<std::sync::Arc<super::handoff::Handoff>>) -> bool {
        false
    }

    /// Transactions commit side by side on PostgreSQL: each write keeps its own.
    fn group_writer(&self) -> Option<&super::writer::GroupWriter> {
        None
    }

    /// Whether multi-row statements use anonymous `?` parameters (see `sql.rs`).
    const ANONYMOUS_PARAMETERS: bool = false;

    fn write_pool(&self) -> &PgPool {
        &self.pool
    }

    fn read_pool(&self) -> &PgPool {
        &self.pool
    }

    async fn run_migrations(&self) -> super::Result<()> {
        sqlx::migrate!("./migrations/postgres").run(&self.pool).await?;
        Ok(())
    }

    /// One claimer at a time across all instances; released at commit.
    async fn lock_claims(tx: &mut sqlx::PgConnection) -> super::Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CLAIM_LOCK).execute(&mut *tx).await?;
        Ok(())
    }

    /// `$1` now, `$2` per-webhook limit, `$3` batch, `$4` lease end, `$5` token, `$6` how
    /// many due deliveries to read per webhook. Each active webhook contributes at most
    /// `$6` of its oldest due deliveries, fewer when some are already leased (a lateral
    /// read of the `deliveries_queue` index), so a claim costs O(active webhooks + batch)
    /// whatever the backlog; the oldest of those go first.
    #[doc(hidden)] // public for the test that checks its plan
    pub const CLAIM_SQL: &'static str = "
        WITH inflight AS (
            SELECT webhook_id, COUNT(*) AS n FROM deliveries
            WHERE lease_until > $1 AND status IN ('pending', 'retrying') GROUP BY webhook_id
        ),
        due AS (
            SELECT q.id, q.next_attempt_at
            FROM webhooks w LEFT JOIN inflight i ON i.webhook_id = w.id
            CROSS JOIN LATERAL (
                SELECT d.id, d.next_attempt_at FROM deliveries d
                WHERE d.webhook_id = w.id AND d.status IN ('pending', 'retrying') AND d.next_attempt_at <= $1
                  AND (d.lease_until IS NULL OR d.lease_until <= $1)
                ORDER BY d.next_attempt_at LIMIT GREATEST(LEAST($6, $2 - COALESCE(i.n, 0)), 0)
            ) q
            WHERE w.status = 'active'
        ),
        picked AS (
            SELECT id FROM due ORDER BY next_attempt_at, id LIMIT $3
        ),
        locked AS (
            SELECT d.id FROM deliveries d
            WHERE d.id IN (SELECT id FROM picked) AND d.status IN ('pending', 'retrying')
              AND (d.lease_until IS NULL OR d.lease_until <= $1)
            FOR UPDATE OF d SKIP LOCKED
        )
        UPDATE deliveries SET lease_until = $4, lease_token = $5
        FROM locked WHERE deliveries.id = locked.id
        RETURNING deliveries.id, deliveries.webhook_id, deliveries.event_id, deliveries.event_type, deliveries.attempts";
}

super::sql::shared_store!(PostgresStore, sqlx::Postgres);
