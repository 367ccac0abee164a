//! A receiver's bounded queue: the core pushes [`Delivery`]s in, the adapter that owns the
//! socket or stream takes them out and writes them.
//!
//! Live pushes never wait: a receiver whose queue is full is too slow and is told to disconnect
//! (SPEC §3) instead of holding up its room. A catch-up, which reads the store page by page,
//! waits for room in the queue instead: that is its backpressure.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::model::{Broadcast, Delivery, SessionId};
use crate::telemetry::metric;

/// The sending half of a receiver's queue, with who it is.
#[derive(Clone, Debug)]
pub struct Outbox {
    /// This receiver (a TCP session, or one stream).
    pub id: SessionId,
    /// The session it speaks for: room events about that session are not shown to it.
    pub session: SessionId,
    tx: mpsc::Sender<Delivery>,
    too_slow: CancellationToken,
}

/// The receiving half, owned by the adapter that writes to the session's socket or stream.
pub struct Inbox {
    pub rx: mpsc::Receiver<Delivery>,
    /// Cancelled when the queue overflowed: the adapter must close the connection.
    pub too_slow: CancellationToken,
}

/// A queue of at most `capacity` deliveries for receiver `id` of `session`.
pub fn queue(id: SessionId, session: SessionId, capacity: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let too_slow = CancellationToken::new();
    let outbox = Outbox {
        id,
        session,
        tx,
        too_slow: too_slow.clone(),
    };
    (outbox, Inbox { rx, too_slow })
}

impl Outbox {
    /// Queues without waiting. False when the receiver is gone or was just found too slow (then it
    /// is marked and counted once): either way it should be dropped from every route.
    pub fn push(&self, delivery: Delivery) -> bool {
        match self.tx.try_send(delivery) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.mark_too_slow();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub fn push_event(&self, event: &Arc<Broadcast>) -> bool {
        self.push(Delivery::Event(event.clone()))
    }

    /// Whether its queue has room for `n` more deliveries (or is at least half empty, when it
    /// could never hold `n`).
    pub fn can_take(&self, n: usize) -> bool {
        self.tx.capacity() >= n.min(self.tx.max_capacity() / 2)
    }

    /// The most deliveries its queue holds.
    pub fn capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Waits (up to `limit`) until the queue has room for `n` deliveries. A receiver that does
    /// not make room in time is too slow: it is marked (and counted) and false is returned; false
    /// too when it is gone.
    pub async fn wait_for_room(&self, n: usize, limit: std::time::Duration) -> bool {
        let n = n.min(self.tx.max_capacity());
        let deadline = tokio::time::Instant::now() + limit;
        while self.tx.capacity() < n {
            if !self.is_open() {
                return false;
            }
            if tokio::time::Instant::now() >= deadline {
                self.mark_too_slow();
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.is_open()
    }

    fn mark_too_slow(&self) {
        if !self.too_slow.is_cancelled() {
            self.too_slow.cancel();
            metrics::counter!(metric::DROPPED, "reason" => "slow_consumer").increment(1);
        }
    }

    /// Whether the receiver is still there to read.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed() && !self.too_slow.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::Event;

    #[tokio::test]
    async fn a_full_queue_marks_the_receiver_too_slow_without_blocking() {
        let id = SessionId::random();
        let (outbox, inbox) = queue(id, id, 2);
        let event = Broadcast::new(Event::Notice("x".into()));
        assert!(outbox.push_event(&event));
        assert!(outbox.push_event(&event));
        assert!(!outbox.push_event(&event));
        assert!(inbox.too_slow.is_cancelled());
        assert_eq!(inbox.rx.len(), 2);
        assert!(!outbox.is_open());
    }
}
