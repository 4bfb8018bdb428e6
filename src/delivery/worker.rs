//! The claim loop. Each round leases up to `batch` due deliveries (never more than the free
//! global slots, and never more than `per_webhook` in flight for one webhook, counted in
//! the database so it holds across processes), spawns one task per delivery, and sleeps
//! until new work is signalled, a slot frees up, or the poll interval passes.
//!
//! No transaction is open while a request is in flight: claim, send, then record. A
//! worker that dies mid-attempt leaves its leases to expire; the deliveries are then
//! claimed again (at least once).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::dispatch::{AttemptResult, Dispatcher};
use crate::domain::{delivery::Outcome, retry::RetrySchedule, time::Timestamp};
use crate::store::{AttemptRecord, ClaimRequest, ClaimedDelivery, DisablePolicy, NextStep, Store};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Deliveries leased per claim.
    pub batch: u32,
    /// Attempts in flight at once, in all.
    pub max_in_flight: usize,
    /// Attempts in flight at once for one webhook.
    pub per_webhook: u32,
    /// How often to look for due deliveries when nothing signals new work.
    pub poll_interval: Duration,
    /// How long a claim holds a delivery: the attempt timeout plus a margin.
    pub lease: Duration,
    pub schedule: RetrySchedule,
    pub disable: DisablePolicy,
    /// How long to wait for in-flight attempts on shutdown before giving their leases back.
    pub drain_timeout: Duration,
    /// History older than this is purged…
    pub retention: Duration,
    /// …this often.
    pub retention_interval: Duration,
}

type Recorded = (AttemptRecord, oneshot::Sender<()>);

/// How long the claim loop waits after a slot frees, to refill several slots with one claim.
const CLAIM_COALESCE: Duration = Duration::from_millis(2);

pub struct Worker {
    store: Arc<dyn Store>,
    dispatcher: Dispatcher,
    config: WorkerConfig,
    token: Uuid,
}

impl Worker {
    pub fn new(store: Arc<dyn Store>, dispatcher: Dispatcher, config: WorkerConfig) -> Self {
        Self { store, dispatcher, config, token: Uuid::now_v7() }
    }

    /// Runs until `shutdown` is cancelled, then lets in-flight attempts finish (up to the
    /// drain timeout) and gives back any lease still held.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.config.max_in_flight));
        let freed = Arc::new(Notify::new());
        let signal = this.store.work_signal();
        let tracker = TaskTracker::new();
        let (to_recorder, rx) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(record_in_groups(this.store.clone(), this.config.disable, rx));
        tracker.spawn(purge_history(
            this.store.clone(),
            this.config.retention,
            this.config.retention_interval,
            shutdown.clone(),
        ));
        info!(token = %this.token, "delivery worker started");
        while !shutdown.is_cancelled() {
            let free = u32::try_from(slots.available_permits()).unwrap_or(u32::MAX).min(this.config.batch);
            let mut full_batch = false;
            if free > 0 {
                let now = Timestamp::now();
                let request = ClaimRequest {
                    now,
                    batch: free,
                    per_webhook: this.config.per_webhook,
                    lease_until: now.plus(this.config.lease),
                    token: this.token,
                };
                match this.store.claim_due(&request).await {
                    Ok(claimed) => {
                        full_batch = claimed.len() == free as usize;
                        if !claimed.is_empty() {
                            debug!(count = claimed.len(), "claimed deliveries");
                        }
                        for delivery in claimed {
                            let Ok(slot) = slots.clone().try_acquire_owned() else {
                                // Only this loop takes slots and it asked for no more than were
                                // free; should that ever change, the lease expires and the
                                // delivery is claimed again.
                                break;
                            };
                            let this = this.clone();
                            let freed = freed.clone();
                            let to_recorder = to_recorder.clone();
                            tracker.spawn(async move {
                                this.deliver(delivery, &to_recorder).await;
                                drop(slot);
                                freed.notify_one();
                            });
                        }
                    }
                    Err(e) => error!(error = %e, "claiming deliveries failed"),
                }
            }
            if full_batch {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = signal.notified() => {}
                _ = freed.notified() => {
                    // Attempts finish in bursts (their results commit in groups): give the rest
                    // of the burst a moment, so one claim refills many slots instead of one.
                    tokio::time::sleep(CLAIM_COALESCE).await;
                }
                _ = tokio::time::sleep(this.config.poll_interval) => {}
            }
        }
        tracker.close();
        if tokio::time::timeout(this.config.drain_timeout, tracker.wait()).await.is_err() {
            warn!("in-flight attempts did not finish in time; giving their leases back");
        }
        match this.store.release_leases(this.token).await {
            Ok(0) => {}
            Ok(n) => info!(released = n, "released leases"),
            Err(e) => error!(error = %e, "releasing leases failed; they expire by themselves"),
        }
        // Every finished attempt task waited for its commit; close the channel and let the
        // recorder write what tasks cut short by the drain timeout may still send.
        drop(to_recorder);
        if tokio::time::timeout(Duration::from_secs(2), recorder).await.is_err() {
            warn!("attempts still being recorded at exit; their leases expire by themselves");
        }
        info!("delivery worker stopped");
    }

    #[tracing::instrument(skip_all, fields(delivery_id = %delivery.id, webhook_id = %delivery.webhook_id, event_id = %delivery.event_id))]
    async fn deliver(&self, delivery: ClaimedDelivery, recorder: &mpsc::UnboundedSender<Recorded>) {
        let result = self.dispatcher.attempt(&delivery).await;
        let next = self.next_step(&delivery, &result);
        metrics::counter!("mosend_webhooks_attempts_total", "outcome" => result.outcome.code()).increment(1);
        metrics::histogram!("mosend_webhooks_attempt_duration_seconds").record(result.duration_ms as f64 / 1000.0);
        debug!(outcome = result.outcome.code(), status = ?result.status_code, duration_ms = result.duration_ms, "attempt done");
        let record = AttemptRecord {
            delivery_id: delivery.id,
            webhook_id: delivery.webhook_id,
            token: self.token,
            attempted_at: result.attempted_at,
            duration_ms: result.duration_ms,
            outcome: result.outcome,
            status_code: result.status_code,
            error: result.error,
            response_body: result.response_body,
            next,
        };
        // Handed to the recorder, which commits attempts in groups; wait for the commit so
        // the slot is freed only once the result is durable (and the lease released).
        let (done, committed) = oneshot::channel();
        if recorder.send((record, done)).is_ok() {
            let _ = committed.await;
        }
    }

    fn next_step(&self, delivery: &ClaimedDelivery, result: &AttemptResult) -> NextStep {
        match result.outcome {
            Outcome::Success => NextStep::Succeeded,
            Outcome::Gone => NextStep::Failed,
            _ => {
                let made = delivery.attempts.saturating_add(1);
                match self.config.schedule.next_delay(made, result.retry_after, &mut rand::thread_rng()) {
                    Some(delay) => NextStep::RetryAt(Timestamp::now().plus(delay)),
                    None => NextStep::Failed,
                }
            }
        }
    }
}

/// Deletes history past the retention age, in small batches (each its own short
/// transaction) so deliveries are never held up behind one long delete.
async fn purge_history(store: Arc<dyn Store>, retention: Duration, every: Duration, shutdown: CancellationToken) {
    const BATCH: u32 = 500;
    loop {
        let cutoff = Timestamp::now().minus(retention);
        let mut purged = 0;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match store.purge_older_than(cutoff, BATCH).await {
                Ok(0) => break,
                Ok(n) => {
                    purged += n;
                    // Let deliveries have the database between batches.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    error!(error = %e, "purging history failed; trying again later");
                    break;
                }
            }
        }
        if purged > 0 {
            info!(events = purged, "purged history past the retention age");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Commits attempt results in groups: whatever arrived while the previous commit was being
/// written goes into the next one, so under load one fsync covers many attempts. A group
/// that cannot be written after a few tries is dropped: its leases expire and the
/// deliveries are attempted again (at least once).
async fn record_in_groups(
    store: Arc<dyn Store>,
    policy: crate::store::DisablePolicy,
    mut rx: mpsc::UnboundedReceiver<Recorded>,
) {
    const GROUP: usize = 256;
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let (records, acks): (Vec<AttemptRecord>, Vec<oneshot::Sender<()>>) = group.into_iter().unzip();
        if write(store.as_ref(), &records, &policy).await.is_err() && records.len() > 1 {
            // One bad record must not sink the others: write them one by one.
            for record in &records {
                let _ = write(store.as_ref(), std::slice::from_ref(record), &policy).await;
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

/// Writes a group of attempt records, retrying a passing failure a few times.
async fn write(store: &dyn Store, records: &[AttemptRecord], policy: &crate::store::DisablePolicy) -> Result<(), ()> {
    let mut backoff = Duration::from_millis(20);
    for attempt in 1..=3 {
        match store.record_attempts(records, policy).await {
            Ok(disabled) => {
                for (record, reason) in records.iter().zip(disabled) {
                    if let Some(reason) = reason {
                        warn!(webhook_id = %record.webhook_id, reason = %reason, "webhook disabled");
                    }
                }
                return Ok(());
            }
            Err(e) => {
                error!(error = %e, count = records.len(), attempt, "recording attempts failed");
                tokio::time::sleep(backoff).await;
                backoff *= 4;
            }
        }
    }
    Err(())
}
