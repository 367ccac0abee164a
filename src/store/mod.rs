//! The `Store` seam: what must survive a restart — users, rooms, memberships, messages.
//!
//! Implementations: [`postgres::PgStore`] (production) and [`memory::MemoryStore`] (unit tests
//! and `cargo run` without a database). The core calls this trait only; it never sees SQL.

pub mod archive;
pub mod breaker;
pub mod memory;
pub mod postgres;
pub mod retention;

use async_trait::async_trait;

use crate::core::model::{ChatMessage, NewMessage, Room, UserId};
use crate::core::names::{Nickname, RoomName};

/// A storage failure. Cloneable so one failed batch can answer every waiter in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("the database circuit breaker is open")]
    CircuitOpen,
    #[error("too many callers are waiting for the database")]
    Overloaded,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the store can serve (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Finds or creates the user with this nickname (case-insensitively).
    async fn upsert_user(&self, nick: &Nickname) -> Result<UserId, StoreError>;

    /// Creates a room; `None` when a room of that name (case-insensitively) exists.
    async fn create_room(&self, name: &RoomName) -> Result<Option<Room>, StoreError>;

    async fn find_room(&self, name: &RoomName) -> Result<Option<Room>, StoreError>;

    /// Every room, ordered by name.
    async fn list_rooms(&self) -> Result<Vec<Room>, StoreError>;

    /// Records that a user joined a room (idempotent).
    async fn add_member(&self, room_id: i64, user_id: UserId) -> Result<(), StoreError>;

    /// Stores a batch atomically, giving each message the next `seq` of its room in batch order.
    /// Returns the stored messages in the same order.
    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<ChatMessage>, StoreError>;

    /// The last `limit` messages of a room with `seq < before` (all when `None`), oldest first.
    async fn messages_before(
        &self,
        room_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// The first `limit` messages of a room with `seq > after`, oldest first: what a receiver
    /// that saw `after` last has missed.
    async fn messages_after(
        &self,
        room_id: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;
}
