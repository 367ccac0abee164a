//! The chat service: every command's behaviour and reply text, over the `Store` and `Bus` seams.
//!
//! Adapters open a [`Session`], feed it lines with [`Chat::handle`] and write back the [`Reply`];
//! events for the session arrive in its [`Inbox`]. Nothing here knows about sockets or HTTP.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use time::OffsetDateTime;

use super::command::{self, Command, HELP, Input};
use super::commit::{Ack, Committer};
use super::error::Error;
use super::hub::{Hub, Inbox, queue};
use super::model::{Broadcast, ChatMessage, Event, NewMessage, Room};
use super::names::{Nickname, RoomName, sanitize};
use super::session::{Session, Transport, User};
use crate::bus::Bus;
use crate::store::Store;
use crate::telemetry::metric;

/// The per-session limits of SPEC §3.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_chars: usize,
    pub rate_per_sec: NonZeroU32,
    pub rate_burst: NonZeroU32,
    pub send_queue: usize,
}

/// What an adapter sends back for one line.
pub enum Reply {
    /// Nothing to say (a blank line).
    Nothing,
    /// Text to show the user, possibly several lines.
    Text(String),
    /// A chat message on its way to the store; its echo arrives through the session's inbox.
    Sent(Ack),
    /// Say this, then close the connection.
    Quit(String),
}

pub struct Chat {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    hub: Arc<Hub>,
    committer: Committer,
    limits: Limits,
}

impl Chat {
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        hub: Arc<Hub>,
        committer: Committer,
        limits: Limits,
    ) -> Self {
        Chat {
            store,
            bus,
            hub,
            committer,
            limits,
        }
    }

    /// A new, anonymous session and the queue its events arrive in.
    pub fn open(&self, transport: Transport) -> (Session, Inbox) {
        let (outbox, inbox) = queue(self.limits.send_queue);
        let session = Session::new(
            transport,
            outbox,
            self.limits.rate_per_sec,
            self.limits.rate_burst,
        );
        metrics::gauge!(metric::CONNECTIONS, "transport" => transport.label()).increment(1);
        (session, inbox)
    }

    /// Gives an anonymous session its first nickname.
    pub async fn login(&self, session: &mut Session, raw_nick: &str) -> Result<(), Error> {
        let nick = Nickname::parse(raw_nick)?;
        self.claim(session, &nick).await?;
        let id = match self.store.upsert_user(&nick).await {
            Ok(id) => id,
            Err(e) => {
                self.bus.release_nick(&nick, session.id).await?;
                return Err(e.into());
            }
        };
        self.hub.register_user(&nick, session.id, &session.outbox);
        session.user = Some(User { id, nick });
        Ok(())
    }

    /// Ends a session: leaves its room (telling the others) and frees its nickname.
    pub async fn close(&self, mut session: Session) {
        metrics::gauge!(metric::CONNECTIONS, "transport" => session.transport.label()).decrement(1);
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

    /// Handles one line from a logged-in session.
    pub async fn handle(&self, session: &mut Session, line: &str) -> Result<Reply, Error> {
        let Some(input) = command::parse(&sanitize(line)) else {
            return Ok(Reply::Nothing);
        };
        if session.limiter.check().is_err() {
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
    pub async fn send(&self, session: &Session, content: String) -> Result<Ack, Error> {
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
                format!("Left room: {}", room.name)
            }
            Command::Dm { to, content } => self.dm(session, to, content).await?,
        };
        Ok(Reply::Text(text))
    }

    async fn claim(&self, session: &Session, nick: &Nickname) -> Result<(), Error> {
        if !self.bus.claim_nick(nick, session.id).await? {
            return Err(Error::NicknameInUse(nick.to_string()));
        }
        Ok(())
    }

    async fn rename(&self, session: &mut Session, new: Nickname) -> Result<String, Error> {
        let Some(old) = session.user.clone() else {
            self.login(session, new.as_str()).await?;
            return Ok(format!("You are now known as {new}"));
        };
        self.claim(session, &new).await?;
        let id = self.store.upsert_user(&new).await?;
        if old.nick != new {
            self.bus.release_nick(&old.nick, session.id).await?;
        }
        self.hub.unregister_user(&old.nick, session.id);
        self.hub.register_user(&new, session.id, &session.outbox);
        session.user = Some(User {
            id,
            nick: new.clone(),
        });
        if let Some(room) = &session.room {
            self.bus.exit_room(&room.name, &old.nick).await?;
            self.bus.enter_room(&room.name, &new).await?;
            self.announce(
                session,
                &room.name,
                format!("{} is now known as {new}", old.nick),
            )
            .await?;
        }
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

    async fn rooms(&self) -> Result<String, Error> {
        let rooms = self.store.list_rooms().await?;
        if rooms.is_empty() {
            return Ok("No rooms yet. Use /create <room>".into());
        }
        let counts = self.bus.room_counts().await?;
        let mut text = String::from("Available rooms:");
        for room in rooms {
            let online = counts.get(&room.name).copied().unwrap_or(0);
            text.push_str(&format!("\n  {} ({online} online)", room.name));
        }
        Ok(text)
    }

    async fn dm(&self, session: &Session, to: Nickname, content: String) -> Result<String, Error> {
        let from = session
            .nick()
            .ok_or(Error::UnknownUser(to.to_string()))?
            .clone();
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
            .publish(Broadcast::new(Event::Dm { from, to, content }))
            .await?;
        Ok(reply)
    }

    /// Moves the session into `room` (out of its previous one) and renders the history block.
    async fn enter_room(&self, session: &mut Session, room: Room) -> Result<String, Error> {
        let nick = session.nick().ok_or(Error::NotInRoom)?.clone();
        if session.room.as_ref() != Some(&room) {
            self.leave_room(session).await?;
            // Route live messages to the session before reading history, so nothing committed in
            // between is missed; `Session::admit` drops what the history block already showed.
            if self.hub.enter_room(&room.name, session.id, &session.outbox) {
                self.bus.watch_room(&room.name).await?;
            }
            session.room = Some(room.clone());
            session.cursor = 0;
            self.bus.enter_room(&room.name, &nick).await?;
            if let Some(user) = &session.user {
                self.store.add_member(room.id, user.id).await?;
            }
            self.announce(session, &room.name, format!("{nick} joined {}", room.name))
                .await?;
        }
        let history = self.history(&room).await?;
        session.cursor = session.cursor.max(history.last().map_or(0, |m| m.seq));
        Ok(render_history(&history))
    }

    /// Takes the session out of its room, telling the others. Returns the room it left.
    async fn leave_room(&self, session: &mut Session) -> Result<Option<Room>, Error> {
        let Some(room) = session.room.take() else {
            return Ok(None);
        };
        if self.hub.exit_room(&room.name, session.id) {
            self.bus.unwatch_room(&room.name).await?;
        }
        if let Some(nick) = session.nick().cloned() {
            self.bus.exit_room(&room.name, &nick).await?;
            self.announce(session, &room.name, format!("{nick} left {}", room.name))
                .await?;
        }
        Ok(Some(room))
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
        self.bus.publish(Broadcast::new(event)).await?;
        Ok(())
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
        text.push_str(&Event::Message(m.clone()).text());
        text.push('\n');
    }
    text.push_str("---");
    text
}
