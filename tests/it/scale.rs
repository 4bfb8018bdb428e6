//! Scale-out on PostgreSQL: several worker processes and an API process on one database,
//! one worker killed mid-run, nothing lost, no delivery attempted twice at once, and the
//! per-webhook limit held across processes. And the hot queries stay on indexes.

use std::collections::HashSet;
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{postgres_available, wait_until, Backend, Reply, TestDb, TestReceiver};
use crate::process::{command_on, create_key, free_port, Server};

const ENV: &[(&str, &str)] = &[
    ("MOSEND_WEBHOOKS_DELIVERY_TIMEOUT", "2s"),
    ("MOSEND_WEBHOOKS_LEASE_MARGIN", "1s"),
    ("MOSEND_WEBHOOKS_RETRY_SCHEDULE", "100ms,100ms,100ms,100ms"),
    ("MOSEND_WEBHOOKS_POLL_INTERVAL", "25ms"),
    ("MOSEND_WEBHOOKS_PER_WEBHOOK_CONCURRENCY", "6"),
    ("MOSEND_WEBHOOKS_CLAIM_BATCH", "4"),
    ("MOSEND_WEBHOOKS_ALLOWED_PRIVATE_CIDRS", "127.0.0.0/8"),
];

struct Worker {
    child: Child,
    log: std::path::PathBuf,
}

impl Worker {
    async fn start(dir: &std::path::Path, db: &TestDb) -> Worker {
        let log = dir.join(format!("worker-{}.log", Uuid::now_v7()));
        let mut c = command_on(dir, db);
        c.args(["serve", "--role", "worker"]).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in ENV {
            c.env(k, v);
        }
        let child = c.spawn().unwrap();
        let up = wait_until(Duration::from_secs(20), || {
            let log = log.clone();
            async move { std::fs::read_to_string(&log).unwrap_or_default().contains("delivery worker started") }
        })
        .await;
        assert!(up, "the worker started: {}", std::fs::read_to_string(&log).unwrap_or_default());
        Worker { child, log }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn three_workers_and_an_api_share_one_queue_and_lose_nothing_when_a_worker_is_killed() {
    if !postgres_available().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Postgres, dir.path()).await;
    let platform = create_key(dir.path(), &db, &["keys", "create", "--platform"]);
    let org = Uuid::now_v7();
    let receiver = TestReceiver::start_with(vec![], Reply::Delayed(Duration::from_millis(20), 200)).await;

    let mut api_env: Vec<(&str, &str)> = ENV.to_vec();
    api_env.push(("MOSEND_WEBHOOKS_ROLE", "api"));
    let api = Server::start(dir.path(), &db, free_port(), &api_env).await;
    let mut workers = vec![
        Worker::start(dir.path(), &db).await,
        Worker::start(dir.path(), &db).await,
        Worker::start(dir.path(), &db).await,
    ];

    let client = reqwest::Client::new();
    let (status, _) = api
        .post_webhook(&client, &platform, org, json!({"name": "slow", "url": receiver.url(), "events": ["*"]}))
        .await;
    assert_eq!(status, 201);
    let mut accepted = HashSet::new();
    for i in 0..500 {
        let (status, body) =
            api.publish(&client, &platform, org, json!({"type": "email.sent", "data": {"i": i}})).await;
        assert_eq!(status, 202, "{body}");
        accepted.insert(body["data"]["id"].as_str().unwrap().to_string());
        if i == 150 {
            // Mid-run: one worker dies without a chance to give anything back.
            kill(Pid::from_raw(workers[0].child.id() as i32), Signal::SIGKILL).unwrap();
        }
    }
    let _ = workers[0].child.wait();
    let done = wait_until(Duration::from_secs(60), || {
        let got: HashSet<String> = receiver.received().iter().map(|r| r.header("webhook-id").to_string()).collect();
        let all = accepted.iter().all(|id| got.contains(id));
        async move { all }
    })
    .await;
    let got: HashSet<String> = receiver.received().iter().map(|r| r.header("webhook-id").to_string()).collect();
    assert!(
        done,
        "{} of 500 events delivered; worker logs: {}",
        accepted.intersection(&got).count(),
        std::fs::read_to_string(&workers[1].log).unwrap_or_default()
    );
    assert_eq!(receiver.overlaps(), 0, "no delivery was attempted by two workers at the same moment");
    assert!(receiver.max_in_flight() <= 6, "the per-webhook limit held across processes: {}", receiver.max_in_flight());
    assert!(receiver.max_in_flight() >= 2, "the workers did run in parallel: {}", receiver.max_in_flight());
    drop(workers.remove(0));
}

#[tokio::test]
async fn the_hot_queries_are_served_by_indexes_on_postgres() {
    if !postgres_available().await {
        return;
    }
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Postgres, dir.path()).await;
    let key = mosend_webhooks::store::EncryptionKey::parse(db.encryption_key.as_deref().unwrap()).unwrap();
    mosend_webhooks::store::open(&db.url, Some(&key)).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    // On empty tables the planner would scan anyway; forbid it to see which index serves.
    sqlx::query("SET enable_seqscan = off").execute(&mut conn).await.unwrap();
    async fn plan(conn: &mut sqlx::PgConnection, sql: &str) -> String {
        let rows: Vec<String> = sqlx::query_scalar(sql).fetch_all(conn).await.unwrap();
        rows.join("\n")
    }
    let history = plan(
        &mut conn,
        "EXPLAIN SELECT * FROM deliveries WHERE webhook_id = '01900000-0000-7000-8000-000000000000'
         AND id < '01900000-0000-7000-8000-000000000009' ORDER BY id DESC LIMIT 51",
    )
    .await;
    assert!(history.contains("deliveries_history"), "{history}");
    let due = plan(
        &mut conn,
        "EXPLAIN SELECT id FROM deliveries WHERE webhook_id = '01900000-0000-7000-8000-000000000000'
         AND status IN ('pending', 'retrying') AND next_attempt_at <= 0 ORDER BY next_attempt_at LIMIT 16",
    )
    .await;
    assert!(due.contains("deliveries_queue"), "{due}");
    let purge =
        plan(&mut conn, "EXPLAIN SELECT id FROM events WHERE created_at < 0 ORDER BY created_at LIMIT 500").await;
    assert!(purge.contains("events_by_age"), "{purge}");
}

#[tokio::test]
async fn the_claim_reads_the_queue_by_index_on_sqlite_whatever_the_backlog() {
    // Without statistics SQLite's planner may scan every delivery to claim a few; the claim
    // must loop over webhooks and read each one's queue from `deliveries_queue`.
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Sqlite, dir.path()).await;
    mosend_webhooks::store::open(&db.url, None).await.unwrap();
    let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    let sql = format!("EXPLAIN QUERY PLAN {}", mosend_webhooks::store::SqliteStore::CLAIM_SQL);
    let mut query = sqlx::query(&sql);
    for v in 1..=6i64 {
        query = query.bind(v);
    }
    let plan: Vec<String> = query
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|row| sqlx::Row::get::<String, _>(row, "detail"))
        .collect();
    let plan = plan.join("\n");
    // Each webhook's due deliveries come from the queue index alone, and every row the claim
    // touches is reached by its rowid, not through the separate index of its UUID key.
    assert!(plan.contains("USING COVERING INDEX deliveries_queue (webhook_id=? AND next_attempt_at<?)"), "{plan}");
    assert!(!plan.contains("sqlite_autoindex_deliveries"), "{plan}");
    // Expired leases (a worker that died) are found per webhook, not by stepping over the
    // queue: the queue index holds no leased delivery.
    assert!(plan.contains("USING COVERING INDEX deliveries_leased (webhook_id=? AND lease_until<?)"), "{plan}");
    // The one scan of deliveries is the count of those in flight, from the leased ones'
    // small partial index alone (only open deliveries hold leases: no row is read).
    let scans = plan.lines().filter(|l| l.starts_with("SCAN d") || l.starts_with("SCAN q"));
    assert!(
        scans.clone().all(|l| l.contains("USING COVERING INDEX deliveries_leased")),
        "no scan of the queue: {plan}"
    );
}

#[tokio::test]
async fn the_claim_reads_the_queue_by_index_on_postgres() {
    if !postgres_available().await {
        return;
    }
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Postgres, dir.path()).await;
    let key = mosend_webhooks::store::EncryptionKey::parse(db.encryption_key.as_deref().unwrap()).unwrap();
    mosend_webhooks::store::open(&db.url, Some(&key)).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("SET enable_seqscan = off").execute(&mut conn).await.unwrap();
    let sql = format!("EXPLAIN {}", mosend_webhooks::store::PostgresStore::CLAIM_SQL);
    let plan: Vec<String> = sqlx::query_scalar(&sql)
        .bind(1i64)
        .bind(2i64)
        .bind(3i64)
        .bind(4i64)
        .bind(Uuid::now_v7())
        .bind(6i64)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("deliveries_queue"), "{plan}");
    assert!(!plan.contains("Seq Scan on deliveries"), "{plan}");
}
