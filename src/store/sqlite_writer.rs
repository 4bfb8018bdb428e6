//! SQLite's write path for the busy writes: publishes, attempt results and claims.
//!
//! Through sqlx, every statement is a round trip between the async task and the thread that
//! owns the SQLite connection; a group of results or a publish group takes ten to twenty of
//! them, and on a busy machine each one waits for a core (measured in `BENCHMARKS.md`).
//! Here one thread owns its own connection (`rusqlite`, over the same `libsqlite3-sys`) and
//! runs whatever is waiting when the previous transaction ends as one transaction of
//! cached statements, with no round trip between them: one hand-off per round, one commit
//! (one fsync) for every caller in it.
//!
//! Each job runs inside a savepoint: one job's error rolls back only its own work and is
//! answered to its caller alone. Everyone is answered after the commit; if the commit fails,
//! every job of the round fails with it. Deliveries a publish leased to the local worker are
//! handed over only once committed. The statements are those of `sql.rs`, one row at a time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{named_params, params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use super::handoff::{HandedOff, Handoff};
use super::sending::{ClaimedRow, Handing, Sendable, Target};
use super::writer::{answer, Job, ROUND};
use super::{
    disable_reason, AttemptRecord, Cipher, ClaimRequest, ClaimedDelivery, DisablePolicy, NewEvent, NextStep,
    PublishedEvent, Result, StoreError,
};
use crate::domain::{
    delivery::{DeliveryStatus, Outcome},
    event_type,
    time::Timestamp,
};

/// What the writing thread shares with the store.
pub(super) struct Shared {
    pub(super) cipher: Cipher,
    /// The local worker's hand-off, while it runs.
    pub(super) handoff: Arc<Mutex<Option<Arc<Handoff>>>>,
    /// Wakes the claim loop.
    pub(super) signal: Arc<Notify>,
}

impl Shared {
    fn handoff(&self) -> Option<Arc<Handoff>> {
        self.handoff.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Once a publish has committed: hands the leased deliveries over, and wakes the claim
    /// loop only if some were left for it and no slot that can take them is due to free.
    fn hand_over(&self, handed: Vec<HandedOff>, left_behind: &[Uuid]) {
        let wake = match self.handoff() {
            Some(h) => {
                for (delivery, slot) in handed {
                    h.send(delivery, slot);
                }
                h.gate.left_behind(left_behind)
            }
            None => !left_behind.is_empty(),
        };
        if wake {
            self.signal.notify_one();
        }
    }
}

/// Opens the writing connection on the database file, with the settings of the others.
pub(super) fn connect(path: &std::path::Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "full")?;
    conn.pragma_update(None, "foreign_keys", "on")?;
    conn.pragma_update(None, "temp_store", "memory")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Starts the writing thread; it ends when every sender of `rx` is dropped.
pub(super) fn spawn(conn: Connection, shared: Shared, rx: mpsc::UnboundedReceiver<Job>) -> std::io::Result<()> {
    std::thread::Builder::new().name("sqlite-writer".into()).spawn(move || run(conn, shared, rx)).map(drop)
}

fn run(mut conn: Connection, shared: Shared, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut jobs = Vec::with_capacity(ROUND);
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < ROUND {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Results first: they end leases that a claim in the same round counts.
        jobs.sort_by_key(|job| match job {
            Job::Record { .. } => 0,
            Job::Publish { .. } => 1,
            Job::Claim { .. } => 2,
        });
        write_round(&mut conn, &shared, std::mem::take(&mut jobs));
    }
}

/// A job's outcome, answered once the round has committed.
enum Done {
    Record(super::writer::Reply<Vec<Option<String>>>, Result<Vec<Option<String>>>),
    Publish(super::writer::Reply<super::Published>, Result<Vec<PublishedEvent>>),
    Claim(super::writer::Reply<Vec<ClaimedDelivery>>, Result<Vec<ClaimedDelivery>>),
}

fn write_round(conn: &mut Connection, shared: &Shared, jobs: Vec<Job>) {
    let mut done = Vec::with_capacity(jobs.len());
    let mut handed = Vec::new();
    let mut jobs = jobs.into_iter();
    let committed = (|| -> Result<()> {
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for job in jobs.by_ref() {
            // Dropped without `commit`, a savepoint rolls its job back.
            let savepoint = tx.savepoint()?;
            let (d, ok) = match job {
                Job::Record { records, policy, reply } => {
                    let outcome = record(&savepoint, &records, &policy);
                    let ok = outcome.is_ok();
                    (Done::Record(reply, outcome), ok)
                }
                Job::Publish { events, window, reply } => match publish(&savepoint, shared, &events, window) {
                    Ok((answers, to_hand, left)) => {
                        handed.push((to_hand, left));
                        (Done::Publish(reply, Ok(answers)), true)
                    }
                    Err(e) => (Done::Publish(reply, Err(e)), false),
                },
                Job::Claim { request, reply } => {
                    let outcome = claim(&savepoint, &shared.cipher, &request);
                    let ok = outcome.is_ok();
                    (Done::Claim(reply, outcome), ok)
                }
            };
            if ok {
                savepoint.commit()?;
            }
            done.push(d);
        }
        tx.commit()?;
        Ok(())
    })();
    let failed = committed.err().map(|e| {
        tracing::warn!(error = %e, "a group write failed");
        e.to_string()
    });
    if failed.is_none() {
        for (to_hand, left) in handed {
            shared.hand_over(to_hand, &left);
        }
    }
    // Dropping what was to be handed over (a failed round) frees the slots it reserved.
    let failed = failed.as_deref();
    for d in done {
        match d {
            Done::Record(reply, outcome) => answer(reply, outcome, failed),
            Done::Publish(reply, outcome) => {
                answer(reply, outcome.map(|events| (events, Vec::new(), Vec::new())), failed)
            }
            Done::Claim(reply, outcome) => answer(reply, outcome, failed),
        }
    }
    // Jobs the round did not reach: their callers get an error when the reply is dropped.
    drop(jobs);
}

/// Publishes events (see `publish_all` in `sql.rs`, whose statements these are).
fn publish(c: &Connection, shared: &Shared, events: &[NewEvent], window: Duration) -> Result<super::Published> {
    let handoff = shared.handoff();
    let mut orgs: Vec<Uuid> = events.iter().map(|e| e.org_id).collect();
    orgs.sort_unstable();
    orgs.dedup();
    let subscriptions = subscriptions(c, &shared.cipher, &orgs, handoff.is_some())?;
    let mut out: Vec<Option<PublishedEvent>> = vec![None; events.len()];
    let mut first_of_key: HashMap<(Uuid, &str), usize> = HashMap::new();
    let mut deliveries: Vec<(&Target, &NewEvent)> = Vec::new();
    let mut insert_event = c.prepare_cached(
        "INSERT INTO events (id, org_id, type, data, idempotency_key, deliveries, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for (i, e) in events.iter().enumerate() {
        if let Some(key) = e.idempotency_key.as_deref() {
            if let Some(&first) = first_of_key.get(&(e.org_id, key)) {
                out[i] = out[first].clone().map(|p| PublishedEvent { duplicate: true, ..p });
                continue;
            }
            first_of_key.insert((e.org_id, key), i);
            if let Some(existing) = existing_event(c, e, key, window)? {
                out[i] = Some(existing);
                continue;
            }
        }
        let before = deliveries.len();
        if let Some(hooks) = subscriptions.get(&e.org_id) {
            deliveries.extend(hooks.iter().filter(|t| event_type::matches(&t.events, &e.event_type)).map(|t| (t, e)));
        }
        let count = u32::try_from(deliveries.len() - before).unwrap_or(u32::MAX);
        insert_event.execute(params![
            e.id,
            e.org_id,
            e.event_type,
            e.data,
            e.idempotency_key,
            i64::from(count),
            e.created_at.0
        ])?;
        out[i] = Some(PublishedEvent {
            id: e.id,
            event_type: e.event_type.clone(),
            created_at: e.created_at,
            deliveries: count,
            duplicate: false,
        });
    }
    // Reserve a local slot for each delivery that can start now; the rest are plain
    // `pending` rows for the claim loop. Dropping the reservations (an error) frees the slots.
    let now = Timestamp::now();
    let token = handoff.as_ref().map(|h| h.token);
    let mut handed: Vec<HandedOff> = Vec::new();
    let mut handing = Handing::default();
    let mut left_behind: HashSet<Uuid> = HashSet::new();
    let mut insert_delivery = c.prepare_cached(
        "INSERT INTO deliveries (id, webhook_id, org_id, event_id, event_type, status, next_attempt_at, created_at, updated_at, lease_until, lease_token)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6, ?6, ?7, ?8)",
    )?;
    for (target, e) in deliveries {
        let id = Uuid::now_v7();
        let slot = match (&handoff, &target.send) {
            (Some(h), Some(send)) => h.gate.try_reserve(target.id).map(|slot| (h, send, slot)),
            _ => None,
        };
        let lease = match slot {
            Some((h, send, slot)) => {
                let until = now.plus(h.lease);
                handed.push((handing.delivery(id, e, send, until), slot));
                Some(until)
            }
            None => {
                if target.active {
                    left_behind.insert(target.id);
                }
                None
            }
        };
        insert_delivery.execute(params![
            id,
            target.id,
            e.org_id,
            e.id,
            e.event_type,
            e.created_at.0,
            lease.map(|l| l.0),
            lease.and(token)
        ])?;
    }
    Ok((out.into_iter().flatten().collect(), handed, left_behind.into_iter().collect()))
}

/// The webhooks of these organizations that take new deliveries (active or paused), with
/// what it takes to send to the active ones when `sendable`.
fn subscriptions(c: &Connection, cipher: &Cipher, orgs: &[Uuid], sendable: bool) -> Result<HashMap<Uuid, Vec<Target>>> {
    let mut out: HashMap<Uuid, Vec<Target>> = HashMap::new();
    let now = Timestamp::now();
    let mut select = c.prepare_cached(
        "SELECT id, events, status, url, format, secret, previous_secret, previous_secret_expires_at, headers
         FROM webhooks WHERE org_id = ?1 AND status IN ('active', 'paused')",
    )?;
    for org in orgs {
        let mut rows = select.query(params![org])?;
        while let Some(row) = rows.next()? {
            let id: Uuid = row.get("id")?;
            let events: String = row.get("events")?;
            let events: Vec<String> =
                serde_json::from_str(&events).map_err(|_| StoreError::Corrupt("webhook events".into()))?;
            let active = row.get::<_, String>("status")? == "active";
            let send = if sendable && active {
                let previous: Option<String> = row.get("previous_secret")?;
                let until: Option<i64> = row.get("previous_secret_expires_at")?;
                Some(Arc::new(Sendable::from_stored(
                    cipher,
                    now,
                    id,
                    row.get("url")?,
                    &row.get::<_, String>("format")?,
                    &row.get::<_, String>("secret")?,
                    previous.zip(until.map(Timestamp)),
                    &row.get::<_, String>("headers")?,
                )?))
            } else {
                None
            };
            out.entry(*org).or_default().push(Target { id, events, active, send });
        }
    }
    Ok(out)
}

/// The event stored under this idempotency key within the window, if any; past the window
/// the key is freed for the new event.
fn existing_event(c: &Connection, e: &NewEvent, key: &str, window: Duration) -> Result<Option<PublishedEvent>> {
    let existing = c
        .prepare_cached(
            "SELECT id, type, created_at, deliveries FROM events WHERE org_id = ?1 AND idempotency_key = ?2",
        )?
        .query_row(params![e.org_id, key], |row| {
            Ok((row.get::<_, Uuid>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?, row.get::<_, i64>(3)?))
        })
        .optional()?;
    let Some((id, event_type, created_at, deliveries)) = existing else { return Ok(None) };
    let created_at = Timestamp(created_at);
    if created_at > e.created_at.minus(window) {
        return Ok(Some(PublishedEvent {
            id,
            event_type,
            created_at,
            deliveries: u32::try_from(deliveries).map_err(|_| StoreError::Corrupt("event deliveries".into()))?,
            duplicate: true,
        }));
    }
    c.prepare_cached("UPDATE events SET idempotency_key = NULL WHERE org_id = ?1 AND idempotency_key = ?2")?
        .execute(params![e.org_id, key])?;
    Ok(None)
}

/// Records attempts (see `record_attempts` in `sql.rs`): a delivery is ours while our lease
/// holds it; one cancelled while its attempt was in flight stays cancelled. Returns, per
/// record, why its webhook was disabled, if it was.
fn record(c: &Connection, records: &[AttemptRecord], policy: &DisablePolicy) -> Result<Vec<Option<String>>> {
    let mut out = vec![None; records.len()];
    let mut update = c.prepare_cached(
        "UPDATE deliveries SET attempts = attempts + 1, last_status_code = ?1, last_error = ?2, last_response_body = ?3,
             last_duration_ms = ?4, updated_at = ?5,
             status = CASE WHEN status = 'cancelled' THEN status ELSE ?6 END,
             next_attempt_at = CASE WHEN status = 'cancelled' THEN NULL ELSE ?7 END,
             delivered_at = COALESCE(delivered_at, ?8), lease_until = NULL, lease_token = NULL
         WHERE id = ?9 AND (lease_token = ?10 OR status = 'cancelled')",
    )?;
    let mut insert = c.prepare_cached(
        "INSERT INTO attempts (id, delivery_id, attempted_at, duration_ms, status_code, outcome, error, response_body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    // Webhooks whose failure streak a success in this group ends: reset once each, before a
    // later failure of the same webhook counts.
    let mut succeeded: Vec<Uuid> = Vec::new();
    for (i, a) in records.iter().enumerate() {
        let now = a.attempted_at.plus(Duration::from_millis(u64::try_from(a.duration_ms).unwrap_or(0)));
        let (status, next_at, delivered_at) = match a.next {
            NextStep::Succeeded => (DeliveryStatus::Succeeded, None, Some(now.0)),
            NextStep::RetryAt(at) => (DeliveryStatus::Retrying, Some(at.0), None),
            NextStep::Failed => (DeliveryStatus::Failed, None, None),
        };
        let code = a.status_code.map(i64::from);
        let ours = update.execute(params![
            code,
            a.error,
            a.response_body,
            a.duration_ms,
            now.0,
            status.as_str(),
            next_at,
            delivered_at,
            a.delivery_id,
            a.token
        ])? == 1;
        if !ours {
            continue;
        }
        insert.execute(params![
            Uuid::now_v7(),
            a.delivery_id,
            a.attempted_at.0,
            a.duration_ms,
            code,
            a.outcome.code(),
            a.error,
            a.response_body
        ])?;
        if a.outcome == Outcome::Success {
            if !succeeded.contains(&a.webhook_id) {
                succeeded.push(a.webhook_id);
            }
            continue;
        }
        if let Some(pos) = succeeded.iter().position(|w| *w == a.webhook_id) {
            end_failure_streak(c, succeeded.swap_remove(pos))?;
        }
        out[i] = count_failure(c, a, now, policy)?;
    }
    for webhook_id in succeeded {
        end_failure_streak(c, webhook_id)?;
    }
    Ok(out)
}

fn end_failure_streak(c: &Connection, webhook_id: Uuid) -> Result<()> {
    c.prepare_cached(
        "UPDATE webhooks SET failing_since = NULL, failed_attempts = 0 WHERE failed_attempts > 0 AND id = ?1",
    )?
    .execute(params![webhook_id])?;
    Ok(())
}

/// A failure extends the webhook's failure streak, and disables the webhook when the streak
/// is long enough (or at once on 410 Gone). Returns why it was disabled.
fn count_failure(c: &Connection, a: &AttemptRecord, now: Timestamp, policy: &DisablePolicy) -> Result<Option<String>> {
    let streak = c
        .prepare_cached(
            "UPDATE webhooks SET failing_since = COALESCE(failing_since, ?1), failed_attempts = failed_attempts + 1
             WHERE id = ?2 RETURNING failing_since, failed_attempts",
        )?
        .query_row(params![a.attempted_at.0, a.webhook_id], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)))
        .optional()?;
    let reason = if a.outcome == Outcome::Gone {
        Some("the receiver answered 410 Gone".to_string())
    } else if let Some((since, failed)) = streak {
        let failed = u32::try_from(failed).map_err(|_| StoreError::Corrupt("webhook failed attempts".into()))?;
        disable_reason(policy, since, now.0, failed, a.error.as_deref())
    } else {
        None
    };
    let Some(reason) = reason else { return Ok(None) };
    let disabled = c
        .prepare_cached(
            "UPDATE webhooks SET status = 'disabled', disabled_reason = ?1, disabled_at = ?2, updated_at = ?2,
             version = version + 1 WHERE id = ?3 AND status != 'disabled'",
        )?
        .execute(params![reason, now.0, a.webhook_id])?;
    if disabled == 0 {
        return Ok(None);
    }
    c.prepare_cached(
        "UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL, lease_until = NULL, lease_token = NULL, updated_at = ?1
         WHERE webhook_id = ?2 AND status IN ('pending', 'retrying')",
    )?
    .execute(params![now.0, a.webhook_id])?;
    Ok(Some(reason))
}

/// Leases due deliveries (see `claim_due` in `sql.rs` and `SqliteStore::CLAIM_SQL`).
fn claim(c: &Connection, cipher: &Cipher, r: &ClaimRequest) -> Result<Vec<ClaimedDelivery>> {
    let active: i64 =
        c.prepare_cached("SELECT COUNT(*) FROM webhooks WHERE status = 'active'")?.query_row([], |row| row.get(0))?;
    let per_probe = ((2 * i64::from(r.batch) + active - 1) / active.max(1)).clamp(1, i64::from(r.per_webhook));
    let rows: Vec<ClaimedRow> = c
        .prepare_cached(super::SqliteStore::CLAIM_SQL)?
        .query_map(
            named_params! {
                "$1": r.now.0,
                "$2": i64::from(r.per_webhook),
                "$3": i64::from(r.batch),
                "$4": r.lease_until.0,
                "$5": r.token,
                "$6": per_probe,
            },
            |row| {
                Ok(ClaimedRow {
                    id: row.get(0)?,
                    webhook_id: row.get(1)?,
                    event_id: row.get(2)?,
                    event_type: row.get(3)?,
                    attempts: row.get(4)?,
                })
            },
        )?
        .collect::<rusqlite::Result<_>>()?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // Each event and each webhook read once, however many of its deliveries the claim holds.
    let (event_ids, webhook_ids) = ClaimedRow::distinct(&rows);
    let mut events = HashMap::with_capacity(event_ids.len());
    let mut event = c.prepare_cached("SELECT data, created_at FROM events WHERE id = ?1")?;
    for id in event_ids {
        let found =
            event.query_row(params![id], |row| Ok((row.get::<_, String>(0)?, Timestamp(row.get(1)?)))).optional()?;
        if let Some(found) = found {
            events.insert(id, found);
        }
    }
    let mut webhooks = HashMap::with_capacity(webhook_ids.len());
    let mut webhook = c.prepare_cached(
        "SELECT url, format, secret, previous_secret, previous_secret_expires_at, headers FROM webhooks WHERE id = ?1",
    )?;
    for id in webhook_ids {
        let mut found = webhook.query(params![id])?;
        let Some(row) = found.next()? else { continue };
        let previous: Option<String> = row.get(3)?;
        let until: Option<i64> = row.get(4)?;
        let send = Sendable::from_stored(
            cipher,
            r.now,
            id,
            row.get(0)?,
            &row.get::<_, String>(1)?,
            &row.get::<_, String>(2)?,
            previous.zip(until.map(Timestamp)),
            &row.get::<_, String>(5)?,
        )?;
        webhooks.insert(id, Arc::new(send));
    }
    ClaimedRow::assemble(rows, &events, &webhooks, r.lease_until)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EncryptionKey, SqliteStore, Store as _};

    fn event(id: Uuid) -> NewEvent {
        NewEvent {
            id,
            org_id: Uuid::now_v7(),
            event_type: "email.delivered".into(),
            data: "{}".into(),
            idempotency_key: None,
            created_at: Timestamp::now(),
        }
    }

    /// Two publishes written in one round, the second failing half-way (its first event is
    /// written, its second event's id is taken by the first publish): the first publish is
    /// committed and answered, the second answered with its own error, and nothing of it is
    /// left behind, not even its first event.
    #[tokio::test]
    async fn a_job_that_fails_rolls_back_alone_and_the_rest_of_its_round_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("round.db");
        let cipher = Cipher::new(&EncryptionKey::generate());
        let store = SqliteStore::open(&format!("sqlite://{}", path.display()), cipher.clone()).await.unwrap();
        store.migrate().await.unwrap();
        let id = Uuid::now_v7();
        let (first, second) = (event(id), vec![event(Uuid::now_v7()), event(id)]);
        // Both jobs are queued before the thread starts, so they are written in one round.
        let (tx, rx) = mpsc::unbounded_channel();
        let window = Duration::from_secs(60);
        let (reply_a, a) = tokio::sync::oneshot::channel();
        let (reply_b, b) = tokio::sync::oneshot::channel();
        tx.send(Job::Publish { events: vec![first], window, reply: reply_a }).unwrap();
        tx.send(Job::Publish { events: second, window, reply: reply_b }).unwrap();
        let shared = Shared { cipher, handoff: Arc::default(), signal: Arc::default() };
        spawn(connect(&path).unwrap(), shared, rx).unwrap();
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let (published, _, _) = a.expect("the first publish is written");
        assert_eq!(published[0].id, id);
        assert!(b.is_err(), "the second publish fails on its own");
        let c = connect(&path).unwrap();
        let ids: Vec<Uuid> = c
            .prepare("SELECT id FROM events")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(ids, vec![id], "only the first publish's event is stored");
    }
}
