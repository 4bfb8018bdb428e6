//! The claim loop, and the attempts it starts. Work arrives two ways: handed over by a
//! publish in this process (already leased to this worker, see `store::handoff`), or
//! claimed from the database in batches: due retries, paused webhooks resumed, and what the
//! hand-off had no room for. Both go through one [`Gate`]: at most `max_in_flight` attempts
//! in all, at most `per_webhook` exchanges at once per webhook (counted in the database too,
//! from the leases, so it holds across processes).
//!
//! No transaction is open while a request is in flight: lease, send, then record. A worker
//! that dies mid-attempt leaves its leases to expire; the deliveries are then claimed again
//! (at least once). An attempt that could outlast its lease is not started: its lease is
//! given back instead, so no two workers ever send one delivery at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::dispatch::{AttemptResult, Dispatcher};
use crate::domain::{delivery::Outcome, retry::RetrySchedule, time::Timestamp};
use crate::store::{
    AttemptRecord, ClaimRequest, ClaimedDelivery, DisablePolicy, Gate, HandedOff, Handoff, NextStep, Slot, Store,
};

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

/// A result to record, with the slot of its attempt: the recorder frees the slot once the
/// result is committed.
type Recorded = (AttemptRecord, Slot);

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
        let gate = Gate::new(this.config.max_in_flight, this.config.per_webhook);
        let signal = this.store.work_signal();
        let tracker = TaskTracker::new();
        let (to_recorder, rx) = mpsc::unbounded_channel();
        // Deliveries the recorder leased in the same transaction as a group of results.
        let (claimed_tx, mut claimed_rx) = mpsc::unbounded_channel::<HandedOff>();
        let recorder = tokio::spawn(record_in_groups(this.clone(), gate.clone(), claimed_tx, rx));
        tracker.spawn(purge_history(
            this.store.clone(),
            this.config.retention,
            this.config.retention_interval,
            shutdown.clone(),
        ));
        let (handoff, mut handed) = Handoff::new(gate.clone(), this.token, this.config.lease);
        let handing_off = this.store.attach_handoff(handoff);
        let receiving = {
            let (this, tracker, to_recorder, shutdown) =
                (this.clone(), tracker.clone(), to_recorder.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut claims_open = true;
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        item = handed.recv() => match item {
                            Some((delivery, slot)) => {
                                metrics::counter!("mosend_webhooks_deliveries_handed_off_total").increment(1);
                                this.start(&tracker, delivery, slot, &to_recorder)
                            }
                            None => break,
                        },
                        item = claimed_rx.recv(), if claims_open => match item {
                            Some((delivery, slot)) => this.start(&tracker, delivery, slot, &to_recorder),
                            None => claims_open = false,
                        },
                    }
                }
            })
        };
        info!(token = %this.token, handing_off, "delivery worker started");
        // Whether the database may hold due work for us: after a signal, a poll tick, or a
        // claim that found some; cleared by a claim that found none.
        let mut more = true;
        while !shutdown.is_cancelled() {
            let free = u32::try_from(gate.free()).unwrap_or(u32::MAX).min(this.config.batch);
            let mut full_batch = false;
            if more && free > 0 {
                match this.claim(free).await {
                    Ok(claimed) => {
                        full_batch = claimed.len() == free as usize;
                        more = !claimed.is_empty();
                        if !more {
                            gate.claimed_nothing();
                        }
                        let mut refused = Vec::new();
                        for delivery in claimed {
                            // The hand-off may have taken the slots in the meantime.
                            match gate.try_reserve(delivery.webhook.webhook_id) {
                                Some(slot) => this.start(&tracker, delivery, slot, &to_recorder),
                                None => refused.push(delivery.id),
                            }
                        }
                        this.give_back(&refused).await;
                    }
                    Err(e) => error!(error = %e, "claiming deliveries failed"),
                }
            }
            if full_batch {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = signal.notified() => more = true,
                _ = gate.freed() => {
                    // A slot freed. Claim again only if the database may hold work for it:
                    // the last claim found some, or the slot is one that deliveries left
                    // behind by the hand-off were waiting for (other handed-over attempts
                    // finishing need no claim). Attempts finish in bursts, as their results
                    // commit in groups, so give the rest of the burst a moment and refill
                    // many slots with one claim.
                    if more || gate.take_wanted() {
                        more = true;
                        tokio::time::sleep(CLAIM_COALESCE).await;
                    }
                }
                _ = tokio::time::sleep(this.config.poll_interval) => more = true,
            }
        }
        gate.close();
        this.store.detach_handoff();
        let _ = receiving.await;
        tracker.close();
        if tokio::time::timeout(this.config.drain_timeout, tracker.wait()).await.is_err() {
            warn!("in-flight attempts did not finish in time; giving their leases back");
        }
        // Finished attempts handed their results to the recorder: let it write them before
        // the leases still held are given back (a result whose lease was released would not
        // be recorded, and the delivery would be sent again).
        drop(to_recorder);
        if tokio::time::timeout(Duration::from_secs(5), recorder).await.is_err() {
            warn!("attempts still being recorded at exit; their leases expire by themselves");
        }
        match this.store.release_leases(this.token).await {
            Ok(0) => {}
            Ok(n) => info!(released = n, "released leases"),
            Err(e) => error!(error = %e, "releasing leases failed; they expire by themselves"),
        }
        info!("delivery worker stopped");
    }

    /// A claim of up to `batch` deliveries by this worker, now.
    fn claim_request(&self, batch: u32) -> ClaimRequest {
        let now = Timestamp::now();
        ClaimRequest {
            now,
            batch,
            per_webhook: self.config.per_webhook,
            lease_until: now.plus(self.config.lease),
            token: self.token,
        }
    }

    async fn claim(&self, batch: u32) -> crate::store::Result<Vec<ClaimedDelivery>> {
        let request = self.claim_request(batch);
        let claimed = self.store.claim_due(&request).await?;
        metrics::counter!("mosend_webhooks_deliveries_claimed_total").increment(claimed.len() as u64);
        if !claimed.is_empty() {
            debug!(count = claimed.len(), "claimed deliveries");
        }
        Ok(claimed)
    }

    /// Gives back leases this worker will not use now; should that fail, they expire.
    async fn give_back(&self, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        if let Err(e) = self.store.release_claims(ids, self.token).await {
            warn!(error = %e, count = ids.len(), "giving back leases failed; they expire by themselves");
        }
    }

    /// Starts one attempt in its own task, holding its slot until the result is committed.
    fn start(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        delivery: ClaimedDelivery,
        slot: Slot,
        recorder: &mpsc::UnboundedSender<Recorded>,
    ) {
        let (this, recorder) = (self.clone(), recorder.clone());
        tracker.spawn(async move {
            let exchange = slot.exchange().await;
            // Waiting behind the webhook's other attempts takes at most about one attempt,
            // but never start one that could outlast its lease: another worker could take
            // the delivery over mid-attempt.
            if Timestamp::now().plus(this.dispatcher.timeout()) >= delivery.lease_until {
                drop(exchange);
                this.give_back(&[delivery.id]).await;
                return;
            }
            this.deliver(delivery, exchange, slot, &recorder).await;
        });
    }

    #[tracing::instrument(skip_all, fields(delivery_id = %delivery.id, webhook_id = %delivery.webhook.webhook_id, event_id = %delivery.event.id))]
    async fn deliver(
        &self,
        delivery: ClaimedDelivery,
        exchange: tokio::sync::OwnedSemaphorePermit,
        slot: Slot,
        recorder: &mpsc::UnboundedSender<Recorded>,
    ) {
        let result = self.dispatcher.attempt(&delivery).await;
        // The receiver is done with: the webhook's next attempt may start.
        drop(exchange);
        let next = self.next_step(&delivery, &result);
        metrics::counter!("mosend_webhooks_attempts_total", "outcome" => result.outcome.code()).increment(1);
        metrics::histogram!("mosend_webhooks_attempt_duration_seconds").record(result.duration_ms as f64 / 1000.0);
        debug!(outcome = result.outcome.code(), status = ?result.status_code, duration_ms = result.duration_ms, "attempt done");
        let record = AttemptRecord {
            delivery_id: delivery.id,
            webhook_id: delivery.webhook.webhook_id,
            token: self.token,
            attempted_at: result.attempted_at,
            duration_ms: result.duration_ms,
            outcome: result.outcome,
            status_code: result.status_code,
            error: result.error,
            response_body: result.response_body,
            next,
        };
        // Handed to the recorder with the slot, which it frees only once the result is
        // committed (and the lease released). Should the recorder be gone, dropping the pair
        // frees the slot and leaves the lease to expire.
        let _ = recorder.send((record, slot));
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
/// deliveries are attempted again (at least once). The group's slots are freed once it is
/// written. When deliveries left in the database are waiting for those slots, the same
/// transaction also leases as many as the slots can take (a claim with no commit of its
/// own), and they are started as the slots free.
async fn record_in_groups(
    worker: Arc<Worker>,
    gate: Arc<Gate>,
    claimed_tx: mpsc::UnboundedSender<HandedOff>,
    mut rx: mpsc::UnboundedReceiver<Recorded>,
) {
    const GROUP: usize = 256;
    let (store, policy) = (worker.store.clone(), worker.config.disable);
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let (records, slots): (Vec<AttemptRecord>, Vec<Slot>) = group.into_iter().unzip();
        let webhooks: Vec<Uuid> = slots.iter().map(Slot::webhook_id).collect();
        let claim = gate.wants_claim_after(&webhooks).then(|| {
            let room = gate.free().saturating_add(slots.len()).min(worker.config.batch as usize);
            worker.claim_request(u32::try_from(room).unwrap_or(u32::MAX))
        });
        let (recorded, claimed) = match &claim {
            Some(request) => store.record_attempts_then_claim(&records, &policy, request).await,
            None => (store.record_attempts(&records, &policy).await, Ok(Vec::new())),
        };
        match recorded {
            Ok(disabled) => log_disabled(&records, disabled),
            Err(e) => {
                error!(error = %e, count = records.len(), "recording attempts failed");
                if write(store.as_ref(), &records, &policy).await.is_err() && records.len() > 1 {
                    // One bad record must not sink the others: write them one by one.
                    for record in &records {
                        let _ = write(store.as_ref(), std::slice::from_ref(record), &policy).await;
                    }
                }
            }
        }
        drop(slots);
        match claimed {
            Ok(claimed) if !claimed.is_empty() => {
                metrics::counter!("mosend_webhooks_deliveries_claimed_total").increment(claimed.len() as u64);
                metrics::counter!("mosend_webhooks_deliveries_claimed_with_results_total")
                    .increment(claimed.len() as u64);
                let mut refused = Vec::new();
                for delivery in claimed {
                    // Publishes may have taken some of the freed slots in the meantime.
                    match gate.try_reserve(delivery.webhook.webhook_id) {
                        Some(slot) => {
                            if let Err(mpsc::error::SendError((delivery, _))) = claimed_tx.send((delivery, slot)) {
                                refused.push(delivery.id);
                            }
                        }
                        None => refused.push(delivery.id),
                    }
                }
                worker.give_back(&refused).await;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "claiming with a group of results failed; the claim loop takes over"),
        }
    }
}

fn log_disabled(records: &[AttemptRecord], disabled: Vec<Option<String>>) {
    for (record, reason) in records.iter().zip(disabled) {
        if let Some(reason) = reason {
            warn!(webhook_id = %record.webhook_id, reason = %reason, "webhook disabled");
        }
    }
}

/// Writes a group of attempt records, retrying a passing failure a few times.
async fn write(store: &dyn Store, records: &[AttemptRecord], policy: &crate::store::DisablePolicy) -> Result<(), ()> {
    let mut backoff = Duration::from_millis(20);
    for attempt in 1..=3 {
        match store.record_attempts(records, policy).await {
            Ok(disabled) => {
                log_disabled(records, disabled);
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
