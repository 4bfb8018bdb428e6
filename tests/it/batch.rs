//! `POST /events/batch`: up to 1,000 events for any organizations in one request, one
//! result per event in order, per-item errors, idempotency per event, limits.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::both;
use crate::helpers::{spawn_app, Backend, TestReceiver};

async fn a_batch_stores_the_valid_events_and_answers_one_result_per_event_in_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let (org_a, org_b) = (Uuid::now_v7(), Uuid::now_v7());
    let (key_a, key_b) = (app.org_key(org_a).await, app.org_key(org_b).await);
    let receiver = TestReceiver::start().await;
    let hook_a = app.create_webhook(&key_a, org_a, &receiver.url(), &["email.*"]).await;
    app.create_webhook(&key_b, org_b, &receiver.url(), &["*"]).await;
    app.create_webhook(&key_b, org_b, &receiver.url(), &["contact.unsubscribed"]).await;
    let body = json!({"events": [
        {"organizationId": org_a, "type": "email.sent", "data": {"n": 1}, "idempotencyKey": "k1"},
        {"organizationId": org_a, "type": "email.nope", "data": {}},
        {"organizationId": org_b, "type": "contact.unsubscribed", "data": {"n": 3}},
        {"type": "email.sent", "data": {}},
        {"organizationId": org_a, "type": "email.sent", "data": {"n": 5}, "idempotencyKey": "k1"},
        {"organizationId": "not-a-uuid", "type": "email.sent", "data": {}},
        {"organizationId": org_b, "type": "email.sent", "data": [], "colour": 1},
    ]});
    let (status, answer) = app.call("POST", "/events/batch", &app.platform_key, Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let r = answer["data"].as_array().unwrap();
    assert_eq!(r.len(), 7);
    assert_eq!(r[0]["deliveries"], 1);
    assert_eq!(r[1]["error"]["statusCode"], 422);
    assert!(r[1]["error"]["message"].as_str().unwrap().contains("type"));
    assert_eq!(r[2]["deliveries"], 2);
    assert_eq!(r[3]["error"]["errors"][0]["field"], "organizationId");
    assert_eq!(r[4]["id"], r[0]["id"], "the same key within the batch is the same event");
    assert_eq!(r[4]["duplicate"], true);
    assert_eq!(r[5]["error"]["errors"][0]["field"], "organizationId");
    let fields: Vec<&str> =
        r[6]["error"]["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"data") && fields.contains(&"colour"), "{fields:?}");
    assert!(answer["timestamp"].is_string());

    // Three deliveries arrive: one for org A, two for org B, each data verbatim.
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    let a_body = got.iter().find(|g| g.header("webhook-id") == r[0]["id"].as_str().unwrap()).unwrap().json();
    assert_eq!(a_body["data"], json!({"n": 1}));
    let list = app.deliveries(&key_a, org_a, hook_a["id"].as_str().unwrap()).await;
    assert_eq!(list.len(), 1);

    // The whole batch again: idempotency per event.
    let (_, again) = app.call("POST", "/events/batch", &app.platform_key, Some(body)).await;
    assert_eq!(again["data"][0]["id"], r[0]["id"]);
    assert_eq!(again["data"][0]["duplicate"], true);
    assert_ne!(again["data"][2]["id"], r[2]["id"], "no key, a new event");
}

both!(a_batch_stores_the_valid_events_and_answers_one_result_per_event_in_order);

async fn batch_limits_and_permissions_are_enforced(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let one = json!({"organizationId": org, "type": "email.sent", "data": {}});
    let (status, _) = app.call("POST", "/events/batch", &key, Some(json!({"events": [one]}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only a platform key publishes");
    for bad in [json!({"events": []}), json!({}), json!({"events": {}}), json!({"events": [one], "more": 1})] {
        let (status, body) = app.call("POST", "/events/batch", &app.platform_key, Some(bad.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    let too_many: Vec<Value> = (0..1001).map(|_| one.clone()).collect();
    let (status, _) = app.call("POST", "/events/batch", &app.platform_key, Some(json!({"events": too_many}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let thousand: Vec<Value> = (0..1000).map(|_| one.clone()).collect();
    let (status, body) = app.call("POST", "/events/batch", &app.platform_key, Some(json!({"events": thousand}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"].as_array().unwrap().len(), 1000);
    let huge =
        json!({"events": [{"organizationId": org, "type": "email.sent", "data": {"x": "y".repeat(5 * 1024 * 1024)}}]});
    let (status, _) = app.call("POST", "/events/batch", &app.platform_key, Some(huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

both!(batch_limits_and_permissions_are_enforced);

async fn concurrent_batches_with_the_same_keys_make_each_event_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let batch = |reverse: bool| {
        let mut events: Vec<Value> =
            (0..40).map(|i| json!({"organizationId": org, "type": "email.sent", "data": {"i": i}, "idempotencyKey": format!("k{i}")})).collect();
        if reverse {
            events.reverse();
        }
        app.call("POST", "/events/batch", &app.platform_key, Some(json!({"events": events})))
    };
    let answers = futures::future::join_all((0..8).map(|i| batch(i % 2 == 1))).await;
    let mut ids = std::collections::HashSet::new();
    for (status, body) in answers {
        assert_eq!(status, StatusCode::OK, "{body}");
        for r in body["data"].as_array().unwrap() {
            ids.insert(r["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(ids.len(), 40, "one event per key, whatever the interleaving");
}

both!(concurrent_batches_with_the_same_keys_make_each_event_once);

async fn one_bad_item_fails_alone_whatever_is_wrong_with_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    // 126 levels inside `data` are fine for a single publish, so they are fine in a batch.
    let deep = format!("{}{}", "[".repeat(125), "]".repeat(125));
    let too_deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let raw = format!(
        r#"{{"events": [{{"organizationId": "{org}", "type": "email.sent", "data": {{"x": {deep}}}}}, 5,
            {{"organizationId": "{org}", "type": "email.sent", "type": "email.sent", "data": {{}}}},
            {{"organizationId": "{org}", "type": "email.sent", "data": {{"x": {too_deep}}}}}]}}"#
    );
    let resp = app
        .client
        .post(app.url("/events/batch"))
        .header("X-Api-Key", &app.platform_key)
        .header("Content-Type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let r = body["data"].as_array().unwrap();
    assert!(r[0]["id"].is_string(), "{}", r[0]);
    assert_eq!(r[1]["error"]["errors"][0]["field"], "event");
    assert_eq!(r[2]["error"]["errors"][0]["field"], "type");
    assert_eq!(r[3]["error"]["errors"][0]["field"], "data");
}

both!(one_bad_item_fails_alone_whatever_is_wrong_with_it);
