//! Fresh deliveries handed straight from a publish to the worker of the same process
//! (SQLite), the claim loop taking what the hand-off had no room for, and the limits that
//! hold whichever way a delivery arrives.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::both;
use crate::helpers::{spawn_app_with, wait_until, Backend, Reply, TestApp, TestReceiver};

/// A counter from `/metrics` (0 when it was never incremented).
async fn counter(app: &TestApp, name: &str) -> u64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .map_or(0, |v| v as u64)
}

async fn publish_batch(app: &TestApp, org: Uuid, n: usize) {
    let events: Vec<Value> =
        (0..n).map(|i| json!({"organizationId": org, "type": "email.sent", "data": {"i": i}})).collect();
    let (status, body) = app.call("POST", "/events/batch", &app.platform_key, Some(json!({"events": events}))).await;
    assert_eq!(status, 200, "{body}");
}

async fn on_sqlite_a_fresh_delivery_is_handed_to_the_worker_without_a_claim(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.poll_interval = Some("1h".into())).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver = TestReceiver::start().await;
    let hook = app.create_webhook(&key, org, &receiver.url(), &["email.sent"]).await;
    for i in 0..5 {
        app.publish(org, "email.sent", json!({"i": i})).await;
    }
    receiver.wait_for(5, Duration::from_secs(10)).await;
    let list = app.wait_deliveries(&key, org, hook["id"].as_str().unwrap(), 5, |d| d["status"] == "succeeded").await;
    assert!(list.iter().all(|d| d["attempts"] == 1), "{list:?}");
    let (handed, claimed) = (
        counter(&app, "mosend_webhooks_deliveries_handed_off_total").await,
        counter(&app, "mosend_webhooks_deliveries_claimed_total").await,
    );
    match backend {
        Backend::Sqlite => assert_eq!((handed, claimed), (5, 0), "handed over, never claimed"),
        // Several processes share a PostgreSQL queue: every delivery is claimed.
        Backend::Postgres => assert_eq!((handed, claimed), (0, 5)),
    }
}

both!(on_sqlite_a_fresh_delivery_is_handed_to_the_worker_without_a_claim);

async fn a_burst_past_the_hand_off_goes_through_claims_within_the_per_webhook_limit(backend: Backend) {
    // 60 events in one transaction to a slow receiver allowed 3 at once: the hand-off takes
    // what it has room for (twice the limit), the rest are claimed as slots free up.
    let app = spawn_app_with(backend, |s| s.per_webhook_concurrency = Some(3)).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver = TestReceiver::start_with(vec![], Reply::Delayed(Duration::from_millis(20), 200)).await;
    let hook = app.create_webhook(&key, org, &receiver.url(), &["email.sent"]).await;
    publish_batch(&app, org, 60).await;
    let got = receiver.wait_for(60, Duration::from_secs(20)).await;
    let list = app.wait_deliveries(&key, org, hook["id"].as_str().unwrap(), 60, |d| d["status"] == "succeeded").await;
    assert_eq!(list.len(), 60);
    let mut per_delivery: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *per_delivery.entry(r.header("x-mosend-delivery").to_string()).or_default() += 1;
    }
    assert_eq!(per_delivery.len(), 60, "every delivery arrived");
    assert!(per_delivery.values().all(|&n| n == 1), "none twice: {per_delivery:?}");
    assert!(receiver.max_in_flight() <= 3, "at most 3 at once: {}", receiver.max_in_flight());
    assert!(receiver.max_in_flight() >= 2, "in parallel: {}", receiver.max_in_flight());
    if backend == Backend::Sqlite {
        let handed = counter(&app, "mosend_webhooks_deliveries_handed_off_total").await;
        let claimed = counter(&app, "mosend_webhooks_deliveries_claimed_total").await;
        assert_eq!(handed, 6, "twice the limit handed over");
        assert_eq!(claimed, 54, "the rest claimed");
        // Left behind for this webhook's slots, they are leased in the transactions that
        // record the results freeing those slots, not by claims of their own.
        let with_results = counter(&app, "mosend_webhooks_deliveries_claimed_with_results_total").await;
        assert!(with_results >= 27, "most claimed with results: {with_results} of 54");
    }
}

both!(a_burst_past_the_hand_off_goes_through_claims_within_the_per_webhook_limit);

#[tokio::test]
async fn a_handed_off_delivery_that_waited_too_long_for_its_turn_is_given_back_not_sent_twice() {
    // One exchange at a time, each taking 1.8 s of a 2 s timeout, leases of 3 s (timeout plus
    // a 1 s margin). The second delivery waits 1.8 s for its turn; sending it then could run
    // past its lease, when the claim loop would take it again and send it a second time.
    // It is given back instead, claimed afresh and sent once.
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.per_webhook_concurrency = Some(1);
        s.delivery_timeout = Some("2s".into());
        s.lease_margin = Some("1s".into());
    })
    .await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver = TestReceiver::start_with(vec![], Reply::Delayed(Duration::from_millis(1800), 200)).await;
    let hook = app.create_webhook(&key, org, &receiver.url(), &["email.sent"]).await;
    publish_batch(&app, org, 2).await;
    app.wait_deliveries(&key, org, hook["id"].as_str().unwrap(), 2, |d| d["status"] == "succeeded").await;
    // Without the check a duplicate would arrive about when the second one succeeded.
    let duplicate = wait_until(Duration::from_millis(2500), || async { receiver.received().len() > 2 }).await;
    assert!(!duplicate, "each delivery sent once: {} requests", receiver.received().len());
    assert_eq!(receiver.max_in_flight(), 1);
    assert_eq!(counter(&app, "mosend_webhooks_deliveries_handed_off_total").await, 2);
}
