//! End-to-end benchmark: starts the real service (SQLite, or PostgreSQL with N worker
//! processes), a fast in-process receiver, creates webhooks, publishes events with C
//! concurrent publishers through the real HTTP API, and prints publish/s, delivered/s,
//! publish-to-arrival latency percentiles, peak RSS and CPU time of the service.
//!
//! Scenarios (`--scenario`):
//! - `basic` (the default): one organization with `--webhooks K` (default 1) webhooks, each
//!   subscribed to every event.
//! - `orgs`: `--orgs N` (default 1000) organizations × `--webhooks K` (default 3) webhooks each;
//!   events are published round-robin across the organizations.
//! - `backlog`: the receiver answers 503 while the events are published (the service retries
//!   every second, 1,000 times, so nothing fails for good), then answers 200: prints the drain
//!   time, delivered/s during the drain and the service's RSS sampled every 100 ms during it.
//!   Defaults: `--webhooks 10`, `--events` such that there are 100,000 deliveries.
//! - `slow`: one organization with `--webhooks K` (default 1) fast webhooks and one whose
//!   receiver sleeps `--slow-ms` (default 100; 0: no slow webhook, for comparison) before
//!   answering 200; the fast and the slow webhooks are reported separately.
//!
//! Any scenario: `--batch B` publishes B events per `POST /events/batch` (default 0: one event
//! per `POST /organizations/{org}/events`); `--rate R` paces the publishers to R events/s in
//! all (default 0: as fast as possible), and latency is then measured from each request's
//! scheduled send time, so falling behind the schedule counts.
//!
//! ```text
//! cargo bench --bench e2e -- --events 5000 --concurrency 32 --webhooks 1
//! cargo bench --bench e2e -- --database postgres://postgres@127.0.0.1:5432/test --workers 4 --webhooks 10
//! cargo bench --bench e2e -- --scenario orgs --orgs 1000 --webhooks 3 --events 10000
//! cargo bench --bench e2e -- --scenario backlog --webhooks 10 --events 10000 --batch 100
//! cargo bench --bench e2e -- --scenario slow --slow-ms 100 --events 5000
//! cargo bench --bench e2e -- --scenario slow --slow-ms 0 --events 5000
//! cargo bench --bench e2e -- --batch 100 --webhooks 10 --events 20000
//! cargo bench --bench e2e -- --rate 1000 --events 20000 --concurrency 64
//! ```
//! Figures are printed, never asserted.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::{extract::State, http::HeaderMap, http::StatusCode, routing::post, Router};
use clap::Parser;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_mosend-webhooks");
/// How long the benchmark waits for the deliveries once publishing is over.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(600);
/// `backlog`: this many retries, one second apart, so no delivery fails for good.
const BACKLOG_RETRIES: usize = 1000;
/// `backlog`: deliveries published by default.
const BACKLOG_DELIVERIES: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    Basic,
    Orgs,
    Backlog,
    Slow,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Basic => "basic",
            Scenario::Orgs => "orgs",
            Scenario::Backlog => "backlog",
            Scenario::Slow => "slow",
        }
    }
}

#[derive(Parser, Debug)]
struct Args {
    /// What to measure: basic, orgs, backlog or slow (see the module documentation).
    #[arg(long, value_enum, default_value_t = Scenario::Basic)]
    scenario: Scenario,
    /// Events to publish [default: 5000; backlog: 100000 deliveries / webhooks].
    #[arg(long)]
    events: Option<usize>,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Webhooks per organization, each subscribed to every event (slow: the fast ones, besides
    /// the slow one) [default: 1; orgs: 3; backlog: 10].
    #[arg(long)]
    webhooks: Option<usize>,
    /// Organizations (`orgs` scenario; the others use one).
    #[arg(long, default_value_t = 1000)]
    orgs: usize,
    /// `slow` scenario: milliseconds the slow receiver sleeps before answering; 0: no slow webhook.
    #[arg(long, default_value_t = 100)]
    slow_ms: u64,
    /// Events per `POST /events/batch` request (1 to 1000); 0: one event per request.
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// Offered rate, in events/s over all publishers; 0: as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Payload size of `data`, in bytes.
    #[arg(long, default_value_t = 512)]
    payload: usize,
    /// `sqlite` (a fresh file) or a PostgreSQL server URL (a fresh database is created on it).
    #[arg(long, default_value = "sqlite")]
    database: String,
    /// Worker processes besides the API process (PostgreSQL only; SQLite runs one `serve`).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    // `cargo bench` passes `--bench`; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The arguments with each scenario's defaults applied.
#[derive(Debug)]
struct Params {
    scenario: Scenario,
    events: usize,
    concurrency: usize,
    webhooks: usize,
    orgs: usize,
    slow_ms: u64,
    batch: usize,
    rate: f64,
    payload: usize,
    database: String,
    workers: usize,
}

impl Params {
    fn resolve(a: Args) -> Self {
        let webhooks = a.webhooks.unwrap_or(match a.scenario {
            Scenario::Orgs => 3,
            Scenario::Backlog => 10,
            Scenario::Basic | Scenario::Slow => 1,
        });
        let events = a.events.unwrap_or(match a.scenario {
            Scenario::Backlog => BACKLOG_DELIVERIES.div_ceil(webhooks.max(1)),
            _ => 5000,
        });
        assert!(a.batch <= 1000, "--batch is at most 1000 (the batch endpoint's limit)");
        assert!(a.concurrency > 0 && a.rate >= 0.0, "--concurrency must be positive and --rate not negative");
        Params {
            scenario: a.scenario,
            events,
            concurrency: a.concurrency,
            webhooks,
            orgs: if a.scenario == Scenario::Orgs { a.orgs.max(1) } else { 1 },
            slow_ms: if a.scenario == Scenario::Slow { a.slow_ms } else { 0 },
            batch: a.batch,
            rate: a.rate,
            payload: a.payload,
            workers: a.workers,
            database: a.database,
        }
    }

    fn postgres(&self) -> bool {
        self.database != "sqlite"
    }

    /// The header line: every parameter of the run.
    fn header(&self) -> String {
        let mut line = format!(
            "backend={} workers={} events={} webhooks={} concurrency={} payload={}B scenario={} orgs={} batch={} rate={}",
            if self.postgres() { "postgres" } else { "sqlite" },
            if self.postgres() { self.workers } else { 1 },
            self.events,
            self.webhooks,
            self.concurrency,
            self.payload,
            self.scenario.name(),
            self.orgs,
            self.batch,
            self.rate,
        );
        match self.scenario {
            Scenario::Slow => line += &format!(" slow_ms={}", self.slow_ms),
            Scenario::Backlog => line += &format!(" retry={BACKLOG_RETRIES}x1s"),
            Scenario::Basic | Scenario::Orgs => {}
        }
        line
    }
}

// ---------------------------------------------------------------------------------------------
// The receiver

/// What one route of the receiver saw answered 2xx.
#[derive(Default)]
struct Bucket {
    /// Event id (`webhook-id`) and arrival time of every request answered 200.
    arrivals: Vec<(Uuid, Instant)>,
    /// Distinct delivery ids (`X-MoSend-Delivery`) answered 200.
    deliveries: HashSet<Uuid>,
}

struct Receiver {
    /// When false every request is answered 503 (and counted in `refused`).
    up: AtomicBool,
    refused: AtomicUsize,
    slow: Duration,
    fast_log: Mutex<Bucket>,
    slow_log: Mutex<Bucket>,
}

fn header_uuid(headers: &HeaderMap, name: &str) -> Uuid {
    headers.get(name).and_then(|v| v.to_str().ok()).and_then(|s| Uuid::parse_str(s).ok()).unwrap_or_default()
}

impl Receiver {
    fn answer(&self, log: &Mutex<Bucket>, headers: &HeaderMap) -> (StatusCode, &'static str) {
        if !self.up.load(Relaxed) {
            self.refused.fetch_add(1, Relaxed);
            return (StatusCode::SERVICE_UNAVAILABLE, "down");
        }
        let (event, delivery) = (header_uuid(headers, "webhook-id"), header_uuid(headers, "x-mosend-delivery"));
        let now = Instant::now();
        let mut log = log.lock().unwrap();
        log.arrivals.push((event, now));
        log.deliveries.insert(delivery);
        (StatusCode::OK, "ok")
    }

    /// Distinct deliveries answered 200, on both routes.
    fn delivered(&self) -> usize {
        self.fast_log.lock().unwrap().deliveries.len() + self.slow_log.lock().unwrap().deliveries.len()
    }

    async fn wait_delivered(&self, expected: usize) {
        let deadline = Instant::now() + DELIVERY_DEADLINE;
        while self.delivered() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn fast(State(r): State<Arc<Receiver>>, headers: HeaderMap) -> (StatusCode, &'static str) {
    r.answer(&r.fast_log, &headers)
}

async fn slow(State(r): State<Arc<Receiver>>, headers: HeaderMap) -> (StatusCode, &'static str) {
    tokio::time::sleep(r.slow).await;
    r.answer(&r.slow_log, &headers)
}

async fn start_receiver(slow_ms: u64) -> (Arc<Receiver>, SocketAddr) {
    let receiver = Arc::new(Receiver {
        up: AtomicBool::new(true),
        refused: AtomicUsize::new(0),
        slow: Duration::from_millis(slow_ms),
        fast_log: Mutex::default(),
        slow_log: Mutex::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/slow", post(slow)).fallback(fast).with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, addr)
}

// ---------------------------------------------------------------------------------------------
// The service

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `/proc/<pid>/status` field in KiB (`VmHWM:`, `VmRSS:`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Peak RSS (KiB) and CPU seconds of a process, from /proc.
fn usage(pid: u32) -> (u64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (status_kib(pid, "VmHWM:"), ticks / 100.0)
}

fn service(dir: &Path, url: &str, key: &str, role: &str, port: u16, extra: &[(&str, String)]) -> Proc {
    let child = Command::new(BIN)
        .current_dir(dir)
        .args(["serve", "--role", role])
        .env("MOSEND_WEBHOOKS_DATABASE_URL", url)
        .env("MOSEND_WEBHOOKS_ENCRYPTION_KEY", key)
        .env("MOSEND_WEBHOOKS_LISTEN", format!("127.0.0.1:{port}"))
        .env("MOSEND_WEBHOOKS_ALLOWED_PRIVATE_CIDRS", "127.0.0.0/8")
        .env("RUST_LOG", "warn")
        .envs(extra.iter().map(|(k, v)| (*k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the service binary starts");
    Proc { child }
}

/// The service processes, the receiver, and a client with the platform key.
struct Env {
    procs: Vec<Proc>,
    base: String,
    client: reqwest::Client,
    platform: String,
    receiver: Arc<Receiver>,
    recv_addr: SocketAddr,
    /// PostgreSQL: the server URL and the name of the fresh database.
    pg: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start(p: &Params, extra: &[(&str, String)]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let key = mosend_webhooks::store::EncryptionKey::generate().to_base64();
        let (url, pg) = fresh_database(p, dir.path()).await;
        let platform = create_platform_key(dir.path(), &url, &key);
        let (receiver, recv_addr) = start_receiver(p.slow_ms).await;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut procs = Vec::new();
        if pg.is_some() {
            procs.push(service(dir.path(), &url, &key, "api", port, extra));
            for _ in 0..p.workers {
                procs.push(service(dir.path(), &url, &key, "worker", port, extra));
            }
        } else {
            procs.push(service(dir.path(), &url, &key, "all", port, extra));
        }
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::builder().pool_max_idle_per_host(p.concurrency).build().unwrap();
        wait_ready(&client, &base).await;
        Env { procs, base, client, platform, receiver, recv_addr, pg, _dir: dir }
    }

    fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.child.id()).collect()
    }

    /// CPU seconds used so far by the service processes.
    fn cpu(&self) -> f64 {
        self.pids().into_iter().map(|pid| usage(pid).1).sum()
    }

    /// Prints the peak RSS and the CPU per 1,000 deliveries since `cpu_before`.
    fn print_usage(&self, cpu_before: f64, delivered: usize) {
        let rss: Vec<u64> = self.pids().into_iter().map(|pid| usage(pid).0).collect();
        println!(
            "peak RSS MiB    {} ({:?} per process)",
            rss.iter().sum::<u64>() / 1024,
            rss.iter().map(|k| k / 1024).collect::<Vec<_>>()
        );
        println!("CPU s / 1000 deliveries  {:.3}", per_thousand(self.cpu() - cpu_before, delivered));
    }

    async fn shutdown(mut self) {
        self.procs.clear();
        if let Some((server, name)) = self.pg.take() {
            use sqlx::Connection;
            if let Ok(mut conn) = sqlx::PgConnection::connect(&server).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
            }
        }
    }
}

/// A fresh SQLite file in `dir`, or a fresh database on the PostgreSQL server.
async fn fresh_database(p: &Params, dir: &Path) -> (String, Option<(String, String)>) {
    if !p.postgres() {
        return (format!("sqlite://{}", dir.join("bench.db").display()), None);
    }
    use sqlx::Connection;
    let name = format!("mw_bench_{}", Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&p.database).await.expect("PostgreSQL reachable");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    let mut u = url::Url::parse(&p.database).unwrap();
    u.set_path(&format!("/{name}"));
    (u.to_string(), Some((p.database.clone(), name)))
}

fn create_platform_key(dir: &Path, url: &str, key: &str) -> String {
    let out = Command::new(BIN)
        .current_dir(dir)
        .args(["keys", "create", "--platform"])
        .env("MOSEND_WEBHOOKS_DATABASE_URL", url)
        .env("MOSEND_WEBHOOKS_ENCRYPTION_KEY", key)
        .output()
        .expect("keys create runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_string()
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..400 {
        if client.get(format!("{base}/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the service never became ready");
}

// ---------------------------------------------------------------------------------------------
// Webhooks

/// The organizations and webhooks of a scenario.
struct Plan {
    orgs: Vec<Uuid>,
    /// Organization and receiver path of every webhook.
    hooks: Vec<(Uuid, String)>,
    /// Deliveries per event to the fast route and to `/slow`.
    fast_per_event: usize,
    slow_per_event: usize,
}

impl Plan {
    fn new(p: &Params) -> Self {
        let orgs: Vec<Uuid> = (0..p.orgs).map(|_| Uuid::now_v7()).collect();
        let mut hooks: Vec<(Uuid, String)> = orgs
            .iter()
            .enumerate()
            .flat_map(|(n, org)| (0..p.webhooks).map(move |i| (*org, format!("/hook/{n}/{i}"))))
            .collect();
        let slow_per_event = usize::from(p.slow_ms > 0);
        if slow_per_event > 0 {
            hooks.push((orgs[0], "/slow".into()));
        }
        Plan { orgs, hooks, fast_per_event: p.webhooks, slow_per_event }
    }

    fn per_event(&self) -> usize {
        self.fast_per_event + self.slow_per_event
    }

    async fn create(&self, env: &Env, concurrency: usize) {
        futures::stream::iter(self.hooks.iter().enumerate())
            .map(|(i, (org, path))| async move {
                let resp = env
                    .client
                    .post(format!("{}/organizations/{org}/webhooks-outbound", env.base))
                    .header("X-Api-Key", &env.platform)
                    .json(&json!({
                        "name": format!("bench {i}"),
                        "url": format!("http://{}{path}", env.recv_addr),
                        "events": ["*"],
                    }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201, "creating webhook {i}: {}", resp.text().await.unwrap_or_default());
            })
            .buffer_unordered(concurrency)
            .collect::<Vec<()>>()
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Publishing

#[derive(Deserialize)]
struct Published {
    id: Uuid,
    deliveries: usize,
}

#[derive(Deserialize)]
struct One {
    data: Published,
}

#[derive(Deserialize)]
struct BatchItem {
    id: Option<Uuid>,
    deliveries: Option<usize>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Batch {
    data: Vec<BatchItem>,
}

/// What every publisher shares.
struct Publisher {
    client: reqwest::Client,
    base: String,
    platform: String,
    orgs: Vec<Uuid>,
    /// The JSON of `data`, the same for every event.
    data: String,
    events: usize,
    /// Events per request (1 without `--batch`).
    per_request: usize,
    batch: bool,
    rate: f64,
    concurrency: usize,
    per_event: usize,
    started: Instant,
}

/// Send time of every event, and how late the paced publishers were at worst.
struct Publishing {
    sent: HashMap<Uuid, Instant>,
    started: Instant,
    elapsed: Duration,
    max_lag: Duration,
}

impl Publisher {
    /// Publisher `c` sends requests c, c + C, c + 2C, … Request r carries the events from
    /// r × per_request on, published round-robin across the organizations.
    async fn run(self: Arc<Self>, c: usize) -> (Vec<(Uuid, Instant)>, Duration) {
        let requests = self.events.div_ceil(self.per_request);
        let (mut sent, mut max_lag) = (Vec::new(), Duration::ZERO);
        for r in (c..requests).step_by(self.concurrency) {
            let first = r * self.per_request;
            let events = first..(first + self.per_request).min(self.events);
            let at = if self.rate > 0.0 {
                let scheduled = self.started + Duration::from_secs_f64(first as f64 / self.rate);
                tokio::time::sleep_until(scheduled.into()).await;
                max_lag = max_lag.max(scheduled.elapsed());
                scheduled
            } else {
                Instant::now()
            };
            let ids = if self.batch { self.publish_batch(events).await } else { vec![self.publish_one(first).await] };
            sent.extend(ids.into_iter().map(|id| (id, at)));
        }
        (sent, max_lag)
    }

    fn org(&self, event: usize) -> Uuid {
        self.orgs[event % self.orgs.len()]
    }

    async fn publish_one(&self, event: usize) -> Uuid {
        let resp = self
            .client
            .post(format!("{}/organizations/{}/events", self.base, self.org(event)))
            .header("X-Api-Key", &self.platform)
            .header("Content-Type", "application/json")
            .body(format!(r#"{{"type":"email.delivered","data":{}}}"#, self.data))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let one: One = resp.json().await.unwrap();
        assert_eq!(one.data.deliveries, self.per_event, "deliveries scheduled per event");
        one.data.id
    }

    async fn publish_batch(&self, events: std::ops::Range<usize>) -> Vec<Uuid> {
        let mut body = String::with_capacity(events.len() * (self.data.len() + 96) + 16);
        body.push_str(r#"{"events":["#);
        for (k, event) in events.enumerate() {
            if k > 0 {
                body.push(',');
            }
            let _ = write!(
                body,
                r#"{{"organizationId":"{}","type":"email.delivered","data":{}}}"#,
                self.org(event),
                self.data
            );
        }
        body.push_str("]}");
        let resp = self
            .client
            .post(format!("{}/events/batch", self.base))
            .header("X-Api-Key", &self.platform)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let batch: Batch = resp.json().await.unwrap();
        batch
            .data
            .into_iter()
            .map(|item| {
                assert!(item.error.is_none(), "a batch item failed: {:?}", item.error);
                assert_eq!(item.deliveries, Some(self.per_event), "deliveries scheduled per event");
                item.id.expect("a published event has an id")
            })
            .collect()
    }
}

async fn publish(env: &Env, p: &Params, plan: &Plan) -> Publishing {
    let publisher = Arc::new(Publisher {
        client: env.client.clone(),
        base: env.base.clone(),
        platform: env.platform.clone(),
        orgs: plan.orgs.clone(),
        data: json!({"blob": "x".repeat(p.payload.saturating_sub(12))}).to_string(),
        events: p.events,
        per_request: p.batch.max(1),
        batch: p.batch > 0,
        rate: p.rate,
        concurrency: p.concurrency,
        per_event: plan.per_event(),
        started: Instant::now(),
    });
    let tasks: Vec<_> = (0..p.concurrency).map(|c| tokio::spawn(publisher.clone().run(c))).collect();
    let (mut sent, mut max_lag) = (HashMap::with_capacity(p.events), Duration::ZERO);
    for t in tasks {
        let (ids, lag) = t.await.unwrap();
        sent.extend(ids);
        max_lag = max_lag.max(lag);
    }
    Publishing { sent, started: publisher.started, elapsed: publisher.started.elapsed(), max_lag }
}

// ---------------------------------------------------------------------------------------------
// Figures

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn per_thousand(cpu: f64, delivered: usize) -> f64 {
    cpu / (delivered.max(1) as f64 / 1000.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The 200-answered arrivals of one route, with latencies from `origin(event id)`.
struct Stats {
    delivered: usize,
    duplicates: usize,
    last: Option<Instant>,
    latencies: Vec<Duration>,
}

impl Stats {
    fn of(log: &Mutex<Bucket>, origin: impl Fn(&Uuid) -> Option<Instant>) -> Self {
        let log = std::mem::take(&mut *log.lock().unwrap());
        let mut latencies: Vec<Duration> =
            log.arrivals.iter().filter_map(|(id, t)| origin(id).map(|o| t.saturating_duration_since(o))).collect();
        latencies.sort();
        Stats {
            delivered: log.deliveries.len(),
            duplicates: log.arrivals.len() - log.deliveries.len(),
            last: log.arrivals.iter().map(|(_, t)| *t).max(),
            latencies,
        }
    }

    fn merge(mut self, other: Stats) -> Stats {
        self.latencies.extend(other.latencies);
        self.latencies.sort();
        Stats {
            delivered: self.delivered + other.delivered,
            duplicates: self.duplicates + other.duplicates,
            last: self.last.max(other.last),
            latencies: self.latencies,
        }
    }

    /// Deliveries per second from `from` to the last arrival.
    fn rate(&self, from: Instant) -> f64 {
        let span = self.last.map_or(Duration::ZERO, |l| l.saturating_duration_since(from));
        self.delivered as f64 / span.as_secs_f64().max(1e-9)
    }

    fn latency_line(&self) -> String {
        format!(
            "p50 {:.1}  p99 {:.1}  p99.9 {:.1}",
            ms(percentile(&self.latencies, 0.5)),
            ms(percentile(&self.latencies, 0.99)),
            ms(percentile(&self.latencies, 0.999))
        )
    }
}

/// The lines every scenario prints after the header.
fn print_summary(p: &Params, publishing: &Publishing, all: &Stats, expected: usize, rate_from: Instant) {
    println!("delivered {}/{} (duplicates {})", all.delivered, expected, all.duplicates);
    let publish_rate = p.events as f64 / publishing.elapsed.as_secs_f64();
    if p.rate > 0.0 {
        println!(
            "publish/s       {publish_rate:>10.0} (offered {}, max lag behind schedule {:.1} ms)",
            p.rate,
            ms(publishing.max_lag)
        );
    } else {
        println!("publish/s       {publish_rate:>10.0}");
    }
    println!("delivered/s     {:>10.0}", all.rate(rate_from));
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// `basic`, `orgs` and `slow`: publish, wait for every delivery, report.
async fn run_flow(env: &Env, p: &Params, plan: &Plan) {
    let cpu_before = env.cpu();
    let publishing = publish(env, p, plan).await;
    env.receiver.wait_delivered(p.events * plan.per_event()).await;
    let origin = |id: &Uuid| publishing.sent.get(id).copied();
    let fast = Stats::of(&env.receiver.fast_log, origin);
    let slow = Stats::of(&env.receiver.slow_log, origin);
    let (fast_rate, slow_rate) = (fast.rate(publishing.started), slow.rate(publishing.started));
    let (fast_latency, slow_latency) = (fast.latency_line(), slow.latency_line());
    let (fast_delivered, slow_delivered) = (fast.delivered, slow.delivered);
    let all = fast.merge(slow);
    println!("{}", p.header());
    print_summary(p, &publishing, &all, p.events * plan.per_event(), publishing.started);
    println!("latency ms      {}", all.latency_line());
    if p.scenario == Scenario::Slow {
        println!("fast delivered/s {fast_rate:>9.0} ({fast_delivered} deliveries)");
        println!("fast latency ms  {fast_latency}");
        if plan.slow_per_event > 0 {
            println!("slow delivered/s {slow_rate:>9.0} ({slow_delivered} deliveries)");
            println!("slow latency ms  {slow_latency}");
        }
    }
    env.print_usage(cpu_before, all.delivered);
}

/// Samples the summed VmRSS (KiB) of `pids` every 100 ms until `stop`.
fn sample_rss(pids: Vec<u32>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !stop.load(Relaxed) {
            tick.tick().await;
            samples.push(pids.iter().map(|&pid| status_kib(pid, "VmRSS:")).sum());
        }
        samples
    })
}

/// `backlog`: publish while the receiver answers 503, then let it answer 200 and time the drain.
async fn run_backlog(env: &Env, p: &Params, plan: &Plan) {
    let expected = p.events * plan.per_event();
    env.receiver.up.store(false, Relaxed);
    let cpu_before = env.cpu();
    let publishing = publish(env, p, plan).await;
    let refused_before = env.receiver.refused.load(Relaxed);
    let cpu_flip = env.cpu();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(env.pids(), stop.clone());
    let up = Instant::now();
    env.receiver.up.store(true, Relaxed);
    env.receiver.wait_delivered(expected).await;
    stop.store(true, Relaxed);
    let rss = sampler.await.unwrap();
    let cpu_drain = env.cpu() - cpu_flip;
    let all = Stats::of(&env.receiver.fast_log, |_| Some(up));
    let drain = all.last.map_or(Duration::ZERO, |l| l.saturating_duration_since(up));
    let mib = |k: Option<&u64>| k.copied().unwrap_or(0) as f64 / 1024.0;
    println!("{}", p.header());
    print_summary(p, &publishing, &all, expected, up);
    println!("latency ms      {} (from up)", all.latency_line());
    println!(
        "answered 503    {:>10} ({} before up, after {:.1} s of publishing)",
        env.receiver.refused.load(Relaxed),
        refused_before,
        publishing.elapsed.as_secs_f64()
    );
    println!("drain s         {:>10.2}", drain.as_secs_f64());
    println!(
        "drain RSS MiB   min {:.1}  max {:.1}  last {:.1} ({} samples every 100 ms)",
        mib(rss.iter().min()),
        mib(rss.iter().max()),
        mib(rss.last()),
        rss.len()
    );
    println!("drain CPU s / 1000 deliveries  {:.3}", per_thousand(cpu_drain, all.delivered));
    env.print_usage(cpu_before, all.delivered);
}

#[tokio::main]
async fn main() {
    let p = Params::resolve(Args::parse());
    let extra = match p.scenario {
        Scenario::Backlog => vec![("MOSEND_WEBHOOKS_RETRY_SCHEDULE", vec!["1s"; BACKLOG_RETRIES].join(","))],
        _ => Vec::new(),
    };
    let env = Env::start(&p, &extra).await;
    let plan = Plan::new(&p);
    plan.create(&env, p.concurrency).await;
    match p.scenario {
        Scenario::Backlog => run_backlog(&env, &p, &plan).await,
        Scenario::Basic | Scenario::Orgs | Scenario::Slow => run_flow(&env, &p, &plan).await,
    }
    env.shutdown().await;
}
