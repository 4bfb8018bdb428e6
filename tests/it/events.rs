//! Publishing: fan-out to matching webhooks, stored before the 202, idempotency.

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::both;
use crate::helpers::{spawn_app, Backend, TestApp};

async fn an_event_fans_out_to_exact_family_and_star_subscriptions_of_its_organization_only(backend: Backend) {
    let app = spawn_app(backend).await;
    let (org, other) = (Uuid::now_v7(), Uuid::now_v7());
    let key = app.org_key(org).await;
    let other_key = app.org_key(other).await;
    let url = "https://example.com/h";
    let exact = app.create_webhook(&key, org, url, &["email.bounced"]).await;
    let family = app.create_webhook(&key, org, url, &["email.*"]).await;
    let star = app.create_webhook(&key, org, url, &["*"]).await;
    let unrelated = app.create_webhook(&key, org, url, &["contact.unsubscribed"]).await;
    let paused =
        app.create_webhook_with(&key, org, json!({"name": "p", "url": url, "events": ["*"], "status": "paused"})).await;
    let disabled = app.create_webhook(&key, org, url, &["*"]).await;
    let path = |h: &serde_json::Value| format!("{}/{}", TestApp::hooks_path(org), h["id"].as_str().unwrap());
    app.call("PATCH", &path(&disabled), &key, Some(json!({"status": "disabled"}))).await;
    app.create_webhook(&other_key, other, url, &["*"]).await;

    let published = app.publish(org, "email.bounced", json!({"to": "x@example.com"})).await;
    assert_eq!(published["deliveries"], 4, "exact, family, star and the paused one: {published}");
    assert_eq!(published["type"], "email.bounced");
    assert!(Uuid::parse_str(published["id"].as_str().unwrap()).is_ok());
    assert!(published.get("duplicate").is_none());
    for (hook, expected) in [(&exact, 1), (&family, 1), (&star, 1), (&paused, 1), (&unrelated, 0), (&disabled, 0)] {
        let list = app.deliveries(&key, org, hook["id"].as_str().unwrap()).await;
        assert_eq!(list.len(), expected, "{hook}");
        if expected == 1 {
            assert_eq!(list[0]["eventId"], published["id"]);
            assert_eq!(list[0]["eventType"], "email.bounced");
        }
    }
}

both!(an_event_fans_out_to_exact_family_and_star_subscriptions_of_its_organization_only);

async fn an_organization_with_no_webhooks_gets_202_with_zero_deliveries(backend: Backend) {
    let app = spawn_app(backend).await;
    let published = app.publish(Uuid::now_v7(), "email.sent", json!({})).await;
    assert_eq!(published["deliveries"], 0);
}

both!(an_organization_with_no_webhooks_gets_202_with_zero_deliveries);

async fn the_same_idempotency_key_answers_200_with_the_first_event_and_schedules_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let hook = app.create_webhook(&key, org, "https://example.com/h", &["*"]).await;
    let path = format!("/organizations/{org}/events");
    let body = json!({"type": "email.sent", "data": {"n": 1}, "idempotencyKey": "order-42"});
    let (s1, first) = app.call("POST", &path, &app.platform_key, Some(body.clone())).await;
    assert_eq!(s1, StatusCode::ACCEPTED);
    let (s2, second) = app.call("POST", &path, &app.platform_key, Some(body)).await;
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(second["data"]["id"], first["data"]["id"]);
    assert_eq!(second["data"]["deliveries"], 1);
    assert_eq!(second["data"]["duplicate"], true);

    // The header works too, and matches a body key that is equal.
    let send = |k: &'static str, body: serde_json::Value| {
        app.client
            .post(app.url(&path))
            .header("X-Api-Key", &app.platform_key)
            .header("Idempotency-Key", k)
            .json(&body)
            .send()
    };
    let r1 = send("hdr-1", json!({"type": "email.sent", "data": {}})).await.unwrap();
    assert_eq!(r1.status(), StatusCode::ACCEPTED);
    let first: serde_json::Value = r1.json().await.unwrap();
    let r2 = send("hdr-1", json!({"type": "email.sent", "data": {}, "idempotencyKey": "hdr-1"})).await.unwrap();
    assert_eq!(r2.status(), StatusCode::OK);
    let second: serde_json::Value = r2.json().await.unwrap();
    assert_eq!(first["data"]["id"], second["data"]["id"]);

    // The same key in another organization is another event.
    let other = Uuid::now_v7();
    let (s3, _) = app
        .call(
            "POST",
            &format!("/organizations/{other}/events"),
            &app.platform_key,
            Some(json!({"type": "email.sent", "data": {}, "idempotencyKey": "order-42"})),
        )
        .await;
    assert_eq!(s3, StatusCode::ACCEPTED);

    assert_eq!(app.deliveries(&key, org, hook["id"].as_str().unwrap()).await.len(), 2, "one per distinct event");
}

both!(the_same_idempotency_key_answers_200_with_the_first_event_and_schedules_nothing);

async fn the_idempotency_window_expires(backend: Backend) {
    let app = crate::helpers::spawn_app_with(backend, |_| {}).await;
    // Drive the store directly with a tiny window to see a reused key accepted again.
    let org = Uuid::now_v7();
    let event = |id| mosend_webhooks::store::NewEvent {
        id,
        org_id: org,
        event_type: "email.sent".into(),
        data: "{}".into(),
        idempotency_key: Some("k".into()),
        created_at: mosend_webhooks::domain::time::Timestamp::now(),
    };
    let window = std::time::Duration::from_millis(50);
    let first = app.store.publish_event(&event(Uuid::now_v7()), window).await.unwrap();
    let dup = app.store.publish_event(&event(Uuid::now_v7()), window).await.unwrap();
    assert!(dup.duplicate && dup.id == first.id);
    tokio::time::sleep(std::time::Duration::from_millis(60)).await; // the window itself must pass
    let again = app.store.publish_event(&event(Uuid::now_v7()), window).await.unwrap();
    assert!(!again.duplicate && again.id != first.id);
}

both!(the_idempotency_window_expires);

async fn concurrent_publishes_are_committed_together_yet_each_gets_its_own_answer(backend: Backend) {
    // Single publishes arriving together share one transaction (group commit); keys shared
    // between them must still make one event each, and every caller gets its own result.
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let hook = app.create_webhook(&key, org, "https://example.com/h", &["email.*"]).await;
    let path = format!("/organizations/{org}/events");
    let calls = (0..90).map(|i| {
        let body = match i % 3 {
            0 => json!({"type": "email.sent", "data": {"i": i}}),
            1 => json!({"type": "email.sent", "data": {"i": i}, "idempotencyKey": format!("k{}", i % 10)}),
            _ => json!({"type": "contact.unsubscribed", "data": {"i": i}}),
        };
        let (app, path) = (&app, &path);
        async move { (i, app.call("POST", path, &app.platform_key, Some(body)).await) }
    });
    let answers = futures::future::join_all(calls).await;
    let mut unkeyed = std::collections::HashSet::new();
    let mut keyed: std::collections::HashMap<usize, Vec<(StatusCode, serde_json::Value)>> = Default::default();
    for (i, (status, body)) in answers {
        let data = body["data"].clone();
        match i % 3 {
            0 => {
                assert_eq!(status, StatusCode::ACCEPTED, "{body}");
                assert_eq!(data["deliveries"], 1);
                assert!(unkeyed.insert(data["id"].as_str().unwrap().to_string()), "each publish is its own event");
            }
            1 => keyed.entry(i % 10).or_default().push((status, data)),
            _ => {
                assert_eq!(status, StatusCode::ACCEPTED, "{body}");
                assert_eq!(data["deliveries"], 0, "no webhook takes contact events: {body}");
            }
        }
    }
    assert_eq!(unkeyed.len(), 30);
    assert_eq!(keyed.len(), 10);
    for (k, answers) in &keyed {
        let first: Vec<_> = answers.iter().filter(|(s, _)| *s == StatusCode::ACCEPTED).collect();
        assert_eq!(first.len(), 1, "key k{k}: one 202, the others 200: {answers:?}");
        for (status, data) in answers {
            assert_eq!(data["id"], first[0].1["id"], "key k{k}");
            assert_eq!(data["deliveries"], 1);
            assert_eq!(*status == StatusCode::OK, data["duplicate"] == true);
        }
    }
    let stored = app.deliveries(&key, org, hook["id"].as_str().unwrap()).await;
    assert_eq!(stored.len(), 40, "30 unkeyed events and 10 keyed ones");
}

both!(concurrent_publishes_are_committed_together_yet_each_gets_its_own_answer);
