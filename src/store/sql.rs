//! The SQL both backends share. SQLite and PostgreSQL run the same statements (`$n`
//! placeholders work on both, and every column type decodes to the same Rust type), so the
//! [`Store`](super::Store) implementation is written once here, as a macro expanded in
//! each backend's module over its own pool and row types. What differs (connecting,
//! migrations, the claim statement and its locking) lives in the backend modules, which
//! provide `write_pool()`, `read_pool()`, `BEGIN_WRITE`, `CLAIM_SQL` and `lock_claims()`.

/// Expands the shared `Store` implementation for `$store`, whose database is `$db`.
macro_rules! shared_store {
    ($store:ty, $db:ty) => {
        use std::time::Duration as __Duration;

        use async_trait::async_trait;
        use sqlx::Row as _;
        use uuid::Uuid;

        use crate::domain::{
            api_key::Scope,
            delivery::{DeliveryStatus, Outcome},
            event_type,
            time::Timestamp,
            webhook::{Format, Status, WebhookSecret},
        };
        use crate::store::{
            cipher::Cipher, ApiKeyRecord, Attempt, AttemptRecord, ClaimRequest, ClaimedDelivery, Delivery, DeliveryQuery,
            DisablePolicy, NewEvent, NextStep, PublishedEvent, Result, Store, StoreError, UpdateResult, Webhook, WebhookUpdate,
        };

        use crate::store::sending::{open_secret, ClaimedRow, Handing, Sendable, Target};

        type Row = <$db as sqlx::Database>::Row;
        type Conn = <$db as sqlx::Database>::Connection;

        const WEBHOOK_COLUMNS: &str = "id, org_id, name, description, url, events, format, status, disabled_reason, disabled_at, headers, secret, created_at, updated_at, version";
        const DELIVERY_COLUMNS: &str = "id, webhook_id, event_id, event_type, status, attempts, last_status_code, last_error, last_response_body, last_duration_ms, next_attempt_at, created_at, updated_at, delivered_at";
        const OPEN: &str = "('pending', 'retrying')";
        /// Sealed in `meta` under the encryption key, to recognise the right key at start.
        const KEY_CHECK: &str = "mosend-webhooks key check";

        fn ts(row: &Row, col: &str) -> Result<Timestamp> {
            Ok(Timestamp(row.try_get(col)?))
        }

        fn opt_ts(row: &Row, col: &str) -> Result<Option<Timestamp>> {
            Ok(row.try_get::<Option<i64>, _>(col)?.map(Timestamp))
        }

        fn count(row: &Row, col: &str) -> Result<u32> {
            Ok(u32::try_from(row.try_get::<i64, _>(col)?).unwrap_or(u32::MAX))
        }

        fn status_code(row: &Row, col: &str) -> Result<Option<u16>> {
            Ok(row.try_get::<Option<i64>, _>(col)?.and_then(|c| u16::try_from(c).ok()))
        }

        fn to_json<T: serde::Serialize>(value: &T) -> String {
            serde_json::to_string(value).expect("serialising strings and maps of strings cannot fail")
        }

        fn webhook_from_row(row: &Row, cipher: &Cipher) -> Result<Webhook> {
            let corrupt = |what: &str| StoreError::Corrupt(format!("webhook {what}"));
            let events: String = row.try_get("events")?;
            let headers: String = row.try_get("headers")?;
            let sealed: String = row.try_get("secret")?;
            let id: Uuid = row.try_get("id")?;
            Ok(Webhook {
                id,
                org_id: row.try_get("org_id")?,
                name: row.try_get("name")?,
                description: row.try_get("description")?,
                url: row.try_get("url")?,
                events: serde_json::from_str(&events).map_err(|_| corrupt("events"))?,
                format: Format::parse(row.try_get("format")?).map_err(|_| corrupt("format"))?,
                status: Status::parse(row.try_get("status")?).map_err(|_| corrupt("status"))?,
                disabled_reason: row.try_get("disabled_reason")?,
                disabled_at: opt_ts(row, "disabled_at")?,
                headers: serde_json::from_str(&headers).map_err(|_| corrupt("headers"))?,
                secret: open_secret(cipher, &sealed, id)?,
                created_at: ts(row, "created_at")?,
                updated_at: ts(row, "updated_at")?,
                version: row.try_get("version")?,
            })
        }

        fn delivery_from_row(row: &Row) -> Result<Delivery> {
            let status: String = row.try_get("status")?;
            Ok(Delivery {
                id: row.try_get("id")?,
                webhook_id: row.try_get("webhook_id")?,
                event_id: row.try_get("event_id")?,
                event_type: row.try_get("event_type")?,
                status: DeliveryStatus::parse(&status)
                    .ok_or_else(|| StoreError::Corrupt(format!("delivery status {status}")))?,
                attempts: count(row, "attempts")?,
                last_status_code: status_code(row, "last_status_code")?,
                last_error: row.try_get("last_error")?,
                last_response_body: row.try_get("last_response_body")?,
                last_duration_ms: row.try_get("last_duration_ms")?,
                next_attempt_at: opt_ts(row, "next_attempt_at")?,
                created_at: ts(row, "created_at")?,
                updated_at: ts(row, "updated_at")?,
                delivered_at: opt_ts(row, "delivered_at")?,
            })
        }

        fn api_key_from_row(row: &Row) -> Result<ApiKeyRecord> {
            let scope = if row.try_get::<bool, _>("is_platform")? {
                Scope::Platform
            } else {
                Scope::Organization(row.try_get("org_id")?)
            };
            Ok(ApiKeyRecord {
                prefix: row.try_get("prefix")?,
                secret_hash: row.try_get("secret_hash")?,
                scope,
                name: row.try_get("name")?,
                created_at: ts(row, "created_at")?,
                revoked_at: opt_ts(row, "revoked_at")?,
            })
        }

        /// The sending details of a webhook row (its id in `id_column`, `url`, `format`,
        /// `secret`, `previous_secret`, `previous_secret_expires_at`, `headers`); the previous
        /// secret only while its grace period lasts.
        fn sendable_from_row(row: &Row, id_column: &str, cipher: &Cipher, now: Timestamp) -> Result<Sendable> {
            let previous: Option<String> = row.try_get("previous_secret")?;
            let until = opt_ts(row, "previous_secret_expires_at")?;
            Sendable::from_stored(
                cipher,
                now,
                row.try_get(id_column)?,
                row.try_get("url")?,
                row.try_get("format")?,
                row.try_get("secret")?,
                previous.zip(until),
                row.try_get("headers")?,
            )
        }

        /// `($1, $2, …)` for `n` values starting at `$first`.
        fn placeholders(first: usize, n: usize) -> String {
            let list: Vec<String> = (first..first + n).map(|i| format!("${i}")).collect();
            format!("({})", list.join(", "))
        }

        /// `($1, …, $k), ($k+1, …)`: `rows` rows of `width` values each, for a statement
        /// whose only parameters these are. On SQLite they are written `?`: binding a
        /// numbered parameter looks its name up in a list (sqlx asks for every one), which
        /// costs O(n²) for the thousands of values of a multi-row statement.
        fn value_rows(rows: usize, width: usize) -> String {
            if <$store>::ANONYMOUS_PARAMETERS {
                let row = format!("({})", vec!["?"; width].join(", "));
                vec![row; rows].join(", ")
            } else {
                (0..rows).map(|r| placeholders(r * width + 1, width)).collect::<Vec<_>>().join(", ")
            }
        }

        /// Splits `n` rows into chunks whose sizes are powers of two (at most 256), so a
        /// multi-row statement has few distinct shapes and stays in the statement cache.
        fn pow2_chunks(mut n: usize) -> Vec<usize> {
            let mut out = Vec::new();
            while n > 0 {
                let size = 1usize << (usize::BITS - 1 - n.leading_zeros()).min(8);
                out.push(size);
                n -= size;
            }
            out
        }

        /// Cancels the open deliveries of a webhook (deleted or disabled).
        async fn cancel_open(tx: &mut Conn, webhook_id: Uuid, at: Timestamp) -> Result<u64> {
            let done = sqlx::query(&format!(
                "UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL, lease_until = NULL, lease_token = NULL, updated_at = $1
                 WHERE webhook_id = $2 AND status IN {OPEN}"
            ))
            .bind(at.0)
            .bind(webhook_id)
            .execute(&mut *tx)
            .await?;
            Ok(done.rows_affected())
        }

        async fn disable(tx: &mut Conn, webhook_id: Uuid, reason: &str, at: Timestamp) -> Result<bool> {
            let done = sqlx::query(
                "UPDATE webhooks SET status = 'disabled', disabled_reason = $1, disabled_at = $2, updated_at = $2,
                 version = version + 1 WHERE id = $3 AND status != 'disabled'",
            )
            .bind(reason)
            .bind(at.0)
            .bind(webhook_id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Ok(false);
            }
            cancel_open(tx, webhook_id, at).await?;
            Ok(true)
        }

        /// Whether a database error means a lost race with a concurrent transaction: a
        /// unique-constraint violation, a deadlock, or a serialization failure.
        fn is_lost_race(e: &StoreError) -> bool {
            match e {
                StoreError::Database(sqlx::Error::Database(d)) => {
                    d.is_unique_violation() || matches!(d.code().as_deref(), Some("40P01" | "40001"))
                }
                _ => false,
            }
        }

        impl $store {
            /// Proves the key is the one the database was first used with, by opening a
            /// value sealed then (and sealing one on first use), so a wrong key fails at
            /// start, not on the first delivery.
            pub(crate) async fn check_key(&self) -> Result<()> {
                let stored: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'key_check'")
                    .fetch_optional(self.write_pool())
                    .await?;
                match stored {
                    Some(sealed) => match self.cipher.open(&sealed, "meta") {
                        Ok(text) if text == KEY_CHECK => Ok(()),
                        _ => Err(StoreError::WrongKey),
                    },
                    None => {
                        sqlx::query("INSERT INTO meta (key, value) VALUES ('key_check', $1) ON CONFLICT (key) DO NOTHING")
                            .bind(self.cipher.seal(KEY_CHECK, "meta"))
                            .execute(self.write_pool())
                            .await?;
                        // Another instance may have sealed its own check first: verify again.
                        let sealed: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'key_check'")
                            .fetch_one(self.write_pool())
                            .await?;
                        match self.cipher.open(&sealed, "meta") {
                            Ok(text) if text == KEY_CHECK => Ok(()),
                            _ => Err(StoreError::WrongKey),
                        }
                    }
                }
            }

            /// Publishes events in one transaction (one event, a batch, or a group of
            /// concurrent publishes): the organizations' subscriptions are read once, and the
            /// events and their deliveries are written with multi-row inserts. Deliveries the
            /// local worker has a free slot for are inserted leased to it and returned, to be
            /// handed over once the transaction has committed (see `handoff`); also the webhooks
            /// whose deliveries were left for the claim loop.
            async fn publish_all(
                &self,
                events: &[NewEvent],
                window: __Duration,
            ) -> Result<crate::store::Published> {
                if let Some(writer) = self.group_writer() {
                    return writer.publish(events.to_vec(), window).await;
                }
                let handoff = self.handoff();
                let mut tx = self.write_pool().begin_with(Self::BEGIN_WRITE).await?;
                let mut orgs: Vec<Uuid> = events.iter().map(|e| e.org_id).collect();
                orgs.sort_unstable();
                orgs.dedup();
                let subscriptions = self.subscriptions(&mut tx, &orgs, handoff.is_some()).await?;
                // Keyed events go first, in (organization, key) order: concurrent batches then take
                // the unique index's entries in one order, so they wait for each other instead
                // of deadlocking. The sort is stable, so a key repeated within the batch still
                // answers with its first occurrence; results come back in request order.
                let mut order: Vec<usize> = (0..events.len()).collect();
                order.sort_by(|&a, &b| {
                    let key = |i: usize| (events[i].idempotency_key.is_none(), events[i].org_id, events[i].idempotency_key.as_deref());
                    key(a).cmp(&key(b))
                });
                let mut out: Vec<Option<PublishedEvent>> = vec![None; events.len()];
                let mut first_of_key: std::collections::HashMap<(Uuid, &str), usize> = Default::default();
                let mut fresh: Vec<(&NewEvent, u32)> = Vec::with_capacity(events.len());
                let mut deliveries: Vec<(&Target, &NewEvent)> = Vec::new();
                for i in order {
                    let e = &events[i];
                    if let Some(key) = e.idempotency_key.as_deref() {
                        if let Some(&first) = first_of_key.get(&(e.org_id, key)) {
                            out[i] = out[first].clone().map(|p| PublishedEvent { duplicate: true, ..p });
                            continue;
                        }
                        first_of_key.insert((e.org_id, key), i);
                        if let Some(existing) = Self::existing_event(&mut tx, e, key, window).await? {
                            out[i] = Some(existing);
                            continue;
                        }
                    }
                    let before = deliveries.len();
                    if let Some(hooks) = subscriptions.get(&e.org_id) {
                        deliveries.extend(hooks.iter().filter(|t| event_type::matches(&t.events, &e.event_type)).map(|t| (t, e)));
                    }
                    let count = u32::try_from(deliveries.len() - before).unwrap_or(u32::MAX);
                    out[i] = Some(PublishedEvent {
                        id: e.id,
                        event_type: e.event_type.clone(),
                        created_at: e.created_at,
                        deliveries: count,
                        duplicate: false,
                    });
                    fresh.push((e, count));
                }
                let mut at = 0;
                for n in pow2_chunks(fresh.len()) {
                    let sql = format!(
                        "INSERT INTO events (id, org_id, type, data, idempotency_key, deliveries, created_at) VALUES {}",
                        value_rows(n, 7)
                    );
                    let mut query = sqlx::query(&sql);
                    for (e, count) in &fresh[at..at + n] {
                        query = query
                            .bind(e.id)
                            .bind(e.org_id)
                            .bind(&e.event_type)
                            .bind(&e.data)
                            .bind(&e.idempotency_key)
                            .bind(i64::from(*count))
                            .bind(e.created_at.0);
                    }
                    query.execute(&mut *tx).await?;
                    at += n;
                }
                // Reserve a local slot for each delivery that can start now; the rest are plain
                // `pending` rows for the claim loop. Dropping the reservations (an error below)
                // frees the slots.
                let now = Timestamp::now();
                let mut handed: Vec<crate::store::handoff::HandedOff> = Vec::new();
                let mut handing = Handing::default();
                let mut left_behind: std::collections::HashSet<Uuid> = Default::default();
                let rows: Vec<(Uuid, &Target, &NewEvent, Option<Timestamp>)> = deliveries
                    .iter()
                    .map(|&(target, e)| {
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
                        (id, target, e, lease)
                    })
                    .collect();
                let token = handoff.as_ref().map(|h| h.token);
                let mut at = 0;
                for n in pow2_chunks(rows.len()) {
                    let sql = format!(
                        "INSERT INTO deliveries (id, webhook_id, org_id, event_id, event_type, status, next_attempt_at, created_at, updated_at, lease_until, lease_token) VALUES {}",
                        value_rows(n, 11)
                    );
                    let mut query = sqlx::query(&sql);
                    for (id, target, e, lease) in &rows[at..at + n] {
                        query = query
                            .bind(id)
                            .bind(target.id)
                            .bind(e.org_id)
                            .bind(e.id)
                            .bind(&e.event_type)
                            .bind(DeliveryStatus::Pending.as_str())
                            .bind(e.created_at.0)
                            .bind(e.created_at.0)
                            .bind(e.created_at.0)
                            .bind(lease.map(|l| l.0))
                            .bind(lease.and(token));
                    }
                    query.execute(&mut *tx).await?;
                    at += n;
                }
                tx.commit().await?;
                Ok((out.into_iter().flatten().collect(), handed, left_behind.into_iter().collect()))
            }

            /// The webhooks of these organizations that take new deliveries (active or
            /// paused), with their subscriptions; with `sendable`, what it takes to send to
            /// the active ones too (their secrets opened once per group).
            async fn subscriptions(
                &self,
                tx: &mut Conn,
                orgs: &[Uuid],
                sendable: bool,
            ) -> Result<std::collections::HashMap<Uuid, Vec<Target>>> {
                let mut out: std::collections::HashMap<Uuid, Vec<Target>> = Default::default();
                let now = Timestamp::now();
                let mut at = 0;
                for n in pow2_chunks(orgs.len()) {
                    let sql = format!(
                        "SELECT id, org_id, events, status, url, format, secret, previous_secret, previous_secret_expires_at, headers
                         FROM webhooks WHERE org_id IN {} AND status IN ('active', 'paused')",
                        placeholders(1, n)
                    );
                    let mut query = sqlx::query(&sql);
                    for org in &orgs[at..at + n] {
                        query = query.bind(org);
                    }
                    for row in query.fetch_all(&mut *tx).await? {
                        let events: Vec<String> = serde_json::from_str(row.try_get("events")?)
                            .map_err(|_| StoreError::Corrupt("webhook events".into()))?;
                        let active = row.try_get::<String, _>("status")? == Status::Active.as_str();
                        let send = if sendable && active { Some(std::sync::Arc::new(sendable_from_row(&row, "id", &self.cipher, now)?)) } else { None };
                        let target = Target { id: row.try_get("id")?, events, active, send };
                        out.entry(row.try_get("org_id")?).or_default().push(target);
                    }
                    at += n;
                }
                Ok(out)
            }

            /// The event stored under this idempotency key within the window, if any; past
            /// the window the key is freed for the new event.
            async fn existing_event(tx: &mut Conn, e: &NewEvent, key: &str, window: __Duration) -> Result<Option<PublishedEvent>> {
                let existing =
                    sqlx::query("SELECT id, type, created_at, deliveries FROM events WHERE org_id = $1 AND idempotency_key = $2")
                        .bind(e.org_id)
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(row) = existing else { return Ok(None) };
                let created_at = ts(&row, "created_at")?;
                if created_at > e.created_at.minus(window) {
                    return Ok(Some(PublishedEvent {
                        id: row.try_get("id")?,
                        event_type: row.try_get("type")?,
                        created_at,
                        deliveries: count(&row, "deliveries")?,
                        duplicate: true,
                    }));
                }
                sqlx::query("UPDATE events SET idempotency_key = NULL WHERE org_id = $1 AND idempotency_key = $2")
                    .bind(e.org_id)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                Ok(None)
            }
        }

        impl $store {
            /// Records attempts on their deliveries, with multi-row updates; returns the ids
            /// of the deliveries that were still ours (a lease lost to another worker when it
            /// expired is not ours to record). A delivery cancelled while its attempt was in
            /// flight stays cancelled.
            async fn record_deliveries(tx: &mut Conn, records: &[AttemptRecord]) -> Result<std::collections::HashSet<Uuid>> {
                let mut ours = std::collections::HashSet::with_capacity(records.len());
                let mut at = 0;
                for n in pow2_chunks(records.len()) {
                    let sql = format!(
                        "WITH v (v_id, v_token, v_code, v_error, v_body, v_duration, v_now, v_status, v_next, v_delivered) AS (VALUES {})
                         UPDATE deliveries SET attempts = attempts + 1, last_status_code = v.v_code, last_error = v.v_error,
                             last_response_body = v.v_body, last_duration_ms = v.v_duration, updated_at = v.v_now,
                             status = CASE WHEN deliveries.status = 'cancelled' THEN deliveries.status ELSE v.v_status END,
                             next_attempt_at = CASE WHEN deliveries.status = 'cancelled' THEN NULL ELSE v.v_next END,
                             delivered_at = COALESCE(deliveries.delivered_at, v.v_delivered),
                             lease_until = NULL, lease_token = NULL
                         FROM v WHERE deliveries.id = v.v_id AND (deliveries.lease_token = v.v_token OR deliveries.status = 'cancelled')
                         RETURNING deliveries.id",
                        value_rows(n, 10)
                    );
                    let mut query = sqlx::query_scalar::<_, Uuid>(&sql);
                    for a in &records[at..at + n] {
                        let now = a.attempted_at.plus(__Duration::from_millis(u64::try_from(a.duration_ms).unwrap_or(0)));
                        let (status, next_at, delivered_at) = match a.next {
                            NextStep::Succeeded => (DeliveryStatus::Succeeded, None, Some(now.0)),
                            NextStep::RetryAt(at) => (DeliveryStatus::Retrying, Some(at.0), None),
                            NextStep::Failed => (DeliveryStatus::Failed, None, None),
                        };
                        query = query
                            .bind(a.delivery_id)
                            .bind(a.token)
                            .bind(a.status_code.map(i64::from))
                            .bind(&a.error)
                            .bind(&a.response_body)
                            .bind(a.duration_ms)
                            .bind(now.0)
                            .bind(status.as_str())
                            .bind(next_at)
                            .bind(delivered_at);
                    }
                    ours.extend(query.fetch_all(&mut *tx).await?);
                    at += n;
                }
                Ok(ours)
            }

            /// The attempt rows of a group, with multi-row inserts.
            async fn insert_attempts(tx: &mut Conn, attempts: &[&AttemptRecord]) -> Result<()> {
                let mut at = 0;
                for n in pow2_chunks(attempts.len()) {
                    let sql = format!(
                        "INSERT INTO attempts (id, delivery_id, attempted_at, duration_ms, status_code, outcome, error, response_body) VALUES {}",
                        value_rows(n, 8)
                    );
                    let mut query = sqlx::query(&sql);
                    for a in &attempts[at..at + n] {
                        query = query
                            .bind(Uuid::now_v7())
                            .bind(a.delivery_id)
                            .bind(a.attempted_at.0)
                            .bind(a.duration_ms)
                            .bind(a.status_code.map(i64::from))
                            .bind(a.outcome.code())
                            .bind(&a.error)
                            .bind(&a.response_body);
                    }
                    query.execute(&mut *tx).await?;
                    at += n;
                }
                Ok(())
            }

            /// A success ends its webhook's failure streak: one statement for the webhooks of
            /// a group (`IN ((?), (?), …)`: one-value rows, so SQLite binds them anonymously).
            async fn end_failure_streaks(tx: &mut Conn, webhook_ids: &[Uuid]) -> Result<()> {
                let mut at = 0;
                for n in pow2_chunks(webhook_ids.len()) {
                    let sql = format!(
                        "UPDATE webhooks SET failing_since = NULL, failed_attempts = 0 WHERE failed_attempts > 0 AND id IN ({})",
                        value_rows(n, 1)
                    );
                    let mut query = sqlx::query(&sql);
                    for id in &webhook_ids[at..at + n] {
                        query = query.bind(id);
                    }
                    query.execute(&mut *tx).await?;
                    at += n;
                }
                Ok(())
            }

            /// A failure extends the webhook's failure streak, and disables the webhook when
            /// the streak is long enough (or at once on 410 Gone). Returns why it was disabled.
            async fn count_failure(tx: &mut Conn, a: &AttemptRecord, policy: &DisablePolicy) -> Result<Option<String>> {
                let now = a.attempted_at.plus(__Duration::from_millis(u64::try_from(a.duration_ms).unwrap_or(0)));
                let streak = sqlx::query(
                    "UPDATE webhooks SET failing_since = COALESCE(failing_since, $1), failed_attempts = failed_attempts + 1
                     WHERE id = $2 RETURNING failing_since, failed_attempts",
                )
                .bind(a.attempted_at.0)
                .bind(a.webhook_id)
                .fetch_optional(&mut *tx)
                .await?;
                let reason = if a.outcome == Outcome::Gone {
                    Some("the receiver answered 410 Gone".to_string())
                } else if let Some(row) = streak {
                    let since: i64 = row.try_get("failing_since")?;
                    let failed = count(&row, "failed_attempts")?;
                    crate::store::disable_reason(policy, since, now.0, failed, a.error.as_deref())
                } else {
                    None
                };
                match reason {
                    Some(reason) if disable(tx, a.webhook_id, &reason, now).await? => Ok(Some(reason)),
                    _ => Ok(None),
                }
            }
        }

        #[async_trait]
        impl Store for $store {
            async fn migrate(&self) -> Result<()> {
                self.run_migrations().await
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(self.read_pool()).await?;
                Ok(())
            }

            fn work_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
                self.signal.clone()
            }

            async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
                let (org, platform) = match key.scope {
                    Scope::Platform => (None, true),
                    Scope::Organization(org) => (Some(org), false),
                };
                sqlx::query(
                    "INSERT INTO api_keys (prefix, secret_hash, org_id, is_platform, name, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&key.prefix)
                .bind(&key.secret_hash)
                .bind(org)
                .bind(platform)
                .bind(&key.name)
                .bind(key.created_at.0)
                .execute(self.write_pool())
                .await?;
                Ok(())
            }

            async fn find_api_key(&self, prefix: &str) -> Result<Option<ApiKeyRecord>> {
                let row = sqlx::query("SELECT * FROM api_keys WHERE prefix = $1").bind(prefix).fetch_optional(self.read_pool()).await?;
                row.as_ref().map(api_key_from_row).transpose()
            }

            async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
                let rows = sqlx::query("SELECT * FROM api_keys ORDER BY created_at, prefix").fetch_all(self.read_pool()).await?;
                rows.iter().map(api_key_from_row).collect()
            }

            async fn revoke_api_key(&self, prefix: &str, at: Timestamp) -> Result<bool> {
                let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE prefix = $2 AND revoked_at IS NULL")
                    .bind(at.0)
                    .bind(prefix)
                    .execute(self.write_pool())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn insert_webhook(&self, w: &Webhook) -> Result<()> {
                sqlx::query(&format!(
                    "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
                ))
                .bind(w.id)
                .bind(w.org_id)
                .bind(&w.name)
                .bind(&w.description)
                .bind(&w.url)
                .bind(to_json(&w.events))
                .bind(w.format.as_str())
                .bind(w.status.as_str())
                .bind(&w.disabled_reason)
                .bind(w.disabled_at.map(|t| t.0))
                .bind(to_json(&w.headers))
                .bind(self.cipher.seal(w.secret.expose(), &w.id.to_string()))
                .bind(w.created_at.0)
                .bind(w.updated_at.0)
                .bind(w.version)
                .execute(self.write_pool())
                .await?;
                Ok(())
            }

            async fn list_webhooks(&self, org_id: Uuid) -> Result<Vec<Webhook>> {
                let rows = sqlx::query(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE org_id = $1 ORDER BY id"))
                    .bind(org_id)
                    .fetch_all(self.read_pool())
                    .await?;
                rows.iter().map(|r| webhook_from_row(r, &self.cipher)).collect()
            }

            async fn get_webhook(&self, org_id: Uuid, id: Uuid) -> Result<Option<Webhook>> {
                let row = sqlx::query(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1 AND org_id = $2"))
                    .bind(id)
                    .bind(org_id)
                    .fetch_optional(self.read_pool())
                    .await?;
                row.as_ref().map(|r| webhook_from_row(r, &self.cipher)).transpose()
            }

            async fn update_webhook(&self, u: &WebhookUpdate) -> Result<UpdateResult> {
                let w = &u.webhook;
                let mut tx = self.write_pool().begin_with(Self::BEGIN_WRITE).await?;
                let done = sqlx::query(
                    "UPDATE webhooks SET name = $1, description = $2, url = $3, events = $4, format = $5, status = $6,
                     disabled_reason = $7, disabled_at = $8, headers = $9, updated_at = $10,
                     failing_since = CASE WHEN $11 THEN NULL ELSE failing_since END,
                     failed_attempts = CASE WHEN $11 THEN 0 ELSE failed_attempts END,
                     version = version + 1
                     WHERE id = $12 AND org_id = $13 AND version = $14",
                )
                .bind(&w.name)
                .bind(&w.description)
                .bind(&w.url)
                .bind(to_json(&w.events))
                .bind(w.format.as_str())
                .bind(w.status.as_str())
                .bind(&w.disabled_reason)
                .bind(w.disabled_at.map(|t| t.0))
                .bind(to_json(&w.headers))
                .bind(w.updated_at.0)
                .bind(u.reset_failures)
                .bind(w.id)
                .bind(w.org_id)
                .bind(w.version)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    let exists = sqlx::query("SELECT 1 FROM webhooks WHERE id = $1 AND org_id = $2")
                        .bind(w.id)
                        .bind(w.org_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    return Ok(if exists.is_some() { UpdateResult::Stale } else { UpdateResult::Missing });
                }
                if u.cancel_open_deliveries {
                    cancel_open(&mut tx, w.id, w.updated_at).await?;
                }
                tx.commit().await?;
                // A resumed webhook's held deliveries are due now.
                self.signal.notify_one();
                Ok(UpdateResult::Applied)
            }

            async fn rotate_secret(
                &self,
                org_id: Uuid,
                id: Uuid,
                secret: &WebhookSecret,
                previous_expires_at: Timestamp,
                at: Timestamp,
            ) -> Result<bool> {
                // The current secret, still sealed for this row, becomes the previous one.
                let done = sqlx::query(
                    "UPDATE webhooks SET previous_secret = secret, previous_secret_expires_at = $1, secret = $2,
                     updated_at = $3, version = version + 1 WHERE id = $4 AND org_id = $5",
                )
                .bind(previous_expires_at.0)
                .bind(self.cipher.seal(secret.expose(), &id.to_string()))
                .bind(at.0)
                .bind(id)
                .bind(org_id)
                .execute(self.write_pool())
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn delete_webhook(&self, org_id: Uuid, id: Uuid, at: Timestamp) -> Result<bool> {
                let mut tx = self.write_pool().begin_with(Self::BEGIN_WRITE).await?;
                let done = sqlx::query("DELETE FROM webhooks WHERE id = $1 AND org_id = $2")
                    .bind(id)
                    .bind(org_id)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                cancel_open(&mut tx, id, at).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn publish_event(&self, e: &NewEvent, window: __Duration) -> Result<PublishedEvent> {
                // Two publishes with one new idempotency key may race (several instances on
                // PostgreSQL): the loser's insert violates the unique index, and its retry
                // finds the winner's event.
                let published = self.publish_batch(std::slice::from_ref(e), window).await?;
                published.into_iter().next().ok_or_else(|| StoreError::Corrupt("a publish of one event returned none".into()))
            }

            async fn publish_batch(&self, events: &[NewEvent], window: __Duration) -> Result<Vec<PublishedEvent>> {
                // A race with a concurrent publish of the same idempotency key (several instances
                // on PostgreSQL) ends in a unique violation or a deadlock: start over, and the
                // retry finds the other publish's event.
                let mut tries = 0;
                let (published, handed, left_behind) = loop {
                    match self.publish_all(events, window).await {
                        Err(err) if tries < 8 && is_lost_race(&err) => {
                            tries += 1;
                            let pause = rand::random::<u64>() % (5 * tries);
                            tokio::time::sleep(__Duration::from_millis(pause)).await;
                        }
                        other => break other?,
                    }
                };
                // Committed: hand the leased deliveries over, and wake the claim loop only if
                // some were left for it and no slot that can take them is due to free (the
                // gate then wants a claim when it does).
                let wake = match self.handoff() {
                    Some(h) => {
                        for (delivery, slot) in handed {
                            h.send(delivery, slot);
                        }
                        h.gate.left_behind(&left_behind)
                    }
                    None => !left_behind.is_empty(),
                };
                if wake {
                    self.signal.notify_one();
                }
                Ok(published)
            }

            async fn list_deliveries(&self, webhook_id: Uuid, q: &DeliveryQuery) -> Result<Vec<Delivery>> {
                let mut sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE webhook_id = $1");
                let mut n = 1;
                let mut next = || {
                    n += 1;
                    n
                };
                if q.status.is_some() {
                    sql.push_str(&format!(" AND status = ${}", next()));
                }
                if q.event_type.is_some() {
                    sql.push_str(&format!(" AND event_type = ${}", next()));
                }
                if q.before.is_some() {
                    sql.push_str(&format!(" AND id < ${}", next()));
                }
                sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", next()));
                let mut query = sqlx::query(&sql).bind(webhook_id);
                if let Some(s) = q.status {
                    query = query.bind(s.as_str());
                }
                if let Some(t) = &q.event_type {
                    query = query.bind(t);
                }
                if let Some(b) = q.before {
                    query = query.bind(b);
                }
                let rows = query.bind(i64::from(q.limit)).fetch_all(self.read_pool()).await?;
                rows.iter().map(delivery_from_row).collect()
            }

            async fn get_delivery(&self, webhook_id: Uuid, id: Uuid) -> Result<Option<Delivery>> {
                let row = sqlx::query(&format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1 AND webhook_id = $2"))
                    .bind(id)
                    .bind(webhook_id)
                    .fetch_optional(self.read_pool())
                    .await?;
                row.as_ref().map(delivery_from_row).transpose()
            }

            async fn list_attempts(&self, delivery_id: Uuid) -> Result<Vec<Attempt>> {
                let rows = sqlx::query("SELECT * FROM attempts WHERE delivery_id = $1 ORDER BY attempted_at, id")
                    .bind(delivery_id)
                    .fetch_all(self.read_pool())
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(Attempt {
                            id: row.try_get("id")?,
                            delivery_id: row.try_get("delivery_id")?,
                            attempted_at: ts(row, "attempted_at")?,
                            duration_ms: row.try_get("duration_ms")?,
                            status_code: status_code(row, "status_code")?,
                            outcome: row.try_get("outcome")?,
                            error: row.try_get("error")?,
                            response_body: row.try_get("response_body")?,
                        })
                    })
                    .collect()
            }

            async fn claim_due(&self, r: &ClaimRequest) -> Result<Vec<ClaimedDelivery>> {
                if let Some(writer) = self.group_writer() {
                    return writer.claim(*r).await;
                }
                let mut tx = self.write_pool().begin_with(Self::BEGIN_WRITE).await?;
                Self::lock_claims(&mut tx).await?;
                // Due deliveries of active webhooks, at most `per_webhook` per webhook counting
                // the ones already leased (in flight here or in another process).
                // How many due deliveries to read per webhook: all it may take when few webhooks
                // have work, down to one each when thousands do (the claim then costs
                // O(active webhooks), and the next claim takes the next ones).
                let active: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE status = 'active'")
                    .fetch_one(&mut *tx)
                    .await?;
                let per_probe = ((2 * i64::from(r.batch) + active - 1) / active.max(1)).clamp(1, i64::from(r.per_webhook));
                let rows = sqlx::query(Self::CLAIM_SQL)
                    .bind(r.now.0)
                    .bind(i64::from(r.per_webhook))
                    .bind(i64::from(r.batch))
                    .bind(r.lease_until.0)
                    .bind(r.token)
                    .bind(per_probe)
                    .fetch_all(&mut *tx)
                    .await?;
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                let rows = rows
                    .iter()
                    .map(|row| {
                        Ok(ClaimedRow {
                            id: row.try_get("id")?,
                            webhook_id: row.try_get("webhook_id")?,
                            event_id: row.try_get("event_id")?,
                            event_type: row.try_get("event_type")?,
                            attempts: row.try_get("attempts")?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                // Each event and each webhook read once, however many of its deliveries the
                // claim holds.
                let (event_ids, webhook_ids) = ClaimedRow::distinct(&rows);
                let sql = format!("SELECT id, data, created_at FROM events WHERE id IN {}", placeholders(1, event_ids.len()));
                let mut query = sqlx::query(&sql);
                for id in &event_ids {
                    query = query.bind(id);
                }
                let mut events = std::collections::HashMap::new();
                for row in query.fetch_all(&mut *tx).await? {
                    events.insert(row.try_get::<Uuid, _>("id")?, (row.try_get::<String, _>("data")?, ts(&row, "created_at")?));
                }
                let sql = format!(
                    "SELECT id, url, format, secret, previous_secret, previous_secret_expires_at, headers FROM webhooks WHERE id IN {}",
                    placeholders(1, webhook_ids.len())
                );
                let mut query = sqlx::query(&sql);
                for id in &webhook_ids {
                    query = query.bind(id);
                }
                let mut webhooks = std::collections::HashMap::new();
                for row in query.fetch_all(&mut *tx).await? {
                    let send = sendable_from_row(&row, "id", &self.cipher, r.now)?;
                    webhooks.insert(send.webhook_id, Arc::new(send));
                }
                tx.commit().await?;
                ClaimedRow::assemble(rows, &events, &webhooks, r.lease_until)
            }

            async fn record_attempts_then_claim(
                &self,
                records: &[AttemptRecord],
                policy: &DisablePolicy,
                claim: &ClaimRequest,
            ) -> (Result<Vec<Option<String>>>, Result<Vec<ClaimedDelivery>>) {
                if let Some(writer) = self.group_writer() {
                    return writer.record_then_claim(records.to_vec(), *policy, *claim).await;
                }
                let recorded = self.record_attempts(records, policy).await;
                let claimed = match recorded {
                    Ok(_) => self.claim_due(claim).await,
                    Err(_) => Ok(Vec::new()),
                };
                (recorded, claimed)
            }

            async fn record_attempts(&self, records: &[AttemptRecord], policy: &DisablePolicy) -> Result<Vec<Option<String>>> {
                if let Some(writer) = self.group_writer() {
                    return writer.record(records.to_vec(), *policy).await;
                }
                // One transaction for many attempts: a group commit, one fsync for the lot.
                let mut tx = self.write_pool().begin_with(Self::BEGIN_WRITE).await?;
                let mut out = vec![None; records.len()];
                let mut recorded = Vec::with_capacity(records.len());
                let ours = Self::record_deliveries(&mut tx, records).await?;
                // Webhooks whose failure streak a success in this group ends: reset once each,
                // before a later failure of the same webhook counts.
                let mut succeeded: Vec<Uuid> = Vec::new();
                for (i, a) in records.iter().enumerate() {
                    if !ours.contains(&a.delivery_id) {
                        continue;
                    }
                    recorded.push(a);
                    if a.outcome == Outcome::Success {
                        if !succeeded.contains(&a.webhook_id) {
                            succeeded.push(a.webhook_id);
                        }
                        continue;
                    }
                    if let Some(pos) = succeeded.iter().position(|w| *w == a.webhook_id) {
                        Self::end_failure_streaks(&mut tx, &[succeeded.swap_remove(pos)]).await?;
                    }
                    out[i] = Self::count_failure(&mut tx, a, policy).await?;
                }
                Self::end_failure_streaks(&mut tx, &succeeded).await?;
                Self::insert_attempts(&mut tx, &recorded).await?;
                tx.commit().await?;
                Ok(out)
            }

            async fn reencrypt(&self, new: &Cipher) -> Result<u64> {
                let mut tx = self.write_pool().begin_with(Self::BEGIN_WRITE).await?;
                let rows = sqlx::query("SELECT id, secret, previous_secret FROM webhooks").fetch_all(&mut *tx).await?;
                for row in &rows {
                    let id: Uuid = row.try_get("id")?;
                    let context = id.to_string();
                    let reseal = |sealed: &str| -> Result<String> {
                        let plain = self.cipher.open(sealed, &context).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        Ok(new.seal(&plain, &context))
                    };
                    let secret = reseal(&row.try_get::<String, _>("secret")?)?;
                    let previous = row.try_get::<Option<String>, _>("previous_secret")?.map(|p| reseal(&p)).transpose()?;
                    sqlx::query("UPDATE webhooks SET secret = $1, previous_secret = $2 WHERE id = $3")
                        .bind(secret)
                        .bind(previous)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("UPDATE meta SET value = $1 WHERE key = 'key_check'")
                    .bind(new.seal(KEY_CHECK, "meta"))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(rows.len() as u64)
            }

            async fn release_claims(&self, ids: &[Uuid], token: Uuid) -> Result<u64> {
                let mut released = 0;
                for chunk in ids.chunks(256) {
                    let sql = format!(
                        "UPDATE deliveries SET lease_until = NULL, lease_token = NULL WHERE lease_token = $1 AND id IN {}",
                        placeholders(2, chunk.len())
                    );
                    let mut query = sqlx::query(&sql).bind(token);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    released += query.execute(self.write_pool()).await?.rows_affected();
                }
                if released > 0 {
                    self.signal.notify_one();
                }
                Ok(released)
            }

            fn attach_handoff(&self, handoff: std::sync::Arc<crate::store::Handoff>) -> bool {
                self.set_handoff(Some(handoff))
            }

            fn detach_handoff(&self) {
                self.set_handoff(None);
            }

            async fn release_leases(&self, token: Uuid) -> Result<u64> {
                let done = sqlx::query("UPDATE deliveries SET lease_until = NULL, lease_token = NULL WHERE lease_token = $1")
                    .bind(token)
                    .execute(self.write_pool())
                    .await?;
                Ok(done.rows_affected())
            }

            async fn purge_older_than(&self, cutoff: Timestamp, batch: u32) -> Result<u64> {
                // Oldest finished events first; an event goes with its deliveries and their
                // attempts, and only once none of its deliveries is still open.
                let mut tx = self.write_pool().begin_with(Self::BEGIN_WRITE).await?;
                let events: Vec<Uuid> = sqlx::query_scalar(&format!(
                    "SELECT e.id FROM events e WHERE e.created_at < $1
                       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status IN {OPEN})
                     ORDER BY e.created_at LIMIT $2"
                ))
                .bind(cutoff.0)
                .bind(i64::from(batch))
                .fetch_all(&mut *tx)
                .await?;
                if events.is_empty() {
                    return Ok(0);
                }
                let list = placeholders(1, events.len());
                for sql in [
                    format!("DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id IN {list})"),
                    format!("DELETE FROM deliveries WHERE event_id IN {list}"),
                    format!("DELETE FROM events WHERE id IN {list}"),
                ] {
                    let mut query = sqlx::query(&sql);
                    for id in &events {
                        query = query.bind(id);
                    }
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(events.len() as u64)
            }
        }
    };
}

pub(crate) use shared_store;
