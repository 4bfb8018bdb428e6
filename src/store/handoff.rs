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
//! once that row is committed the gate is told ([`Gate::left_behind`]): if the webhook still
//! has attempts admitted (or every global slot is taken), the claim loop looks again when one
//! of those frees, and not before; otherwise it is woken at once. Slots of other webhooks
//! freeing do not wake it: with one slow receiver holding a backlog, the fast ones' attempts
//! finishing thousands of times a second must not each cost a claim.
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
    /// Deliveries were left in the database because every global slot was taken.
    full: bool,
    /// A slot freed that deliveries left in the database may use: the claim loop should look.
    wanted: bool,
}

impl Gate {
    pub fn new(max_in_flight: usize, per_webhook: u32) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                open: true,
                free: max_in_flight,
                webhooks: HashMap::new(),
                overflowed: HashSet::new(),
                full: false,
                wanted: false,
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
            s.full |= s.free == 0;
            return None;
        }
        s.free -= 1;
        let per = self.per_webhook as usize;
        let entry = s.webhooks.entry(webhook_id).or_insert_with(|| (0, Arc::new(Semaphore::new(per))));
        entry.0 += 1;
        let exchanges = entry.1.clone();
        Some(Slot { gate: self.clone(), webhook_id, exchanges })
    }

    /// Whether results of these webhooks, once written, free slots that deliveries left in
    /// the database are waiting for (the webhooks overflowed, or every global slot was taken
    /// when they were left): then the recorder claims in the same transaction.
    pub fn wants_claim_after(&self, webhooks: &[Uuid]) -> bool {
        let s = self.lock();
        s.open && (s.full || webhooks.iter().any(|w| s.overflowed.contains(w)))
    }

    /// Global slots free now.
    pub fn free(&self) -> usize {
        self.lock().free
    }

    /// Waits until a slot frees.
    pub async fn freed(&self) {
        self.freed.notified().await
    }

    /// A claim found nothing: forget the webhooks marked as having left deliveries behind
    /// that have nothing admitted any more (nothing of theirs holds a lease here, so an
    /// empty claim means their queue is empty), and that the global limit was reached.
    pub fn claimed_nothing(&self) {
        let mut s = self.lock();
        let State { overflowed, webhooks, .. } = &mut *s;
        overflowed.retain(|w| webhooks.contains_key(w));
        s.full = false;
    }

    /// Whether some webhook is marked as having left deliveries in the database.
    #[cfg(test)]
    fn overflowed(&self) -> bool {
        !self.lock().overflowed.is_empty()
    }

    /// Called once deliveries refused by the gate are committed as `pending` rows, with
    /// their webhooks: returns whether the claim loop must be woken now. It need not be when
    /// a slot that can take them is certain to free later: the webhook still has attempts
    /// admitted, or every global slot is taken; the gate then remembers to want a claim when
    /// that slot frees. Run after the commit, so the claim that slot triggers sees the rows.
    pub fn left_behind(&self, webhooks: &[Uuid]) -> bool {
        let mut s = self.lock();
        let mut wake = false;
        for webhook_id in webhooks {
            if s.webhooks.contains_key(webhook_id) {
                s.overflowed.insert(*webhook_id);
            } else if s.free == 0 {
                s.full = true;
            } else {
                wake = true;
            }
        }
        wake
    }

    /// Whether a slot freed since the last call that deliveries left in the database may
    /// use (see [`Gate::left_behind`]).
    pub fn take_wanted(&self) -> bool {
        std::mem::take(&mut self.lock().wanted)
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
        if s.full || s.overflowed.contains(&webhook_id) {
            s.wanted = true;
        }
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
        assert!(gate.overflowed());
        let first = slots[0].exchange().await;
        let _second = slots[1].exchange().await;
        assert!(slots[2].exchanges.clone().try_acquire_owned().is_err(), "a third exchange waits");
        drop(first);
        let _third = slots[2].exchange().await;
        let b1 = gate.try_reserve(b).unwrap();
        assert!(gate.try_reserve(b).is_none(), "no global slot left");
        assert_eq!(gate.free(), 0);
        drop(slots);
        gate.claimed_nothing();
        assert!(gate.overflowed(), "b still has an attempt admitted");
        drop(b1);
        assert_eq!(gate.free(), 5);
        gate.claimed_nothing();
        assert!(!gate.overflowed(), "nothing admitted: the overflow marks are cleared");
        gate.close();
        assert!(gate.try_reserve(b).is_none(), "a closed gate admits nothing");
    }

    #[test]
    fn only_a_slot_that_can_take_what_was_left_behind_wants_a_claim() {
        let gate = Gate::new(4, 1);
        let (slow, fast, idle) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let slow_slots: Vec<Slot> = (0..2).map(|_| gate.try_reserve(slow).unwrap()).collect();
        assert!(gate.try_reserve(slow).is_none(), "slow is at twice its limit");
        // The refused delivery is committed: slow still has attempts admitted, so no claim now…
        assert!(!gate.left_behind(&[slow]));
        // …nor when a fast webhook's attempt finishes…
        drop(gate.try_reserve(fast).unwrap());
        assert!(!gate.take_wanted(), "a fast webhook's slot freeing does not want a claim");
        // …but when one of slow's does.
        let mut slow_slots = slow_slots.into_iter();
        drop(slow_slots.next());
        assert!(gate.take_wanted());
        assert!(!gate.take_wanted(), "taken once");
        // A webhook with nothing admitted: wake the claim loop at once.
        assert!(gate.left_behind(&[idle]));
        // Every global slot taken: any slot freeing wants a claim.
        let fill: Vec<Slot> = (0..3).map(|_| gate.try_reserve(Uuid::now_v7()).unwrap()).collect();
        assert_eq!(gate.free(), 0);
        assert!(!gate.left_behind(&[idle]));
        drop(fill);
        assert!(gate.take_wanted());
        // An empty claim forgets the global mark: a later fast slot freeing wants nothing.
        gate.claimed_nothing();
        assert!(gate.overflowed(), "slow still has an attempt admitted");
        drop(gate.try_reserve(fast).unwrap());
        assert!(!gate.take_wanted());
    }
}
