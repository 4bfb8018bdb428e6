//! Authentication and tenancy: 401 / 403 / 404 exactly as SPEC §2 says, and the order of
//! the checks.

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::both;
use std::time::{Duration, Instant};

use crate::helpers::{spawn_app, spawn_app_with, wait_until, Backend, TestApp};

async fn missing_malformed_wrong_and_revoked_keys_are_401(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let path = TestApp::hooks_path(org);

    let resp = app.client.get(app.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["statusCode"], 401);
    assert_eq!(body["error"], "Unauthorized");
    assert_eq!(body["path"], path);

    let (prefix, _) = key.split_once('.').unwrap();
    let wrong_secret = format!("{prefix}.{}", "A".repeat(40));
    for bad in ["nope", "mk_live_short.x", &wrong_secret, "mk_live_zzzzzzzzzzzz.0123456789abcdefghij0123456789abcdef"] {
        let (status, _) = app.call("GET", &path, bad, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
    }
    let resp = app.client.get(app.url(&path)).header("Authorization", format!("Basic {key}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Bearer works as well as X-Api-Key; both at once must carry the same key.
    let resp = app.client.get(app.url(&path)).header("Authorization", format!("Bearer {key}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let both = |bearer: String| {
        app.client
            .get(app.url(&path))
            .header("X-Api-Key", &key)
            .header("Authorization", format!("Bearer {bearer}"))
            .send()
    };
    assert_eq!(both(key.clone()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(both("junk".into()).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // The key is cached now; its prefix with another secret is still refused.
    let (status, _) = app.call("GET", &path, &wrong_secret, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A key is trusted for `MOSEND_WEBHOOKS_API_KEY_CACHE_TTL` (1 s by default) after it was
    // read: once revoked, it stops working within that time.
    let revoked = app
        .store
        .revoke_api_key(&prefix["mk_live_".len()..], mosend_webhooks::domain::time::Timestamp::now())
        .await
        .unwrap();
    assert!(revoked);
    let since = Instant::now();
    let refused = wait_until(Duration::from_secs(3), || async {
        app.call("GET", &path, &key, None).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused && since.elapsed() < Duration::from_millis(1500), "refused after {:?}", since.elapsed());
}

both!(missing_malformed_wrong_and_revoked_keys_are_401);

async fn without_the_key_cache_a_revoked_key_is_refused_at_once(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.api_key_cache_ttl = Some("0s".into())).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let path = TestApp::hooks_path(org);
    assert_eq!(app.call("GET", &path, &key, None).await.0, StatusCode::OK);
    let prefix = &key["mk_live_".len()..key.find('.').unwrap()];
    assert!(app.store.revoke_api_key(prefix, mosend_webhooks::domain::time::Timestamp::now()).await.unwrap());
    assert_eq!(app.call("GET", &path, &key, None).await.0, StatusCode::UNAUTHORIZED);
}

both!(without_the_key_cache_a_revoked_key_is_refused_at_once);

async fn an_organization_key_never_reaches_another_organization(backend: Backend) {
    let app = spawn_app(backend).await;
    let (org_a, org_b) = (Uuid::now_v7(), Uuid::now_v7());
    let (key_a, key_b) = (app.org_key(org_a).await, app.org_key(org_b).await);
    let hook_b = app.create_webhook(&key_b, org_b, "https://example.com/b", &["*"]).await;
    let id_b = hook_b["id"].as_str().unwrap();

    // Another organization in the path: 403, whatever the operation.
    let b_path = TestApp::hooks_path(org_b);
    for (method, path) in [
        ("GET", b_path.clone()),
        ("POST", b_path.clone()),
        ("GET", format!("{b_path}/{id_b}")),
        ("PATCH", format!("{b_path}/{id_b}")),
        ("DELETE", format!("{b_path}/{id_b}")),
        ("GET", format!("{b_path}/{id_b}/secret")),
        ("GET", format!("{b_path}/{id_b}/deliveries")),
    ] {
        let (status, body) = app.call(method, &path, &key_a, Some(json!({"name": "x"}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert!(!body.to_string().contains("whsec_"));
    }

    // B's webhook id under A's own organization: 404, never revealed.
    let a_path = TestApp::hooks_path(org_a);
    for (method, path) in [
        ("GET", format!("{a_path}/{id_b}")),
        ("PATCH", format!("{a_path}/{id_b}")),
        ("DELETE", format!("{a_path}/{id_b}")),
        ("GET", format!("{a_path}/{id_b}/secret")),
        ("GET", format!("{a_path}/{id_b}/deliveries")),
    ] {
        let (status, _) = app.call(method, &path, &key_a, Some(json!({"name": "x"}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    // B's webhook is untouched.
    let (status, body) = app.call("GET", &format!("{b_path}/{id_b}"), &key_b, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["name"], "test hook");

    // The platform key manages any organization.
    let (status, _) = app.call("GET", &format!("{b_path}/{id_b}/secret"), &app.platform_key, None).await;
    assert_eq!(status, StatusCode::OK);
}

both!(an_organization_key_never_reaches_another_organization);

async fn an_organization_key_cannot_publish_events(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let (status, body) = app
        .call("POST", &format!("/organizations/{org}/events"), &key, Some(json!({"type": "email.sent", "data": {}})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

both!(an_organization_key_cannot_publish_events);

async fn checks_run_in_the_order_the_spec_fixes(backend: Backend) {
    let app = spawn_app(backend).await;
    let (org, other) = (Uuid::now_v7(), Uuid::now_v7());
    let key = app.org_key(org).await;
    let hook = app.create_webhook(&key, org, "https://example.com/a", &["*"]).await;
    let hook_path = format!("{}/{}", TestApp::hooks_path(org), hook["id"].as_str().unwrap());
    let send = |path: String, key: Option<&str>, content_type: Option<&str>, body: Vec<u8>| {
        let mut req = app.client.patch(app.url(&path)).body(body);
        if let Some(k) = key {
            req = req.header("X-Api-Key", k);
        }
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let json = Some("application/json");
    let big = vec![b' '; 300 * 1024];
    // 401 before 400 (bad UUID).
    assert_eq!(send("/organizations/not-a-uuid/webhooks-outbound/x".into(), None, json, b"{".to_vec()).await, 401);
    // 400 (bad UUID) before 403.
    assert_eq!(send(format!("/organizations/{other}/webhooks-outbound/x"), Some(&key), json, b"{".to_vec()).await, 400);
    // 403 before 404.
    assert_eq!(
        send(format!("{}/{}", TestApp::hooks_path(other), Uuid::now_v7()), Some(&key), json, b"{".to_vec()).await,
        403
    );
    // 404 before 415.
    assert_eq!(
        send(format!("{}/{}", TestApp::hooks_path(org), Uuid::now_v7()), Some(&key), Some("text/plain"), b"{".to_vec())
            .await,
        404
    );
    // 415 before 413.
    assert_eq!(send(hook_path.clone(), Some(&key), Some("text/plain"), big.clone()).await, 415);
    // 413 before 400 (malformed JSON).
    assert_eq!(send(hook_path.clone(), Some(&key), json, big).await, 413);
    // 400 before 422.
    assert_eq!(send(hook_path.clone(), Some(&key), json, b"{\"url\": ".to_vec()).await, 400);
    assert_eq!(send(hook_path, Some(&key), json, br#"{"url": 5}"#.to_vec()).await, 422);
}

both!(checks_run_in_the_order_the_spec_fixes);

async fn each_api_key_is_rate_limited_with_429_and_retry_after(backend: Backend) {
    let app = crate::helpers::spawn_app_with(backend, |s| {
        s.rate_limit = Some(5);
        s.rate_limit_burst = Some(5);
    })
    .await;
    let org = Uuid::now_v7();
    let (noisy, quiet) = (app.org_key(org).await, app.org_key(org).await);
    let path = TestApp::hooks_path(org);
    let mut limited = None;
    for _ in 0..12 {
        let resp = app.client.get(app.url(&path)).header("X-Api-Key", &noisy).send().await.unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.expect("the sixth request within a second is refused");
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["statusCode"], 429);
    assert_eq!(body["error"], "Too Many Requests");
    // Another key is not affected.
    let (status, _) = app.call("GET", &path, &quiet, None).await;
    assert_eq!(status, StatusCode::OK);
}

both!(each_api_key_is_rate_limited_with_429_and_retry_after);
