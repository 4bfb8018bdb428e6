//! # mosend-webhooks
//!
//! The outbound webhook service of Mosend: organizations register endpoints subscribed to
//! event types; the platform publishes events; the service fans each event out to the
//! matching endpoints, delivers signed POSTs, retries on failure and keeps the history.
//!
//! ## Architecture
//! - [`domain`]: pure types and rules (ids, event types, subscriptions, URL and header
//!   validation, the address rules, retry schedule). No I/O.
//! - [`store`]: the only place with SQL, behind the [`store::Store`] trait. The database is
//!   also the delivery queue (batch claims under a lease).
//! - [`api`]: the axum HTTP API. Depends on `domain` and `store`.
//! - [`delivery`]: the worker (claim loop, bounded concurrency, drain) and the dispatcher
//!   (sign, send, classify). Depends on `domain`, `store`, [`signing`] and [`net`].
//! - [`net`]: the outbound client with the SSRF guard.
//!
//! `api` and `delivery` never import each other; [`run`] wires them together. The store's
//! work signal is how a publish wakes the worker in the same process.

pub mod api;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod keys;
pub mod net;
pub mod signing;
pub mod store;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Role};
use crate::delivery::{Dispatcher, Worker, WorkerConfig};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] net::ClientError),
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// The API router over a store, as `serve` builds it.
pub fn app(config: &Config, store: Arc<dyn Store>) -> axum::Router {
    api::router(api::AppState {
        publisher: store::Publisher::start(store.clone(), config.idempotency_window),
        store,
        catalogue: Arc::new(config.catalogue.clone()),
        allow: config.allowed_private_cidrs.clone(),
        metrics: telemetry::metrics_handle(),
        max_body: api::MAX_BODY_BYTES,
        idempotency_window: config.idempotency_window,
        rotation_grace: config.secret_rotation_grace,
        keys: Arc::new(api::keys::KeyCache::new(config.api_key_cache_ttl)),
        limiter: config.rate_limit.map(|(rate, burst)| {
            Arc::new(governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst)))
        }),
    })
}

/// The delivery worker over a store, as `serve` builds it.
pub fn worker(config: &Config, store: Arc<dyn Store>) -> Result<Worker, RunError> {
    let dispatcher =
        Dispatcher::new(config.allowed_private_cidrs.clone(), config.delivery_timeout, config.max_in_flight)?;
    Ok(Worker::new(
        store,
        dispatcher,
        WorkerConfig {
            batch: config.claim_batch,
            max_in_flight: config.max_in_flight,
            per_webhook: config.per_webhook_concurrency,
            poll_interval: config.poll_interval,
            lease: config.delivery_timeout + config.lease_margin,
            schedule: config.retry_schedule.clone(),
            disable: config.disable,
            drain_timeout: config.delivery_timeout + Duration::from_secs(2),
            retention: config.retention,
            retention_interval: config.retention_interval,
        },
    ))
}

/// Runs the service until `shutdown` is cancelled: opens and migrates the store, serves the
/// API on `listener` (or on `config.listen`) and runs the delivery worker, as `role` says.
/// On shutdown the server stops accepting, the worker stops claiming and lets in-flight
/// attempts finish (or gives their leases back), then this returns.
pub async fn run(
    config: Config,
    role: Role,
    listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let store = store::open(&config.database_url, config.encryption_key.as_ref()).await?;
    let worker_task = if role != Role::Api {
        let worker = worker(&config, store.clone())?;
        Some(tokio::spawn(worker.run(shutdown.clone())))
    } else {
        None
    };
    if role != Role::Worker {
        let listener = match listener {
            Some(l) => l,
            None => {
                TcpListener::bind(config.listen).await.map_err(|e| RunError::Listen(config.listen.to_string(), e))?
            }
        };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, database = %redact_url(&config.database_url), "listening");
        }
        let router = app(&config, store.clone());
        api::serve::serve(listener, router, shutdown.clone()).await.map_err(RunError::Serve)?;
    } else {
        shutdown.cancelled().await;
    }
    if let Some(task) = worker_task {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "the delivery worker panicked");
        }
    }
    Ok(())
}

/// A database URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}
