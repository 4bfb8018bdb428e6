//! End-to-end benchmark: starts the real service (SQLite, or PostgreSQL with N worker
//! processes), a fast in-process receiver, creates webhooks, publishes events with C
//! concurrent publishers through the real HTTP API, and prints publish/s, delivered/s,
//! publish-to-arrival latency percentiles, peak RSS and CPU time of the service.
//!
//! ```text
//! cargo bench --bench e2e -- --events 5000 --concurrency 32 --webhooks 1
//! cargo bench --bench e2e -- --database postgres://postgres@127.0.0.1:5432/test --workers 4 --webhooks 10
//! ```
//! Figures are printed, never asserted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::{extract::State, http::HeaderMap, Router};
use clap::Parser;
use serde_json::{json, Value};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_mosend-webhooks");

#[derive(Parser, Debug)]
struct Args {
    /// Events to publish.
    #[arg(long, default_value_t = 5000)]
    events: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Webhooks subscribed to every event (deliveries per event).
    #[arg(long, default_value_t = 1)]
    webhooks: usize,
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

#[derive(Default)]
struct Arrivals {
    at: HashMap<String, Vec<Instant>>,
    total: usize,
}

async fn receive(State(arrivals): State<Arc<Mutex<Arrivals>>>, headers: HeaderMap) -> &'static str {
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut a = arrivals.lock().unwrap();
    a.at.entry(id).or_default().push(Instant::now());
    a.total += 1;
    "ok"
}

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak RSS (KiB) and CPU seconds of a process, from /proc.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (hwm, ticks / 100.0)
}

fn service(dir: &Path, url: &str, key: &str, role: &str, port: u16) -> Proc {
    let child = Command::new(BIN)
        .current_dir(dir)
        .args(["serve", "--role", role])
        .env("MOSEND_WEBHOOKS_DATABASE_URL", url)
        .env("MOSEND_WEBHOOKS_ENCRYPTION_KEY", key)
        .env("MOSEND_WEBHOOKS_LISTEN", format!("127.0.0.1:{port}"))
        .env("MOSEND_WEBHOOKS_ALLOWED_PRIVATE_CIDRS", "127.0.0.0/8")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the service binary starts");
    Proc { child }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().unwrap();
    let key = mosend_webhooks::store::EncryptionKey::generate().to_base64();
    let (url, pg_name) = if args.database == "sqlite" {
        (format!("sqlite://{}", dir.path().join("bench.db").display()), None)
    } else {
        use sqlx::Connection;
        let name = format!("mw_bench_{}", Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&args.database).await.expect("PostgreSQL reachable");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
        let mut u = url::Url::parse(&args.database).unwrap();
        u.set_path(&format!("/{name}"));
        (u.to_string(), Some(name))
    };
    let platform = create_platform_key(dir.path(), &url, &key);

    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let recv_addr: SocketAddr = listener.local_addr().unwrap();
    let app = Router::new().fallback(receive).with_state(arrivals.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut procs = Vec::new();
    if pg_name.is_some() {
        procs.push(service(dir.path(), &url, &key, "api", port));
        for _ in 0..args.workers {
            procs.push(service(dir.path(), &url, &key, "worker", port));
        }
    } else {
        procs.push(service(dir.path(), &url, &key, "all", port));
    }
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build().unwrap();
    wait_ready(&client, &base).await;

    let org = Uuid::now_v7();
    for i in 0..args.webhooks {
        let resp = client
            .post(format!("{base}/organizations/{org}/webhooks-outbound"))
            .header("X-Api-Key", &platform)
            .json(
                &json!({"name": format!("bench {i}"), "url": format!("http://{recv_addr}/hook/{i}"), "events": ["*"]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    let cpu_before: f64 = procs.iter().map(|p| usage(p.child.id()).1).sum();
    let payload = json!({"blob": "x".repeat(args.payload.saturating_sub(12))});
    let started = Instant::now();
    let published: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let per = args.events.div_ceil(args.concurrency);
    let mut tasks = Vec::new();
    for c in 0..args.concurrency {
        let (client, base, platform, payload, published) =
            (client.clone(), base.clone(), platform.clone(), payload.clone(), published.clone());
        let count = per.min(args.events.saturating_sub(c * per));
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                let sent = Instant::now();
                let resp = client
                    .post(format!("{base}/organizations/{org}/events"))
                    .header("X-Api-Key", &platform)
                    .json(&json!({"type": "email.delivered", "data": payload}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 202);
                let body: Value = resp.json().await.unwrap();
                published.lock().unwrap().insert(body["data"]["id"].as_str().unwrap().to_string(), sent);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let publish_time = started.elapsed();
    let expected = args.events * args.webhooks;
    let deadline = Instant::now() + Duration::from_secs(600);
    while arrivals.lock().unwrap().total < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let a = std::mem::take(&mut *arrivals.lock().unwrap());
    let last = a.at.values().flatten().max().copied().unwrap_or(started);
    let total_time = last.duration_since(started);
    let published = std::mem::take(&mut *published.lock().unwrap());
    let mut latencies: Vec<Duration> =
        a.at.iter()
            .filter_map(|(id, times)| {
                published.get(id).map(|sent| times.iter().map(move |t| t.saturating_duration_since(*sent)))
            })
            .flatten()
            .collect();
    latencies.sort();
    let (rss, cpu): (Vec<u64>, Vec<f64>) = procs.iter().map(|p| usage(p.child.id())).unzip();
    let cpu_used = cpu.iter().sum::<f64>() - cpu_before;
    println!(
        "backend={} workers={} events={} webhooks={} concurrency={} payload={}B",
        if pg_name.is_some() { "postgres" } else { "sqlite" },
        if pg_name.is_some() { args.workers } else { 1 },
        args.events,
        args.webhooks,
        args.concurrency,
        args.payload
    );
    println!(
        "delivered {}/{} (duplicates {})",
        a.total,
        expected,
        a.total.saturating_sub(a.at.values().map(|v| v.len().min(args.webhooks)).sum())
    );
    println!("publish/s       {:>10.0}", args.events as f64 / publish_time.as_secs_f64());
    println!("delivered/s     {:>10.0}", a.total as f64 / total_time.as_secs_f64());
    println!(
        "latency ms      p50 {:.1}  p99 {:.1}  p99.9 {:.1}",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&latencies, 0.999).as_secs_f64() * 1e3
    );
    println!(
        "peak RSS MiB    {} ({:?} per process)",
        rss.iter().sum::<u64>() / 1024,
        rss.iter().map(|k| k / 1024).collect::<Vec<_>>()
    );
    println!("CPU s / 1000 deliveries  {:.3}", cpu_used / (a.total.max(1) as f64 / 1000.0));
    drop(procs);
    if let Some(name) = pg_name {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&args.database).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
        }
    }
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
