//! Thousands of random and malformed requests at the running API: no answer is a 5xx, every
//! error has the SPEC's shape, and the store is unchanged (each request is invalid in at
//! least one way, so nothing may be stored).

use rand::{rngs::StdRng, Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::both;
use crate::helpers::{spawn_app_with, Backend, TestApp};

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

/// A valid body for one of the endpoints, before it is spoiled.
fn valid_body(rng: &mut StdRng, org: Uuid) -> Value {
    match rng.gen_range(0..4) {
        0 => json!({"name": "n", "url": "https://example.com/h", "events": ["email.*"]}),
        1 => json!({"name": "renamed", "status": "paused", "headers": {"X-A": "b"}}),
        2 => json!({"type": "email.sent", "data": {"to": "a@b.c"}, "idempotencyKey": "k"}),
        _ => json!({"events": [{"organizationId": org, "type": "email.sent", "data": {}}]}),
    }
}

/// Spoils a JSON value so that it can no longer be valid for any endpoint.
fn spoil(rng: &mut StdRng, mut v: Value) -> Vec<u8> {
    let junk = [
        json!(null),
        json!(-1),
        json!(1e308),
        json!("\u{0}\u{7}\r\n"),
        json!([[[[[]]]]]),
        json!({"$": {"$": []}}),
        json!("x".repeat(3000)),
        json!(true),
    ];
    match rng.gen_range(0..6) {
        // Truncated JSON.
        0 => {
            let s = v.to_string();
            s.as_bytes()[..rng.gen_range(0..s.len())].to_vec()
        }
        // An unknown member added.
        1 => {
            v.as_object_mut().unwrap().insert(format!("unknown{}", rng.gen::<u16>()), pick(rng, &junk).clone());
            v.to_string().into_bytes()
        }
        // A known member replaced by junk of the wrong type.
        2 => {
            let obj = v.as_object_mut().unwrap();
            let keys: Vec<String> = obj.keys().cloned().collect();
            let k = pick(rng, &keys).clone();
            obj.insert(k, json!({"nested": pick(rng, &junk).clone(), "n": [1, {"$": null}]}));
            v.to_string().into_bytes()
        }
        // Random bytes.
        3 => (0..rng.gen_range(0..200)).map(|_| rng.gen::<u8>()).collect(),
        // Deep nesting.
        4 => format!("{}{}", "[".repeat(rng.gen_range(100..5000)), "]".repeat(rng.gen_range(0..5000))).into_bytes(),
        // A non-object body.
        _ => pick(rng, &junk).to_string().into_bytes(),
    }
}

async fn random_malformed_requests_never_get_a_5xx_nor_change_the_store(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.allowed_private_cidrs = None).await;
    let org = Uuid::now_v7();
    let org_key = app.org_key(org).await;
    let hook = app.create_webhook(&org_key, org, "https://example.com/h", &["*"]).await;
    let hook_id = hook["id"].as_str().unwrap().to_string();
    let before = app.call("GET", &TestApp::hooks_path(org), &org_key, None).await.1["data"].clone();

    let mut rng = StdRng::seed_from_u64(0x6d6f73656e64);
    let other = Uuid::now_v7().to_string();
    let segments = [
        org.to_string(),
        other.clone(),
        hook_id.clone(),
        "not-a-uuid".into(),
        "%00".into(),
        "..%2f..".into(),
        "%F0%9F%98%80".into(),
        "a".repeat(300),
        org.simple().to_string(),
        String::new(),
    ];
    let methods =
        [Method::GET, Method::POST, Method::PATCH, Method::DELETE, Method::PUT, Method::OPTIONS, Method::HEAD];
    let content_types =
        ["application/json", "text/plain", "application/json; charset=latin1", "multipart/form-data", ""];
    let keys = [
        app.platform_key.clone(),
        org_key.clone(),
        "mk_live_xxxxxxxxxxxx.yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy".into(),
        "Bearer".into(),
        String::new(),
    ];
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..2000 {
        let a = pick(&mut rng, &segments).clone();
        let b = pick(&mut rng, &segments).clone();
        let path = match rng.gen_range(0..8) {
            0 => format!("/organizations/{a}/webhooks-outbound"),
            1 => format!("/organizations/{a}/webhooks-outbound/{b}"),
            2 => format!(
                "/organizations/{a}/webhooks-outbound/{b}/deliveries?limit={}&status={}",
                rng.gen::<i32>(),
                pick(&mut rng, &segments)
            ),
            3 => format!("/organizations/{a}/webhooks-outbound/{b}/secret"),
            4 => format!("/organizations/{a}/events"),
            5 => "/events/batch".into(),
            6 => format!("/organizations/{a}/webhooks-outbound/{b}/deliveries/{a}/attempts"),
            _ => format!("/{a}/{b}"),
        };
        let method = pick(&mut rng, &methods).clone();
        let body = valid_body(&mut rng, org);
        let bytes = spoil(&mut rng, body);
        let mut req = app.client.request(method.clone(), app.url(&path)).body(bytes);
        let ct = *pick(&mut rng, &content_types);
        if !ct.is_empty() {
            req = req.header("Content-Type", ct);
        }
        // A DELETE needs no body, so a valid key would make it valid: never give it one.
        let key = if method == Method::DELETE { keys[2].clone() } else { pick(&mut rng, &keys).clone() };
        if !key.is_empty() {
            req = if rng.gen_bool(0.5) {
                req.header("X-Api-Key", key)
            } else {
                req.header("Authorization", format!("Bearer {key}"))
            };
        }
        if rng.gen_bool(0.1) {
            req = req.header("Idempotency-Key", "bad key with spaces");
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("request {i} {method} {path}: {e}"));
        let status = resp.status().as_u16();
        *statuses.entry(status).or_insert(0) += 1;
        assert!(status < 500, "request {i}: {method} {path} answered {status}");
        // GETs on valid paths may succeed (reads); every other answer is an error in the SPEC shape.
        if status >= 400 && method != Method::HEAD {
            let body: Value =
                resp.json().await.unwrap_or_else(|e| panic!("request {i}: {method} {path}: error body not JSON: {e}"));
            assert_eq!(body["statusCode"], status, "request {i}: {body}");
            assert!(body["message"].is_string() && body["path"].is_string() && body["timestamp"].is_string());
        }
    }
    let after = app.call("GET", &TestApp::hooks_path(org), &org_key, None).await.1["data"].clone();
    assert_eq!(before, after, "no malformed request changed a webhook");
    assert!(app.deliveries(&org_key, org, &hook_id).await.is_empty(), "no malformed request published an event");
    assert!(statuses.len() > 3, "the requests exercised several answers: {statuses:?}");
}

both!(random_malformed_requests_never_get_a_5xx_nor_change_the_store);
