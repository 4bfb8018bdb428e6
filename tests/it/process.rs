//! The real binary: defaults, the keys CLI, SIGKILL mid-delivery, SIGTERM, and logs that
//! never hold a secret.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::both;
use crate::helpers::{wait_until, Backend, Reply, TestDb, TestReceiver};

const BIN: &str = env!("CARGO_BIN_EXE_mosend-webhooks");

/// A command for the binary with no `MOSEND_WEBHOOKS_*` from the outside.
pub fn command(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("MOSEND_WEBHOOKS_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

/// A command for the binary pointed at a test database.
pub fn command_on(dir: &Path, db: &TestDb) -> Command {
    let mut c = command(dir);
    c.env("MOSEND_WEBHOOKS_DATABASE_URL", &db.url);
    if let Some(key) = &db.encryption_key {
        c.env("MOSEND_WEBHOOKS_ENCRYPTION_KEY", key);
    }
    c
}

pub fn cli(dir: &Path, db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let out = command_on(dir, db).args(args).output().expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn create_key(dir: &Path, db: &TestDb, args: &[&str]) -> String {
    let (ok, stdout, stderr) = cli(dir, db, args);
    assert!(ok, "{stderr}");
    stdout.lines().last().expect("the key is the last line").trim().to_string()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Server {
    pub child: Child,
    pub base: String,
    pub log: PathBuf,
}

impl Server {
    pub async fn start(dir: &Path, db: &TestDb, port: u16, extra: &[(&str, &str)]) -> Server {
        let log = dir.join(format!("server-{}.log", Uuid::now_v7()));
        let mut c = command_on(dir, db);
        c.arg("serve")
            .env("MOSEND_WEBHOOKS_LISTEN", format!("127.0.0.1:{port}"))
            .env("MOSEND_WEBHOOKS_ALLOWED_PRIVATE_CIDRS", "127.0.0.0/8")
            .env("MOSEND_WEBHOOKS_POLL_INTERVAL", "25ms")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in extra {
            c.env(k, v);
        }
        let child = c.spawn().expect("the server starts");
        let server = Server { child, base: format!("http://127.0.0.1:{port}"), log };
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&self) {
        let client = reqwest::Client::new();
        let url = format!("{}/health", self.base);
        let up = wait_until(Duration::from_secs(20), || {
            let req = client.get(&url).send();
            async move { req.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        assert!(up, "the server never became healthy: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    pub fn signal(&self, s: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), s).unwrap();
    }

    /// Waits for exit; returns the status and how long it took.
    pub async fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            assert!(start.elapsed() < limit, "the server did not exit within {limit:?}");
            // An async sleep: the receivers run on this test's runtime and must keep answering.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        let mut s = String::new();
        std::fs::File::open(&self.log).unwrap().read_to_string(&mut s).unwrap();
        s
    }
}

impl Server {
    /// Creates a webhook for `org` through the API; returns the status and the body.
    pub async fn post_webhook(&self, client: &reqwest::Client, key: &str, org: Uuid, body: Value) -> (u16, Value) {
        post(client, format!("{}/organizations/{org}/webhooks-outbound", self.base), key, body).await
    }

    /// Publishes an event for `org` through the API; returns the status and the body.
    pub async fn publish(&self, client: &reqwest::Client, key: &str, org: Uuid, body: Value) -> (u16, Value) {
        post(client, format!("{}/organizations/{org}/events", self.base), key, body).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(client: &reqwest::Client, url: String, key: &str, body: Value) -> (u16, Value) {
    let resp = client.post(url).header("X-Api-Key", key).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn serve_with_no_configuration_creates_the_database_in_the_working_directory_and_listens_on_8080() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let mut child = command(dir.path())
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let up = wait_until(Duration::from_secs(20), || {
        let req = client.get("http://127.0.0.1:8080/ready").send();
        async move { req.await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(up, "no answer on 127.0.0.1:8080: {log_text}");
    assert!(dir.path().join("mosend-webhooks.db").exists());
    assert!(dir.path().join("mosend-webhooks.db.key").exists(), "a key file for secrets at rest");
    assert!(log_text.contains("generated a key file"), "{log_text}");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn the_keys_cli_creates_lists_and_revokes_keys_and_prints_each_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Sqlite, dir.path()).await;
    let (ok, out, _) = cli(dir.path(), &db, &["migrate"]);
    assert!(ok, "{out}");
    let platform = create_key(dir.path(), &db, &["keys", "create", "--platform"]);
    let org = Uuid::now_v7();
    let org_key = create_key(dir.path(), &db, &["keys", "create", "--org", &org.to_string(), "--name", "billing"]);
    for k in [&platform, &org_key] {
        let (prefix, secret) = k.strip_prefix("mk_live_").unwrap().split_once('.').unwrap();
        assert_eq!(prefix.len(), 12);
        assert!(prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert!(secret.len() >= 32 && secret.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
    let (ok, listing, _) = cli(dir.path(), &db, &["keys", "list"]);
    assert!(ok);
    let org_prefix = &org_key["mk_live_".len()..20];
    assert!(listing.contains(org_prefix) && listing.contains("billing") && listing.contains(&format!("org:{org}")));
    assert!(listing.contains("platform"));
    assert!(!listing.contains(org_key.split_once('.').unwrap().1), "secrets never listed");
    // The database holds no key secret.
    let bytes = std::fs::read(dir.path().join("test.db")).unwrap();
    let secret = org_key.split_once('.').unwrap().1.as_bytes();
    assert!(!bytes.windows(secret.len()).any(|w| w == secret));

    let (ok, _, _) = cli(dir.path(), &db, &["keys", "revoke", org_prefix]);
    assert!(ok);
    let (_, listing, _) = cli(dir.path(), &db, &["keys", "list"]);
    assert!(listing.lines().any(|l| l.starts_with(org_prefix) && l.contains("revoked")));
    let (ok, _, err) = cli(dir.path(), &db, &["keys", "revoke", org_prefix]);
    assert!(!ok && err.contains("no active key"));
    let (ok, _, _) = cli(dir.path(), &db, &["keys", "revoke", "NOT-A-PREFIX"]);
    assert!(!ok);
    let (ok, _, _) = cli(dir.path(), &db, &["keys", "create"]);
    assert!(!ok, "a scope is required");
    let (ok, _, _) = cli(dir.path(), &db, &["keys", "create", "--org", "nope"]);
    assert!(!ok);
}

async fn a_server_killed_mid_delivery_loses_no_event_that_got_a_202(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(backend, dir.path()).await;
    let platform = create_key(dir.path(), &db, &["keys", "create", "--platform"]);
    let org = Uuid::now_v7();
    let org_key = create_key(dir.path(), &db, &["keys", "create", "--org", &org.to_string()]);
    let receiver = TestReceiver::start_with(vec![], Reply::Hang).await;
    let port = free_port();
    let env = [
        ("MOSEND_WEBHOOKS_DELIVERY_TIMEOUT", "2s"),
        ("MOSEND_WEBHOOKS_LEASE_MARGIN", "1s"),
        ("MOSEND_WEBHOOKS_RETRY_SCHEDULE", "100ms,100ms,100ms"),
    ];
    let mut server = Server::start(dir.path(), &db, port, &env).await;
    let client = reqwest::Client::new();
    let (status, _) =
        server.post_webhook(&client, &org_key, org, json!({"name": "r", "url": receiver.url(), "events": ["*"]})).await;
    assert_eq!(status, 201);
    let mut accepted = Vec::new();
    for i in 0..30 {
        let (status, body) =
            server.publish(&client, &platform, org, json!({"type": "email.sent", "data": {"i": i}})).await;
        assert_eq!(status, 202);
        accepted.push(body["data"]["id"].as_str().unwrap().to_string());
    }
    // Attempts are in flight (the receiver holds them): kill the server now.
    receiver.wait_for(1, Duration::from_secs(10)).await;
    server.signal(Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(5)).await;

    receiver.set_default(Reply::Status(200));
    let _server = Server::start(dir.path(), &db, port, &env).await;
    let all_arrived = wait_until(Duration::from_secs(30), || {
        let got = receiver.received();
        let accepted = &accepted;
        async move {
            let ok: std::collections::HashSet<String> =
                got.iter().map(|r| r.header("webhook-id").to_string()).collect();
            accepted.iter().all(|id| ok.contains(id))
        }
    })
    .await;
    assert!(all_arrived, "every accepted event was delivered after the restart");
}

both!(a_server_killed_mid_delivery_loses_no_event_that_got_a_202);

async fn sigterm_lets_in_flight_attempts_finish_and_exits_zero_in_time(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(backend, dir.path()).await;
    let platform = create_key(dir.path(), &db, &["keys", "create", "--platform"]);
    let org = Uuid::now_v7();
    let receiver = TestReceiver::start_with(vec![], Reply::Delayed(Duration::from_millis(800), 200)).await;
    let mut server = Server::start(dir.path(), &db, free_port(), &[("MOSEND_WEBHOOKS_DELIVERY_TIMEOUT", "3s")]).await;
    let client = reqwest::Client::new();
    let (status, hook) = server
        .post_webhook(&client, &platform, org, json!({"name": "r", "url": receiver.url(), "events": ["*"]}))
        .await;
    assert_eq!(status, 201);
    server.publish(&client, &platform, org, json!({"type": "email.sent", "data": {}})).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    server.signal(Signal::SIGTERM);
    let (status, took) = server.wait_exit(Duration::from_secs(8)).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(8));
    // The in-flight attempt finished and was recorded before the exit.
    let key = db.encryption_key.as_deref().map(|k| mosend_webhooks::store::EncryptionKey::parse(k).unwrap());
    let store = mosend_webhooks::store::open(&db.url, key.as_ref()).await.unwrap();
    let hook_id = Uuid::parse_str(hook["data"]["id"].as_str().unwrap()).unwrap();
    let rows = store
        .list_deliveries(hook_id, &mosend_webhooks::store::DeliveryQuery { limit: 5, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(rows[0].status, mosend_webhooks::domain::delivery::DeliveryStatus::Succeeded);
}

both!(sigterm_lets_in_flight_attempts_finish_and_exits_zero_in_time);

#[tokio::test]
async fn no_secret_reaches_the_log_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Sqlite, dir.path()).await;
    let platform = create_key(dir.path(), &db, &["keys", "create", "--platform"]);
    let org = Uuid::now_v7();
    let org_key = create_key(dir.path(), &db, &["keys", "create", "--org", &org.to_string()]);
    let receiver = TestReceiver::start_with(vec![Reply::Status(500)], Reply::Status(200)).await;
    let server = Server::start(
        dir.path(),
        &db,
        free_port(),
        &[("RUST_LOG", "trace"), ("MOSEND_WEBHOOKS_RETRY_SCHEDULE", "100ms")],
    )
    .await;
    let client = reqwest::Client::new();
    let (_, hook) =
        server.post_webhook(&client, &org_key, org, json!({"name": "r", "url": receiver.url(), "events": ["*"]})).await;
    let secret = hook["data"]["secret"].as_str().unwrap().to_string();
    let resp = client
        .get(format!(
            "{}/organizations/{org}/webhooks-outbound/{}/secret",
            server.base,
            hook["data"]["id"].as_str().unwrap()
        ))
        .header("Authorization", format!("Bearer {org_key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    server.publish(&client, &platform, org, json!({"type": "email.sent", "data": {}})).await;
    receiver.wait_for(2, Duration::from_secs(10)).await;
    // A bad key is logged nowhere either.
    server.publish(&client, "mk_live_aaaaaaaaaaaa.wrongwrongwrongwrongwrongwrongwrong", org, json!({})).await;
    server.signal(Signal::SIGTERM);
    let mut server = server;
    server.wait_exit(Duration::from_secs(15)).await;
    let log = server.log_text();
    assert!(log.len() > 100, "the log has content: {log}");
    let secret_b64 = secret.strip_prefix("whsec_").unwrap();
    for needle in
        [secret_b64, platform.split_once('.').unwrap().1, org_key.split_once('.').unwrap().1, "wrongwrongwrongwrong"]
    {
        assert!(!log.contains(needle), "a secret reached the log");
    }
}

async fn reencrypt_reseals_every_secret_under_a_new_key(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut db = TestDb::new(backend, dir.path()).await;
    let platform = create_key(dir.path(), &db, &["keys", "create", "--platform"]);
    let org = Uuid::now_v7();
    let mut server = Server::start(dir.path(), &db, free_port(), &[]).await;
    let client = reqwest::Client::new();
    let (status, hook) = server
        .post_webhook(&client, &platform, org, json!({"name": "r", "url": "https://example.com/h", "events": ["*"]}))
        .await;
    assert_eq!(status, 201);
    let secret = hook["data"]["secret"].as_str().unwrap().to_string();
    let rotate = format!(
        "{}/organizations/{org}/webhooks-outbound/{}/secret/rotate",
        server.base,
        hook["data"]["id"].as_str().unwrap()
    );
    let rotated: Value =
        client.post(&rotate).header("X-Api-Key", &platform).send().await.unwrap().json().await.unwrap();
    let secret_now = rotated["data"]["secret"].as_str().unwrap().to_string();
    assert_ne!(secret, secret_now);
    server.signal(Signal::SIGTERM);
    server.wait_exit(Duration::from_secs(15)).await;

    let new_key = mosend_webhooks::store::EncryptionKey::generate().to_base64();
    let key_path = dir.path().join("new.key");
    std::fs::write(&key_path, &new_key).unwrap();
    let key_file = dir.path().join("test.db.key");
    let old_file = std::fs::read_to_string(&key_file).ok();
    let (ok, out, err) = cli(dir.path(), &db, &["reencrypt", "--new-key-file", key_path.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("re-sealed the secrets of 1 webhooks"), "{out}");
    let old_key = db.encryption_key.clone();
    match backend {
        Backend::Sqlite => {
            assert_eq!(std::fs::read_to_string(&key_file).unwrap(), new_key, "the key file holds the new key");
            assert_ne!(old_file.as_deref(), Some(new_key.as_str()));
        }
        Backend::Postgres => {
            // The old key no longer opens the database…
            let (ok, _, err) = cli(dir.path(), &db, &["migrate"]);
            assert!(!ok && err.contains("encryption key"), "{err}");
            db.encryption_key = Some(new_key.clone());
        }
    }
    // …and the new one shows the same secret as before.
    let server = Server::start(dir.path(), &db, free_port(), &[]).await;
    let url = format!(
        "{}/organizations/{org}/webhooks-outbound/{}/secret",
        server.base,
        hook["data"]["id"].as_str().unwrap()
    );
    let shown: Value = client.get(url).header("X-Api-Key", &platform).send().await.unwrap().json().await.unwrap();
    assert_eq!(shown["data"]["secret"], secret_now.as_str());
    assert!(old_key.is_none() || old_key.as_deref() != Some(new_key.as_str()));
}

both!(reencrypt_reseals_every_secret_under_a_new_key);
