//! The chat service: every command's behaviour and reply text, over the `Store` and `Bus` seams.
//!
//! Adapters open a [`Session`] (live for TCP, detached for HTTP), feed it lines with
//! [`Chat::handle`] and write back the [`Reply`]; events for a live session arrive in its
//! [`Inbox`], events for an HTTP session in the [`EventStream`]s that follow it. Nothing here
//! knows about sockets or HTTP.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::command::{self, Command, HELP, Input};
use super::commit::{Ack, Committer};
use super::error::Error;
use super::hub::{Hub, Inbox, Position, queue};
use super::model::{
    Broadcast, ChatMessage, Envelope, Event, NewMessage, Room, SessionId, SessionRecord,
};
use super::names::{Nickname, RoomName, sanitize};
use super::session::{Session, Transport, User, View};
use super::stream::{CatchUp, EventStream, Route};
use crate::bus::{Bus, Holder};
use crate::store::Store;
use crate::telemetry::metric;

/// The most messages a reconnecting stream is replayed; further back, it is told to reset.
const MAX_CATCH_UP: usize = 10_000;
/// Messages read from the store per catch-up query.
const CATCH_UP_PAGE: usize = 1_000;

/// The per-session limits of SPEC §3 and §4.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_chars: usize,
    pub rate_per_sec: NonZeroU32,
    pub rate_burst: NonZeroU32,
    pub send_queue: usize,
    pub session_idle: Duration,
}

/// What an adapter sends back for one line.
pub enum Reply {
    /// Nothing to say (a blank line).
    Nothing,
    /// Text to show the user, possibly several lines.
    Text(String),
    /// A chat message on its way to the store; its echo arrives like any room message.
    Sent(Ack),
    /// Say this, then end the session.
    Quit(String),
}

pub struct Chat {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    hub: Arc<Hub>,
    committer: Committer,
    limits: Limits,
    /// Detached sessions have no state of their own on this pod between requests, so their
    /// limits are kept here, by session id.
    detached_limiter: DefaultKeyedRateLimiter<SessionId>,
    /// Open connections and streams on this pod (for health; the metric has them by transport).
    connections: AtomicUsize,
}

impl Chat {
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        hub: Arc<Hub>,
        committer: Committer,
        limits: Limits,
    ) -> Self {
        let quota = Quota::per_second(limits.rate_per_sec).allow_burst(limits.rate_burst);
        Chat {
            store,
            bus,
            hub,
            committer,
            detached_limiter: DefaultKeyedRateLimiter::keyed(quota),
            connections: AtomicUsize::new(0),
            limits,
        }
    }

    /// Counts a connection or stream opening (+1) or closing (-1) on this pod.
    pub fn count_connection(&self, transport: &'static str, opened: bool) {
        let gauge = metrics::gauge!(metric::CONNECTIONS, "transport" => transport);
        if opened {
            self.connections.fetch_add(1, Ordering::Relaxed);
            gauge.increment(1);
        } else {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            gauge.decrement(1);
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Whether the store and the bus both answer.
    pub async fn ping(&self) -> (Result<(), Error>, Result<(), Error>) {
        let (store, bus) = tokio::join!(self.store.ping(), self.bus.ping());
        (store.map_err(Error::from), bus.map_err(Error::from))
    }

    /// A new, anonymous live session and the queue its events arrive in.
    pub fn open(&self, transport: Transport) -> (Session, Inbox) {
        let (outbox, inbox) = queue(self.limits.send_queue);
        let session = Session::live(
            transport,
            outbox,
            self.limits.rate_per_sec,
            self.limits.rate_burst,
        );
        metrics::gauge!(metric::CONNECTIONS, "transport" => transport.label()).increment(1);
        (session, inbox)
    }

    /// Gives an anonymous live session its first nickname.
    pub async fn login(&self, session: &mut Session, raw_nick: &str) -> Result<(), Error> {
        let nick = Nickname::parse(raw_nick)?;
        let holder = self.holder(session);
        session.user = Some(self.claim_user(session.id, nick, holder).await?);
        if let (Some(user), Some(outbox)) = (&session.user, &session.outbox) {
            self.hub.register_user(&user.nick, session.id, outbox);
        }
        Ok(())
    }

    /// Starts an HTTP session with this nickname and stores it for every replica.
    pub async fn connect(&self, raw_nick: &str) -> Result<SessionRecord, Error> {
        let nick = Nickname::parse(raw_nick)?;
        let id = SessionId::random();
        let user = self
            .claim_user(id, nick, Holder::Session(self.limits.session_idle))
            .await?;
        let record = SessionRecord {
            id,
            user_id: user.id,
            nick: user.nick,
            room: None,
        };
        self.bus
            .save_session(&record, self.limits.session_idle)
            .await?;
        Ok(record)
    }

    /// The HTTP session with this id, for one request.
    pub async fn resume(&self, id: SessionId) -> Result<Session, Error> {
        let record = self
            .bus
            .load_session(id)
            .await?
            .ok_or(Error::UnknownSession)?;
        Ok(Session::detached(record))
    }

    /// Stores a detached session's state after a request, which also counts as activity.
    pub async fn save(&self, session: &Session) -> Result<(), Error> {
        if let Some(record) = session.record() {
            self.bus
                .save_session(&record, self.limits.session_idle)
                .await?;
        }
        Ok(())
    }

    /// Keeps an HTTP session alive while a stream of it is open. False when it has ended.
    pub async fn touch(&self, id: SessionId) -> Result<bool, Error> {
        Ok(self.bus.touch_session(id, self.limits.session_idle).await?)
    }

    /// What keeps the session's nickname and presence alive: its connection on this pod, or for
    /// an HTTP session, its own activity on any pod.
    fn holder(&self, session: &Session) -> Holder {
        if session.outbox.is_some() {
            Holder::Pod
        } else {
            Holder::Session(self.limits.session_idle)
        }
    }

    async fn claim_user(
        &self,
        session: SessionId,
        nick: Nickname,
        holder: Holder,
    ) -> Result<User, Error> {
        if !self.bus.claim_nick(&nick, session, holder).await? {
            return Err(Error::NicknameInUse(nick.to_string()));
        }
        match self.store.upsert_user(&nick).await {
            Ok(id) => Ok(User { id, nick }),
            Err(e) => {
                self.bus.release_nick(&nick, session).await?;
                Err(e.into())
            }
        }
    }

    /// Ends a session: leaves its room (telling the others), frees its nickname and, for an
    /// HTTP session, forgets it.
    pub async fn close(&self, mut session: Session) {
        if session.outbox.is_some() {
            metrics::gauge!(metric::CONNECTIONS, "transport" => session.transport.label())
                .decrement(1);
        } else if let Err(e) = self.bus.delete_session(session.id).await {
            tracing::warn!(error = %e, session = %session.id, "forgetting the session failed");
        }
        if let Err(e) = self.leave_room(&mut session).await {
            tracing::warn!(error = %e, session = %session.id, "leaving the room on close failed");
        }
        if let Some(user) = session.user.take() {
            self.hub.unregister_user(&user.nick, session.id);
            if let Err(e) = self.bus.release_nick(&user.nick, session.id).await {
                tracing::warn!(error = %e, nick = %user.nick, "releasing the nickname failed");
            }
        }
    }

    /// Closes HTTP sessions idle for longer than SESSION_IDLE_TIMEOUT, every `every`, until
    /// `shutdown`. Any pod may do it; the bus hands each expired session to one of them.
    pub async fn run_session_expiry(
        self: Arc<Self>,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
            self.detached_limiter.retain_recent();
            match self.bus.take_expired_sessions().await {
                Ok(expired) => {
                    for record in expired {
                        tracing::info!(session = %record.id, nick = %record.nick, "HTTP session expired");
                        self.close(Session::detached(record)).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "expiring sessions failed"),
            }
        }
    }

    /// Handles one line from a logged-in session.
    pub async fn handle(&self, session: &mut Session, line: &str) -> Result<Reply, Error> {
        let Some(input) = command::parse(&sanitize(line)) else {
            return Ok(Reply::Nothing);
        };
        let limited = match &session.limiter {
            Some(limiter) => limiter.check().is_err(),
            None => self.detached_limiter.check_key(&session.id).is_err(),
        };
        if limited {
            metrics::counter!(metric::DROPPED, "reason" => "rate_limited").increment(1);
            return Err(Error::RateLimited);
        }
        match input? {
            Input::Chat(content) => self.send(session, content).await.map(Reply::Sent),
            Input::Command(command) => {
                let name = command.name();
                let started = Instant::now();
                let reply = self.run(session, command).await;
                metrics::histogram!(metric::COMMAND_DURATION, "command" => name)
                    .record(started.elapsed().as_secs_f64());
                reply
            }
        }
    }

    /// Queues a chat message for the session's room; the ack resolves once it is committed.
    async fn send(&self, session: &Session, content: String) -> Result<Ack, Error> {
        let (Some(user), Some(room)) = (&session.user, &session.room) else {
            return Err(Error::NotInRoom);
        };
        if content.chars().count() > self.limits.max_message_chars {
            return Err(Error::MessageTooLong);
        }
        metrics::counter!(metric::MESSAGES, "transport" => session.transport.label()).increment(1);
        let message = NewMessage {
            room_id: room.id,
            room: room.name.clone(),
            user_id: user.id,
            user: user.nick.clone(),
            content,
            created_at: OffsetDateTime::now_utc(),
        };
        Ok(self.committer.submit(message).await)
    }

    async fn run(&self, session: &mut Session, command: Command) -> Result<Reply, Error> {
        let text = match command {
            Command::Help => help(),
            Command::Quit => return Ok(Reply::Quit("Goodbye!".into())),
            Command::Nick(nick) => self.rename(session, nick).await?,
            Command::List => self.list(session).await?,
            Command::Rooms => self.rooms().await?,
            Command::Create(name) => {
                let room = self
                    .store
                    .create_room(&name)
                    .await?
                    .ok_or(Error::RoomExists(name.to_string()))?;
                let name = room.name.clone();
                format!(
                    "Created and joined room: {name}\n{}",
                    self.enter_room(session, room).await?
                )
            }
            Command::Join(name) => {
                let room = self
                    .store
                    .find_room(&name)
                    .await?
                    .ok_or(Error::NoSuchRoom(name.to_string()))?;
                let name = room.name.clone();
                format!(
                    "Joined room: {name}\n{}",
                    self.enter_room(session, room).await?
                )
            }
            Command::Leave => {
                let room = self.leave_room(session).await?.ok_or(Error::NotInRoom)?;
                self.publish_state(session).await?;
                format!("Left room: {}", room.name)
            }
            Command::Dm { to, content } => self.dm(session, to, content).await?,
        };
        Ok(Reply::Text(text))
    }

    async fn rename(&self, session: &mut Session, new: Nickname) -> Result<String, Error> {
        let old = session.user.clone().ok_or(Error::UnknownSession)?;
        let holder = self.holder(session);
        if !self.bus.claim_nick(&new, session.id, holder).await? {
            return Err(Error::NicknameInUse(new.to_string()));
        }
        let id = self.store.upsert_user(&new).await?;
        if let Some(room) = &session.room {
            // Before the release: leaving re-records the name as online, releasing then drops it.
            self.bus.exit_room(&room.name, &old.nick, holder).await?;
        }
        if old.nick != new {
            self.bus.release_nick(&old.nick, session.id).await?;
        }
        if let Some(outbox) = &session.outbox {
            self.hub.unregister_user(&old.nick, session.id);
            self.hub.register_user(&new, session.id, outbox);
        }
        session.user = Some(User {
            id,
            nick: new.clone(),
        });
        if let Some(room) = &session.room {
            self.bus.enter_room(&room.name, &new, holder).await?;
            self.announce(
                session,
                &room.name,
                format!("{} is now known as {new}", old.nick),
            )
            .await?;
        }
        self.publish_state(session).await?;
        Ok(format!("You are now known as {new}"))
    }

    async fn list(&self, session: &Session) -> Result<String, Error> {
        let (label, users) = match &session.room {
            Some(room) => (
                format!("Users in {}", room.name),
                self.bus.room_members(&room.name).await?,
            ),
            None => ("Online users".to_owned(), self.bus.online_users().await?),
        };
        let mut names: Vec<&str> = users.iter().map(Nickname::as_str).collect();
        names.sort_by_key(|n| n.to_ascii_lowercase());
        Ok(format!("{label}: {}", names.join(", ")))
    }

    /// Every room with how many are in it now, by name.
    pub async fn room_list(&self) -> Result<Vec<(Room, usize)>, Error> {
        let rooms = self.store.list_rooms().await?;
        let counts = self.bus.room_counts().await?;
        Ok(rooms
            .into_iter()
            .map(|room| {
                let online = counts.get(&room.name).copied().unwrap_or(0);
                (room, online)
            })
            .collect())
    }

    async fn rooms(&self) -> Result<String, Error> {
        let rooms = self.room_list().await?;
        if rooms.is_empty() {
            return Ok("No rooms yet. Use /create <room>".into());
        }
        let mut text = String::from("Available rooms:");
        for (room, online) in rooms {
            text.push_str(&format!("\n  {} ({online} online)", room.name));
        }
        Ok(text)
    }

    async fn dm(&self, session: &Session, to: Nickname, content: String) -> Result<String, Error> {
        let from = session.nick().ok_or(Error::UnknownSession)?.clone();
        if content.chars().count() > self.limits.max_message_chars {
            return Err(Error::MessageTooLong);
        }
        if from == to {
            return Err(Error::DmToSelf);
        }
        let to = self
            .bus
            .find_online(&to)
            .await?
            .ok_or(Error::UnknownUser(to.to_string()))?;
        let reply = format!("[DM to {to}] {content}");
        self.bus
            .publish(Envelope::Event(Broadcast::new(Event::Dm {
                from,
                to,
                content,
            })))
            .await?;
        Ok(reply)
    }

    /// Moves the session into `room` (out of its previous one) and renders the history block.
    async fn enter_room(&self, session: &mut Session, room: Room) -> Result<String, Error> {
        let user = session.user.clone().ok_or(Error::UnknownSession)?;
        if session.room.as_ref() != Some(&room) {
            self.leave_room(session).await?;
            // Route live messages to the session before reading history, so nothing committed in
            // between is missed; the view drops what the history block already showed.
            if let Some(outbox) = &session.outbox
                && self.hub.enter_room(&room.name, session.id, outbox)
            {
                self.bus.watch_room(&room.name).await?;
            }
            session.room = Some(room.clone());
            session.view.move_to(Some(room.name.clone()));
            self.bus
                .enter_room(&room.name, &user.nick, self.holder(session))
                .await?;
            self.store.add_member(room.id, user.id).await?;
            self.announce(
                session,
                &room.name,
                format!("{} joined {}", user.nick, room.name),
            )
            .await?;
            self.publish_state(session).await?;
        }
        let history = self.history(&room).await?;
        if let Some(last) = history.last() {
            session.view.shown_up_to(last.seq);
        }
        Ok(render_history(&history))
    }

    /// Takes the session out of its room, telling the others. Returns the room it left.
    async fn leave_room(&self, session: &mut Session) -> Result<Option<Room>, Error> {
        let Some(room) = session.room.take() else {
            return Ok(None);
        };
        session.view.move_to(None);
        if session.outbox.is_some() && self.hub.exit_room(&room.name, session.id) {
            self.bus.unwatch_room(&room.name).await?;
        }
        if let Some(nick) = session.nick().cloned() {
            self.bus
                .exit_room(&room.name, &nick, self.holder(session))
                .await?;
            self.announce(session, &room.name, format!("{nick} left {}", room.name))
                .await?;
        }
        Ok(Some(room))
    }

    /// Tells the pods holding a detached session's streams where it is now.
    async fn publish_state(&self, session: &Session) -> Result<(), Error> {
        let (None, Some(nick)) = (&session.outbox, session.nick()) else {
            return Ok(());
        };
        let state = Envelope::SessionState {
            session: session.id,
            nick: nick.clone(),
            room: session.room.as_ref().map(|r| r.name.clone()),
            seen: session.view.seen(),
        };
        Ok(self.bus.publish(state).await?)
    }

    /// Tells a room's other members about something this session did.
    async fn announce(
        &self,
        session: &Session,
        room: &RoomName,
        text: String,
    ) -> Result<(), Error> {
        let event = Event::Room {
            room: room.clone(),
            text,
            about: Some(session.id),
        };
        self.bus
            .publish(Envelope::Event(Broadcast::new(event)))
            .await?;
        Ok(())
    }

    pub async fn find_room(&self, name: &RoomName) -> Result<Room, Error> {
        self.store
            .find_room(name)
            .await?
            .ok_or(Error::NoSuchRoom(name.to_string()))
    }

    /// The last messages of a room, oldest first: from the pod's cache when warm, else the store.
    pub async fn history(&self, room: &Room) -> Result<Vec<ChatMessage>, Error> {
        let cache = self.hub.history();
        if let Some(messages) = cache.get(&room.name) {
            metrics::counter!(metric::HISTORY_REQUESTS, "result" => "hit").increment(1);
            return Ok(messages);
        }
        metrics::counter!(metric::HISTORY_REQUESTS, "result" => "miss").increment(1);
        let messages = self
            .store
            .messages_before(room.id, None, cache.size())
            .await?;
        cache.fill(&room.name, &messages);
        Ok(messages)
    }

    /// A page of a room's history: up to `limit` messages before `before`, oldest first.
    pub async fn history_page(
        &self,
        room: &Room,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, Error> {
        Ok(self.store.messages_before(room.id, before, limit).await?)
    }

    /// A stream of one room's events; with `after`, first every message since that seq.
    pub async fn open_room_stream(
        &self,
        room: &Room,
        after: Option<i64>,
    ) -> Result<EventStream, Error> {
        let (outbox, inbox) = queue(self.limits.send_queue);
        let stream = SessionId::random();
        if self.hub.enter_room(&room.name, stream, &outbox) {
            self.bus.watch_room(&room.name).await?;
        }
        let route = Route::Room {
            hub: self.hub.clone(),
            room: room.name.clone(),
            stream,
        };
        let (_, moves) = watch::channel(Position {
            room: Some(room.name.clone()),
            seen: 0,
        });
        self.finish_stream(Some(room), after, inbox, moves, route)
            .await
    }

    /// A stream of everything an HTTP session would see on TCP: its room's messages and events
    /// (following it from room to room), and its direct messages.
    pub async fn open_session_stream(
        &self,
        record: &SessionRecord,
        after: Option<i64>,
    ) -> Result<EventStream, Error> {
        let (outbox, inbox) = queue(self.limits.send_queue);
        let stream = SessionId::random();
        let room_name = record.room.as_ref().map(|r| &r.name);
        let moves = self
            .hub
            .follow(record.id, stream, &record.nick, room_name, &outbox);
        if let Some(room) = room_name {
            self.bus.watch_room(room).await?;
        }
        let route = Route::Session {
            hub: self.hub.clone(),
            session: record.id,
            stream,
        };
        self.finish_stream(record.room.as_ref(), after, inbox, moves, route)
            .await
    }

    async fn finish_stream(
        &self,
        room: Option<&Room>,
        after: Option<i64>,
        inbox: Inbox,
        moves: watch::Receiver<Position>,
        route: Route,
    ) -> Result<EventStream, Error> {
        let mut view = View::new(room.map(|r| r.name.clone()));
        let catch_up = match (room, after) {
            (Some(room), Some(after)) => self.catch_up(room, after).await?,
            _ => CatchUp::default(),
        };
        if let Some(last) = catch_up.messages.last() {
            view.shown_up_to(last.seq);
        } else if let Some(after) = after {
            view.shown_up_to(after);
        }
        Ok(EventStream {
            catch_up,
            inbox,
            view,
            moves,
            _route: route,
        })
    }

    /// Every message of `room` after `after`, or the newest MAX_CATCH_UP with `reset` when the
    /// room's history no longer reaches back that far.
    async fn catch_up(&self, room: &Room, after: i64) -> Result<CatchUp, Error> {
        let mut messages = self
            .store
            .messages_after(room.id, after, CATCH_UP_PAGE)
            .await?;
        let reset = messages.first().is_some_and(|m| m.seq > after + 1);
        while messages.len() < MAX_CATCH_UP {
            let Some(last) = messages.last().map(|m| m.seq) else {
                break;
            };
            let page = self
                .store
                .messages_after(room.id, last, CATCH_UP_PAGE)
                .await?;
            if page.is_empty() {
                break;
            }
            messages.extend(page);
        }
        if messages.len() >= MAX_CATCH_UP {
            let newest = self
                .store
                .messages_before(room.id, None, MAX_CATCH_UP)
                .await?;
            return Ok(CatchUp {
                messages: newest,
                reset: true,
            });
        }
        Ok(CatchUp { messages, reset })
    }
}

fn help() -> String {
    let mut text = String::from("Available commands:");
    for (usage, what) in HELP {
        text.push_str(&format!("\n  {usage:<22} {what}"));
    }
    text
}

fn render_history(messages: &[ChatMessage]) -> String {
    let mut text = String::from("--- Recent Messages ---\n");
    if messages.is_empty() {
        text.push_str("No recent messages\n");
    }
    for m in messages {
        text.push_str(&m.line());
        text.push('\n');
    }
    text.push_str("---");
    text
}
