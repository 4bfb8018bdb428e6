//! Group commit of concurrent publishes. Every `POST …/events` hands its event to one task,
//! which writes whatever arrived while the previous group was being committed in one
//! transaction (one fsync for the lot) and answers each caller once its event is durable.
//! Under load a group holds tens of events; alone, an event is written at once, so nothing
//! waits for a timer.
//!
//! A group that fails (a lost idempotency race, a bad row) is written again event by event,
//! so one event's error is never another's.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{NewEvent, PublishedEvent, Result, Store, StoreError};

/// At most this many events per transaction.
const GROUP: usize = 512;

type Request = (NewEvent, oneshot::Sender<Result<PublishedEvent>>);

#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Request>,
}

impl Publisher {
    /// Starts the group-commit task (it ends when the last `Publisher` clone is dropped).
    pub fn start(store: Arc<dyn Store>, window: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(commit_in_groups(store, window, rx));
        Self { tx }
    }

    /// Stores the event and its deliveries; returns once they are committed.
    pub async fn publish(&self, event: NewEvent) -> Result<PublishedEvent> {
        let (done, answer) = oneshot::channel();
        let gone = || StoreError::Corrupt("the publishing task has stopped".into());
        self.tx.send((event, done)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn commit_in_groups(store: Arc<dyn Store>, window: Duration, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut group: Vec<Request> = Vec::with_capacity(GROUP);
    while rx.recv_many(&mut group, GROUP).await > 0 {
        let (events, answers): (Vec<NewEvent>, Vec<_>) = group.drain(..).unzip();
        match store.publish_batch(&events, window).await {
            Ok(published) if published.len() == events.len() => {
                for (answer, p) in answers.into_iter().zip(published) {
                    let _ = answer.send(Ok(p));
                }
            }
            Ok(_) | Err(_) if events.len() > 1 => {
                tracing::debug!(count = events.len(), "a publish group failed; writing its events one by one");
                for (answer, event) in answers.into_iter().zip(&events) {
                    let _ = answer.send(store.publish_event(event, window).await);
                }
            }
            Ok(_) => {
                for answer in answers {
                    let _ = answer.send(Err(StoreError::Corrupt("a publish returned no event".into())));
                }
            }
            Err(e) => {
                if let Some(answer) = answers.into_iter().next() {
                    let _ = answer.send(Err(e));
                }
            }
        }
    }
}
