//! Group commit: the one path by which chat messages reach the store, and then everyone.
//!
//! Senders queue a message and get an [`Ack`]; one task takes everything queued since its last
//! round trip (up to `max_batch`), stores it in one durable call, hands each stored message to
//! this pod's feeds, resolves the acks, and queues the messages for the other pods. So nothing
//! is shown or acknowledged before it is on disk, a busy pod writes large batches, an idle one
//! writes each message at once instead of waiting out a timer, and a slow bus never holds up an
//! acknowledgement: other pods find a message the bus lost in the store (gap repair, tail probe).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::error::Error;
use super::feed::Feeds;
use super::model::{ChatMessage, Envelope, MessageKey, NewMessage};
use super::ports::{Bus, BusError, Store, StoreError};
use crate::telemetry::metric;

type Waiter = oneshot::Sender<Result<ChatMessage, Error>>;

/// Queues messages for the commit task. Dropping every handle lets the task flush and finish.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<(NewMessage, Waiter)>,
}

/// Resolves once the message is stored (or failed).
pub struct Ack(oneshot::Receiver<Result<ChatMessage, Error>>);

impl Ack {
    pub async fn committed(self) -> Result<ChatMessage, Error> {
        // A dropped waiter means the commit task is gone: the server is stopping.
        self.0.await.unwrap_or(Err(Error::ShuttingDown))
    }
}

impl Committer {
    /// Starts the commit task; it runs until every `Committer` clone is dropped and the queue is
    /// drained, so awaiting the returned future is how shutdown flushes pending writes.
    pub fn start(
        store: Arc<dyn Store>,
        feeds: Arc<Feeds>,
        publisher: Publisher,
        max_batch: usize,
    ) -> (Committer, impl Future<Output = ()> + Send + 'static) {
        // The queue holds at most a few batches: when the store falls behind, senders wait here
        // (TCP stops reading that socket) rather than piling messages up in memory.
        let (tx, rx) = mpsc::channel(max_batch * 4);
        (
            Committer { tx },
            run(rx, store, feeds, publisher, max_batch),
        )
    }

    pub async fn submit(&self, message: NewMessage) -> Ack {
        let (done, ack) = oneshot::channel();
        if let Err(mpsc::error::SendError((_, done))) = self.tx.send((message, done)).await {
            let _ = done.send(Err(Error::ShuttingDown));
        }
        Ack(ack)
    }
}

async fn run(
    mut rx: mpsc::Receiver<(NewMessage, Waiter)>,
    store: Arc<dyn Store>,
    feeds: Arc<Feeds>,
    publisher: Publisher,
    max_batch: usize,
) {
    let mut queued = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut queued, max_batch).await > 0 {
        // One row per key: a retry queued beside its original shares the original's answer.
        let mut batch: Vec<NewMessage> = Vec::with_capacity(queued.len());
        let mut waiters: HashMap<MessageKey, Vec<Waiter>> = HashMap::with_capacity(queued.len());
        for (message, waiter) in queued.drain(..) {
            let entry = waiters.entry(message.key).or_default();
            if entry.is_empty() {
                batch.push(message);
            }
            entry.push(waiter);
        }
        metrics::histogram!(metric::COMMIT_BATCH_SIZE).record(batch.len() as f64);
        match store.append_messages(&batch).await {
            Ok(stored) => {
                for message in &stored {
                    feeds.deliver(Envelope::Message(message.clone()));
                }
                for (new, message) in batch.iter().zip(&stored) {
                    for waiter in waiters.remove(&new.key).into_iter().flatten() {
                        let _ = waiter.send(Ok(message.clone()));
                    }
                }
                publisher.publish_all(stored.into_iter().map(Envelope::Message));
            }
            Err(e) => {
                tracing::error!(error = %e, messages = batch.len(), "storing a batch failed");
                for new in &batch {
                    // A client's retry may have been stored by an earlier attempt: this failure
                    // cannot rule that out.
                    let error = match &e {
                        StoreError::Unavailable(_)
                        | StoreError::CircuitOpen
                        | StoreError::Overloaded
                            if new.client_keyed =>
                        {
                            Error::Unconfirmed(e.clone())
                        }
                        e => Error::from(e.clone()),
                    };
                    for waiter in waiters.remove(&new.key).into_iter().flatten() {
                        let _ = waiter.send(Err(clone_error(&error)));
                    }
                }
            }
        }
    }
}

fn clone_error(e: &Error) -> Error {
    match e {
        Error::Unconfirmed(cause) => Error::Unconfirmed(cause.clone()),
        Error::Store(cause) => Error::Store(cause.clone()),
        _ => Error::ShuttingDown,
    }
}

type Confirm = Option<oneshot::Sender<Result<(), BusError>>>;

/// Queues envelopes for the other pods; one task publishes them in order, many per round trip.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<(Envelope, Confirm)>,
}

/// Envelopes waiting to be published, at most; past it they are dropped and counted (messages are
/// recovered from the store by the other pods; followers resync when the bus is back).
const PUBLISH_QUEUE: usize = 16_384;
/// Envelopes per bus round trip, at most.
const PUBLISH_BATCH: usize = 512;

/// Once the pod drains, the most one publish may take: what is left goes out if the bus answers
/// at once, and does not hold up the exit if it does not.
const DRAIN_PUBLISH: Duration = Duration::from_millis(200);

impl Publisher {
    /// Starts the publishing task; it runs until every `Publisher` clone is dropped.
    pub fn start(
        bus: Arc<dyn Bus>,
        shutdown: CancellationToken,
    ) -> (Publisher, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        (Publisher { tx }, publish_loop(rx, bus, shutdown))
    }

    /// Queues envelopes without waiting.
    pub fn publish_all(&self, envelopes: impl IntoIterator<Item = Envelope>) {
        for envelope in envelopes {
            if self.tx.try_send((envelope, None)).is_err() {
                metrics::counter!(metric::DROPPED, "reason" => "bus_backlog").increment(1);
            }
        }
    }

    /// Publishes and waits until the bus took it (a DM: the sender is told if it could not go).
    pub async fn publish_confirmed(&self, envelope: Envelope) -> Result<(), BusError> {
        let (done, confirmed) = oneshot::channel();
        self.tx
            .send((envelope, Some(done)))
            .await
            .map_err(|_| BusError::Unavailable("the server is stopping".into()))?;
        confirmed
            .await
            .unwrap_or_else(|_| Err(BusError::Unavailable("the server is stopping".into())))
    }
}

async fn publish_loop(
    mut rx: mpsc::Receiver<(Envelope, Confirm)>,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
) {
    let mut queued = Vec::with_capacity(PUBLISH_BATCH);
    while rx.recv_many(&mut queued, PUBLISH_BATCH).await > 0 {
        let (envelopes, confirms): (Vec<Envelope>, Vec<Confirm>) = queued.drain(..).unzip();
        let started = std::time::Instant::now();
        let result = if shutdown.is_cancelled() {
            tokio::time::timeout(DRAIN_PUBLISH, bus.publish(&envelopes))
                .await
                .unwrap_or_else(|_| Err(BusError::Unavailable("draining".into())))
        } else {
            bus.publish(&envelopes).await
        };
        metrics::histogram!(metric::BUS_PUBLISH_DURATION).record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::warn!(error = %e, envelopes = envelopes.len(), "publishing failed");
            metrics::counter!(metric::DROPPED, "reason" => "bus_publish")
                .increment(envelopes.len() as u64);
        }
        for confirm in confirms.into_iter().flatten() {
            let _ = confirm.send(result.clone());
        }
    }
}
