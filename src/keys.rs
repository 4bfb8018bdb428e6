//! API key administration used by the CLI and by tests: create (the full key is returned
//! once and never stored), list, revoke.

use crate::domain::{api_key, api_key::Scope, time::Timestamp};
use crate::store::{ApiKeyRecord, Result, Store};

/// Creates a key and returns the full `mk_live_…` string, the only time it exists.
pub async fn create(store: &dyn Store, scope: Scope, name: Option<String>) -> Result<String> {
    let generated = api_key::generate();
    store
        .insert_api_key(&ApiKeyRecord {
            prefix: generated.prefix.clone(),
            secret_hash: generated.secret_hash.clone(),
            scope,
            name,
            created_at: Timestamp::now(),
            revoked_at: None,
        })
        .await?;
    Ok(generated.full)
}

/// One line per key, for `keys list`.
pub fn describe(k: &ApiKeyRecord) -> String {
    let scope = match k.scope {
        Scope::Platform => "platform".to_string(),
        Scope::Organization(org) => format!("org:{org}"),
    };
    let state = match k.revoked_at {
        Some(at) => format!("revoked {}", at.to_rfc3339()),
        None => "active".into(),
    };
    format!("{}\t{}\t{}\t{}\t{}", k.prefix, scope, k.name.as_deref().unwrap_or("-"), k.created_at.to_rfc3339(), state)
}
