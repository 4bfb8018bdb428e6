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

    /// `$1` now, `$2` per-webhook limit, `$3` batch, `$4` lease end, `$5` token.
    const CLAIM_SQL: &'static str = "
        WITH inflight AS (
            SELECT webhook_id, COUNT(*) AS n FROM deliveries
            WHERE lease_until > $1 AND status IN ('pending', 'retrying') GROUP BY webhook_id
        ),
        due AS (
            SELECT d.id, d.webhook_id, d.next_attempt_at,
                   ROW_NUMBER() OVER (PARTITION BY d.webhook_id ORDER BY d.next_attempt_at, d.id) AS rn
            FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
            WHERE d.status IN ('pending', 'retrying') AND d.next_attempt_at <= $1
              AND (d.lease_until IS NULL OR d.lease_until <= $1) AND w.status = 'active'
        ),
        picked AS (
            SELECT due.id FROM due LEFT JOIN inflight i ON i.webhook_id = due.webhook_id
            WHERE due.rn + COALESCE(i.n, 0) <= $2
            ORDER BY due.next_attempt_at, due.id LIMIT $3
        ),
        locked AS (
            SELECT d.id FROM deliveries d
            WHERE d.id IN (SELECT id FROM picked) AND d.status IN ('pending', 'retrying')
              AND (d.lease_until IS NULL OR d.lease_until <= $1)
            FOR UPDATE OF d SKIP LOCKED
        )
        UPDATE deliveries SET lease_until = $4, lease_token = $5
        FROM locked WHERE deliveries.id = locked.id
        RETURNING deliveries.id";
}

super::sql::shared_store!(PostgresStore, sqlx::Postgres);
