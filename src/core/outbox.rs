//! A receiver's bounded queue: the core pushes [`Delivery`]s in, the adapter that owns the
//! socket or stream takes them out and writes them.
//!
//! Live pushes never wait: a receiver whose queue is full is too slow and is told to disconnect
//! (SPEC §3) instead of holding up its room. Deliveries that can wait — what a gap held, pages a
//! catch-up read from the store — are offered instead, and only while they leave a headroom
//! free for live ones; a catch-up waits for that room before it reads: its backpressure.
//!
//! Every connection and stream has one, and most of them are idle most of the time, so an empty
//! queue allocates nothing: it is a deque behind a lock, grown by a burst and given back after
//! it. (Tokio's channel allocates a block of 32 slots and three cache-padded halves up front,
//! about 1 KB per idle connection.) One lock per push or batch taken is no dearer than the
//! channel's atomics: a receiver takes everything waiting at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::model::{Broadcast, Delivery, SessionId};
use crate::telemetry::metric;

/// A queue emptied with more slots than this gives them back.
const IDLE_SLOTS: usize = 32;
/// Slots deliveries that can wait leave free, at most (a quarter of a smaller queue).
const HEADROOM: usize = 64;

/// What became of a delivery offered with [`Outbox::offer`].
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Not queued: it would have eaten into the headroom.
    Full,
    /// The receiver is gone or too slow.
    Gone,
}

/// What the two halves share.
struct Queue {
    items: Mutex<VecDeque<Delivery>>,
    capacity: usize,
    /// Set when the receiver goes: pushes stop, a catch-up waiting for room gives up.
    receiver_gone: AtomicBool,
    /// Outboxes alive: when the last goes, the receiver is told the queue has ended.
    senders: AtomicUsize,
    /// Woken when deliveries arrive or the last sender goes (one receiver: a stored permit).
    arrived: Notify,
    /// Wakes every catch-up waiting for room when the receiver takes deliveries out, goes, or is
    /// found too slow.
    taken: Notify,
    /// Set when the queue overflowed: the receiver must be disconnected.
    too_slow: AtomicBool,
    /// Wakes every waiter of [`TooSlow::wait`] when `too_slow` is set.
    slow: Notify,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Delivery>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn room_left(&self) -> usize {
        self.capacity - self.lock().len()
    }

    fn is_too_slow(&self) -> bool {
        self.too_slow.load(Ordering::Acquire)
    }

    async fn found_too_slow(&self) {
        wait_until(&self.slow, || self.is_too_slow()).await
    }
}

/// Waits until `done`, looked at again each time `notify` wakes its waiters. Registered before
/// each look, so a wake-up in between is not missed.
async fn wait_until(notify: &Notify, done: impl Fn() -> bool) {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if done() {
            return;
        }
        notified.await;
    }
}

/// The sending half of a receiver's queue, with who it is.
#[derive(Debug)]
pub struct Outbox {
    /// This receiver (a TCP session, or one stream).
    pub id: SessionId,
    /// The session it speaks for: room events about that session are not shown to it.
    pub session: SessionId,
    queue: Arc<Queue>,
}

/// The receiving half, owned by the adapter that writes to the session's socket or stream.
pub struct Inbox {
    queue: Arc<Queue>,
    /// Set when the queue overflowed: the adapter must close the connection.
    pub too_slow: TooSlow,
}

/// The news that a receiver could not keep up, for whoever must close its connection.
#[derive(Clone)]
pub struct TooSlow(Arc<Queue>);

impl TooSlow {
    pub fn is_set(&self) -> bool {
        self.0.is_too_slow()
    }

    /// Resolves once the receiver has been found too slow.
    pub async fn wait(&self) {
        self.0.found_too_slow().await
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// A queue of at most `capacity` deliveries for receiver `id` of `session`.
pub fn queue(id: SessionId, session: SessionId, capacity: usize) -> (Outbox, Inbox) {
    let queue = Arc::new(Queue {
        items: Mutex::default(),
        capacity: capacity.max(1),
        receiver_gone: AtomicBool::new(false),
        senders: AtomicUsize::new(1),
        arrived: Notify::new(),
        taken: Notify::new(),
        too_slow: AtomicBool::new(false),
        slow: Notify::new(),
    });
    let outbox = Outbox {
        id,
        session,
        queue: queue.clone(),
    };
    let too_slow = TooSlow(queue.clone());
    (outbox, Inbox { queue, too_slow })
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.queue.senders.fetch_add(1, Ordering::Relaxed);
        Outbox {
            id: self.id,
            session: self.session,
            queue: self.queue.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.queue.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.queue.arrived.notify_one();
        }
    }
}

impl Outbox {
    /// Queues without waiting. False when the receiver is gone or was just found too slow (then it
    /// is marked and counted once): either way it should be dropped from every route.
    pub fn push(&self, delivery: Delivery) -> bool {
        if self.queue.receiver_gone.load(Ordering::Acquire) {
            return false;
        }
        {
            let mut items = self.queue.lock();
            if items.len() >= self.queue.capacity {
                drop(items);
                self.mark_too_slow();
                return false;
            }
            items.push_back(delivery);
        }
        self.queue.arrived.notify_one();
        true
    }

    pub fn push_event(&self, event: &Arc<Broadcast>) -> bool {
        self.push(Delivery::Event(event.clone()))
    }

    /// The most deliveries its queue holds.
    pub fn capacity(&self) -> usize {
        self.queue.capacity
    }

    /// Slots kept free by deliveries that can wait (what the receiver could be given later from
    /// the store), for those that cannot: live messages, room events, direct messages.
    pub fn headroom(&self) -> usize {
        HEADROOM.min(self.queue.capacity / 4)
    }

    /// How many deliveries that can wait [`Outbox::offer`] would queue now.
    pub fn room_to_offer(&self) -> usize {
        self.queue.room_left().saturating_sub(self.headroom())
    }

    /// Queues a delivery that can wait, unless that would eat into the headroom. Never marks the
    /// receiver too slow: it can be given the delivery later instead.
    pub fn offer(&self, delivery: Delivery) -> Offer {
        if !self.is_open() {
            return Offer::Gone;
        }
        {
            let mut items = self.queue.lock();
            if items.len() + self.headroom() >= self.queue.capacity {
                return Offer::Full;
            }
            items.push_back(delivery);
        }
        self.queue.arrived.notify_one();
        Offer::Queued
    }

    /// Waits (up to `limit`) until `n` offers would be queued. False if they would not be by
    /// then, or the receiver is gone. Blames nobody: whoever waits decides what a wait too long
    /// means.
    pub async fn wait_for_room(&self, n: usize, limit: std::time::Duration) -> bool {
        let made_room = wait_until(&self.queue.taken, || {
            !self.is_open() || self.room_to_offer() >= n
        });
        tokio::time::timeout(limit, made_room).await.is_ok() && self.is_open()
    }

    /// Marks the receiver too slow (and counts it): it must be disconnected.
    pub fn cut_off(&self) {
        self.mark_too_slow();
    }

    fn mark_too_slow(&self) {
        if !self.queue.too_slow.swap(true, Ordering::AcqRel) {
            self.queue.slow.notify_waiters();
            self.queue.arrived.notify_one();
            self.queue.taken.notify_waiters();
            metrics::counter!(metric::DROPPED, "reason" => "slow_consumer").increment(1);
        }
    }

    /// Whether the receiver is still there to read.
    pub fn is_open(&self) -> bool {
        !self.queue.receiver_gone.load(Ordering::Acquire) && !self.queue.is_too_slow()
    }
}

impl Inbox {
    /// Moves up to `limit` deliveries into `into`, waiting for the first; 0 once the receiver was
    /// found too slow (it is being disconnected: what is queued is not shown), or every sender is
    /// gone and the queue is empty. Cancel-safe: nothing is taken until it is returned.
    pub async fn recv_many(&self, into: &mut Vec<Delivery>, limit: usize) -> usize {
        loop {
            if self.queue.is_too_slow() {
                return 0;
            }
            // Read before taking: a sender that pushed and then went is seen with its push.
            let ended = self.queue.senders.load(Ordering::Acquire) == 0;
            let taken = self.take(|items| {
                let n = items.len().min(limit);
                into.extend(items.drain(..n));
                n
            });
            if taken > 0 || ended {
                return taken;
            }
            self.queue.arrived.notified().await;
        }
    }

    /// The next delivery, waiting for it; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&self) -> Option<Delivery> {
        let mut one = Vec::new();
        self.recv_many(&mut one, 1).await;
        one.pop()
    }

    /// Moves every delivery waiting into `into`, at once and without waiting, and says how many;
    /// `None` once the receiver was found too slow (as [`Inbox::recv_many`]: what is queued is
    /// not shown).
    pub fn take_waiting(&self, into: &mut Vec<Delivery>) -> Option<usize> {
        if self.queue.is_too_slow() {
            return None;
        }
        Some(self.take(|items| {
            let n = items.len();
            into.extend(items.drain(..));
            n
        }))
    }

    /// The next delivery if one is waiting.
    pub fn try_recv(&self) -> Option<Delivery> {
        self.take(|items| items.pop_front())
    }

    /// Applies `take` to the waiting deliveries, gives back the slots of a burst once they are
    /// all taken, and wakes a catch-up waiting for room.
    fn take<R>(&self, take: impl FnOnce(&mut VecDeque<Delivery>) -> R) -> R {
        let (taken, before, after) = {
            let mut items = self.queue.lock();
            let before = items.len();
            let taken = take(&mut items);
            if items.is_empty() && items.capacity() > IDLE_SLOTS {
                *items = VecDeque::new();
            }
            (taken, before, items.len())
        };
        if after < before {
            self.queue.taken.notify_waiters();
        }
        taken
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.queue.receiver_gone.store(true, Ordering::Release);
        // What was waiting goes now, not when the last sender does.
        *self.queue.lock() = VecDeque::new();
        self.queue.taken.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::core::model::Event;

    fn notice() -> Arc<Broadcast> {
        Broadcast::new(Event::Notice("x".into()))
    }

    #[tokio::test]
    async fn a_full_queue_marks_the_receiver_too_slow_without_blocking() {
        let id = SessionId::random();
        let (outbox, inbox) = queue(id, id, 2);
        assert!(outbox.push_event(&notice()));
        assert!(outbox.push_event(&notice()));
        assert!(!outbox.push_event(&notice()));
        assert!(inbox.too_slow.is_set());
        assert!(!outbox.is_open());
        // Its adapter is told the queue ended, however much is waiting in it.
        let mut got = Vec::new();
        assert_eq!(inbox.recv_many(&mut got, 8).await, 0);
    }

    #[tokio::test]
    async fn the_receiver_gets_what_was_pushed_then_the_end_when_every_sender_is_gone() {
        let id = SessionId::random();
        let (outbox, inbox) = queue(id, id, 8);
        let other = outbox.clone();
        assert!(outbox.push_event(&notice()));
        drop(outbox);
        assert!(other.push_event(&notice()));
        drop(other);
        let mut got = Vec::new();
        assert_eq!(inbox.recv_many(&mut got, 8).await, 2);
        assert_eq!(inbox.recv_many(&mut got, 8).await, 0);
        assert!(inbox.recv().await.is_none());
    }

    #[tokio::test]
    async fn pushes_stop_when_the_receiver_is_gone() {
        let id = SessionId::random();
        let (outbox, inbox) = queue(id, id, 8);
        drop(inbox);
        assert!(!outbox.is_open());
        assert!(!outbox.push_event(&notice()));
    }

    #[tokio::test]
    async fn a_catch_up_waiting_for_room_goes_on_as_soon_as_the_receiver_takes() {
        let id = SessionId::random();
        let (outbox, inbox) = queue(id, id, 4);
        for _ in 0..4 {
            assert!(outbox.push_event(&notice()));
        }
        let waiting = tokio::spawn(async move {
            // Far longer than the test takes: only the receiver's take can end the wait.
            outbox.wait_for_room(1, Duration::from_secs(60)).await
        });
        let mut got = Vec::new();
        inbox.recv_many(&mut got, 2).await;
        assert!(waiting.await.unwrap());
        assert!(!inbox.too_slow.is_set());
    }

    #[tokio::test]
    async fn catch_ups_waiting_for_room_stop_when_the_receiver_goes_and_blame_nobody() {
        let id = SessionId::random();
        let (outbox, inbox) = queue(id, id, 1);
        assert!(outbox.push_event(&notice()));
        let too_slow = inbox.too_slow.clone();
        // Two of them (a user joining one room, then another): each must be woken.
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let outbox = outbox.clone();
                tokio::spawn(async move { outbox.wait_for_room(1, Duration::from_secs(60)).await })
            })
            .collect();
        drop(inbox);
        for waiter in waiting {
            assert!(!waiter.await.unwrap());
        }
        assert!(!too_slow.is_set(), "a receiver that left was not too slow");
    }

    #[tokio::test]
    async fn an_idle_queue_holds_no_slots_and_gives_back_a_burst() {
        let id = SessionId::random();
        let (outbox, inbox) = queue(id, id, 1000);
        assert_eq!(outbox.queue.lock().capacity(), 0);
        for _ in 0..500 {
            assert!(outbox.push_event(&notice()));
        }
        let mut got = Vec::new();
        while inbox.recv_many(&mut got, 256).await == 256 {}
        assert_eq!(got.len(), 500);
        assert_eq!(outbox.queue.lock().capacity(), 0);
    }
}
