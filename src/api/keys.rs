//! A short-lived cache of API key records, so a request does not read the database to
//! authenticate. Keys are created and revoked by the CLI, often from another process, so
//! nothing can invalidate an entry in this one: an entry lives for [`KeyCache::ttl`] and a
//! revoked key stops working everywhere within that time. Only keys found are cached (a
//! wrong prefix always reads the database), and the secret is checked against the cached
//! hash on every request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::{ApiKeyRecord, Result, Store};

/// At most this many keys are cached; past it the cache starts over.
const CAPACITY: usize = 10_000;

pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (ApiKeyRecord, Instant)>>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// How long a key read from the database is trusted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The key with this prefix: from the cache while fresh, else from the store.
    pub async fn find(&self, store: &dyn Store, prefix: &str) -> Result<Option<ApiKeyRecord>> {
        if !self.ttl.is_zero() {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((record, at)) = entries.get(prefix) {
                if at.elapsed() < self.ttl {
                    return Ok(Some(record.clone()));
                }
            }
        }
        let found = store.find_api_key(prefix).await?;
        if let Some(record) = &found {
            if !self.ttl.is_zero() {
                let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                if entries.len() >= CAPACITY {
                    entries.clear();
                }
                entries.insert(prefix.to_string(), (record.clone(), Instant::now()));
            }
        }
        Ok(found)
    }
}
