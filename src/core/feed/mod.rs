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

mod directory;
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

use super::model::{Broadcast, ChatMessage, Delivery, Envelope, Event, Room, SessionId};
use super::names::{Nickname, RoomName};
use super::outbox::Outbox;
use super::ports::{Store, StoreError};
use crate::telemetry::metric;
use directory::Directory;
pub use room::HOLD;
use room::{Attach, RoomFeed};

/// Messages read from the store per repair or catch-up query: what one catch-up holds in memory.
const PAGE: usize = 500;
/// Catch-ups (a stream resuming far back) running at once on a pod; others wait their turn.
const MAX_CATCH_UPS: usize = 16;
/// How long a repair waits for its members to take a page before sending the next regardless
/// (a member that needs longer is too slow, and is cut off as such).
const PACE_LIMIT: Duration = Duration::from_secs(5);

pub struct Feeds {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    history_size: usize,
    // std Mutexes, never held across an await. Lock order: directory, rooms, a feed.
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
                let due = cell
                    .feed()
                    .admit(Broadcast::message(message), Instant::now());
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
            Envelope::SessionMoved {
                session,
                nick,
                room,
                seen,
            } => {
                inner.clone().move_followers(session, nick, room, seen);
            }
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
        loop {
            let cell = inner.cell_or_new(room);
            let hit = cell.loaded.initialized();
            inner.load(&cell).await?;
            // Under the rooms lock: a cell the last member just left is no longer in the map.
            let rooms = lock(&inner.rooms);
            if rooms.get(&room.name).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                let mut feed = cell.feed();
                let history = feed.join(member, inner.history_size);
                let at = feed.delivered().unwrap_or_default();
                let result = if hit { "hit" } else { "miss" };
                metrics::counter!(metric::HISTORY_REQUESTS, "result" => result).increment(1);
                return Ok((history, at));
            }
        }
    }

    /// Feeds `member` from after `cursor`: at once from the ring when it reaches back that far,
    /// else after a catch-up from the store that runs in the background, page by page, as fast
    /// as the receiver reads.
    pub async fn attach(&self, room: &Room, member: Outbox, cursor: i64) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        let wanted = {
            let member = member.clone();
            move || member.is_open()
        };
        inner.attach(room, member, cursor, wanted).await
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

    /// Stops feeding receiver `id` from `room`; the feed goes when its last receiver does.
    pub fn leave(&self, room: &RoomName, id: SessionId) {
        let mut rooms = lock(&self.inner.rooms);
        if let Some(cell) = rooms.get(room)
            && cell.feed().leave(id)
        {
            rooms.remove(room);
        }
    }

    /// Routes direct messages for `nick` to this receiver.
    pub fn register_user(&self, nick: &Nickname, outbox: &Outbox) {
        lock(&self.inner.directory).register(nick, outbox);
    }

    pub fn unregister_user(&self, nick: &Nickname, id: SessionId) {
        lock(&self.inner.directory).unregister(nick, id);
    }

    /// Routes `session`'s direct messages to a stream of it, and its room from `seen` on, wherever
    /// the session moves next.
    pub async fn follow(
        &self,
        nick: &Nickname,
        room: Option<&Room>,
        seen: i64,
        outbox: Outbox,
    ) -> Result<(), StoreError> {
        let generation = lock(&self.inner.directory).follow(nick, room, &outbox);
        if let Some(room) = room {
            let inner = self.inner.clone();
            let wanted = inner.clone().follower_wanted(outbox.clone(), generation);
            inner.attach(room, outbox, seen, wanted).await?;
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

    /// The sessions streams on this pod follow (to re-read after envelopes may have been lost).
    pub fn followed(&self) -> Vec<SessionId> {
        lock(&self.inner.directory).followed()
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
        // Messages held while it loaded may have left a gap behind them.
        let due = {
            let feed = cell.feed();
            feed.gap().map(|_| Instant::now() + HOLD)
        };
        if let Some(due) = due {
            self.repair(cell, due);
        }
        Ok(())
    }

    /// Starts the room's repair, unless one runs: it waits out the hold, then reads the missing
    /// seqs page by page, with back-off while the store fails, until the feed is contiguous.
    fn repair(&self, cell: &Arc<Cell>, due: Instant) {
        {
            let mut feed = cell.feed();
            if feed.repairing {
                return;
            }
            feed.repairing = true;
        }
        let (store, cell, shutdown) = (self.store.clone(), cell.clone(), self.shutdown.clone());
        self.tasks
            .spawn(repair(store, cell, due, shutdown).in_current_span());
    }

    async fn attach(
        self: Arc<Self>,
        room: &Room,
        member: Outbox,
        cursor: i64,
        wanted: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Result<(), StoreError> {
        loop {
            let cell = self.cell_or_new(room);
            self.load(&cell).await?;
            let rooms = lock(&self.rooms);
            if !rooms.get(&room.name).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                continue;
            }
            if !wanted() {
                return Ok(());
            }
            let from = match cell.feed().attach(member.clone(), cursor) {
                Attach::Live => return Ok(()),
                Attach::CatchUpFrom(from) => from,
            };
            drop(rooms);
            let inner = self.clone();
            let room = room.clone();
            self.tasks.spawn(
                async move { inner.catch_up(room, member, from, wanted).await }.in_current_span(),
            );
            return Ok(());
        }
    }

    /// Reads what `member` missed after `cursor` from the store, page by page, each page checked
    /// for contiguity and queued as fast as the receiver takes it, then attaches it live.
    async fn catch_up(
        self: Arc<Self>,
        room: Room,
        member: Outbox,
        mut cursor: i64,
        wanted: impl Fn() -> bool + Send + Sync + 'static,
    ) {
        let Ok(_permit) = self.catch_ups.acquire().await else {
            return;
        };
        let mut delays = backoff();
        loop {
            if !wanted() || self.shutdown.is_cancelled() {
                return;
            }
            let page = match self.store.messages_after(room.id, cursor, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, room = %room.name, "catch-up read failed; retrying");
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
                    continue;
                }
            };
            if let Some(first) = page.first().map(|m| m.seq)
                && first != cursor + 1
            {
                // Retention took what it missed: it is told, then gets what there is.
                let reset = Delivery::Reset {
                    room: room.name.clone(),
                    next: first,
                };
                if !member.send(reset).await {
                    return;
                }
            }
            let done = page.len() < PAGE;
            for message in page {
                cursor = message.seq;
                if !member
                    .send(Delivery::Event(Broadcast::message(message)))
                    .await
                {
                    return;
                }
            }
            if done {
                // Close enough: the ring bridges the rest (or another page is needed).
                let Some(cell) = self.cell(&room.name) else {
                    return;
                };
                let rooms = lock(&self.rooms);
                if !wanted() || !rooms.get(&room.name).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                    return;
                }
                match cell.feed().attach(member.clone(), cursor) {
                    Attach::Live => return,
                    Attach::CatchUpFrom(from) => cursor = from,
                }
            }
        }
    }

    /// Probes every loaded feed's tail in one store call; a feed behind its tail starts a repair
    /// after the hold.
    async fn probe(&self) {
        let cells: Vec<Arc<Cell>> = lock(&self.rooms)
            .values()
            .filter(|c| c.loaded.initialized())
            .cloned()
            .collect();
        if cells.is_empty() {
            return;
        }
        let ids: Vec<i64> = cells.iter().map(|c| c.feed().room.id).collect();
        let tails = match self.store.room_tails(&ids).await {
            Ok(tails) => tails,
            Err(e) => return tracing::debug!(error = %e, "tail probe failed"),
        };
        let last: HashMap<i64, i64> = tails.iter().map(|t| (t.room_id, t.last_seq)).collect();
        let now = Instant::now();
        for cell in cells {
            let due = {
                let mut feed = cell.feed();
                let Some(&seq) = last.get(&feed.room.id) else {
                    continue;
                };
                feed.probed(seq, now)
            };
            if let Some(due) = due {
                self.repair(&cell, due);
            }
        }
    }

    /// A followed session moved: its streams here leave the old room and follow into the new one.
    fn move_followers(
        self: Arc<Self>,
        session: SessionId,
        nick: Nickname,
        room: Option<Room>,
        seen: i64,
    ) {
        let moved = lock(&self.directory).moved(session, &nick, room.as_ref());
        for (outbox, old, generation) in moved {
            if let Some(old) = old {
                let mut rooms = lock(&self.rooms);
                if let Some(cell) = rooms.get(&old)
                    && cell.feed().leave(outbox.id)
                {
                    rooms.remove(&old);
                }
            }
            let position = super::model::Position {
                room: room.as_ref().map(|r| r.name.clone()),
                seen,
            };
            if !outbox.push(Delivery::Moved(position)) {
                continue;
            }
            if let Some(room) = room.clone() {
                let inner = self.clone();
                let wanted = inner.clone().follower_wanted(outbox.clone(), generation);
                let follow = async move {
                    let name = room.name.clone();
                    if let Err(e) = inner.attach(&room, outbox, seen, wanted).await {
                        tracing::warn!(error = %e, room = %name, "a stream could not follow its session");
                    }
                };
                self.tasks.spawn(follow.in_current_span());
            }
        }
    }

    /// Whether a follower is still there and has not moved on since `generation`.
    fn follower_wanted(
        self: Arc<Self>,
        outbox: Outbox,
        generation: u64,
    ) -> impl Fn() -> bool + Send + Sync + 'static {
        move || {
            outbox.is_open()
                && lock(&self.directory).generation(outbox.session, outbox.id) == Some(generation)
        }
    }
}

/// What a repair does next.
enum Next {
    /// Nothing is missing (or nobody is left to repair it for): the repair ends.
    Done,
    /// A gap is still within its hold: look again then.
    Wait(Instant),
    /// Read after `.1` (up to `.2`) in room `.0`.
    Read(Room, (i64, i64)),
}

fn next_step(cell: &Cell) -> Next {
    let mut feed = cell.feed();
    let now = Instant::now();
    match feed.gap() {
        Some(_) if feed.is_empty() => {}
        Some(_) if !feed.gap_due(now) => return Next::Wait(now + HOLD),
        Some(gap) => return Next::Read(feed.room.clone(), gap),
        None => {}
    }
    feed.repairing = false;
    Next::Done
}

/// Puts a page read from the store into the feed. A page that does not start right after the
/// gap's start means the store no longer has those seqs (retention removed them while this pod
/// was behind, or a restore took them): members are told, and the feed moves on.
fn fill(cell: &Cell, room: &Room, gap: (i64, i64), page: Vec<ChatMessage>) {
    let mut feed = cell.feed();
    let first = page.first().map(|m| m.seq);
    if first != Some(gap.0 + 1) {
        let up_to = first.map_or(gap.1, |f| f - 1);
        tracing::warn!(room = %room.name, after = gap.0, up_to, "messages no longer in the store were skipped");
        metrics::counter!(metric::DROPPED, "reason" => "gap_skipped")
            .increment((up_to - gap.0) as u64);
        feed.skip(up_to, Instant::now());
    } else {
        metrics::counter!(metric::GAP_REPAIRS).increment(1);
        tracing::debug!(room = %room.name, after = gap.0, filled = page.len(), "filled a gap from the store");
    }
    feed.fill(page, Instant::now());
}

async fn repair(store: Arc<dyn Store>, cell: Arc<Cell>, due: Instant, shutdown: CancellationToken) {
    let mut wait_until = due;
    let mut delays = backoff();
    loop {
        if shutdown
            .run_until_cancelled(tokio::time::sleep_until(wait_until))
            .await
            .is_none()
        {
            return;
        }
        let (room, gap) = match next_step(&cell) {
            Next::Done => return,
            Next::Wait(until) => {
                wait_until = until;
                continue;
            }
            Next::Read(room, gap) => (room, gap),
        };
        match store.messages_after(room.id, gap.0, PAGE).await {
            Ok(page) => {
                fill(&cell, &room, gap, page);
                delays = backoff();
                // A long gap goes out a page at a time, as fast as the members take it: pushed
                // all at once it would overflow the queues of members who only needed a moment
                // to read it.
                let paced = Instant::now() + PACE_LIMIT;
                while !cell.feed().members_have_room(PAGE) && Instant::now() < paced {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                wait_until = Instant::now();
            }
            Err(e) => {
                tracing::warn!(error = %e, room = %room.name, after = gap.0, "gap repair failed; retrying");
                wait_until = Instant::now() + delays.next().unwrap_or(Duration::from_secs(5));
            }
        }
    }
}
