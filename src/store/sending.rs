//! What a publish needs to know of a webhook to hand a fresh delivery to the local worker,
//! shared by the backends' publish paths.

use std::collections::HashMap;
use std::sync::Arc;

use url::Url;
use uuid::Uuid;

use super::{Cipher, ClaimedDelivery, NewEvent, Result, StoreError};
use crate::domain::{
    payload::OutboundEvent,
    time::Timestamp,
    webhook::{Format, Headers, WebhookSecret},
};
use crate::signing::Signer;

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

/// A webhook's URL, parsed for the SSRF check and for the HTTP client.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: Url,
    pub uri: http::Uri,
}

impl Endpoint {
    fn parse(url: &str) -> std::result::Result<Self, String> {
        let url = Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
        let uri = url.as_str().parse().map_err(|e| format!("invalid URL: {e}"))?;
        Ok(Endpoint { url, uri })
    }
}

/// A webhook's sending details, prepared once and shared by its deliveries: the URL parsed
/// and the secrets opened and keyed for signing.
pub struct Sendable {
    pub webhook_id: Uuid,
    /// The parsed URL, or why the stored one does not parse.
    pub url: std::result::Result<Endpoint, String>,
    pub format: Format,
    /// Signs with the secret, and with the previous one while its grace period lasts.
    pub signer: Signer,
    pub headers: Headers,
}

impl std::fmt::Debug for Sendable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The signer holds the secrets: left out.
        f.debug_struct("Sendable")
            .field("webhook_id", &self.webhook_id)
            .field("url", &self.url.as_ref().map(|e| e.url.as_str()))
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
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
        let previous_secret: Option<WebhookSecret> = match previous {
            Some((sealed, until)) if until > now => Some(open_secret(cipher, &sealed, webhook_id)?),
            _ => None,
        };
        let secret = open_secret(cipher, sealed, webhook_id)?;
        Ok(Sendable {
            webhook_id,
            url: Endpoint::parse(&url),
            format: Format::parse(format).map_err(|_| corrupt("format"))?,
            signer: Signer::new(&secret, previous_secret.as_ref()),
            headers: serde_json::from_str::<Headers>(headers).map_err(|_| corrupt("headers"))?,
        })
    }
}

/// The deliveries a publish hands over: one shared [`OutboundEvent`] per event, made on its
/// first delivery.
#[derive(Default)]
pub(crate) struct Handing(HashMap<Uuid, Arc<OutboundEvent>>);

impl Handing {
    /// A new delivery of `e` to `webhook`, as a claim would have returned it.
    pub(crate) fn delivery(
        &mut self,
        id: Uuid,
        e: &NewEvent,
        webhook: &Arc<Sendable>,
        lease_until: Timestamp,
    ) -> ClaimedDelivery {
        let event = self
            .0
            .entry(e.id)
            .or_insert_with(|| Arc::new(OutboundEvent::new(e.id, e.event_type.clone(), e.data.clone(), e.created_at)))
            .clone();
        ClaimedDelivery { id, attempts: 0, lease_until, event, webhook: webhook.clone() }
    }
}

/// A delivery a claim leased, as its `RETURNING` clause gives it, before its event and its
/// webhook are read (once each per claim, however many of its deliveries the claim holds).
pub(crate) struct ClaimedRow {
    pub(crate) id: Uuid,
    pub(crate) webhook_id: Uuid,
    pub(crate) event_id: Uuid,
    pub(crate) event_type: String,
    pub(crate) attempts: i64,
}

impl ClaimedRow {
    /// The event ids and the webhook ids of `rows`, each once.
    pub(crate) fn distinct(rows: &[ClaimedRow]) -> (Vec<Uuid>, Vec<Uuid>) {
        let mut events: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
        let mut webhooks: Vec<Uuid> = rows.iter().map(|r| r.webhook_id).collect();
        for ids in [&mut events, &mut webhooks] {
            ids.sort_unstable();
            ids.dedup();
        }
        (events, webhooks)
    }

    /// The claimed deliveries, given their events' `(data, created_at)` and their webhooks
    /// by id; a delivery whose event or webhook is gone is left to its lease.
    pub(crate) fn assemble(
        rows: Vec<ClaimedRow>,
        events: &HashMap<Uuid, (String, Timestamp)>,
        webhooks: &HashMap<Uuid, Arc<Sendable>>,
        lease_until: Timestamp,
    ) -> Result<Vec<ClaimedDelivery>> {
        let mut shared: HashMap<Uuid, Arc<OutboundEvent>> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (Some((data, created_at)), Some(webhook)) = (events.get(&row.event_id), webhooks.get(&row.webhook_id))
            else {
                continue;
            };
            // The type is the delivery's own column; an event's deliveries all carry its type.
            let event = shared
                .entry(row.event_id)
                .or_insert_with(|| {
                    Arc::new(OutboundEvent::new(row.event_id, row.event_type, data.clone(), *created_at))
                })
                .clone();
            out.push(ClaimedDelivery {
                id: row.id,
                attempts: u32::try_from(row.attempts).map_err(|_| StoreError::Corrupt("delivery attempts".into()))?,
                lease_until,
                event,
                webhook: webhook.clone(),
            });
        }
        Ok(out)
    }
}
