//! The queue of the SQLite writing thread (see `sqlite_writer`): publishes, attempt results
//! and claims are sent as jobs and answered once the transaction holding them has
//! committed. Callers see no difference from a transaction of their own.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{AttemptRecord, ClaimRequest, ClaimedDelivery, DisablePolicy, NewEvent, Published, Result, StoreError};

/// At most this many jobs per transaction.
pub(super) const ROUND: usize = 16;

pub(super) type Reply<T> = oneshot::Sender<Result<T>>;

pub(super) enum Job {
    Record { records: Vec<AttemptRecord>, policy: DisablePolicy, reply: Reply<Vec<Option<String>>> },
    Publish { events: Vec<NewEvent>, window: Duration, reply: Reply<Published> },
    Claim { request: ClaimRequest, reply: Reply<Vec<ClaimedDelivery>> },
}

/// Answers a job: with its outcome if the round committed, else with the round's error.
pub(super) fn answer<T>(reply: Reply<T>, outcome: Result<T>, failed: Option<&str>) {
    let _ = reply.send(match (outcome, failed) {
        (Ok(_), Some(msg)) => Err(StoreError::RoundFailed(msg.to_owned())),
        (outcome, _) => outcome,
    });
}

/// The handle callers send jobs through; the thread writing them ends when the last handle is
/// dropped.
pub(super) struct GroupWriter {
    tx: mpsc::UnboundedSender<Job>,
}

impl GroupWriter {
    pub(super) fn new(tx: mpsc::UnboundedSender<Job>) -> Self {
        Self { tx }
    }

    async fn run<T>(&self, job: impl FnOnce(oneshot::Sender<Result<T>>) -> Job) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::RoundFailed("the writing thread has stopped".into());
        self.tx.send(job(reply)).map_err(|_| stopped())?;
        // A reply dropped unanswered: the round's transaction failed before reaching this job.
        answer.await.map_err(|_| StoreError::RoundFailed("not written: its round failed (see the log)".into()))?
    }

    pub(super) async fn publish(&self, events: Vec<NewEvent>, window: Duration) -> Result<Published> {
        self.run(|reply| Job::Publish { events, window, reply }).await
    }

    pub(super) async fn record(
        &self,
        records: Vec<AttemptRecord>,
        policy: DisablePolicy,
    ) -> Result<Vec<Option<String>>> {
        self.run(|reply| Job::Record { records, policy, reply }).await
    }

    /// Records, then claims: both jobs are queued together, so they are written in the same
    /// round unless the thread took the first alone (then in the next one).
    pub(super) async fn record_then_claim(
        &self,
        records: Vec<AttemptRecord>,
        policy: DisablePolicy,
        request: ClaimRequest,
    ) -> (Result<Vec<Option<String>>>, Result<Vec<ClaimedDelivery>>) {
        let (record_reply, recorded) = oneshot::channel();
        let (claim_reply, claimed) = oneshot::channel();
        let stopped = || StoreError::RoundFailed("the writing thread has stopped".into());
        if self.tx.send(Job::Record { records, policy, reply: record_reply }).is_err() {
            return (Err(stopped()), Ok(Vec::new()));
        }
        let _ = self.tx.send(Job::Claim { request, reply: claim_reply });
        let unanswered = || StoreError::RoundFailed("not written: its round failed (see the log)".into());
        let recorded = recorded.await.unwrap_or_else(|_| Err(unanswered()));
        let claimed = claimed.await.unwrap_or_else(|_| Err(unanswered()));
        (recorded, claimed)
    }

    pub(super) async fn claim(&self, request: ClaimRequest) -> Result<Vec<ClaimedDelivery>> {
        self.run(|reply| Job::Claim { request, reply }).await
    }
}
