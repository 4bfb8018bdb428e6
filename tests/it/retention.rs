//! Retention: history older than the configured age is purged in batches; open deliveries
//! are never purged.

use std::time::Duration;

use mosend_webhooks::domain::time::Timestamp;
use mosend_webhooks::store::NewEvent;
use serde_json::json;
use uuid::Uuid;

use crate::both;
use crate::helpers::{spawn_app, spawn_app_with, wait_until, Backend, TestReceiver};

fn event(org: Uuid, age: Duration) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        org_id: org,
        event_type: "email.sent".into(),
        data: "{}".into(),
        idempotency_key: None,
        created_at: Timestamp::now().minus(age),
    }
}

async fn old_finished_events_are_purged_in_batches_and_open_ones_kept(backend: Backend) {
    // The worker's own purge keeps ten years, so only this test's calls purge anything.
    let app = spawn_app_with(backend, |s| s.retention = Some("3650d".into())).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let window = Duration::from_secs(1);
    let day = Duration::from_secs(86_400);
    for _ in 0..5 {
        app.store.publish_event(&event(org, 40 * day), window).await.unwrap();
    }
    let recent = app.store.publish_event(&event(org, day), window).await.unwrap();
    // An old event with an open delivery (its webhook is paused) stays.
    let hook = app
        .create_webhook_with(
            &key,
            org,
            json!({"name": "p", "url": "https://example.com/h", "events": ["*"], "status": "paused"}),
        )
        .await;
    let open = app.store.publish_event(&event(org, 40 * day), window).await.unwrap();
    assert_eq!(open.deliveries, 1);

    let cutoff = Timestamp::now().minus(30 * day);
    assert_eq!(app.store.purge_older_than(cutoff, 2).await.unwrap(), 2, "batches are bounded");
    assert_eq!(app.store.purge_older_than(cutoff, 100).await.unwrap(), 3);
    assert_eq!(app.store.purge_older_than(cutoff, 100).await.unwrap(), 0);
    // The recent event and the open one are still there: their idempotency-free re-check
    // is through the history and the store.
    let hook_id = Uuid::parse_str(hook["id"].as_str().unwrap()).unwrap();
    let open_rows = app
        .store
        .list_deliveries(hook_id, &mosend_webhooks::store::DeliveryQuery { limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(open_rows.len(), 1);
    assert_eq!(open_rows[0].event_id, open.id);
    assert!(!recent.duplicate);
}

both!(old_finished_events_are_purged_in_batches_and_open_ones_kept);

async fn the_worker_purges_expired_history_by_itself(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.retention = Some("1s".into());
        s.retention_interval = Some("100ms".into());
    })
    .await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver = TestReceiver::start().await;
    let hook = app.create_webhook(&key, org, &receiver.url(), &["*"]).await;
    app.publish(org, "email.sent", json!({})).await;
    let id = hook["id"].as_str().unwrap();
    app.wait_deliveries(&key, org, id, 1, |d| d["status"] == "succeeded").await;
    let gone = wait_until(Duration::from_secs(10), || async { app.deliveries(&key, org, id).await.is_empty() }).await;
    assert!(gone, "the delivered event was purged once older than the retention age");
}

both!(the_worker_purges_expired_history_by_itself);

async fn nothing_recent_is_purged_with_the_default_retention(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    app.publish(org, "email.sent", json!({})).await;
    let cutoff = Timestamp::now().minus(Duration::from_secs(30 * 86_400));
    assert_eq!(app.store.purge_older_than(cutoff, 100).await.unwrap(), 0);
}

both!(nothing_recent_is_purged_with_the_default_retention);
