//! Group commit: the one path by which chat messages reach the store and then the bus.
//!
//! Senders queue a message and get an [`Ack`]; a single task takes everything queued since its
//! last round trip (up to `max_batch`), stores it in one call, publishes each stored message in
//! seq order and only then resolves the acks. So nothing is delivered or acknowledged before it
//! is durable, a busy pod writes large batches, and an idle one writes each message at once
//! instead of waiting out a timer.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::error::Error;
use super::model::{Broadcast, ChatMessage, Envelope, Event, NewMessage};
use crate::bus::Bus;
use crate::store::{Store, StoreError};
use crate::telemetry::metric;

type Waiter = oneshot::Sender<Result<ChatMessage, Error>>;

/// Queues messages for the commit task. Dropping every handle lets the task flush and finish.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<(NewMessage, Waiter)>,
}

/// Resolves once the message is committed and published (or failed).
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
        bus: Arc<dyn Bus>,
        max_batch: usize,
    ) -> (Committer, impl Future<Output = ()> + Send + 'static) {
        // The queue holds at most a few batches: when the store falls behind, senders wait here
        // (TCP stops reading that socket) rather than piling messages up in memory.
        let (tx, rx) = mpsc::channel(max_batch * 4);
        (Committer { tx }, run(rx, store, bus, max_batch))
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
    bus: Arc<dyn Bus>,
    max_batch: usize,
) {
    let mut queued = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut queued, max_batch).await > 0 {
        let (batch, waiters): (Vec<NewMessage>, Vec<Waiter>) = queued.drain(..).unzip();
        metrics::histogram!(metric::COMMIT_BATCH_SIZE).record(batch.len() as f64);
        match store.append_messages(&batch).await {
            Ok(stored) => {
                // Published together: a networked bus pipelines them, in seq order.
                futures::future::join_all(stored.iter().map(|m| publish(&*bus, m))).await;
                for (message, waiter) in stored.into_iter().zip(waiters) {
                    let _ = waiter.send(Ok(message));
                }
            }
            Err(e) => fail_all(waiters, &e),
        }
    }
}

/// Publishes a stored message. The message is durable whatever happens here, so a failed publish
/// does not fail the sender: receivers notice the gap in seqs and read the message from the store.
async fn publish(bus: &dyn Bus, message: &ChatMessage) {
    let started = std::time::Instant::now();
    let result = bus
        .publish(Envelope::Event(Broadcast::new(Event::Message(
            message.clone(),
        ))))
        .await;
    metrics::histogram!(metric::BUS_PUBLISH_DURATION).record(started.elapsed().as_secs_f64());
    if let Err(e) = result {
        tracing::warn!(error = %e, room = %message.room, seq = message.seq, "publish failed");
    }
}

fn fail_all(waiters: Vec<Waiter>, e: &StoreError) {
    tracing::error!(error = %e, messages = waiters.len(), "storing a batch failed");
    for waiter in waiters {
        let _ = waiter.send(Err(Error::Store(e.clone())));
    }
}
