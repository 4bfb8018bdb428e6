//! What a publish needs to know of a webhook to hand a fresh delivery to the local worker,
//! shared by the backends' publish paths.

use std::sync::Arc;

use uuid::Uuid;

use super::{Cipher, ClaimedDelivery, NewEvent, Result, StoreError};
use crate::domain::{
    time::Timestamp,
    webhook::{Format, Headers, WebhookSecret},
};

/// Opens a sealed webhook secret, bound to its webhook's id.
pub(crate) fn open_secret(cipher: &Cipher, sealed: &str, webhook_id: Uuid) -> Result<WebhookSecret> {
    let plain = cipher.open(sealed, &webhook_id.to_string()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    WebhookSecret::parse(&plain).map_err(|_| StoreError::Corrupt("webhook secret".into()))
}

/// A webhook that subscribes to some events, as a publish sees it.
pub(crate) struct Target {
    pub(crate) id: Uuid,
    pub(crate) events: Vec<String>,
    pub(crate) active: bool,
    /// What a delivery to it needs, when it is handed to the local worker.
    pub(crate) send: Option<Arc<Sendable>>,
}

/// A webhook's sending details (secrets opened).
pub(crate) struct Sendable {
    pub(crate) webhook_id: Uuid,
    pub(crate) url: String,
    pub(crate) format: Format,
    pub(crate) secret: WebhookSecret,
    pub(crate) previous_secret: Option<WebhookSecret>,
    pub(crate) headers: Headers,
}

impl Sendable {
    /// From a webhook row's stored columns: the previous secret only while its grace period
    /// lasts.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_stored(
        cipher: &Cipher,
        now: Timestamp,
        webhook_id: Uuid,
        url: String,
        format: &str,
        sealed: &str,
        previous: Option<(String, Timestamp)>,
        headers: &str,
    ) -> Result<Self> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("webhook {what}"));
        let previous_secret = match previous {
            Some((sealed, until)) if until > now => Some(open_secret(cipher, &sealed, webhook_id)?),
            _ => None,
        };
        Ok(Sendable {
            webhook_id,
            url,
            format: Format::parse(format).map_err(|_| corrupt("format"))?,
            secret: open_secret(cipher, sealed, webhook_id)?,
            previous_secret,
            headers: serde_json::from_str::<Headers>(headers).map_err(|_| corrupt("headers"))?,
        })
    }

    /// A new delivery of `e` to this webhook, as a claim would have returned it.
    pub(crate) fn delivery(&self, id: Uuid, e: &NewEvent, lease_until: Timestamp) -> ClaimedDelivery {
        ClaimedDelivery {
            id,
            webhook_id: self.webhook_id,
            event_id: e.id,
            event_type: e.event_type.clone(),
            event_data: e.data.clone(),
            event_created_at: e.created_at,
            attempts: 0,
            url: self.url.clone(),
            format: self.format,
            secret: self.secret.clone(),
            previous_secret: self.previous_secret.clone(),
            headers: self.headers.clone(),
            lease_until,
        }
    }
}
