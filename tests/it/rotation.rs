//! Secret rotation: a new secret at once, and the old one signing beside it for a grace
//! period (two `v1,` values in `webhook-signature`).

use std::time::Duration;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;
use uuid::Uuid;

use crate::both;
use crate::helpers::{spawn_app, Backend, Received, TestApp, TestReceiver};

fn v1(secret: &str, r: &Received) -> String {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", r.header("webhook-id"), r.header("webhook-timestamp")).as_bytes());
    mac.update(&r.body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn mosend(secret: &str, r: &Received) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&r.body);
    hex::encode(mac.finalize().into_bytes())
}

async fn rotation_signs_with_both_secrets_during_the_grace_period(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let receiver = TestReceiver::start().await;
    let hook = app.create_webhook(&key, org, &receiver.url(), &["*"]).await;
    let old = hook["secret"].as_str().unwrap().to_string();
    let path = format!("{}/{}/secret", TestApp::hooks_path(org), hook["id"].as_str().unwrap());

    let resp = app.client.post(app.url(&format!("{path}/rotate"))).header("X-Api-Key", &key).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let rotated: Value = resp.json().await.unwrap();
    let new = rotated["data"]["secret"].as_str().unwrap().to_string();
    assert!(new.starts_with("whsec_") && new != old);
    assert!(rotated["data"]["previousSecretExpiresAt"].is_string());
    let (_, revealed) = app.call("GET", &path, &key, None).await;
    assert_eq!(revealed["data"]["secret"], new.as_str());

    app.publish(org, "email.sent", json!({"n": 1})).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let r = &got[0];
    let sigs: Vec<&str> = r.header("webhook-signature").split(' ').collect();
    assert_eq!(sigs, vec![v1(&new, r), v1(&old, r)], "the new secret, then the previous one");
    assert_eq!(r.header("x-mosend-signature"), mosend(&new, r));

    // A rotation with no grace: only the newest secret signs.
    let (status, body) = app.call("POST", &format!("{path}/rotate"), &key, Some(json!({"gracePeriod": "0s"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let newest = body["data"]["secret"].as_str().unwrap().to_string();
    app.publish(org, "email.sent", json!({"n": 2})).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].header("webhook-signature"), v1(&newest, &got[1]));
}

both!(rotation_signs_with_both_secrets_during_the_grace_period);

async fn rotation_requests_are_validated(backend: Backend) {
    let app = spawn_app(backend).await;
    let (org, other) = (Uuid::now_v7(), Uuid::now_v7());
    let key = app.org_key(org).await;
    let hook = app.create_webhook(&key, org, "https://example.com/h", &["*"]).await;
    let rotate = format!("{}/{}/secret/rotate", TestApp::hooks_path(org), hook["id"].as_str().unwrap());
    for bad in [
        json!({"gracePeriod": "8d"}),
        json!({"gracePeriod": "soon"}),
        json!({"gracePeriod": 5}),
        json!({"grace": "1h"}),
    ] {
        let (status, body) = app.call("POST", &rotate, &key, Some(bad.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    let resp = app.client.post(app.url(&rotate)).header("X-Api-Key", &key).body("1h").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _) =
        app.call("POST", &format!("{}/{}/secret/rotate", TestApp::hooks_path(org), Uuid::now_v7()), &key, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) =
        app.call("POST", &format!("{}/{}/secret/rotate", TestApp::hooks_path(other), Uuid::now_v7()), &key, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, after) = app
        .call("GET", &format!("{}/{}/secret", TestApp::hooks_path(org), hook["id"].as_str().unwrap()), &key, None)
        .await;
    assert_eq!(after["data"]["secret"], hook["secret"], "rejected rotations changed nothing");
}

both!(rotation_requests_are_validated);
