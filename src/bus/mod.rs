//! The `Bus` seam: what replicas share while they run — event delivery between pods, presence
//! (who is online, in which room, which nicknames are taken) and HTTP sessions.
//!
//! Implementations: [`local::LocalBus`] (one process: `cargo run`, unit tests). Every event
//! published reaches [`Hub::deliver`](crate::core::hub::Hub::deliver) on every pod, this one
//! included, so the core has a single delivery path whatever the deployment.

pub mod local;
mod sequencer;
pub mod valkey;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::core::model::{Envelope, SessionId, SessionRecord};
use crate::core::names::{Nickname, RoomName};

/// What keeps a nickname claim or a presence entry alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// A connection on this pod: alive while the pod is (its heartbeat), gone within
    /// PRESENCE_TTL if the pod dies.
    Pod,
    /// An HTTP session, which any pod may serve: alive while the session is, that is for this
    /// long after its last activity, whatever happens to the pod that created it.
    Session(Duration),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("the bus is unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Answers when the bus can serve (readiness).
    async fn ping(&self) -> Result<(), BusError>;

    /// Delivers an event (or a session's new state) to every pod that should see it.
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError>;

    /// Starts carrying a room's events to this pod (its first local member joined).
    async fn watch_room(&self, room: &RoomName) -> Result<(), BusError>;

    /// Stops carrying a room's events to this pod (its last local member left).
    async fn unwatch_room(&self, room: &RoomName) -> Result<(), BusError>;

    /// Claims a nickname for a session, cluster-wide and case-insensitively. False when taken.
    async fn claim_nick(
        &self,
        nick: &Nickname,
        session: SessionId,
        holder: Holder,
    ) -> Result<bool, BusError>;

    /// Releases a nickname, if this session holds it.
    async fn release_nick(&self, nick: &Nickname, session: SessionId) -> Result<(), BusError>;

    /// The spelling an online user chose for `nick`, or `None` when nobody online has it.
    async fn find_online(&self, nick: &Nickname) -> Result<Option<Nickname>, BusError>;

    /// Everyone online, in no particular order.
    async fn online_users(&self) -> Result<Vec<Nickname>, BusError>;

    /// Records that `nick` is now in `room` (presence for `/list` and `/rooms`).
    async fn enter_room(
        &self,
        room: &RoomName,
        nick: &Nickname,
        holder: Holder,
    ) -> Result<(), BusError>;

    async fn exit_room(
        &self,
        room: &RoomName,
        nick: &Nickname,
        holder: Holder,
    ) -> Result<(), BusError>;

    /// Who is in a room, on any pod, in no particular order.
    async fn room_members(&self, room: &RoomName) -> Result<Vec<Nickname>, BusError>;

    /// How many users each room has, rooms with nobody left out.
    async fn room_counts(&self) -> Result<HashMap<RoomName, usize>, BusError>;

    /// Saves an HTTP session; it expires `ttl` from now unless saved or touched again.
    async fn save_session(&self, record: &SessionRecord, ttl: Duration) -> Result<(), BusError>;

    /// A live session; `None` when unknown or expired.
    async fn load_session(&self, id: SessionId) -> Result<Option<SessionRecord>, BusError>;

    /// Pushes a session's expiry `ttl` into the future. False when it is unknown or expired.
    async fn touch_session(&self, id: SessionId, ttl: Duration) -> Result<bool, BusError>;

    async fn delete_session(&self, id: SessionId) -> Result<(), BusError>;

    /// Removes and returns the sessions whose time ran out, for the caller to close (free their
    /// nicknames, tell their rooms).
    async fn take_expired_sessions(&self) -> Result<Vec<SessionRecord>, BusError>;
}
