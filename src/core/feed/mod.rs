//! Delivery on this pod, owned by the core: one [`RoomFeed`] per room that has a local receiver,
//! and the routes of direct messages and of streams that follow an HTTP session.
//!
//! Everything a receiver is shown passes through here: the pod's own commits and events (handed
//! over directly) and other pods' (from the bus) alike. The feed of a room owns its order, its
//! gap repair and catch-up from the [`Store`], its history ring and its fan-out; it is dropped,
//! ring and all, when its last local receiver leaves. The bus below only moves envelopes.
//!
//! Async work never runs on the delivery path: loading a feed, repairing a gap and catching a
//! receiver up read the store in tasks of their own, one repair at a time per room, so whoever
//! hands an envelope over (the bus loop, a commit) never waits on the database.

mod catch_up;
mod directory;
mod repair;
mod room;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::model::{Broadcast, ChatMessage, Envelope, Event, Room, SessionId, SessionRecord};
use super::names::{Nickname, RoomName};
use super::outbox::Outbox;
use super::ports::{Store, StoreError};
use crate::telemetry::metric;
use catch_up::Reader;
use directory::Directory;
pub use room::HOLD;
use room::RoomFeed;

/// Messages read from the store per repair or catch-up query, at most: what one holds in memory.
const PAGE: usize = 500;
/// Catch-up page reads (for streams resuming far back, members behind after a gap) running at
/// once on a pod; others wait their turn.
const MAX_CATCH_UPS: usize = 16;
/// How long a member behind has to take its last page — to make room for a page (half its
/// queue) beyond its headroom — before it is too slow, and is cut off as such.
const PACE_LIMIT: Duration = Duration::from_secs(5);
/// How long a repair waits for the members to take a page before sending the next: one that
/// needs longer falls behind, and catches up from the store on its own.
const PAGE_WAIT: Duration = Duration::from_millis(250);

pub struct Feeds {
    inner: Arc<Inner>,
}

/// What a room this pod carries is doing, for operators.
#[derive(Clone, Debug, PartialEq)]
pub struct RoomActivity {
    pub room: RoomName,
    /// Its members connected to this pod.
    pub members: usize,
    /// The last seq this pod delivered in it: messages ever sent to the room, so its rate is the
    /// room's messages per second.
    pub last_seq: i64,
}

struct Inner {
    store: Arc<dyn Store>,
    history_size: usize,
    // std Mutexes, never held across an await. Lock order: rooms, then a feed, then the
    // directory (a catch-up asks it whether a stream still follows its session to this room).
    rooms: Mutex<HashMap<RoomName, Arc<Cell>>>,
    directory: Mutex<Directory>,
    catch_ups: Semaphore,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

struct Cell {
    feed: Mutex<RoomFeed>,
    /// Set once the first store read has placed the feed in its room's order.
    loaded: OnceCell<()>,
}

impl Cell {
    fn feed(&self) -> MutexGuard<'_, RoomFeed> {
        self.feed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Retry delays while the store fails: 50 ms doubling to 5 s, jittered, for as long as it takes.
fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Feeds {
    pub fn new(store: Arc<dyn Store>, history_size: usize, shutdown: CancellationToken) -> Feeds {
        Feeds {
            inner: Arc::new(Inner {
                store,
                history_size,
                rooms: Mutex::new(HashMap::new()),
                directory: Mutex::new(Directory::default()),
                catch_ups: Semaphore::new(MAX_CATCH_UPS),
                tasks: TaskTracker::new(),
                shutdown,
            }),
        }
    }

    /// Hands over an envelope, from this pod or another, to every local receiver that should see
    /// it. Never waits.
    pub fn deliver(&self, envelope: Envelope) {
        let inner = &self.inner;
        match envelope {
            Envelope::Message(message) => {
                let Some(cell) = inner.cell(&message.room) else {
                    return;
                };
                let (due, fallen) = {
                    let mut feed = cell.feed();
                    let due = feed.admit(Broadcast::message(message), Instant::now());
                    let fallen = feed.take_fallen();
                    // The room is copied only when someone fell behind: not per message.
                    (
                        due,
                        (!fallen.is_empty()).then(|| (feed.room.clone(), fallen)),
                    )
                };
                if let Some((room, fallen)) = fallen {
                    inner.bring_up(&room, fallen);
                }
                if let Some(due) = due {
                    inner.repair(&cell, due);
                }
            }
            Envelope::RoomEvent { room, text, about } => {
                if let Some(cell) = inner.cell(&room) {
                    let event = Broadcast::new(Event::Room { room, text });
                    cell.feed().announce(&event, about);
                }
            }
            Envelope::Dm { from, to, content } => {
                let event = Broadcast::new(Event::Dm {
                    from,
                    to: to.clone(),
                    content,
                });
                lock(&inner.directory).direct(&to, &event);
            }
            Envelope::SessionMoved(record) => inner.clone().move_followers(record),
        }
    }

    /// Joins `member` to `room`: its history block (the newest HISTORY_SIZE messages, oldest
    /// first) and the seq it ends at, then live from the message after it.
    pub async fn join(
        &self,
        room: &Room,
        member: Outbox,
    ) -> Result<(Vec<Arc<Broadcast>>, i64), StoreError> {
        let inner = &self.inner;
        let hit = inner
            .cell(&room.name)
            .is_some_and(|c| c.loaded.initialized());
        let (history, at) = inner
            .enter(room, |feed| {
                let history = feed.join(member.clone(), inner.history_size);
                (history, feed.delivered().unwrap_or_default())
            })
            .await?;
        let result = if hit { "hit" } else { "miss" };
        metrics::counter!(metric::HISTORY_REQUESTS, "result" => result).increment(1);
        Ok((history, at))
    }

    /// Feeds `member` from after `cursor`: at once from the ring when it reaches back that far,
    /// else after a catch-up from the store that runs in the background, page by page, as fast
    /// as the receiver reads.
    pub async fn attach(&self, room: &Room, member: Outbox, cursor: i64) -> Result<(), StoreError> {
        let reader = Reader {
            outbox: member,
            follows: None,
        };
        self.inner.clone().attach(room, reader, cursor).await
    }

    /// Where a new stream of `room` starts: the last seq delivered here, or the store's.
    pub async fn position(&self, room: &Room) -> Result<i64, StoreError> {
        if let Some(cell) = self.inner.cell(&room.name)
            && let Some(delivered) = cell.feed().delivered()
        {
            return Ok(delivered);
        }
        Ok(self.inner.tail(room.id).await?.last_seq)
    }

    /// A room's newest HISTORY_SIZE messages and the seq they end at, for someone who is not a
    /// local receiver (an HTTP session joining): from the ring when this pod carries the room,
    /// else from the store.
    pub async fn history(&self, room: &Room) -> Result<(Vec<ChatMessage>, i64), StoreError> {
        if let Some(cell) = self.inner.cell(&room.name) {
            let feed = cell.feed();
            if let Some(at) = feed.delivered() {
                metrics::counter!(metric::HISTORY_REQUESTS, "result" => "hit").increment(1);
                let recent = feed
                    .recent(self.inner.history_size)
                    .iter()
                    .filter_map(|m| match &m.event {
                        Event::Message(m) => Some(m.clone()),
                        _ => None,
                    })
                    .collect();
                return Ok((recent, at));
            }
        }
        metrics::counter!(metric::HISTORY_REQUESTS, "result" => "miss").increment(1);
        let last = self.inner.tail(room.id).await?.last_seq;
        let recent = self
            .inner
            .store
            .messages_before(room.id, Some(last + 1), self.inner.history_size)
            .await?;
        Ok((recent, last))
    }

    /// A room's newest HISTORY_SIZE messages up to `up_to` — where a live member's view is, which
    /// may be behind the feed while its client reads — from the ring when it holds them, else
    /// from the store.
    pub async fn history_until(
        &self,
        room: &Room,
        up_to: i64,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let wanted = self.inner.history_size;
        if let Some(cell) = self.inner.cell(&room.name) {
            let ring: Vec<ChatMessage> = cell
                .feed()
                .recent(wanted)
                .iter()
                .filter_map(|m| match &m.event {
                    Event::Message(m) if m.seq <= up_to => Some(m.clone()),
                    _ => None,
                })
                .collect();
            if ring.len() == wanted || up_to == 0 {
                metrics::counter!(metric::HISTORY_REQUESTS, "result" => "hit").increment(1);
                return Ok(ring);
            }
        }
        metrics::counter!(metric::HISTORY_REQUESTS, "result" => "miss").increment(1);
        self.inner
            .store
            .messages_before(room.id, Some(up_to + 1), wanted)
            .await
    }

    /// The `n` rooms with the most members on this pod, most first (ties by name): per-room
    /// activity with a bounded set of rooms, however many exist.
    pub fn busiest(&self, n: usize) -> Vec<RoomActivity> {
        // The feeds are read after the rooms' lock is let go (lock order: rooms, then a feed).
        let cells: Vec<(RoomName, Arc<Cell>)> = lock(&self.inner.rooms)
            .iter()
            .map(|(room, cell)| (room.clone(), cell.clone()))
            .collect();
        let mut rooms: Vec<RoomActivity> = cells
            .into_iter()
            // A feed still loading has no place in its room's order yet: left out, rather than
            // shown at seq 0 (a counter that went back would read as a burst of messages).
            .filter_map(|(room, cell)| {
                let feed = cell.feed();
                Some(RoomActivity {
                    room,
                    members: feed.member_count(),
                    last_seq: feed.delivered()?,
                })
            })
            .collect();
        rooms.sort_by(|a, b| {
            b.members
                .cmp(&a.members)
                .then_with(|| a.room.as_str().cmp(b.room.as_str()))
        });
        rooms.truncate(n);
        rooms
    }

    /// Stops feeding receiver `id` from `room`; the feed goes when its last receiver does.
    pub fn leave(&self, room: &RoomName, id: SessionId) {
        self.inner.leave(room, id);
    }

    /// Routes direct messages for `nick` to this receiver.
    pub fn register_user(&self, nick: &Nickname, outbox: &Outbox) {
        lock(&self.inner.directory).register(nick, outbox);
    }

    pub fn unregister_user(&self, nick: &Nickname, id: SessionId) {
        lock(&self.inner.directory).unregister(nick, id);
    }

    /// Routes the direct messages of `record`'s session to a stream of it, and its room from
    /// after `from` on, wherever the session moves next.
    pub async fn follow(
        &self,
        record: &SessionRecord,
        from: i64,
        outbox: Outbox,
    ) -> Result<(), StoreError> {
        let generation = lock(&self.inner.directory).follow(record, &outbox);
        if let Some(room) = &record.room {
            let reader = Reader {
                outbox,
                follows: Some(generation),
            };
            self.inner.clone().attach(room, reader, from).await?;
        }
        Ok(())
    }

    /// Stops routing to a stream opened with [`Feeds::follow`].
    pub fn unfollow(&self, session: SessionId, id: SessionId) {
        let room = lock(&self.inner.directory).unfollow(session, id);
        if let Some(room) = room {
            self.leave(&room, id);
        }
    }

    /// Keeps `record` while stream `stream` of its session is open here (a room stream; those
    /// following their session are kept by [`Feeds::follow`]).
    pub fn hold(&self, record: &SessionRecord, stream: SessionId) {
        lock(&self.inner.directory).hold(record, stream);
    }

    pub fn release(&self, session: SessionId, stream: SessionId) {
        lock(&self.inner.directory).release(session, stream);
    }

    /// The latest records of the sessions with streams open on this pod (to re-read after
    /// envelopes may have been lost, and to bring back should the session store lose them).
    pub fn held(&self) -> Vec<SessionRecord> {
        lock(&self.inner.directory).held()
    }

    /// After envelopes may have been lost: every carried room's tail is probed now.
    pub fn resync(&self) {
        let inner = self.inner.clone();
        self.inner
            .tasks
            .spawn(async move { inner.probe().await }.in_current_span());
    }

    /// Probes every carried room's tail every `every` — a lost publish of a room's last message is
    /// found without waiting for the next one — until shutdown.
    pub async fn run_probes(&self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self
            .inner
            .shutdown
            .run_until_cancelled(tick.tick())
            .await
            .is_some()
        {
            self.inner.probe().await;
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl Inner {
    fn cell(&self, room: &RoomName) -> Option<Arc<Cell>> {
        lock(&self.rooms).get(room).cloned()
    }

    fn leave(&self, room: &RoomName, id: SessionId) {
        let mut rooms = lock(&self.rooms);
        if let Some(cell) = rooms.get(room)
            && cell.feed().leave(id)
        {
            rooms.remove(room);
        }
    }

    /// Removes member `id` of `room` if it is still behind under catch-up `turn` (a catch-up
    /// giving up on it).
    fn leave_if_behind(&self, room: &RoomName, id: SessionId, turn: u64) {
        let mut rooms = lock(&self.rooms);
        let empty = rooms.get(room).is_some_and(|cell| {
            let mut feed = cell.feed();
            feed.behind(id, turn).is_some() && feed.leave(id)
        });
        if empty {
            rooms.remove(room);
        }
    }

    fn cell_or_new(&self, room: &Room) -> Arc<Cell> {
        lock(&self.rooms)
            .entry(room.name.clone())
            .or_insert_with(|| {
                Arc::new(Cell {
                    feed: Mutex::new(RoomFeed::new(room.clone(), self.history_size)),
                    loaded: OnceCell::new(),
                })
            })
            .clone()
    }

    /// Runs `step` on `room`'s feed once it is loaded, and is still the room's feed (not one its
    /// last member just left). Then starts the repair of a gap the feed has and nobody repairs.
    async fn enter<T>(
        self: &Arc<Self>,
        room: &Room,
        step: impl Fn(&mut RoomFeed) -> T,
    ) -> Result<T, StoreError> {
        loop {
            let cell = self.cell_or_new(room);
            if let Err(e) = self.load(&cell).await {
                self.forget_if_empty(&room.name);
                return Err(e);
            }
            let (result, due, fallen) = {
                let rooms = lock(&self.rooms);
                if !rooms.get(&room.name).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                    continue;
                }
                let mut feed = cell.feed();
                let result = step(&mut feed);
                let due = (feed.gap().is_some() && !feed.repairing).then(|| Instant::now() + HOLD);
                (result, due, feed.take_fallen())
            };
            // (Neither a join nor an attach leaves others behind, nor does a first load, which
            // comes before any member: taken anyway, so that no step that ever does is missed.)
            self.bring_up(room, fallen);
            if let Some(due) = due {
                self.repair(&cell, due);
            }
            return Ok(result);
        }
    }

    /// Forgets a room's feed if nobody is in it (its load failed, say, or the receiver it was
    /// made for has gone), so it does not sit holding messages. One being loaded for a joiner
    /// meanwhile is made again by its `enter`.
    fn forget_if_empty(&self, room: &RoomName) {
        let mut rooms = lock(&self.rooms);
        if rooms.get(room).is_some_and(|c| c.feed().is_empty()) {
            rooms.remove(room);
        }
    }

    async fn tail(&self, room_id: i64) -> Result<super::ports::RoomTail, StoreError> {
        let tails = self.store.room_tails(&[room_id]).await?;
        tails
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Unavailable(format!("room {room_id} is gone")))
    }

    /// The first store read of a feed: its room's last seq, then the ring ending there.
    async fn load(&self, cell: &Arc<Cell>) -> Result<(), StoreError> {
        cell.loaded
            .get_or_try_init(|| async {
                let room = cell.feed().room.clone();
                let last = self.tail(room.id).await?.last_seq;
                let recent = self
                    .store
                    .messages_before(room.id, Some(last + 1), self.history_size)
                    .await?;
                cell.feed().load(recent, last, Instant::now());
                Ok::<_, StoreError>(())
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{Delivery, MessageKey, NewMessage, UserId};
    use crate::core::outbox::{Inbox, queue};
    use crate::core::ports::RoomTail;
    use crate::store::memory::MemoryStore;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicBool, Ordering};
    use time::OffsetDateTime;
    use tokio::sync::Notify;

    /// A store whose next `messages_after`, once armed, waits until let go: a catch-up caught
    /// between its read and its queueing.
    struct Gated {
        store: MemoryStore,
        armed: AtomicBool,
        reading: Notify,
        go: Semaphore,
    }

    #[async_trait]
    impl Store for Gated {
        async fn ping(&self) -> Result<(), StoreError> {
            self.store.ping().await
        }
        async fn upsert_user(&self, nick: &Nickname) -> Result<UserId, StoreError> {
            self.store.upsert_user(nick).await
        }
        async fn create_room(&self, name: &RoomName) -> Result<Option<Room>, StoreError> {
            self.store.create_room(name).await
        }
        async fn find_room(&self, name: &RoomName) -> Result<Option<Room>, StoreError> {
            self.store.find_room(name).await
        }
        async fn list_rooms(&self) -> Result<Vec<Room>, StoreError> {
            self.store.list_rooms().await
        }
        async fn add_member(&self, room_id: i64, user_id: UserId) -> Result<(), StoreError> {
            self.store.add_member(room_id, user_id).await
        }
        async fn append_messages(
            &self,
            batch: &[NewMessage],
        ) -> Result<Vec<ChatMessage>, StoreError> {
            self.store.append_messages(batch).await
        }
        async fn message_by_key(&self, key: MessageKey) -> Result<Option<ChatMessage>, StoreError> {
            self.store.message_by_key(key).await
        }
        async fn messages_before(
            &self,
            room_id: i64,
            before: Option<i64>,
            limit: usize,
        ) -> Result<Vec<ChatMessage>, StoreError> {
            self.store.messages_before(room_id, before, limit).await
        }
        async fn messages_after(
            &self,
            room_id: i64,
            after: i64,
            limit: usize,
        ) -> Result<Vec<ChatMessage>, StoreError> {
            let page = self.store.messages_after(room_id, after, limit).await;
            if self.armed.swap(false, Ordering::AcqRel) {
                self.reading.notify_one();
                self.go.acquire().await.unwrap().forget();
            }
            page
        }
        async fn room_tails(&self, room_ids: &[i64]) -> Result<Vec<RoomTail>, StoreError> {
            self.store.room_tails(room_ids).await
        }
        async fn epoch(&self) -> Result<String, StoreError> {
            self.store.epoch().await
        }
    }

    /// A store with one room of `count` messages, and feeds over it.
    async fn room_with(count: usize) -> (Arc<MemoryStore>, Feeds, Room) {
        let store = Arc::new(MemoryStore::new(10_000));
        let room = store
            .create_room(&RoomName::parse("r").unwrap())
            .await
            .unwrap()
            .unwrap();
        for i in 0..count {
            append(&store, &room, &format!("m{i}")).await;
        }
        let feeds = Feeds::new(store.clone(), 3, CancellationToken::new());
        (store, feeds, room)
    }

    async fn append(store: &MemoryStore, room: &Room, content: &str) -> ChatMessage {
        let new = NewMessage {
            key: MessageKey::new_v4(),
            client_keyed: false,
            room_id: room.id,
            room: room.name.clone(),
            user_id: 1,
            user: Nickname::parse("u").unwrap(),
            content: content.into(),
            created_at: OffsetDateTime::now_utc(),
        };
        store.append_messages(&[new]).await.unwrap().remove(0)
    }

    /// A session of `web` in `room`, shown up to its seq 2, at revision 1.
    fn session_in(room: &Room) -> SessionRecord {
        SessionRecord {
            id: SessionId::random(),
            user_id: 1,
            nick: Nickname::parse("web").unwrap(),
            room: Some(room.clone()),
            seen: 2,
            revision: 1,
            joined: 1,
        }
    }

    fn receiver() -> (Outbox, Inbox) {
        let id = SessionId::random();
        queue(id, id, 64)
    }

    /// The next message seq a receiver is given (a reset is -1).
    async fn next_seq(inbox: &mut Inbox) -> i64 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .expect("a delivery in time")
            .expect("an open queue");
        match delivery {
            Delivery::Event(event) => event.seq().expect("a message"),
            Delivery::Reset(_) => -1,
            Delivery::Moved(_) => 0,
        }
    }

    /// The content of the next message a receiver is given.
    async fn next_content(inbox: &mut Inbox) -> String {
        let delivery = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .expect("a delivery in time")
            .expect("an open queue");
        match delivery {
            Delivery::Event(event) => match &event.event {
                Event::Message(m) => m.content.clone(),
                other => panic!("not a message: {other:?}"),
            },
            other => panic!("not a message: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_message_the_bus_never_brought_is_read_from_the_store_after_the_hold() {
        let (store, feeds, room) = room_with(2).await;
        let (member, mut inbox) = receiver();
        let (history, at) = feeds.join(&room, member).await.unwrap();
        assert_eq!((history.len(), at), (2, 2));
        // Seq 3 is committed elsewhere and its publish lost; seq 4 arrives.
        append(&store, &room, "lost").await;
        let next = append(&store, &room, "arrives").await;
        feeds.deliver(Envelope::Message(next));
        assert_eq!(next_seq(&mut inbox).await, 3);
        assert_eq!(next_seq(&mut inbox).await, 4);
    }

    /// Seq 3 is committed and its publish lost, then 300 more arrive live (a queue holds 64):
    /// what was held behind the hole must go out no faster than the member reads it.
    async fn a_long_hold(late: bool) {
        let (store, feeds, room) = room_with(2).await;
        let (member, mut inbox) = receiver();
        feeds.join(&room, member).await.unwrap();
        let lost = append(&store, &room, "lost").await;
        for i in 0..300 {
            let next = append(&store, &room, &format!("after {i}")).await;
            feeds.deliver(Envelope::Message(next));
        }
        if late {
            feeds.deliver(Envelope::Message(lost));
        }
        for seq in 3..=302 {
            assert_eq!(next_seq(&mut inbox).await, seq);
        }
    }

    /// A room with a member that reads (its inbox returned) and one that does not: 60 live
    /// messages fill the second one's queue (64) while the first reads them; then seq 63's
    /// publish comes late, after `held` more, held behind it until it does.
    async fn a_full_member_and_a_late_publish(held: usize) -> (Feeds, Room, Inbox, Outbox, Inbox) {
        let (store, feeds, room) = room_with(2).await;
        let (member, mut inbox) = receiver();
        feeds.join(&room, member).await.unwrap();
        let (full, full_inbox) = receiver();
        feeds.join(&room, full.clone()).await.unwrap();
        for i in 0..60 {
            let next = append(&store, &room, &format!("m{i}")).await;
            feeds.deliver(Envelope::Message(next));
        }
        for seq in 3..=62 {
            assert_eq!(next_seq(&mut inbox).await, seq);
        }
        let late = append(&store, &room, "late").await;
        for i in 0..held {
            let next = append(&store, &room, &format!("after {i}")).await;
            feeds.deliver(Envelope::Message(next));
        }
        feeds.deliver(Envelope::Message(late));
        (feeds, room, inbox, full, full_inbox)
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_does_not_read_holds_nobody_back_when_a_gap_closes() {
        let (_feeds, _room, mut inbox, _full, _full_inbox) =
            a_full_member_and_a_late_publish(100).await;
        // Well before the full member would be cut off as too slow.
        let all = tokio::time::timeout(PACE_LIMIT / 2, async {
            for seq in 63..=163 {
                assert_eq!(next_seq(&mut inbox).await, seq);
            }
        });
        assert!(all.await.is_ok(), "the reader waited for the full member");
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_fell_behind_and_left_the_room_is_not_cut_off_as_too_slow() {
        // What the late publish held goes to the one with room; the other falls behind, then
        // leaves for another room (a /join) before it reads again.
        let (feeds, room, mut inbox, full, full_inbox) = a_full_member_and_a_late_publish(10).await;
        for seq in 63..=73 {
            assert_eq!(next_seq(&mut inbox).await, seq);
        }
        // (Paused time moves on only once every task waits: its catch-up is waiting for room.)
        tokio::time::sleep(Duration::from_secs(1)).await;
        feeds.leave(&room.name, full.id);
        // Time passes, far past the PACE_LIMIT it had to make room while it was behind.
        tokio::time::sleep(PACE_LIMIT * 2).await;
        assert!(!full_inbox.too_slow.is_set());
    }

    #[tokio::test]
    async fn a_long_gap_repaired_from_the_store_goes_out_as_fast_as_members_read() {
        a_long_hold(false).await;
    }

    #[tokio::test]
    async fn a_long_hold_released_by_a_late_publish_goes_out_as_fast_as_members_read() {
        a_long_hold(true).await;
    }

    #[tokio::test(start_paused = true)]
    async fn receivers_that_do_not_read_keep_no_turn_from_a_resume_that_does() {
        let (_store, feeds, room) = room_with(600).await;
        let mut idle = Vec::new();
        for _ in 0..MAX_CATCH_UPS {
            let (outbox, inbox) = receiver();
            feeds.attach(&room, outbox, 0).await.unwrap();
            idle.push(inbox);
        }
        let (outbox, mut inbox) = receiver();
        feeds.attach(&room, outbox, 0).await.unwrap();
        // The others have PACE_LIMIT to make room before they are cut off as too slow; this one
        // must not wait for that.
        let first = tokio::time::timeout(PACE_LIMIT / 2, next_seq(&mut inbox)).await;
        assert_eq!(first.ok(), Some(1));
    }

    #[tokio::test]
    async fn a_page_read_before_a_stream_moved_away_and_back_is_not_shown_after() {
        let store = Arc::new(Gated {
            store: MemoryStore::new(10_000),
            armed: AtomicBool::new(false),
            reading: Notify::new(),
            go: Semaphore::new(0),
        });
        let mut rooms = Vec::new();
        for (name, count) in [("a", 20), ("b", 3)] {
            let room = store
                .create_room(&RoomName::parse(name).unwrap())
                .await
                .unwrap()
                .unwrap();
            for i in 0..count {
                append(&store.store, &room, &format!("{name}{i}")).await;
            }
            rooms.push(room);
        }
        let feeds = Feeds::new(store.clone(), 3, CancellationToken::new());
        let mut record = session_in(&rooms[0]);
        let (outbox, mut inbox) = queue(SessionId::random(), record.id, 64);
        store.armed.store(true, Ordering::Release);
        // Far behind a's ring: a catch-up reads after 2, and is held with its page.
        feeds.follow(&record, 2, outbox).await.unwrap();
        store.reading.notified().await;
        // The session goes to b and back to a, shown up to 10 there.
        record.room = Some(rooms[1].clone());
        record.seen = 3;
        record.revise();
        feeds.deliver(Envelope::SessionMoved(record.clone()));
        record.room = Some(rooms[0].clone());
        record.seen = 10;
        record.revise();
        feeds.deliver(Envelope::SessionMoved(record));
        assert_eq!(next_seq(&mut inbox).await, 0, "moved to b");
        assert_eq!(next_seq(&mut inbox).await, 0, "moved back to a");
        for seq in 11..=20 {
            assert_eq!(next_seq(&mut inbox).await, seq);
        }
        // The first catch-up's page (3 ..= 20) comes back from the store now.
        store.go.add_permits(1);
        feeds.inner.tasks.close();
        feeds.inner.tasks.wait().await;
        let live = append(&store.store, &rooms[0], "live").await;
        feeds.deliver(Envelope::Message(live));
        assert_eq!(next_seq(&mut inbox).await, 21);
    }

    #[tokio::test]
    async fn a_move_older_than_one_already_followed_is_ignored() {
        let (store, feeds, first) = room_with(2).await;
        let mut rooms = vec![first];
        for name in ["b", "c"] {
            let room = store
                .create_room(&RoomName::parse(name).unwrap())
                .await
                .unwrap()
                .unwrap();
            rooms.push(room);
        }
        let id = SessionId::random();
        let record = |room: &Room, revision| SessionRecord {
            id,
            user_id: 1,
            nick: Nickname::parse("web").unwrap(),
            room: Some(room.clone()),
            seen: 0,
            revision,
            joined: revision,
        };
        let (outbox, mut inbox) = queue(SessionId::random(), id, 64);
        feeds
            .follow(&record(&rooms[0], 1), 2, outbox)
            .await
            .unwrap();
        // The session went to c (revision 2: one pod), then to b (3: another pod); b's news
        // arrives first, then c's; then a keepalive's read from before both.
        feeds.deliver(Envelope::SessionMoved(record(&rooms[1], 3)));
        feeds.deliver(Envelope::SessionMoved(record(&rooms[2], 2)));
        feeds.deliver(Envelope::SessionMoved(record(&rooms[0], 1)));
        assert_eq!(next_seq(&mut inbox).await, 0, "moved to b");
        let in_c = append(&store, &rooms[2], "in c").await;
        feeds.deliver(Envelope::Message(in_c));
        let in_b = append(&store, &rooms[1], "in b").await;
        feeds.deliver(Envelope::Message(in_b));
        assert_eq!(
            next_content(&mut inbox).await,
            "in b",
            "nothing else before it"
        );
    }

    #[tokio::test]
    async fn a_stream_follows_a_move_its_session_made_before_another_stream_of_it_opened() {
        let (store, feeds, first) = room_with(2).await;
        let second = store
            .create_room(&RoomName::parse("b").unwrap())
            .await
            .unwrap()
            .unwrap();
        let mut record = session_in(&first);
        let (outbox, mut inbox) = queue(SessionId::random(), record.id, 64);
        feeds.follow(&record, 2, outbox).await.unwrap();
        // The session joins b on another pod; a second tab opens a stream here, with the record
        // read after the join, before the news of the move arrives.
        record.room = Some(second.clone());
        record.seen = 0;
        record.revision = 2;
        record.joined = 2;
        feeds.hold(&record, SessionId::random());
        feeds.deliver(Envelope::SessionMoved(record));
        assert_eq!(next_seq(&mut inbox).await, 0, "moved to b");
        let in_b = append(&store, &second, "in b").await;
        feeds.deliver(Envelope::Message(in_b));
        assert_eq!(next_content(&mut inbox).await, "in b");
    }

    #[tokio::test]
    async fn the_tail_probe_finds_a_rooms_lost_last_message() {
        let (store, feeds, room) = room_with(1).await;
        let (member, mut inbox) = receiver();
        feeds.join(&room, member).await.unwrap();
        append(&store, &room, "the last word").await;
        feeds.inner.probe().await;
        assert_eq!(next_seq(&mut inbox).await, 2);
    }

    #[tokio::test]
    async fn a_stale_cursor_catches_up_from_the_store_then_goes_live() {
        let (store, feeds, room) = room_with(20).await;
        let (other, _other_inbox) = receiver();
        feeds.join(&room, other.clone()).await.unwrap();
        let (stream, mut inbox) = receiver();
        // Far behind the ring (3): a member behind, which a catch-up brings level; meanwhile the
        // other member leaves.
        feeds.attach(&room, stream, 5).await.unwrap();
        feeds.leave(&room.name, other.id);
        for seq in 6..=20 {
            assert_eq!(next_seq(&mut inbox).await, seq);
        }
        // Whether the catch-up has ended (then it is delivered live) or not (then it reaches the
        // ring, which has it), the stream gets it.
        let next = append(&store, &room, "live").await;
        feeds.deliver(Envelope::Message(next));
        assert_eq!(next_seq(&mut inbox).await, 21);
    }

    #[tokio::test]
    async fn a_stream_following_a_session_moves_with_it_from_where_the_session_was_shown() {
        let (store, feeds, first) = room_with(2).await;
        let second = store
            .create_room(&RoomName::parse("s").unwrap())
            .await
            .unwrap()
            .unwrap();
        for i in 0..3 {
            append(&store, &second, &format!("s{i}")).await;
        }
        let mut record = session_in(&first);
        let (outbox, mut inbox) = queue(SessionId::random(), record.id, 64);
        feeds.follow(&record, 2, outbox).await.unwrap();
        record.room = Some(second.clone());
        record.seen = 1;
        record.revise();
        feeds.deliver(Envelope::SessionMoved(record));
        assert_eq!(next_seq(&mut inbox).await, 0, "told it moved");
        assert_eq!(
            next_seq(&mut inbox).await,
            2,
            "then what came after its history"
        );
        assert_eq!(next_seq(&mut inbox).await, 3);
        let live = append(&store, &second, "live").await;
        feeds.deliver(Envelope::Message(live));
        assert_eq!(next_seq(&mut inbox).await, 4);
        // The room it left no longer reaches it.
        let elsewhere = append(&store, &first, "elsewhere").await;
        feeds.deliver(Envelope::Message(elsewhere));
        assert!(inbox.try_recv().is_none());
    }
}
