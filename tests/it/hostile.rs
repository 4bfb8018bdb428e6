//! Hostile receivers: a huge body is never read past the cap, a trickling or silent receiver
//! is cut at the attempt timeout, and malformed or huge response headers are an attempt
//! error, never a crash. The memory test runs the real binary and reads its peak RSS.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::helpers::{spawn_app_with, Backend, TestDb};
use crate::process::{create_key, free_port, Server};

#[derive(Clone, Copy)]
enum Hostile {
    /// `200` with a body of this many bytes, streamed.
    HugeBody(usize),
    /// `200` announcing 100 bytes, then one byte a second.
    Trickle,
    /// A response header line of 1 MiB.
    HugeHeader,
    /// Bytes that are not HTTP.
    Garbage,
}

/// A raw TCP receiver that answers every request the hostile way.
async fn hostile_receiver(kind: Hostile) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                // Read the request head (the body is small and ignored).
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = match kind {
                    Hostile::HugeBody(size) => {
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
                        let _ = sock.write_all(head.as_bytes()).await;
                        let chunk = vec![b'z'; 64 * 1024];
                        let mut sent = 0;
                        while sent < size {
                            let n = chunk.len().min(size - sent);
                            if sock.write_all(&chunk[..n]).await.is_err() {
                                return; // the client stopped reading and closed: as intended
                            }
                            sent += n;
                        }
                        Ok(())
                    }
                    Hostile::Trickle => {
                        let _ = sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n").await;
                        for _ in 0..100 {
                            if sock.write_all(b"x").await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Ok(())
                    }
                    Hostile::HugeHeader => {
                        let big = "a".repeat(1024 * 1024);
                        sock.write_all(
                            format!("HTTP/1.1 200 OK\r\nX-Big: {big}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                        )
                        .await
                    }
                    Hostile::Garbage => sock.write_all(b"\x00\x01 NOT HTTP AT ALL\r\n\r\n").await,
                };
            });
        }
    });
    addr
}

async fn last_delivery(kind: Hostile, timeout: &str) -> Value {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.delivery_timeout = Some(timeout.into());
        s.retry_schedule = Some("1h".into());
    })
    .await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let addr = hostile_receiver(kind).await;
    let hook = app.create_webhook(&key, org, &format!("http://{addr}/hook"), &["*"]).await;
    app.publish(org, "email.sent", json!({})).await;
    let list = app.wait_deliveries(&key, org, hook["id"].as_str().unwrap(), 1, |d| d["attempts"] == 1).await;
    list[0].clone()
}

#[tokio::test]
async fn a_huge_response_body_is_read_only_up_to_the_cap() {
    let d = last_delivery(Hostile::HugeBody(50 * 1024 * 1024), "10s").await;
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(d["lastResponseBody"].as_str().unwrap().len(), 4096);
    assert!(d["lastDurationMs"].as_i64().unwrap() < 5000, "it did not read 50 MiB: {d}");
}

#[tokio::test]
async fn a_trickling_receiver_is_cut_at_the_attempt_timeout() {
    let d = last_delivery(Hostile::Trickle, "1500ms").await;
    assert_eq!(d["status"], "retrying", "{d}");
    assert!(d["lastError"].as_str().unwrap().contains("timeout"), "{d}");
    let took = d["lastDurationMs"].as_i64().unwrap();
    assert!((1400..4000).contains(&took), "{took}");
}

#[tokio::test]
async fn huge_or_malformed_response_headers_are_an_attempt_error() {
    for kind in [Hostile::HugeHeader, Hostile::Garbage] {
        let d = last_delivery(kind, "5s").await;
        assert_eq!(d["status"], "retrying", "{d}");
        assert_eq!(d["lastStatusCode"], Value::Null);
        assert!(!d["lastError"].as_str().unwrap().is_empty());
    }
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_service_memory_stays_bounded_while_receivers_send_50_mib_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Sqlite, dir.path()).await;
    let platform = create_key(dir.path(), &db, &["keys", "create", "--platform"]);
    let server = Server::start(dir.path(), &db, free_port(), &[("MOSEND_WEBHOOKS_RETRY_SCHEDULE", "1h")]).await;
    let client = reqwest::Client::new();
    let org = Uuid::now_v7();
    let addr = hostile_receiver(Hostile::HugeBody(50 * 1024 * 1024)).await;
    let (status, hook) = server
        .post_webhook(
            &client,
            &platform,
            org,
            json!({"name": "huge", "url": format!("http://{addr}/hook"), "events": ["*"]}),
        )
        .await;
    assert_eq!(status, 201);
    for _ in 0..5 {
        server.publish(&client, &platform, org, json!({"type": "email.sent", "data": {}})).await;
    }
    let url = format!(
        "{}/organizations/{org}/webhooks-outbound/{}/deliveries",
        server.base,
        hook["data"]["id"].as_str().unwrap()
    );
    let done = crate::helpers::wait_until(Duration::from_secs(30), || {
        let req = client.get(&url).header("X-Api-Key", &platform).send();
        async move {
            let Ok(resp) = req.await else { return false };
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            body["data"].as_array().is_some_and(|l| l.len() == 5 && l.iter().all(|d| d["status"] == "succeeded"))
        }
    })
    .await;
    assert!(done, "five 50 MiB answers were taken as successes");
    let peak = peak_rss_kib(server.child.id());
    assert!(peak < 64 * 1024, "peak RSS {} MiB: the bodies were not buffered", peak / 1024);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = crate::helpers::spawn_app(Backend::Sqlite).await;
    let mut sock = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    sock.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    // The server closes the connection (possibly after a 408) once the header timeout passes.
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow client was cut off");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(9) && waited < Duration::from_secs(15), "{waited:?}");
}
