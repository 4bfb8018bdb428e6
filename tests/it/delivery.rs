//! Delivery on the wire: signatures, formats, retries, 410, timeouts, isolation between
//! receivers, redirects, body caps, Retry-After, pause/resume, cancellation, history.

use std::time::{Duration, Instant};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use uuid::Uuid;

use crate::both;
use crate::helpers::{spawn_app, spawn_app_with, wait_until, Backend, Reply, TestApp, TestReceiver};

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

async fn secret_of(app: &TestApp, key: &str, org: Uuid, hook: &Value) -> String {
    let (_, body) = app
        .call("GET", &format!("{}/{}/secret", TestApp::hooks_path(org), hook["id"].as_str().unwrap()), key, None)
        .await;
    body["data"]["secret"].as_str().unwrap().to_string()
}

fn id(v: &Value) -> &str {
    v["id"].as_str().unwrap()
}

async fn both_signatures_verify_independently_over_the_exact_bytes_received_in_both_formats(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver = TestReceiver::start().await;
    let json_hook = app
        .create_webhook_with(
            &key,
            org,
            json!({"name": "j", "url": receiver.url(), "events": ["email.delivered"], "headers": {"X-Team": "mail"}}),
        )
        .await;
    let std_hook = app
        .create_webhook_with(
            &key,
            org,
            json!({"name": "s", "url": receiver.url(), "events": ["*"], "format": "standard-webhooks"}),
        )
        .await;
    let data = json!({"to": "ana@example.com", "subject": "¡Hola!", "n": [1, 2.5, null]});
    let published = app.publish(org, "email.delivered", data.clone()).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;

    for hook in [&json_hook, &std_hook] {
        let secret = secret_of(&app, &key, org, hook).await;
        let deliveries = app.wait_deliveries(&key, org, id(hook), 1, |d| d["status"] == "succeeded").await;
        let req = got
            .iter()
            .find(|r| r.header("x-mosend-delivery") == deliveries[0]["id"].as_str().unwrap())
            .expect("request for this webhook");
        assert_eq!(req.header("content-type"), "application/json");
        assert_eq!(req.header("user-agent"), format!("Mosend-Webhooks/{}", env!("CARGO_PKG_VERSION")));
        assert_eq!(req.header("x-mosend-event"), "email.delivered");
        assert_eq!(req.header("webhook-id"), published["id"].as_str().unwrap());
        // Mosend's scheme: hex HMAC of the raw body, keyed with the whole secret string.
        assert_eq!(req.header("x-mosend-signature"), hex::encode(hmac(secret.as_bytes(), &[&req.body])));
        // Standard Webhooks: base64 HMAC of "id.timestamp.body", keyed with the decoded secret.
        let key_bytes = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
        let ts = req.header("webhook-timestamp");
        let now = time_now();
        assert!((ts.parse::<i64>().unwrap() - now).abs() < 60, "webhook-timestamp is the attempt's time");
        let expected = format!(
            "v1,{}",
            STANDARD
                .encode(hmac(&key_bytes, &[req.header("webhook-id").as_bytes(), b".", ts.as_bytes(), b".", &req.body]))
        );
        assert_eq!(req.header("webhook-signature"), expected);
        let body = req.json();
        assert_eq!(body["data"], data);
        if hook["format"] == "json" {
            assert_eq!(body["id"], published["id"]);
            assert_eq!(body["event"], "email.delivered");
            assert_eq!(body["created_at"], published["createdAt"]);
            assert_eq!(req.header("x-team"), "mail");
        } else {
            assert_eq!(body["type"], "email.delivered");
            assert_eq!(body["timestamp"], published["createdAt"]);
            assert!(body.get("id").is_none());
        }
    }
}

both!(both_signatures_verify_independently_over_the_exact_bytes_received_in_both_formats);

fn time_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn a_receiver_failing_twice_then_succeeding_sees_three_attempts_with_the_same_webhook_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver = TestReceiver::start_with(vec![Reply::Status(500), Reply::Status(503)], Reply::Status(204)).await;
    let hook = app.create_webhook(&key, org, &receiver.url(), &["email.sent"]).await;
    let published = app.publish(org, "email.sent", json!({"x": 1})).await;
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert!(got.iter().all(|r| r.header("webhook-id") == published["id"].as_str().unwrap()));
    assert!(got.iter().all(|r| r.body == got[0].body), "the same bytes on every retry");
    let list = app.wait_deliveries(&key, org, id(&hook), 1, |d| d["status"] == "succeeded").await;
    let d = &list[0];
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["lastStatusCode"], 204);
    assert!(d["deliveredAt"].is_string());
    assert_eq!(d["nextAttemptAt"], Value::Null);
    let (_, attempts) = app
        .call("GET", &format!("{}/{}/deliveries/{}/attempts", TestApp::hooks_path(org), id(&hook), id(d)), &key, None)
        .await;
    let codes: Vec<i64> =
        attempts["data"].as_array().unwrap().iter().map(|a| a["statusCode"].as_i64().unwrap()).collect();
    assert_eq!(codes, vec![500, 503, 204]);
    assert!(attempts["data"][0]["durationMs"].is_i64());
    assert_eq!(attempts["data"][0]["outcome"], "http_status");
    assert_eq!(attempts["data"][0]["responseBody"], "ok");
}

both!(a_receiver_failing_twice_then_succeeding_sees_three_attempts_with_the_same_webhook_id);

async fn a_delivery_fails_after_the_schedule_is_exhausted(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver = TestReceiver::start_with(vec![], Reply::Status(500)).await;
    let hook = app.create_webhook(&key, org, &receiver.url(), &["*"]).await;
    app.publish(org, "email.sent", json!({})).await;
    // A schedule of two steps allows three attempts.
    let list = app.wait_deliveries(&key, org, id(&hook), 1, |d| d["status"] == "failed").await;
    assert_eq!(list[0]["attempts"], 3);
    assert_eq!(list[0]["lastError"], "HTTP 500");
    assert_eq!(receiver.received().len(), 3);
}

both!(a_delivery_fails_after_the_schedule_is_exhausted);

async fn a_410_fails_the_delivery_at_once_and_disables_the_webhook(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver = TestReceiver::start_with(vec![], Reply::Status(410)).await;
    let hook = app.create_webhook(&key, org, &receiver.url(), &["*"]).await;
    app.publish(org, "email.sent", json!({})).await;
    let list = app.wait_deliveries(&key, org, id(&hook), 1, |d| d["status"] == "failed").await;
    assert_eq!(list[0]["attempts"], 1, "410 is not retried");
    assert_eq!(list[0]["lastStatusCode"], 410);
    let (_, h) = app.call("GET", &format!("{}/{}", TestApp::hooks_path(org), id(&hook)), &key, None).await;
    assert_eq!(h["data"]["status"], "disabled");
    assert!(h["data"]["disabledReason"].as_str().unwrap().contains("410"));
    assert!(h["data"]["disabledAt"].is_string());
    // Events published while it is disabled create no delivery.
    assert_eq!(app.publish(org, "email.sent", json!({})).await["deliveries"], 0);
    assert_eq!(receiver.received().len(), 1);
}

both!(a_410_fails_the_delivery_at_once_and_disables_the_webhook);

async fn a_receiver_that_never_answers_is_cut_at_the_timeout_while_another_keeps_getting_deliveries(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.delivery_timeout = Some("1500ms".into());
        s.retry_schedule = Some("1h".into());
        s.per_webhook_concurrency = Some(2);
    })
    .await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let dead = TestReceiver::start_with(vec![], Reply::Hang).await;
    let alive = TestReceiver::start().await;
    let dead_hook = app.create_webhook(&key, org, &dead.url(), &["email.sent"]).await;
    app.create_webhook(&key, org, &alive.url(), &["email.sent"]).await;
    let started = Instant::now();
    for i in 0..20 {
        app.publish(org, "email.sent", json!({"i": i})).await;
    }
    let got = alive.wait_for(20, Duration::from_secs(10)).await;
    let last = got.iter().map(|r| r.at).max().unwrap();
    assert!(
        last.duration_since(started) < Duration::from_millis(1500),
        "the live receiver got all 20 before the dead one's first timeout: {:?}",
        last.duration_since(started)
    );
    // The dead receiver never holds more than its per-webhook share.
    assert!(dead.received().len() <= 2, "{}", dead.received().len());
    let list = app.wait_deliveries(&key, org, id(&dead_hook), 20, |_| true).await;
    let timed_out =
        |d: &Value| d["status"] == "retrying" && d["lastError"].as_str().is_some_and(|e| e.contains("timeout"));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            app.deliveries(&key, org, id(&dead_hook)).await.iter().filter(|d| timed_out(d)).count() >= 2
        })
        .await
    );
    let d = app.deliveries(&key, org, id(&dead_hook)).await.into_iter().find(timed_out).unwrap();
    let took = d["lastDurationMs"].as_i64().unwrap();
    assert!((1400..3000).contains(&took), "the attempt was cut at the timeout: {took} ms");
    drop(list);
}

both!(a_receiver_that_never_answers_is_cut_at_the_timeout_while_another_keeps_getting_deliveries);

async fn redirects_are_not_followed(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.retry_schedule = Some("1h".into())).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let target = TestReceiver::start().await;
    let redirecting = TestReceiver::start_with(vec![], Reply::WithHeaders(302, vec![("location", target.url())])).await;
    let hook = app.create_webhook(&key, org, &redirecting.url(), &["*"]).await;
    app.publish(org, "email.sent", json!({})).await;
    let list = app.wait_deliveries(&key, org, id(&hook), 1, |d| d["status"] == "retrying").await;
    assert_eq!(list[0]["lastStatusCode"], 302);
    assert!(list[0]["lastError"].as_str().unwrap().contains("redirect"));
    assert!(target.received().is_empty());
}

both!(redirects_are_not_followed);

async fn at_most_4_kib_of_a_response_body_is_stored(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let mut body = vec![b'a'; 100_000];
    body[4095] = 0xff; // an invalid byte at the edge is replaced, not an error
    let receiver = TestReceiver::start_with(vec![], Reply::Body(200, body)).await;
    let hook = app.create_webhook(&key, org, &receiver.url(), &["*"]).await;
    app.publish(org, "email.sent", json!({})).await;
    let list = app.wait_deliveries(&key, org, id(&hook), 1, |d| d["status"] == "succeeded").await;
    let stored = list[0]["lastResponseBody"].as_str().unwrap();
    assert!(stored.starts_with(&"a".repeat(4095)));
    assert!(stored.ends_with('\u{fffd}'));
    assert_eq!(stored.chars().count(), 4096);
}

both!(at_most_4_kib_of_a_response_body_is_stored);

async fn retry_after_on_429_delays_the_next_attempt(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver =
        TestReceiver::start_with(vec![Reply::WithHeaders(429, vec![("retry-after", "2".into())])], Reply::Status(200))
            .await;
    app.create_webhook(&key, org, &receiver.url(), &["*"]).await;
    app.publish(org, "email.sent", json!({})).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let gap = got[1].at.duration_since(got[0].at);
    assert!(gap >= Duration::from_millis(1900), "the schedule says 100 ms, Retry-After 2 s: waited {gap:?}");
}

both!(retry_after_on_429_delays_the_next_attempt);

async fn a_paused_webhook_holds_its_deliveries_and_sends_them_on_resume_to_its_new_url(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let old = TestReceiver::start().await;
    let new = TestReceiver::start().await;
    let witness = TestReceiver::start().await;
    let hook = app.create_webhook(&key, org, &old.url(), &["email.sent"]).await;
    app.create_webhook(&key, org, &witness.url(), &["email.sent"]).await;
    let path = format!("{}/{}", TestApp::hooks_path(org), id(&hook));
    let (_, paused) = app.call("PATCH", &path, &key, Some(json!({"status": "paused"}))).await;
    assert_eq!(paused["data"]["status"], "paused");
    for _ in 0..3 {
        app.publish(org, "email.sent", json!({})).await;
    }
    // The witness webhook got all three, so the worker has run past the paused ones.
    witness.wait_for(3, Duration::from_secs(10)).await;
    let held = app.deliveries(&key, org, id(&hook)).await;
    assert_eq!(held.len(), 3);
    assert!(held.iter().all(|d| d["status"] == "pending" && d["attempts"] == 0), "{held:?}");
    assert!(old.received().is_empty());

    app.call("PATCH", &path, &key, Some(json!({"url": new.url()}))).await;
    app.call("PATCH", &path, &key, Some(json!({"status": "active"}))).await;
    new.wait_for(3, Duration::from_secs(10)).await;
    app.wait_deliveries(&key, org, id(&hook), 3, |d| d["status"] == "succeeded").await;
    assert!(old.received().is_empty());
}

both!(a_paused_webhook_holds_its_deliveries_and_sends_them_on_resume_to_its_new_url);

async fn deleting_or_disabling_a_webhook_cancels_its_open_deliveries(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver = TestReceiver::start().await;
    let mk = |name: &str| json!({"name": name, "url": receiver.url(), "events": ["*"], "status": "paused"});
    let to_delete = app.create_webhook_with(&key, org, mk("a")).await;
    let to_disable = app.create_webhook_with(&key, org, mk("b")).await;
    app.publish(org, "email.sent", json!({})).await;
    app.publish(org, "email.opened", json!({})).await;

    let resp = app
        .client
        .delete(app.url(&format!("{}/{}", TestApp::hooks_path(org), id(&to_delete))))
        .header("X-Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let rows = app
        .store
        .list_deliveries(
            Uuid::parse_str(id(&to_delete)).unwrap(),
            &mosend_webhooks::store::DeliveryQuery { limit: 10, ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|d| d.status == mosend_webhooks::domain::delivery::DeliveryStatus::Cancelled));

    app.call(
        "PATCH",
        &format!("{}/{}", TestApp::hooks_path(org), id(&to_disable)),
        &key,
        Some(json!({"status": "disabled"})),
    )
    .await;
    let list = app.deliveries(&key, org, id(&to_disable)).await;
    assert!(list.iter().all(|d| d["status"] == "cancelled"), "{list:?}");
    // Re-activating resends nothing by itself.
    app.call(
        "PATCH",
        &format!("{}/{}", TestApp::hooks_path(org), id(&to_disable)),
        &key,
        Some(json!({"status": "active"})),
    )
    .await;
    let later = app.publish(org, "contact.unsubscribed", json!({})).await;
    app.wait_deliveries(&key, org, id(&to_disable), 3, |d| d["status"] != "pending").await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert!(got.iter().all(|r| r.header("webhook-id") == later["id"].as_str().unwrap()), "only the new event was sent");
    assert_eq!(got.len(), 1);
}

both!(deleting_or_disabling_a_webhook_cancels_its_open_deliveries);

async fn a_webhook_that_keeps_failing_is_disabled_after_the_configured_period_and_attempts(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.retry_schedule = Some("50ms,50ms,50ms,50ms".into());
        s.disable_after = Some("0s".into());
        s.disable_min_attempts = Some(3);
    })
    .await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver = TestReceiver::start_with(vec![], Reply::Status(500)).await;
    let hook = app.create_webhook(&key, org, &receiver.url(), &["*"]).await;
    app.publish(org, "email.sent", json!({})).await;
    let path = format!("{}/{}", TestApp::hooks_path(org), id(&hook));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            app.call("GET", &path, &key, None).await.1["data"]["status"] == "disabled"
        })
        .await,
        "the webhook was disabled"
    );
    let (_, h) = app.call("GET", &path, &key, None).await;
    assert!(h["data"]["disabledReason"].as_str().unwrap().contains("3 attempts"), "{h}");
    let list = app.deliveries(&key, org, id(&hook)).await;
    assert_eq!(list[0]["status"], "cancelled");
    assert_eq!(list[0]["attempts"], 3);
}

both!(a_webhook_that_keeps_failing_is_disabled_after_the_configured_period_and_attempts);

async fn history_is_newest_first_filtered_and_paged_with_a_cursor(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver = TestReceiver::start().await;
    let hook = app.create_webhook(&key, org, &receiver.url(), &["*"]).await;
    let mut event_ids = Vec::new();
    for t in ["email.sent", "email.opened", "email.sent", "email.opened", "email.sent"] {
        event_ids.push(app.publish(org, t, json!({})).await["id"].as_str().unwrap().to_string());
    }
    app.wait_deliveries(&key, org, id(&hook), 5, |d| d["status"] == "succeeded").await;
    let base = format!("{}/{}/deliveries", TestApp::hooks_path(org), id(&hook));
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("{base}?limit=2&cursor={c}"),
            None => format!("{base}?limit=2"),
        };
        let (_, page) = app.call("GET", &q, &key, None).await;
        assert!(page["timestamp"].is_string());
        for d in page["data"].as_array().unwrap() {
            for field in [
                "id",
                "webhookId",
                "eventId",
                "eventType",
                "status",
                "attempts",
                "lastStatusCode",
                "lastError",
                "lastResponseBody",
                "lastDurationMs",
                "nextAttemptAt",
                "createdAt",
                "updatedAt",
                "deliveredAt",
            ] {
                assert!(d.get(field).is_some(), "{field} missing in {d}");
            }
            seen.push(d["eventId"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    event_ids.reverse();
    assert_eq!(seen, event_ids, "newest first, each once");
    let (_, opened) = app.call("GET", &format!("{base}?eventType=email.opened"), &key, None).await;
    assert_eq!(opened["data"].as_array().unwrap().len(), 2);
    assert_eq!(opened["nextCursor"], Value::Null);
    let (_, ok) = app.call("GET", &format!("{base}?status=succeeded"), &key, None).await;
    assert_eq!(ok["data"].as_array().unwrap().len(), 5);
    let (_, failed) = app.call("GET", &format!("{base}?status=failed"), &key, None).await;
    assert_eq!(failed["data"], json!([]));
}

both!(history_is_newest_first_filtered_and_paged_with_a_cursor);

async fn a_refused_connection_is_recorded_and_retried(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.retry_schedule = Some("1h".into())).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let hook = app.create_webhook(&key, org, &format!("http://{closed}/hook"), &["*"]).await;
    app.publish(org, "email.sent", json!({})).await;
    let list = app.wait_deliveries(&key, org, id(&hook), 1, |d| d["status"] == "retrying").await;
    assert_eq!(list[0]["lastStatusCode"], Value::Null);
    assert!(list[0]["lastError"].as_str().unwrap().to_lowercase().contains("connect"), "{}", list[0]);
    assert!(list[0]["nextAttemptAt"].is_string());
}

both!(a_refused_connection_is_recorded_and_retried);

async fn an_https_receiver_is_reached_over_tls_and_an_untrusted_certificate_is_refused(backend: Backend) {
    use std::sync::{atomic::AtomicUsize, atomic::Ordering::SeqCst, Arc};
    let app = spawn_app_with(backend, |s| s.retry_schedule = Some("1h".into())).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    // A TLS receiver whose certificate no public authority signed.
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let private = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], private.into())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (handshakes, completed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h, c) = (handshakes.clone(), completed.clone());
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (acceptor, h, c) = (acceptor.clone(), h.clone(), c.clone());
            tokio::spawn(async move {
                // Peek at the first byte: 0x16 opens a TLS handshake record.
                let mut first = [0u8; 1];
                if sock.peek(&mut first).await.is_ok() && first[0] == 0x16 {
                    h.fetch_add(1, SeqCst);
                }
                if acceptor.accept(sock).await.is_ok() {
                    c.fetch_add(1, SeqCst);
                }
            });
        }
    });
    let hook = app.create_webhook(&key, org, &format!("https://{addr}/hook"), &["*"]).await;
    app.publish(org, "email.sent", json!({})).await;
    let list = app.wait_deliveries(&key, org, id(&hook), 1, |d| d["status"] == "retrying").await;
    let err = list[0]["lastError"].as_str().unwrap();
    assert!(err.contains("TLS certificate is not signed by a trusted authority"), "{err}");
    assert!(handshakes.load(SeqCst) >= 1, "the client spoke TLS to the https URL");
    assert_eq!(completed.load(SeqCst), 0, "no handshake completed with an untrusted certificate");
}

both!(an_https_receiver_is_reached_over_tls_and_an_untrusted_certificate_is_refused);

async fn a_name_resolving_to_a_forbidden_address_is_blocked_at_connect_time(backend: Backend) {
    // Only ::1 is allowed: `localhost` is accepted at create time, but it resolves to
    // 127.0.0.1 too; a receiver on 127.0.0.1 only must not be reached.
    let app = spawn_app_with(backend, |s| {
        s.allowed_private_cidrs = Some("::1/128".into());
        s.retry_schedule = Some("1h".into());
    })
    .await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver = TestReceiver::start().await;
    let hook = app.create_webhook(&key, org, &format!("http://localhost:{}/hook", receiver.addr.port()), &["*"]).await;
    app.publish(org, "email.sent", json!({})).await;
    let list = app.wait_deliveries(&key, org, id(&hook), 1, |d| d["status"] == "retrying").await;
    let err = list[0]["lastError"].as_str().unwrap();
    assert!(err.contains("blocked") || err.to_lowercase().contains("connect"), "{err}");
    assert!(receiver.received().is_empty());
}

both!(a_name_resolving_to_a_forbidden_address_is_blocked_at_connect_time);

async fn a_nul_byte_in_a_response_is_stored_as_a_replacement_character(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver = TestReceiver::start_with(vec![], Reply::Body(200, b"ok\x00nul\xff".to_vec())).await;
    let hook = app.create_webhook(&key, org, &receiver.url(), &["*"]).await;
    app.publish(org, "email.sent", json!({})).await;
    let list = app.wait_deliveries(&key, org, id(&hook), 1, |d| d["status"] == "succeeded").await;
    assert_eq!(list[0]["lastResponseBody"], "ok\u{fffd}nul\u{fffd}");
    assert_eq!(receiver.received().len(), 1, "recorded once, not sent again");
}

both!(a_nul_byte_in_a_response_is_stored_as_a_replacement_character);

/// Connections to a receiver are kept alive and reused, however many attempts ran at once:
/// two waves of 100 concurrent requests to one host come on at most 100 connections. (A
/// keep-alive pool smaller than the in-flight limit closed the surplus after the first wave
/// and opened it again for the second.)
async fn connections_to_a_receiver_are_reused_across_waves_of_concurrent_attempts(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.max_in_flight = Some(100);
        s.per_webhook_concurrency = Some(100);
    })
    .await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver = TestReceiver::start_with(vec![], Reply::Delayed(Duration::from_millis(100), 200)).await;
    let hook = app.create_webhook(&key, org, &receiver.url(), &["*"]).await;
    let hook = hook["id"].as_str().unwrap();
    for wave in 1..=2 {
        let events: Vec<Value> =
            (0..100).map(|n| json!({"organizationId": org, "type": "email.sent", "data": {"n": n}})).collect();
        let (status, answer) =
            app.call("POST", "/events/batch", &app.platform_key, Some(json!({"events": events}))).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
        receiver.wait_for(100 * wave, Duration::from_secs(20)).await;
        // The wave is over (every answer read, the connections back in the pool) before the
        // next one starts.
        app.wait_deliveries(&key, org, hook, 100 * wave, |d| d["status"] == "succeeded").await;
    }
    assert!(receiver.max_in_flight() > 64, "the waves ran concurrently: {}", receiver.max_in_flight());
    assert!(receiver.connections() <= 100, "{} connections for 200 requests", receiver.connections());
}
both!(connections_to_a_receiver_are_reused_across_waves_of_concurrent_attempts);
