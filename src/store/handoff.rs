//! In-process hand-off of fresh deliveries, and the local worker's in-flight accounting.
//!
//! The queue is the database; a delivery is claimed by leasing its row. When the worker runs
//! in the process that publishes (SQLite: one process owns the file), claiming a delivery
//! that was written a millisecond ago is wasted work: the publish transaction itself inserts
//! it already leased to the local worker, and hands it over through memory with everything
//! needed to send it. Nothing about durability changes: the row, its lease and later its
//! result are committed exactly as for a claimed delivery, and a crash leaves the lease to
//! expire, after which the delivery is claimed again (at least once).
//!
//! The [`Gate`] admits what the local worker takes on, from both sources (hand-off and
//! claims): at most `max_in_flight` attempts in all, and per webhook at most `per_webhook`
//! exchanges at once (a semaphore each attempt waits on) with as many again admitted and
//! waiting behind them. A waiting delivery starts within one attempt's time, and an attempt
//! never starts if its lease could expire before its timeout (see the worker). When the
//! gate refuses, the delivery is written as a plain `pending` row for the claim loop, and
//! the webhook is remembered as having overflowed, so the loop looks again when that
//! webhook's attempts finish.
//!
//! What does not live here: sending (the delivery worker) and SQL (the backends).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::ClaimedDelivery;

/// A delivery handed over, with its reserved slot.
pub type HandedOff = (ClaimedDelivery, Slot);

/// The worker's admission and in-flight accounting, shared with the publisher.
pub struct Gate {
    state: Mutex<State>,
    per_webhook: u32,
    /// Signalled whenever a slot frees.
    freed: Notify,
}

struct State {
    open: bool,
    /// Global slots free (an attempt holds one until its result is committed).
    free: usize,
    /// Per webhook: attempts admitted (waiting, sending or being recorded), and the
    /// semaphore that lets `per_webhook` of them exchange with the receiver at once.
    webhooks: HashMap<Uuid, (u32, Arc<Semaphore>)>,
    /// Webhooks with deliveries left in the database because they were at their limit.
    overflowed: HashSet<Uuid>,
}

impl Gate {
    pub fn new(max_in_flight: usize, per_webhook: u32) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                open: true,
                free: max_in_flight,
                webhooks: HashMap::new(),
                overflowed: HashSet::new(),
            }),
            per_webhook: per_webhook.max(1),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves only counters behind, which stay usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot for one attempt to `webhook_id`, if a global slot is free and the webhook has
    /// fewer than twice its limit admitted (and the gate is open). A refusal marks the
    /// webhook overflowed.
    pub fn try_reserve(self: &Arc<Self>, webhook_id: Uuid) -> Option<Slot> {
        let mut s = self.lock();
        let admitted = s.webhooks.get(&webhook_id).map_or(0, |(n, _)| *n);
        if !s.open || s.free == 0 || admitted >= 2 * self.per_webhook {
            s.overflowed.insert(webhook_id);
            return None;
        }
        s.free -= 1;
        let per = self.per_webhook as usize;
        let entry = s.webhooks.entry(webhook_id).or_insert_with(|| (0, Arc::new(Semaphore::new(per))));
        entry.0 += 1;
        let exchanges = entry.1.clone();
        Some(Slot { gate: self.clone(), webhook_id, exchanges })
    }

    /// Global slots free now.
    pub fn free(&self) -> usize {
        self.lock().free
    }

    /// Waits until a slot frees.
    pub async fn freed(&self) {
        self.freed.notified().await
    }

    /// Whether some webhook left deliveries in the database because it was at its limit;
    /// `clear_idle` first forgets those with nothing admitted any more (nothing of theirs
    /// holds a lease here, so an empty claim means their queue is empty).
    pub fn overflowed(&self, clear_idle: bool) -> bool {
        let mut s = self.lock();
        if clear_idle {
            let State { overflowed, webhooks, .. } = &mut *s;
            overflowed.retain(|w| webhooks.contains_key(w));
        }
        !s.overflowed.is_empty()
    }

    /// Refuses every reservation from now on (shutdown).
    pub fn close(&self) {
        self.lock().open = false;
    }

    fn release(&self, webhook_id: Uuid) {
        let mut s = self.lock();
        if let Some((n, _)) = s.webhooks.get_mut(&webhook_id) {
            *n -= 1;
            if *n == 0 {
                s.webhooks.remove(&webhook_id);
            }
        }
        s.free += 1;
        drop(s);
        self.freed.notify_one();
    }
}

/// One admitted attempt: a global slot and a place in its webhook's line. Dropping it frees
/// both.
pub struct Slot {
    gate: Arc<Gate>,
    webhook_id: Uuid,
    exchanges: Arc<Semaphore>,
}

impl Slot {
    /// Waits for the webhook to have fewer than its limit of exchanges in progress; the
    /// permit lets this attempt's exchange run until it is dropped.
    pub async fn exchange(&self) -> OwnedSemaphorePermit {
        self.exchanges.clone().acquire_owned().await.expect("a webhook's semaphore is never closed")
    }

    pub fn webhook_id(&self) -> Uuid {
        self.webhook_id
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.release(self.webhook_id);
    }
}

/// What a publish needs to lease deliveries to the local worker and hand them over.
pub struct Handoff {
    pub gate: Arc<Gate>,
    /// The worker's lease token.
    pub token: Uuid,
    /// How long a lease lasts (attempt timeout plus margin).
    pub lease: Duration,
    tx: mpsc::UnboundedSender<HandedOff>,
}

impl Handoff {
    /// A hand-off into the worker's gate; the worker reads what is handed over from the
    /// receiver. The channel needs no bound: every item in it holds a slot of the gate.
    pub fn new(gate: Arc<Gate>, token: Uuid, lease: Duration) -> (Arc<Self>, mpsc::UnboundedReceiver<HandedOff>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(Self { gate, token, lease, tx }), rx)
    }

    /// Hands committed deliveries over. If the worker has stopped listening they are
    /// dropped with their slots: their leases expire (or are released at shutdown) and they
    /// are claimed again.
    pub fn send(&self, delivery: ClaimedDelivery, slot: Slot) {
        let _ = self.tx.send((delivery, slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_webhook_exchanges_at_most_its_limit_and_admits_as_many_again() {
        let gate = Gate::new(5, 2);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let slots: Vec<Slot> = (0..4).map(|_| gate.try_reserve(a).unwrap()).collect();
        assert!(gate.try_reserve(a).is_none(), "a has twice its limit admitted");
        assert!(gate.overflowed(false));
        let first = slots[0].exchange().await;
        let _second = slots[1].exchange().await;
        assert!(slots[2].exchanges.clone().try_acquire_owned().is_err(), "a third exchange waits");
        drop(first);
        let _third = slots[2].exchange().await;
        let b1 = gate.try_reserve(b).unwrap();
        assert!(gate.try_reserve(b).is_none(), "no global slot left");
        assert_eq!(gate.free(), 0);
        drop(slots);
        assert!(gate.overflowed(true), "b still has an attempt admitted");
        drop(b1);
        assert_eq!(gate.free(), 5);
        assert!(!gate.overflowed(true), "nothing admitted: the overflow marks are cleared");
        gate.close();
        assert!(gate.try_reserve(b).is_none(), "a closed gate admits nothing");
    }
}
