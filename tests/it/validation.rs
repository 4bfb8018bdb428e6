//! Every validation rule answers a 4xx in the SPEC's error shape, and a rejected request
//! changes nothing stored.

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::both;
use crate::helpers::{spawn_app, Backend, TestApp};

fn valid() -> Value {
    json!({"name": "hook", "url": "https://example.com/hook", "events": ["email.sent"]})
}

fn with(field: &str, value: Value) -> Value {
    let mut v = valid();
    v[field] = value;
    v
}

fn without(field: &str) -> Value {
    let mut v = valid();
    v.as_object_mut().unwrap().remove(field);
    v
}

async fn invalid_webhook_bodies_are_422_naming_the_field_and_store_nothing(backend: Backend) {
    let app = spawn_app_no_local(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let many_events: Vec<String> = (0..51).map(|i| format!("e{i}")).collect();
    let many_headers: serde_json::Map<String, Value> = (0..21).map(|i| (format!("X-H{i}"), json!("v"))).collect();
    let cases: Vec<(Value, &str)> = vec![
        (without("name"), "name"),
        (without("url"), "url"),
        (without("events"), "events"),
        (with("name", json!("   ")), "name"),
        (with("name", json!("n".repeat(101))), "name"),
        (with("name", json!(5)), "name"),
        (with("name", json!(null)), "name"),
        (with("description", json!("d".repeat(501))), "description"),
        (with("description", json!(["x"])), "description"),
        (with("url", json!("ftp://example.com/x")), "url"),
        (with("url", json!("example.com/hook")), "url"),
        (with("url", json!("https://user:pass@example.com/")), "url"),
        (with("url", json!(format!("https://example.com/{}", "a".repeat(2048)))), "url"),
        (with("url", json!("http://127.0.0.1/")), "url"),
        (with("url", json!("http://2130706433/")), "url"),
        (with("url", json!("http://0x7f000001/")), "url"),
        (with("url", json!("http://[::ffff:127.0.0.1]/")), "url"),
        (with("url", json!("http://localhost:8080/")), "url"),
        (with("url", json!("http://10.0.0.8/")), "url"),
        (with("url", json!("http://169.254.169.254/latest/meta-data")), "url"),
        (with("url", json!(42)), "url"),
        (with("events", json!([])), "events"),
        (with("events", json!(many_events)), "events"),
        (with("events", json!(["email.unknown"])), "events"),
        (with("events", json!(["sms.*"])), "events"),
        (with("events", json!(["webhook.test"])), "events"),
        (with("events", json!(["email.sent", "email.sent"])), "events"),
        (with("events", json!("email.sent")), "events"),
        (with("events", json!([1])), "events"),
        (with("format", json!("xml")), "format"),
        (with("status", json!("disabled")), "status"),
        (with("status", json!("sleeping")), "status"),
        (with("headers", json!({"Content-Type": "text/plain"})), "headers"),
        (with("headers", json!({"webhook-id": "x"})), "headers"),
        (with("headers", json!({"X-MoSend-Event": "x"})), "headers"),
        (with("headers", json!({"Bad Name": "x"})), "headers"),
        (with("headers", json!({"X-A": "a\r\nInjected: 1"})), "headers"),
        (with("headers", json!({"X-A": 5})), "headers"),
        (with("headers", json!({"X-A": "v".repeat(1025)})), "headers"),
        (with("headers", json!(many_headers)), "headers"),
        (with("headers", json!(["X-A"])), "headers"),
        (with("headers", json!({"Upgrade": "h2c"})), "headers"),
        (with("headers", json!({"Expect": "100-continue"})), "headers"),
        (with("headers", json!({"X-A": " padded"})), "headers"),
        (with("name", json!("a\u{0}b")), "name"),
        (with("url", json!("https://example.com:0/")), "url"),
        (with("url", json!(format!("https://example.com/{}", "é".repeat(1500)))), "url"),
        (with("colour", json!("blue")), "colour"),
        (with("secret", json!("whsec_AAAA")), "secret"),
        (with("id", json!(Uuid::now_v7())), "id"),
    ];
    for (body, field) in cases {
        let (status, answer) = app.call("POST", &TestApp::hooks_path(org), &key, Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {answer}");
        assert_eq!(answer["statusCode"], 422);
        assert_eq!(answer["error"], "Unprocessable Entity");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(answer["path"], TestApp::hooks_path(org));
        assert!(answer["timestamp"].is_string());
        let fields: Vec<&str> =
            answer["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert!(fields.contains(&field), "{body}: expected an error on {field}, got {answer}");
    }
    let (_, list) = app.call("GET", &TestApp::hooks_path(org), &key, None).await;
    assert_eq!(list["data"], json!([]), "no rejected request stored anything");
}

both!(invalid_webhook_bodies_are_422_naming_the_field_and_store_nothing);

async fn spawn_app_no_local(backend: Backend) -> TestApp {
    crate::helpers::spawn_app_with(backend, |s| s.allowed_private_cidrs = None).await
}

async fn malformed_json_wrong_content_type_and_oversized_bodies_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let url = app.url(&TestApp::hooks_path(org));
    let post = |ct: Option<&'static str>, body: Vec<u8>| {
        let mut req = app.client.post(&url).header("X-Api-Key", &key).body(body);
        if let Some(ct) = ct {
            req = req.header("Content-Type", ct);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            (status, body)
        }
    };
    for bad in [&b"{"[..], b"{\"name\": }", b"", b"nul", b"{\"a\":1}}", b"\xff\xfe"] {
        let (status, body) = post(Some("application/json"), bad.to_vec()).await;
        assert_eq!(status, 400, "{:?}", String::from_utf8_lossy(bad));
        assert_eq!(body["statusCode"], 400);
    }
    for not_object in [&b"[]"[..], b"\"x\"", b"5", b"null"] {
        let (status, _) = post(Some("application/json"), not_object.to_vec()).await;
        assert_eq!(status, 422);
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let (status, body) = post(Some("application/json"), format!("{{\"name\": {deep}}}").into_bytes()).await;
    assert_eq!(status, 422, "nesting deeper than 128 levels is refused: {body}");
    assert_eq!(body["errors"][0]["field"], "name");
    // A repeated member is an error, never "the last one wins".
    let (status, body) = post(
        Some("application/json"),
        br#"{"name": "a", "url": "http://10.0.0.1/", "url": "https://example.com/h", "events": ["*"]}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "url");
    // JSON is UTF-8: another declared charset is not a JSON body we read.
    let (status, _) = post(Some("application/json; charset=utf-16"), valid().to_string().into_bytes()).await;
    assert_eq!(status, 415);
    let (status, body) = post(None, valid().to_string().into_bytes()).await;
    assert_eq!((status, body["error"].as_str().unwrap()), (415, "Unsupported Media Type"));
    let (status, _) = post(Some("text/plain"), valid().to_string().into_bytes()).await;
    assert_eq!(status, 415);
    let (status, _) = post(Some("application/json; charset=utf-8"), valid().to_string().into_bytes()).await;
    assert_eq!(status, 201);
    let mut big = valid();
    big["description"] = json!("x".repeat(300 * 1024));
    let (status, body) = post(Some("application/json"), big.to_string().into_bytes()).await;
    assert_eq!(status, 413);
    assert_eq!(body["statusCode"], 413);
    let (_, list) = app.call("GET", &TestApp::hooks_path(org), &key, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "only the valid create was stored");
}

both!(malformed_json_wrong_content_type_and_oversized_bodies_are_refused);

async fn bad_uuids_unknown_routes_and_wrong_methods_answer_in_the_error_shape(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.platform_key.clone();
    let (status, body) = app.call("GET", "/organizations/123/webhooks-outbound", &key, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["statusCode"], 400);
    let org = Uuid::now_v7();
    let (status, _) = app.call("GET", &format!("{}/not-a-uuid/deliveries", TestApp::hooks_path(org)), &key, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // One resource, one URL: only the hyphenated form of a UUID.
    for other_form in [org.simple().to_string(), org.urn().to_string(), org.braced().to_string()] {
        let (status, _) = app.call("GET", &format!("/organizations/{other_form}/webhooks-outbound"), &key, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{other_form}");
    }
    let upper = org.to_string().to_uppercase();
    let (status, _) = app.call("GET", &format!("/organizations/{upper}/webhooks-outbound"), &key, None).await;
    assert_eq!(status, StatusCode::OK, "case does not matter");
    let (status, body) = app.call("GET", "/nowhere", &key, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["path"], "/nowhere");
    let (status, body) = app.call("PUT", &TestApp::hooks_path(org), &key, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["statusCode"], 405);
}

both!(bad_uuids_unknown_routes_and_wrong_methods_answer_in_the_error_shape);

async fn invalid_events_are_422_and_schedule_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let hook = app.create_webhook(&key, org, "https://example.com/h", &["*"]).await;
    let path = format!("/organizations/{org}/events");
    let cases: Vec<(Value, &str)> = vec![
        (json!({"data": {}}), "type"),
        (json!({"type": "email.sent"}), "data"),
        (json!({"type": "email.nope", "data": {}}), "type"),
        (json!({"type": "webhook.test", "data": {}}), "type"),
        (json!({"type": 5, "data": {}}), "type"),
        (json!({"type": "email.sent", "data": [1]}), "data"),
        (json!({"type": "email.sent", "data": "x"}), "data"),
        (json!({"type": "email.sent", "data": {}, "extra": 1}), "extra"),
        (json!({"type": "email.sent", "data": {}, "idempotencyKey": ""}), "idempotencyKey"),
        (json!({"type": "email.sent", "data": {}, "idempotencyKey": 7}), "idempotencyKey"),
        (json!({"type": "email.sent", "data": {}, "idempotencyKey": "k".repeat(256)}), "idempotencyKey"),
    ];
    let deep_data = format!(r#"{{"type": "email.sent", "data": {{"x": {}{}}}}}"#, "[".repeat(200), "]".repeat(200));
    let dup_type = r#"{"type": "webhook.test", "type": "email.sent", "data": {}}"#.to_string();
    for (raw, field) in [(deep_data, "data"), (dup_type, "type")] {
        let resp = app
            .client
            .post(app.url(&path))
            .header("X-Api-Key", &app.platform_key)
            .header("Content-Type", "application/json")
            .body(raw.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{raw:.80}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["errors"][0]["field"], field);
    }
    for (body, field) in cases {
        let (status, answer) = app.call("POST", &path, &app.platform_key, Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {answer}");
        assert!(answer["errors"].as_array().unwrap().iter().any(|e| e["field"] == field), "{body}: {answer}");
    }
    let resp = app
        .client
        .post(app.url(&path))
        .header("X-Api-Key", &app.platform_key)
        .header("Idempotency-Key", "a")
        .json(&json!({"type": "email.sent", "data": {}, "idempotencyKey": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(app.deliveries(&key, org, hook["id"].as_str().unwrap()).await.is_empty());
}

both!(invalid_events_are_422_and_schedule_nothing);

async fn bad_delivery_queries_are_422(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let hook = app.create_webhook(&key, org, "https://example.com/h", &["*"]).await;
    let base = format!("{}/{}/deliveries", TestApp::hooks_path(org), hook["id"].as_str().unwrap());
    for q in [
        "limit=0",
        "limit=251",
        "limit=abc",
        "status=done",
        "cursor=zzz",
        "colour=blue",
        "status=failed&status=succeeded",
        "eventType=%00",
        "eventType=a%0Ab",
    ] {
        let (status, _) = app.call("GET", &format!("{base}?{q}"), &key, None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{q}");
    }
    let (status, _) =
        app.call("GET", &format!("{base}?limit=250&status=pending&eventType=email.sent"), &key, None).await;
    assert_eq!(status, StatusCode::OK);
}

both!(bad_delivery_queries_are_422);
