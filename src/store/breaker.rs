//! A circuit breaker in front of a `Store` (the database pool).
//!
//! Closed: calls go through; `failures` consecutive failures (an acquire timeout, a refused
//! connection, a failed query) open it. So does a pile-up: a call that finds `max_waiting` others
//! already waiting counts as a failure without waiting itself. Open: calls fail at once, so
//! clients get a fast "temporarily unavailable" instead of a slow one and the database gets room
//! to recover. After `open_for` it half-opens: calls are let through as probes; a success closes
//! it, a failure opens it again. The state machine is `failsafe`'s.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use failsafe::backoff::Constant;
use failsafe::failure_policy::ConsecutiveFailures;
use failsafe::futures::CircuitBreaker;
use failsafe::{Config, StateMachine};

use super::{Store, StoreError};
use crate::core::model::{ChatMessage, NewMessage, Room, UserId};
use crate::core::names::{Nickname, RoomName};
use crate::telemetry::metric;

#[derive(Debug, Clone)]
pub struct BreakerSettings {
    pub failures: u32,
    pub open_for: Duration,
    pub max_waiting: usize,
}

/// Publishes the breaker's state (`chat_circuit_breaker_state`: 0 closed, 1 half-open, 2 open)
/// and logs each transition once.
struct Transitions;

impl failsafe::Instrument for Transitions {
    fn on_call_rejected(&self) {
        metrics::counter!(metric::DROPPED, "reason" => "breaker_open").increment(1);
    }

    fn on_open(&self) {
        metrics::gauge!(metric::BREAKER_STATE).set(2.0);
        tracing::warn!("database circuit breaker opened: failing fast");
    }

    fn on_half_open(&self) {
        metrics::gauge!(metric::BREAKER_STATE).set(1.0);
        tracing::info!("database circuit breaker half-open: probing");
    }

    fn on_closed(&self) {
        metrics::gauge!(metric::BREAKER_STATE).set(0.0);
        tracing::info!("database circuit breaker closed: database is back");
    }
}

pub struct BreakerStore {
    inner: Arc<dyn Store>,
    breaker: StateMachine<ConsecutiveFailures<Constant>, Transitions>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl BreakerStore {
    pub fn new(inner: Arc<dyn Store>, settings: &BreakerSettings) -> Self {
        let backoff = failsafe::backoff::constant(settings.open_for);
        let policy = failsafe::failure_policy::consecutive_failures(settings.failures, backoff);
        metrics::gauge!(metric::BREAKER_STATE).set(0.0);
        BreakerStore {
            inner,
            breaker: Config::new()
                .failure_policy(policy)
                .instrument(Transitions)
                .build(),
            waiting: AtomicUsize::new(0),
            max_waiting: settings.max_waiting,
        }
    }

    /// Runs one store call through the breaker, timing it.
    async fn guard<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let waiting = WaitingGuard::enter(&self.waiting);
        let result = if waiting.count > self.max_waiting {
            // Too many callers already waiting: record a failure without adding to the queue.
            self.breaker
                .call(async { Err::<T, _>(StoreError::Overloaded) })
                .await
        } else {
            let started = Instant::now();
            let result = self.breaker.call(call).await;
            metrics::histogram!(metric::DB_QUERY_DURATION).record(started.elapsed().as_secs_f64());
            result
        };
        result.map_err(|e| match e {
            failsafe::Error::Inner(e) => e,
            failsafe::Error::Rejected => StoreError::CircuitOpen,
        })
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
        self.guard(self.inner.ping()).await
    }

    async fn upsert_user(&self, nick: &Nickname) -> Result<UserId, StoreError> {
        self.guard(self.inner.upsert_user(nick)).await
    }

    async fn create_room(&self, name: &RoomName) -> Result<Option<Room>, StoreError> {
        self.guard(self.inner.create_room(name)).await
    }

    async fn find_room(&self, name: &RoomName) -> Result<Option<Room>, StoreError> {
        self.guard(self.inner.find_room(name)).await
    }

    async fn list_rooms(&self) -> Result<Vec<Room>, StoreError> {
        self.guard(self.inner.list_rooms()).await
    }

    async fn add_member(&self, room_id: i64, user_id: UserId) -> Result<(), StoreError> {
        self.guard(self.inner.add_member(room_id, user_id)).await
    }

    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<ChatMessage>, StoreError> {
        self.guard(self.inner.append_messages(batch)).await
    }

    async fn messages_before(
        &self,
        room_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.guard(self.inner.messages_before(room_id, before, limit))
            .await
    }

    async fn messages_after(
        &self,
        room_id: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.guard(self.inner.messages_after(room_id, after, limit))
            .await
    }
}
