//! The webhook resource: create, list, read, update, delete, reveal the secret.

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::both;
use crate::helpers::{spawn_app, Backend, TestApp};

fn is_rfc3339_millis_z(s: &str) -> bool {
    // 2026-05-01T03:42:18.123Z
    s.len() == 24 && s.ends_with('Z') && s.as_bytes()[10] == b'T' && s.as_bytes()[19] == b'.'
}

async fn create_answers_201_with_the_secret_in_an_envelope_and_list_never_shows_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let (status, body) = app
        .call(
            "POST",
            &TestApp::hooks_path(org),
            &key,
            Some(json!({"name": "  Orders  ", "url": "https://example.com/hook", "events": ["email.delivered", "email.*"], "description": "d"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let data = &body["data"];
    assert!(is_rfc3339_millis_z(body["timestamp"].as_str().unwrap()));
    assert_eq!(data["name"], "Orders");
    assert_eq!(data["organizationId"], org.to_string());
    assert_eq!(data["format"], "json");
    assert_eq!(data["status"], "active");
    assert_eq!(data["disabledReason"], json!(null));
    assert_eq!(data["headers"], json!({}));
    assert!(is_rfc3339_millis_z(data["createdAt"].as_str().unwrap()));
    assert!(is_rfc3339_millis_z(data["updatedAt"].as_str().unwrap()));
    let secret = data["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    let id = data["id"].as_str().unwrap();
    assert_eq!(Uuid::parse_str(id).unwrap().get_version_num(), 7);

    let (status, list) = app.call("GET", &TestApp::hooks_path(org), &key, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(list["data"][0].get("secret").is_none());
    assert!(!list.to_string().contains(secret));

    let (status, one) = app.call("GET", &format!("{}/{id}", TestApp::hooks_path(org)), &key, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["data"]["id"], id);
    assert!(one["data"].get("secret").is_none());

    let (status, revealed) = app.call("GET", &format!("{}/{id}/secret", TestApp::hooks_path(org)), &key, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(revealed["data"], json!({"secret": secret}));
    assert!(is_rfc3339_millis_z(revealed["timestamp"].as_str().unwrap()));
}

both!(create_answers_201_with_the_secret_in_an_envelope_and_list_never_shows_it);

async fn an_organization_without_webhooks_has_an_empty_list(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let (status, body) = app.call("GET", &TestApp::hooks_path(org), &app.platform_key.clone(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"], json!([]));
}

both!(an_organization_without_webhooks_has_an_empty_list);

async fn patch_updates_only_the_given_fields_and_validates_them_like_create(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let hook = app.create_webhook(&key, org, "https://example.com/a", &["email.sent"]).await;
    let path = format!("{}/{}", TestApp::hooks_path(org), hook["id"].as_str().unwrap());
    let (status, body) = app
        .call(
            "PATCH",
            &path,
            &key,
            Some(json!({"url": "https://example.org/b", "format": "standard-webhooks", "headers": {"X-Team": "mail"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let d = &body["data"];
    assert_eq!(d["url"], "https://example.org/b");
    assert_eq!(d["format"], "standard-webhooks");
    assert_eq!(d["headers"], json!({"X-Team": "mail"}));
    assert_eq!(d["name"], hook["name"]);
    assert_eq!(d["events"], json!(["email.sent"]));
    assert_eq!(d["createdAt"], hook["createdAt"]);
    assert!(d.get("secret").is_none());

    let (status, _) = app.call("PATCH", &path, &key, Some(json!({"url": "ftp://nope"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, after) = app.call("GET", &path, &key, None).await;
    assert_eq!(after["data"]["url"], "https://example.org/b", "a rejected PATCH changes nothing");

    let (status, body) = app.call("PATCH", &path, &key, Some(json!({"description": null, "name": "renamed"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["description"], json!(null));
    assert_eq!(body["data"]["name"], "renamed");
}

both!(patch_updates_only_the_given_fields_and_validates_them_like_create);

async fn disabling_through_patch_sets_a_reason_and_reactivating_clears_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let hook = app.create_webhook(&key, org, "https://example.com/a", &["*"]).await;
    let path = format!("{}/{}", TestApp::hooks_path(org), hook["id"].as_str().unwrap());
    let (_, body) = app.call("PATCH", &path, &key, Some(json!({"status": "disabled"}))).await;
    assert_eq!(body["data"]["status"], "disabled");
    assert!(body["data"]["disabledReason"].is_string());
    assert!(body["data"]["disabledAt"].is_string());
    let (_, body) = app.call("PATCH", &path, &key, Some(json!({"status": "active"}))).await;
    assert_eq!(body["data"]["status"], "active");
    assert_eq!(body["data"]["disabledReason"], json!(null));
    assert_eq!(body["data"]["disabledAt"], json!(null));
}

both!(disabling_through_patch_sets_a_reason_and_reactivating_clears_it);

async fn delete_answers_204_then_the_webhook_is_gone(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let hook = app.create_webhook(&key, org, "https://example.com/a", &["*"]).await;
    let path = format!("{}/{}", TestApp::hooks_path(org), hook["id"].as_str().unwrap());
    let resp = app.client.delete(app.url(&path)).header("X-Api-Key", &key).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.bytes().await.unwrap().is_empty());
    for (method, p) in [
        ("GET", path.clone()),
        ("DELETE", path.clone()),
        ("GET", format!("{path}/secret")),
        ("GET", format!("{path}/deliveries")),
    ] {
        let (status, body) = app.call(method, &p, &key, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {p}");
        assert_eq!(body["statusCode"], 404);
    }
    let (_, list) = app.call("GET", &TestApp::hooks_path(org), &key, None).await;
    assert_eq!(list["data"], json!([]));
}

both!(delete_answers_204_then_the_webhook_is_gone);

async fn health_ready_and_metrics_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let org = Uuid::now_v7();
    app.publish(org, "email.sent", json!({})).await;
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("mosend_webhooks_events_published_total"), "{metrics}");
}

both!(health_ready_and_metrics_answer);

async fn openapi_json_describes_every_endpoint_as_openapi_3_1(backend: Backend) {
    let app = spawn_app(backend).await;
    let doc: serde_json::Value = app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let base = "/organizations/{orgId}/webhooks-outbound";
    for (path, method) in [
        (base.to_string(), "get"),
        (base.to_string(), "post"),
        (format!("{base}/{{id}}"), "get"),
        (format!("{base}/{{id}}"), "patch"),
        (format!("{base}/{{id}}"), "delete"),
        (format!("{base}/{{id}}/deliveries"), "get"),
        (format!("{base}/{{id}}/secret"), "get"),
        ("/organizations/{orgId}/events".to_string(), "post"),
    ] {
        assert!(doc["paths"][&path][method].is_object(), "{method} {path} is documented");
    }
    assert_eq!(
        doc["paths"][base]["post"]["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Envelope_WebhookView"
    );
    assert!(doc["components"]["securitySchemes"]["apiKey"].is_object());
}

both!(openapi_json_describes_every_endpoint_as_openapi_3_1);

#[tokio::test]
async fn webhook_secrets_are_encrypted_at_rest_in_the_sqlite_files() {
    let app = spawn_app(Backend::Sqlite).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    let hook = app.create_webhook(&key, org, "https://example.com/h", &["*"]).await;
    let secret = hook["secret"].as_str().unwrap().to_string();
    let (_, revealed) = app
        .call("GET", &format!("{}/{}/secret", TestApp::hooks_path(org), hook["id"].as_str().unwrap()), &key, None)
        .await;
    assert_eq!(revealed["data"]["secret"], secret.as_str());
    let raw = secret.strip_prefix("whsec_").unwrap().as_bytes();
    let key_secret = key.split_once('.').unwrap().1.as_bytes();
    let mut files = 0;
    for entry in std::fs::read_dir(app.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("test.db")
            && !path.to_string_lossy().ends_with(".key")
        {
            let bytes = std::fs::read(&path).unwrap();
            files += 1;
            assert!(!bytes.windows(raw.len()).any(|w| w == raw), "{} holds a webhook secret", path.display());
            assert!(
                !bytes.windows(key_secret.len()).any(|w| w == key_secret),
                "{} holds an API key secret",
                path.display()
            );
        }
    }
    assert!(files >= 1);
    // The key file was generated beside the database, readable by its owner only.
    let key_file = app.dir.path().join("test.db.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
}

async fn a_wrong_encryption_key_is_refused_at_start(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::helpers::TestDb::new(backend, dir.path()).await;
    let url = db.url.clone();
    let a = mosend_webhooks::store::EncryptionKey::generate();
    let b = mosend_webhooks::store::EncryptionKey::generate();
    mosend_webhooks::store::open(&url, Some(&a)).await.unwrap();
    assert!(mosend_webhooks::store::open(&url, Some(&a)).await.is_ok());
    let err = mosend_webhooks::store::open(&url, Some(&b)).await.err().expect("a wrong key is refused");
    assert!(err.to_string().contains("encryption key"), "{err}");
}

both!(a_wrong_encryption_key_is_refused_at_start);

async fn concurrent_patches_never_lose_a_change_nor_undo_a_disable(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = Uuid::now_v7();
    let key = app.org_key(org).await;
    for round in 0..8 {
        let hook = app
            .create_webhook_with(
                &key,
                org,
                json!({"name": "h", "url": "https://example.com/h", "events": ["*"], "status": "paused"}),
            )
            .await;
        let path = format!("{}/{}", TestApp::hooks_path(org), hook["id"].as_str().unwrap());
        let bodies = [
            json!({"name": format!("n{round}")}),
            json!({"description": format!("d{round}")}),
            json!({"headers": {"X-Round": format!("{round}")}}),
            json!({"status": "disabled"}),
        ];
        let calls = bodies.iter().map(|b| app.call("PATCH", &path, &key, Some(b.clone())));
        for (status, body) in futures::future::join_all(calls).await {
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let (_, after) = app.call("GET", &path, &key, None).await;
        let d = &after["data"];
        assert_eq!(d["name"], format!("n{round}"), "{d}");
        assert_eq!(d["description"], format!("d{round}"), "{d}");
        assert_eq!(d["headers"]["X-Round"], format!("{round}"), "{d}");
        assert_eq!(d["status"], "disabled", "{d}");
        assert!(d["disabledReason"].is_string());
    }
}

both!(concurrent_patches_never_lose_a_change_nor_undo_a_disable);
