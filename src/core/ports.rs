//! The ports: what the core needs from the world, as traits it owns. Implementations live below
//! it — `store` (PostgreSQL, memory) and `bus` (Valkey, in process) — and never call back up.
//!
//! - [`Store`]: what must survive a restart (users, rooms, memberships, messages).
//! - [`Bus`]: moves envelopes between pods, and tells when some may have been lost.
//! - [`Presence`]: nickname claims and who is in which room, cluster-wide.
//! - [`Sessions`]: HTTP sessions, which any pod may serve.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use governor::Quota;
use tokio::sync::mpsc;

use super::model::{
    ChatMessage, Envelope, MessageKey, NewMessage, Room, SessionId, SessionRecord, UserId,
};
use super::names::{Nickname, RoomName};

/// A storage failure. Cloneable so one failed batch can answer every waiter in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Definitely not done: the store refused or could not be reached before anything was sent.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("the database circuit breaker is open")]
    CircuitOpen,
    #[error("too many callers are waiting for the database")]
    Overloaded,
    /// A write may or may not have been committed, and the store could not be asked which.
    #[error("the outcome is unknown: {0}")]
    Ambiguous(String),
}

/// Where the circuit breaker in front of the store stands (SPEC §5), for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Calls go through.
    Closed,
    /// One call probes whether the database is back; the others fail fast.
    HalfOpen,
    /// Every call fails fast.
    Open,
}

/// The newest and oldest stored seq of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomTail {
    pub room_id: i64,
    /// The seq of the room's newest message (0 when it has had none).
    pub last_seq: i64,
    /// The lowest seq still stored (retention removes older ones); `last_seq + 1` when none is.
    pub first_seq: i64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the store can serve (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// The circuit breaker's state; a store with none in front of it is always closed.
    fn circuit(&self) -> Circuit {
        Circuit::Closed
    }

    /// Finds or creates the user with this nickname (case-insensitively).
    async fn upsert_user(&self, nick: &Nickname) -> Result<UserId, StoreError>;

    /// Creates a room; `None` when a room of that name (case-insensitively) exists.
    async fn create_room(&self, name: &RoomName) -> Result<Option<Room>, StoreError>;

    async fn find_room(&self, name: &RoomName) -> Result<Option<Room>, StoreError>;

    /// Every room, ordered by name.
    async fn list_rooms(&self) -> Result<Vec<Room>, StoreError>;

    /// Records that a user joined a room (idempotent).
    async fn add_member(&self, room_id: i64, user_id: UserId) -> Result<(), StoreError>;

    /// Stores a batch durably, giving each message the next `seq` of its room in batch order, and
    /// returns the stored messages in the same order. A message whose `key` is already stored is
    /// not stored again: the stored one stands in its place (an idempotent retry). When it
    /// returns `Ok`, every message is on disk; an error other than
    /// [`Ambiguous`](StoreError::Ambiguous) means none of the new ones was stored.
    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<ChatMessage>, StoreError>;

    /// The stored message with this key, if any: a retried send's original, looked up when the
    /// retry can no longer be appended (its session left the room).
    async fn message_by_key(&self, key: MessageKey) -> Result<Option<ChatMessage>, StoreError>;

    /// The last `limit` messages of a room with `seq < before` (all when `None`), oldest first.
    async fn messages_before(
        &self,
        room_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// The first `limit` messages of a room with `seq > after`, oldest first.
    async fn messages_after(
        &self,
        room_id: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// Each room's newest and oldest stored seq, in one call (the tail probe of every carried room).
    async fn room_tails(&self, room_ids: &[i64]) -> Result<Vec<RoomTail>, StoreError>;

    /// Names this store's history. It changes when the history is replaced — a restore from a
    /// backup, a failover to a replica that may lack some of it — so that a position a client
    /// kept from before (a seq) is known to mean nothing now.
    async fn epoch(&self) -> Result<String, StoreError>;
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("the bus is unavailable: {0}")]
    Unavailable(String),
}

/// What the bus hands this pod.
#[derive(Debug)]
pub enum Inbound {
    /// Published by another pod, in publication order.
    Envelope(Envelope),
    /// Some envelopes may have been lost (a reconnect, a restart of the bus, a reader that fell
    /// behind): the core repairs from the sources of truth — the store for messages, the session
    /// store for where sessions are. `state_lost`: the shared state itself was lost (Valkey
    /// restarted empty), sessions included; pods bring back those whose streams they hold.
    Resync { state_lost: bool },
}

/// Moves envelopes between pods. A pod's own envelopes are not handed back to it: the core
/// delivers them locally itself.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn ping(&self) -> Result<(), BusError>;

    /// Publishes envelopes to every other pod, in order, in one round trip.
    async fn publish(&self, envelopes: &[Envelope]) -> Result<(), BusError>;

    /// The stream of what other pods publish. Called once, at start-up.
    fn subscribe(&self) -> mpsc::Receiver<Inbound>;
}

/// What keeps a nickname claim or a presence entry alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// A connection on this pod: alive while the pod renews it, gone within PRESENCE_TTL if the
    /// pod dies.
    Pod,
    /// An HTTP session, which any pod may serve: alive for this long after its last activity.
    Session(Duration),
}

/// The answer to a nickname claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Granted,
    /// Another live session holds it.
    Taken,
    /// The presence service lost its state (a restart, a long outage) and live users are still
    /// re-registering: new claims wait, so nobody can take a live user's name meanwhile.
    Recovering,
}

/// Nickname claims and room presence, cluster-wide.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Claims a nickname for a session, case-insensitively.
    async fn claim(
        &self,
        nick: &Nickname,
        session: SessionId,
        holder: Holder,
    ) -> Result<Claim, BusError>;

    /// Claims a nickname again for a session that held it before the presence service lost its
    /// state: allowed while live users re-register (when new claims wait). Taken when someone
    /// else got it first.
    async fn reclaim(
        &self,
        nick: &Nickname,
        session: SessionId,
        holder: Holder,
    ) -> Result<Claim, BusError>;

    /// Releases a nickname, if this session holds it. Never loses a release: one that cannot be
    /// done now is retried in the background (and a pod-held claim stops being renewed at once).
    async fn release(&self, nick: &Nickname, session: SessionId);

    /// Records which room (if any) `nick` is in. Best effort: presence is rewritten from each
    /// pod's own state on every heartbeat.
    async fn set_room(
        &self,
        nick: &Nickname,
        session: SessionId,
        room: Option<&RoomName>,
        holder: Holder,
    );

    /// The spelling an online user chose for `nick`, or `None` when nobody online has it.
    async fn find_online(&self, nick: &Nickname) -> Result<Option<Nickname>, BusError>;

    /// Everyone online, in no particular order.
    async fn online_users(&self) -> Result<Vec<Nickname>, BusError>;

    /// Who is in a room, on any pod, in no particular order.
    async fn room_members(&self, room: &RoomName) -> Result<Vec<Nickname>, BusError>;

    /// How many users each room has, rooms with nobody left out.
    async fn room_counts(&self) -> Result<HashMap<RoomName, usize>, BusError>;

    /// Sessions of this pod whose nickname this pod can no longer vouch for (it could not renew
    /// the claim in time, or found it taken): the core disconnects them. Called once. Unbounded,
    /// so that none is ever dropped: there is at most one per connection.
    fn revoked(&self) -> mpsc::UnboundedReceiver<SessionId>;
}

/// A session record as stored, with the version a compare-and-set save must match.
#[derive(Debug, Clone)]
pub struct Stored {
    pub record: SessionRecord,
    pub version: u64,
}

/// A held lock on one session's state; release it with [`Sessions::unlock`].
#[derive(Debug)]
pub struct SessionLock {
    pub session: SessionId,
    pub token: String,
}

/// HTTP sessions, shared by every pod.
#[async_trait]
pub trait Sessions: Send + Sync + 'static {
    /// Stores a new session; it expires `ttl` from now unless used again.
    async fn create(&self, record: &SessionRecord, ttl: Duration) -> Result<(), BusError>;

    /// Stores a session the store lost or went back on, unless it holds one at least as new
    /// (by [`SessionRecord::revision`]): pods that each bring back the record their streams
    /// last followed leave the newest of them, whatever order they write in. True if stored.
    async fn restore(&self, record: &SessionRecord, ttl: Duration) -> Result<bool, BusError>;

    /// A live session; `None` when unknown or expired.
    async fn load(&self, id: SessionId) -> Result<Option<Stored>, BusError>;

    /// Saves a changed session if nobody saved it since `version` was loaded (false otherwise),
    /// and pushes its expiry `ttl` into the future.
    async fn save(
        &self,
        record: &SessionRecord,
        version: u64,
        ttl: Duration,
    ) -> Result<bool, BusError>;

    /// Pushes a session's expiry `ttl` into the future; returns the session as it is now, or
    /// `None` when it is unknown or expired.
    async fn touch(&self, id: SessionId, ttl: Duration) -> Result<Option<SessionRecord>, BusError>;

    async fn delete(&self, id: SessionId) -> Result<(), BusError>;

    /// Takes the lock on a session's state, waiting up to `wait` for it. `None` when another
    /// request held it all that time. A lock not released lapses after `lease`.
    async fn lock(
        &self,
        id: SessionId,
        wait: Duration,
        lease: Duration,
    ) -> Result<Option<SessionLock>, BusError>;

    async fn unlock(&self, lock: SessionLock);

    /// Removes and returns the sessions whose time ran out, for the caller to close. Exactly one
    /// pod gets each.
    async fn take_expired(&self) -> Result<Vec<SessionRecord>, BusError>;

    /// Takes one request from the session's allowance under `quota`, which every pod shares (any
    /// pod may serve a session's next request). False when none is left.
    async fn spend(&self, id: SessionId, quota: Quota) -> Result<bool, BusError>;
}
