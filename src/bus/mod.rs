//! The `Bus` seam: what replicas share while they run — event delivery between pods and presence
//! (who is online, in which room, which nicknames are taken).
//!
//! Implementations: [`local::LocalBus`] (one process: `cargo run`, unit tests). Every event
//! published reaches [`Hub::deliver`](crate::core::hub::Hub::deliver) on every pod, this one
//! included, so the core has a single delivery path whatever the deployment.

pub mod local;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::core::model::{Broadcast, SessionId};
use crate::core::names::{Nickname, RoomName};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("the bus is unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Delivers an event to every pod with a session that should see it.
    async fn publish(&self, event: Arc<Broadcast>) -> Result<(), BusError>;

    /// Starts carrying a room's events to this pod (its first local member joined).
    async fn watch_room(&self, room: &RoomName) -> Result<(), BusError>;

    /// Stops carrying a room's events to this pod (its last local member left).
    async fn unwatch_room(&self, room: &RoomName) -> Result<(), BusError>;

    /// Claims a nickname for a session, cluster-wide and case-insensitively. False when taken.
    async fn claim_nick(&self, nick: &Nickname, session: SessionId) -> Result<bool, BusError>;

    /// Releases a nickname, if this session holds it.
    async fn release_nick(&self, nick: &Nickname, session: SessionId) -> Result<(), BusError>;

    /// The spelling an online user chose for `nick`, or `None` when nobody online has it.
    async fn find_online(&self, nick: &Nickname) -> Result<Option<Nickname>, BusError>;

    /// Everyone online, in no particular order.
    async fn online_users(&self) -> Result<Vec<Nickname>, BusError>;

    /// Records that `nick` is now in `room` (presence for `/list` and `/rooms`).
    async fn enter_room(&self, room: &RoomName, nick: &Nickname) -> Result<(), BusError>;

    async fn exit_room(&self, room: &RoomName, nick: &Nickname) -> Result<(), BusError>;

    /// Who is in a room, on any pod, in no particular order.
    async fn room_members(&self, room: &RoomName) -> Result<Vec<Nickname>, BusError>;

    /// How many users each room has, rooms with nobody left out.
    async fn room_counts(&self) -> Result<HashMap<RoomName, usize>, BusError>;
}
