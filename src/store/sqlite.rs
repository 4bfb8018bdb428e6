//! The embedded SQLite backend (the default). SQLite has one writer at a time. The busy
//! writes (publishes, attempt results, claims) go to a thread of its own that writes
//! whatever is waiting in one transaction (`sqlite_writer`); the others (webhooks, keys,
//! purges, lease releases) through a pool of one connection; `BEGIN IMMEDIATE` and the busy
//! timeout order the two. Reads use a small pool of their own; WAL mode lets them run beside
//! the writes. Commits use `synchronous=FULL`: an event answered 202 survives a power cut,
//! not just a crash.
//!
//! The statements shared with PostgreSQL are in `sql.rs`; here are connecting, migrating
//! and the claim statement.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use tokio::sync::{mpsc, Notify};

use super::cipher::EncryptionKey;
use super::handoff::Handoff;
use super::writer::GroupWriter;

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    signal: Arc<Notify>,
    cipher: super::Cipher,
    /// The local worker's hand-off, while it runs.
    handoff: Arc<std::sync::Mutex<Option<Arc<Handoff>>>>,
    /// Publishes, attempt results and claims go to the writing thread (`sqlite_writer`);
    /// `None` for an in-memory database, which only sqlx's connections see.
    group: Option<GroupWriter>,
}

/// The key in the file beside the database (`<database>.key`), created on first use. An
/// in-memory database gets a key that lives as long as the process.
pub(super) fn key_from_file(url: &str) -> super::Result<EncryptionKey> {
    let Some(path) = key_file_path(url)? else {
        return Ok(EncryptionKey::generate());
    };
    let (key, created) = EncryptionKey::load_or_create(&path).map_err(super::StoreError::KeyFile)?;
    if created {
        tracing::warn!(path = %path.display(), "no MOSEND_WEBHOOKS_ENCRYPTION_KEY configured: generated a key file for webhook secrets; back it up with the database");
    }
    Ok(key)
}

/// `<database>.key` beside a SQLite file; `None` for an in-memory database.
pub(super) fn key_file_path(url: &str) -> super::Result<Option<std::path::PathBuf>> {
    let options = SqliteConnectOptions::from_str(url)?;
    let db = options.get_filename();
    if db.as_os_str().is_empty() || db.to_string_lossy().contains(":memory:") {
        return Ok(None);
    }
    let mut name = db.as_os_str().to_owned();
    name.push(".key");
    Ok(Some(std::path::PathBuf::from(name)))
}

impl SqliteStore {
    pub async fn open(url: &str, cipher: super::Cipher) -> super::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true)
            // Sorts and materialised subqueries (the claim's ranking, multi-row updates) stay
            // in memory instead of a temporary file created and deleted each time.
            .pragma("temp_store", "memory");
        // A connection to a local file does not go stale: no ping (a round trip to the
        // connection's thread) before each use.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        let mut store =
            Self { writer, reader, signal: Arc::new(Notify::new()), cipher, handoff: Default::default(), group: None };
        if key_file_path(url)?.is_some() {
            let connection = super::sqlite_writer::connect(options.get_filename())?;
            let (tx, rx) = mpsc::unbounded_channel();
            let shared = super::sqlite_writer::Shared {
                cipher: store.cipher.clone(),
                handoff: store.handoff.clone(),
                signal: store.signal.clone(),
            };
            super::sqlite_writer::spawn(connection, shared, rx).map_err(super::StoreError::WriterThread)?;
            store.group = Some(GroupWriter::new(tx));
        }
        Ok(store)
    }

    /// Write transactions take the write lock up front: a deferred one that read first and
    /// then writes fails at once with `SQLITE_BUSY` (no busy wait) if another connection,
    /// such as a CLI command on the same file, wrote in between.
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    /// One process owns a SQLite database and runs its only worker, so the worker's
    /// in-memory accounting sees every attempt: fresh deliveries may be handed over.
    fn handoff(&self) -> Option<Arc<Handoff>> {
        self.handoff.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_handoff(&self, handoff: Option<Arc<Handoff>>) -> bool {
        *self.handoff.lock().unwrap_or_else(|p| p.into_inner()) = handoff;
        true
    }

    fn group_writer(&self) -> Option<&GroupWriter> {
        self.group.as_ref()
    }

    /// Whether multi-row statements use anonymous `?` parameters (see `sql.rs`).
    const ANONYMOUS_PARAMETERS: bool = true;

    fn write_pool(&self) -> &SqlitePool {
        &self.writer
    }

    fn read_pool(&self) -> &SqlitePool {
        &self.reader
    }

    async fn run_migrations(&self) -> super::Result<()> {
        sqlx::migrate!("./migrations/sqlite").run(&self.writer).await?;
        Ok(())
    }

    /// Claims need no extra lock: the writing thread (for an in-memory database, the single
    /// writer connection) serialises them.
    async fn lock_claims(_tx: &mut sqlx::SqliteConnection) -> super::Result<()> {
        Ok(())
    }

    /// `$1` now, `$2` per-webhook limit, `$3` batch, `$4` lease end, `$5` token, `$6` how
    /// many due deliveries to read per webhook. Each active webhook contributes at most `$6`
    /// of its oldest due deliveries (read from the `deliveries_queue` index, which holds no
    /// leased delivery) and at most `$6` whose lease expired (from `deliveries_leased`), so a
    /// claim costs O(active webhooks + batch) whatever the backlog and however many attempts
    /// are in flight; they are then ranked per webhook so that, with those in flight (an
    /// index-only count: only open deliveries hold leases), no webhook passes its limit, and
    /// the oldest go first. `CROSS JOIN` keeps webhooks the outer loop and `INDEXED BY` pins
    /// the indexes: without statistics SQLite's planner would otherwise scan every delivery.
    #[doc(hidden)] // public for the test that checks its plan
    pub const CLAIM_SQL: &'static str = "
        UPDATE deliveries SET lease_until = $4, lease_token = $5
        WHERE rowid IN (
            WITH inflight AS (
                SELECT webhook_id, COUNT(*) AS n FROM deliveries INDEXED BY deliveries_leased
                WHERE lease_until > $1 GROUP BY webhook_id
            ),
            due AS (
                SELECT d.rowid AS rid, d.webhook_id, d.next_attempt_at FROM webhooks w CROSS JOIN deliveries d
                WHERE w.status = 'active' AND d.rowid IN (
                    SELECT q.rowid FROM deliveries q INDEXED BY deliveries_queue
                    WHERE q.webhook_id = w.id AND q.status IN ('pending', 'retrying') AND q.lease_until IS NULL
                      AND q.next_attempt_at <= $1
                    ORDER BY q.next_attempt_at LIMIT $6
                )
                UNION ALL
                SELECT d.rowid AS rid, d.webhook_id, d.next_attempt_at FROM webhooks w CROSS JOIN deliveries d
                WHERE w.status = 'active' AND d.status IN ('pending', 'retrying') AND d.next_attempt_at <= $1
                  AND d.rowid IN (
                    SELECT x.rowid FROM deliveries x INDEXED BY deliveries_leased
                    WHERE x.webhook_id = w.id AND x.lease_until <= $1
                    ORDER BY x.lease_until LIMIT $6
                )
            ),
            ranked AS (
                SELECT rid, webhook_id, next_attempt_at,
                       ROW_NUMBER() OVER (PARTITION BY webhook_id ORDER BY next_attempt_at, rid) AS rn
                FROM due
            )
            SELECT r.rid FROM ranked r LEFT JOIN inflight i ON i.webhook_id = r.webhook_id
            WHERE r.rn + COALESCE(i.n, 0) <= $2
            ORDER BY r.next_attempt_at, r.rid LIMIT $3
        )
        RETURNING id, webhook_id, event_id, event_type, attempts";
}

super::sql::shared_store!(SqliteStore, sqlx::Sqlite);
