//! A circuit breaker in front of a `Store` (the database pool).
//!
//! Closed: calls go through; `failures` consecutive failures (an acquire timeout, a refused
//! connection, a failed query, a call that hung past `call_timeout`) open it. So does a pile-up: a
//! call that finds `max_waiting` others already waiting counts as a failure without waiting
//! itself. Open: calls fail at once, so clients get a fast "temporarily unavailable" instead of a
//! slow one and the database gets room to recover. After a while it half-opens: one call at a
//! time goes through as a probe — every other fails fast meanwhile — and its success closes the
//! breaker, its failure opens it again. It stays open half a second at first, doubling each time
//! a probe fails, up to `open_for`: a database back after a short crash is used again within a
//! second, one that stays down is not hammered. The state machine is `failsafe`'s; the one-probe rule and
//! the timeout are added here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use failsafe::failure_policy::ConsecutiveFailures;
use failsafe::futures::CircuitBreaker;
use failsafe::{Config, StateMachine};

use crate::core::model::{ChatMessage, MessageKey, NewMessage, Room, UserId};
use crate::core::names::{Nickname, RoomName};
use crate::core::ports::{Circuit, RoomTail, Store, StoreError};
use crate::telemetry::metric;

#[derive(Debug, Clone)]
pub struct BreakerSettings {
    pub failures: u32,
    pub open_for: Duration,
    pub max_waiting: usize,
    /// A call still running after this counts as failed (the append has its own, longer bound:
    /// it resolves a lost outcome before answering).
    pub call_timeout: Duration,
}

/// How long the breaker stays open the first time.
const FIRST_OPEN: Duration = Duration::from_millis(500);

const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

/// How long the breaker stays open each time in a row: `FIRST_OPEN`, doubling up to the
/// configured most. (failsafe's own schedules cannot start below a second.)
#[derive(Debug, Clone)]
struct Doubling {
    next: Duration,
    max: Duration,
}

impl Iterator for Doubling {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let open = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(open)
    }
}

/// Publishes the breaker's state (`chat_circuit_breaker_state`: 0 closed, 1 half-open, 2 open),
/// keeps it for the one-probe rule, and logs each transition once.
struct Transitions(Arc<AtomicU8>);

impl Transitions {
    fn set(&self, state: u8) {
        self.0.store(state, Ordering::SeqCst);
        metrics::gauge!(metric::BREAKER_STATE).set(f64::from(state));
    }
}

impl failsafe::Instrument for Transitions {
    fn on_call_rejected(&self) {
        metrics::counter!(metric::DROPPED, "reason" => "breaker_open").increment(1);
    }

    fn on_open(&self) {
        self.set(OPEN);
        tracing::warn!("database circuit breaker opened: failing fast");
    }

    fn on_half_open(&self) {
        self.set(HALF_OPEN);
        tracing::info!("database circuit breaker half-open: probing");
    }

    fn on_closed(&self) {
        self.set(CLOSED);
        tracing::info!("database circuit breaker closed: database is back");
    }
}

pub struct BreakerStore {
    inner: Arc<dyn Store>,
    breaker: StateMachine<ConsecutiveFailures<Doubling>, Transitions>,
    state: Arc<AtomicU8>,
    /// Held by the one call let through while the breaker is not closed.
    probing: AtomicBool,
    waiting: AtomicUsize,
    max_waiting: usize,
    call_timeout: Duration,
}

impl BreakerStore {
    pub fn new(inner: Arc<dyn Store>, settings: &BreakerSettings) -> Self {
        let backoff = Doubling {
            next: FIRST_OPEN.min(settings.open_for),
            max: settings.open_for,
        };
        let policy = failsafe::failure_policy::consecutive_failures(settings.failures, backoff);
        let state = Arc::new(AtomicU8::new(CLOSED));
        metrics::gauge!(metric::BREAKER_STATE).set(0.0);
        BreakerStore {
            inner,
            breaker: Config::new()
                .failure_policy(policy)
                .instrument(Transitions(state.clone()))
                .build(),
            state,
            probing: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            max_waiting: settings.max_waiting,
            call_timeout: settings.call_timeout,
        }
    }

    /// Runs one store call through the breaker, timing it.
    async fn guard<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
        timeout: Option<Duration>,
    ) -> Result<T, StoreError> {
        // Not closed: only the probe goes through; everyone else fails fast.
        let _probe = if self.state.load(Ordering::SeqCst) != CLOSED {
            if self.probing.swap(true, Ordering::SeqCst) {
                metrics::counter!(metric::DROPPED, "reason" => "breaker_open").increment(1);
                return Err(StoreError::CircuitOpen);
            }
            Some(ProbeGuard(&self.probing))
        } else {
            None
        };
        let waiting = WaitingGuard::enter(&self.waiting);
        let result = if waiting.count > self.max_waiting {
            // Too many callers already waiting: record a failure without adding to the queue.
            self.breaker
                .call(async { Err::<T, _>(StoreError::Overloaded) })
                .await
        } else {
            let started = Instant::now();
            let bounded = async {
                match timeout {
                    Some(limit) => tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                        Err(StoreError::Unavailable(format!(
                            "no answer within {limit:?}"
                        )))
                    }),
                    None => call.await,
                }
            };
            let result = self.breaker.call(bounded).await;
            metrics::histogram!(metric::DB_QUERY_DURATION).record(started.elapsed().as_secs_f64());
            result
        };
        result.map_err(|e| match e {
            failsafe::Error::Inner(e) => e,
            failsafe::Error::Rejected => StoreError::CircuitOpen,
        })
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.guard(call, Some(self.call_timeout)).await
    }
}

/// Frees the probe slot when the probe ends, however it ends.
struct ProbeGuard<'a>(&'a AtomicBool);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Counts a caller as waiting for as long as it lives.
struct WaitingGuard<'a> {
    waiting: &'a AtomicUsize,
    count: usize,
}

impl<'a> WaitingGuard<'a> {
    fn enter(waiting: &'a AtomicUsize) -> Self {
        let count = waiting.fetch_add(1, Ordering::Relaxed) + 1;
        WaitingGuard { waiting, count }
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Store for BreakerStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(self.inner.ping()).await
    }

    fn circuit(&self) -> Circuit {
        match self.state.load(Ordering::SeqCst) {
            CLOSED => Circuit::Closed,
            HALF_OPEN => Circuit::HalfOpen,
            _ => Circuit::Open,
        }
    }

    async fn upsert_user(&self, nick: &Nickname) -> Result<UserId, StoreError> {
        self.bounded(self.inner.upsert_user(nick)).await
    }

    async fn create_room(&self, name: &RoomName) -> Result<Option<Room>, StoreError> {
        self.bounded(self.inner.create_room(name)).await
    }

    async fn find_room(&self, name: &RoomName) -> Result<Option<Room>, StoreError> {
        self.bounded(self.inner.find_room(name)).await
    }

    async fn list_rooms(&self) -> Result<Vec<Room>, StoreError> {
        self.bounded(self.inner.list_rooms()).await
    }

    async fn add_member(&self, room_id: i64, user_id: UserId) -> Result<(), StoreError> {
        self.bounded(self.inner.add_member(room_id, user_id)).await
    }

    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<ChatMessage>, StoreError> {
        self.guard(self.inner.append_messages(batch), None).await
    }

    async fn messages_before(
        &self,
        room_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.bounded(self.inner.messages_before(room_id, before, limit))
            .await
    }

    async fn message_by_key(&self, key: MessageKey) -> Result<Option<ChatMessage>, StoreError> {
        self.bounded(self.inner.message_by_key(key)).await
    }

    async fn messages_after(
        &self,
        room_id: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.bounded(self.inner.messages_after(room_id, after, limit))
            .await
    }

    async fn room_tails(&self, room_ids: &[i64]) -> Result<Vec<RoomTail>, StoreError> {
        self.bounded(self.inner.room_tails(room_ids)).await
    }

    async fn epoch(&self) -> Result<String, StoreError> {
        self.bounded(self.inner.epoch()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn breaker(call_timeout: Duration) -> Arc<BreakerStore> {
        let settings = BreakerSettings {
            failures: 2,
            open_for: Duration::from_millis(50),
            max_waiting: 100,
            call_timeout,
        };
        Arc::new(BreakerStore::new(Arc::new(MemoryStore::new(10)), &settings))
    }

    /// A call that fails after `gate` lets it.
    async fn failing(gate: &tokio::sync::Semaphore) -> Result<(), StoreError> {
        let _held = gate.acquire().await;
        Err(StoreError::Unavailable("down".into()))
    }

    #[tokio::test]
    async fn half_open_admits_one_probe_and_fails_the_others_fast() {
        let breaker = breaker(Duration::from_secs(5));
        let gate = Arc::new(tokio::sync::Semaphore::new(100));
        for _ in 0..2 {
            assert!(breaker.guard(failing(&gate), None).await.is_err());
        }
        assert!(matches!(
            breaker.guard(failing(&gate), None).await,
            Err(StoreError::CircuitOpen)
        ));
        tokio::time::sleep(Duration::from_millis(60)).await;
        // The probe hangs (its gate is shut); every other call meanwhile fails at once.
        gate.forget_permits(100);
        let probe = tokio::spawn({
            let (breaker, gate) = (breaker.clone(), gate.clone());
            async move { breaker.guard(failing(&gate), None).await }
        });
        while !breaker.probing.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        assert!(matches!(breaker.ping().await, Err(StoreError::CircuitOpen)));
        assert!(started.elapsed() < Duration::from_millis(50));
        gate.add_permits(1);
        assert!(probe.await.unwrap().is_err());
        // The failed probe opened it again.
        assert!(matches!(breaker.ping().await, Err(StoreError::CircuitOpen)));
    }

    #[tokio::test]
    async fn a_hung_call_counts_as_a_failure() {
        let breaker = breaker(Duration::from_millis(20));
        let shut = tokio::sync::Semaphore::new(0);
        let hang = || breaker.bounded(failing(&shut));
        assert!(matches!(hang().await, Err(StoreError::Unavailable(_))));
        assert!(hang().await.is_err());
        assert!(matches!(breaker.ping().await, Err(StoreError::CircuitOpen)));
    }

    #[tokio::test]
    async fn a_successful_probe_closes_it() {
        let breaker = breaker(Duration::from_secs(1));
        let gate = tokio::sync::Semaphore::new(100);
        for _ in 0..2 {
            assert!(breaker.guard(failing(&gate), None).await.is_err());
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(breaker.ping().await.is_ok());
        assert_eq!(breaker.state.load(Ordering::SeqCst), CLOSED);
        assert!(breaker.ping().await.is_ok());
    }
}
