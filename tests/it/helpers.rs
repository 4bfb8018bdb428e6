//! The test harness: `spawn_app()` runs the service on port 0 over a fresh SQLite file
//! with tiny retry schedules and timeouts; `TestReceiver` is a real HTTP server that
//! records what it receives and answers as told; `wait_until` awaits a condition.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::{body::Bytes, http::HeaderMap, response::IntoResponse, Router};
use mosend_webhooks::config::{Config, Role, Settings};
use mosend_webhooks::domain::api_key::Scope;
use mosend_webhooks::store::Store;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Which database a test runs on. Every conformance test runs once per backend (see
/// [`both!`]), so the two backends are held to the same behaviour by the same tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Defines `mod $name { sqlite, postgres }`: the test function `$name(backend)` run on each
/// backend. PostgreSQL runs are skipped, loudly, when it cannot be reached, except under
/// `CI=true`, where that is a failure.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }

            #[tokio::test]
            async fn postgres() {
                if $crate::helpers::postgres_available().await {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        }
    };
}

/// The server tests use (`MOSEND_WEBHOOKS_TEST_POSTGRES_URL`); each test creates its own
/// database on it and drops it afterwards.
pub fn postgres_admin_url() -> String {
    std::env::var("MOSEND_WEBHOOKS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub async fn postgres_available() -> bool {
    use sqlx::Connection;
    match sqlx::PgConnection::connect(&postgres_admin_url()).await {
        Ok(_) => true,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("PostgreSQL is required under CI=true but cannot be reached at {}: {e}", postgres_admin_url())
        }
        Err(e) => {
            eprintln!(
                "\n!!! SKIPPED: PostgreSQL unreachable at {} ({e}); set MOSEND_WEBHOOKS_TEST_POSTGRES_URL !!!\n",
                postgres_admin_url()
            );
            false
        }
    }
}

/// A fresh database for one test: a SQLite file in a temp dir, or a new PostgreSQL
/// database (dropped on drop) with its encryption key.
pub struct TestDb {
    pub url: String,
    pub encryption_key: Option<String>,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend, dir: &std::path::Path) -> TestDb {
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite://{}", dir.join("test.db").display()),
                encryption_key: None,
                pg_name: None,
            },
            Backend::Postgres => {
                use sqlx::Connection;
                let admin = postgres_admin_url();
                let name = format!("mw_test_{}", Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL reachable");
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
                let mut url = url::Url::parse(&admin).expect("a valid PostgreSQL URL");
                url.set_path(&format!("/{name}"));
                TestDb {
                    url: url.to_string(),
                    encryption_key: Some(mosend_webhooks::store::EncryptionKey::generate().to_base64()),
                    pg_name: Some(name),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else { return };
        // Drop runs outside any async context we can block on: use a thread of its own.
        let admin = postgres_admin_url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub platform_key: String,
    pub client: reqwest::Client,
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
    // Last: dropped after the service stopped using it.
    pub db: TestDb,
}

/// Settings every test starts from: local receivers allowed, tiny schedules.
pub fn test_settings() -> Settings {
    Settings {
        retry_schedule: Some("100ms,200ms".into()),
        delivery_timeout: Some("2s".into()),
        allowed_private_cidrs: Some("127.0.0.0/8,::1/128".into()),
        poll_interval: Some("25ms".into()),
        lease_margin: Some("1s".into()),
        ..Default::default()
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = TestDb::new(backend, dir.path()).await;
    let mut settings = test_settings();
    settings.database_url = Some(db.url.clone());
    settings.encryption_key = db.encryption_key.clone().map(mosend_webhooks::config::Redacted);
    adjust(&mut settings);
    let config = Config::resolve(settings, None).expect("test config is valid");
    let store =
        mosend_webhooks::store::open(&config.database_url, config.encryption_key.as_ref()).await.expect("store opens");
    let platform_key = mosend_webhooks::keys::create(store.as_ref(), Scope::Platform, None).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move {
        mosend_webhooks::run(config, Role::All, Some(listener), token).await.expect("the service runs");
    });
    TestApp {
        addr,
        store,
        platform_key,
        client: reqwest::Client::new(),
        backend,
        dir,
        shutdown,
        handle: Some(handle),
        db,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn hooks_path(org: Uuid) -> String {
        format!("/organizations/{org}/webhooks-outbound")
    }

    pub async fn org_key(&self, org: Uuid) -> String {
        mosend_webhooks::keys::create(self.store.as_ref(), Scope::Organization(org), Some("test".into())).await.unwrap()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }

    /// Sends a request with a key and an optional JSON body; returns status and JSON body.
    pub async fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.client.request(method.parse().unwrap(), self.url(path)).header("X-Api-Key", key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, value)
    }

    /// Creates a webhook for `org` pointing at `url`; returns the `data` object.
    pub async fn create_webhook(&self, key: &str, org: Uuid, url: &str, events: &[&str]) -> Value {
        self.create_webhook_with(key, org, json!({"name": "test hook", "url": url, "events": events})).await
    }

    pub async fn create_webhook_with(&self, key: &str, org: Uuid, body: Value) -> Value {
        let (status, body) = self.call("POST", &Self::hooks_path(org), key, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["data"].clone()
    }

    pub async fn publish(&self, org: Uuid, event_type: &str, data: Value) -> Value {
        let (status, body) = self
            .call(
                "POST",
                &format!("/organizations/{org}/events"),
                &self.platform_key,
                Some(json!({"type": event_type, "data": data})),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["data"].clone()
    }

    pub async fn deliveries(&self, key: &str, org: Uuid, webhook: &str) -> Vec<Value> {
        let (status, body) =
            self.call("GET", &format!("{}/{webhook}/deliveries?limit=250", Self::hooks_path(org)), key, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"].as_array().unwrap().clone()
    }

    /// Waits until the webhook has `count` deliveries that all satisfy `pred`.
    pub async fn wait_deliveries(
        &self,
        key: &str,
        org: Uuid,
        webhook: &str,
        count: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = self.deliveries(key, org, webhook).await;
            if list.len() == count && list.iter().all(&pred) {
                return list;
            }
            assert!(
                Instant::now() < deadline,
                "deliveries never reached the expected state: {}",
                serde_json::to_string_pretty(&list).unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    WithHeaders(u16, Vec<(&'static str, String)>),
    Body(u16, Vec<u8>),
    /// Answers after a delay.
    Delayed(Duration, u16),
    /// Never answers (the connection stays open).
    Hang,
}

#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

#[derive(Default)]
struct ReceiverState {
    script: VecDeque<Reply>,
    default: Option<Reply>,
    received: Vec<Received>,
    /// Delivery ids whose request is being answered now.
    in_flight: std::collections::HashMap<String, usize>,
    /// Requests that arrived while the same delivery was already in flight.
    overlaps: usize,
    max_in_flight: usize,
    /// The client ends of the connections requests came on.
    peers: std::collections::HashSet<SocketAddr>,
}

/// Removes a delivery from the in-flight set when its request ends, however it ends.
struct InFlight {
    state: Arc<Mutex<ReceiverState>>,
    id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap();
        if let Some(n) = s.in_flight.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                s.in_flight.remove(&self.id);
            }
        }
    }
}

/// A real HTTP receiver on 127.0.0.1: records every request, answers from a script, then
/// with a default reply (200 unless set).
#[derive(Clone)]
pub struct TestReceiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    count: watch::Sender<usize>,
}

impl TestReceiver {
    pub async fn start() -> Self {
        Self::start_with(vec![], Reply::Status(200)).await
    }

    pub async fn start_with(script: Vec<Reply>, default: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state =
            Arc::new(Mutex::new(ReceiverState { script: script.into(), default: Some(default), ..Default::default() }));
        let (count, _) = watch::channel(0);
        let receiver = TestReceiver { addr, state, count };
        let app = Router::new().fallback(handle).with_state(receiver.clone());
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
        });
        receiver
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_default(&self, reply: Reply) {
        self.state.lock().unwrap().default = Some(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// How many requests arrived while the same delivery was already being answered.
    pub fn overlaps(&self) -> usize {
        self.state.lock().unwrap().overlaps
    }

    /// The most requests answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    /// How many connections requests came on.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().peers.len()
    }

    /// Waits until at least `n` requests arrived; returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let mut rx = self.count.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await;
        assert!(reached.is_ok(), "expected {n} requests, got {}", self.received().len());
        self.received()
    }
}

async fn handle(
    State(r): State<TestReceiver>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let delivery = headers.get("x-mosend-delivery").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let _guard = InFlight { state: r.state.clone(), id: delivery.clone() };
    let reply = {
        let mut s = r.state.lock().unwrap();
        let n = s.in_flight.entry(delivery).or_insert(0);
        *n += 1;
        if *n > 1 {
            s.overlaps += 1;
        }
        s.peers.insert(peer);
        let total: usize = s.in_flight.values().sum();
        s.max_in_flight = s.max_in_flight.max(total);
        s.received.push(Received { headers, body, at: Instant::now() });
        let reply = s.script.pop_front().or_else(|| s.default.clone()).unwrap_or(Reply::Status(200));
        r.count.send_replace(s.received.len());
        reply
    };
    let status = |c: u16| axum::http::StatusCode::from_u16(c).unwrap();
    match reply {
        Reply::Status(c) => (status(c), "ok").into_response(),
        Reply::WithHeaders(c, h) => {
            let mut resp = (status(c), "ok").into_response();
            for (k, v) in h {
                resp.headers_mut().insert(k, v.parse().unwrap());
            }
            resp
        }
        Reply::Body(c, b) => (status(c), b).into_response(),
        Reply::Delayed(d, c) => {
            tokio::time::sleep(d).await;
            (status(c), "late").into_response()
        }
        Reply::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
    }
}
