//! Rooms: creating, joining and leaving them (each with its history block and the room events
//! the others see), and listing who is where.

use super::Chat;
use crate::core::error::Error;
use crate::core::model::{ChatMessage, Envelope, Event, Room};
use crate::core::names::{Nickname, RoomName};
use crate::core::session::Session;

impl Chat {
    pub(super) async fn create(
        &self,
        session: &mut Session,
        name: RoomName,
    ) -> Result<String, Error> {
        let room = self
            .store
            .create_room(&name)
            .await?
            .ok_or(Error::RoomExists(name.to_string()))?;
        let history = self.enter(session, room.clone()).await?;
        Ok(format!("Created and joined room: {}\n{history}", room.name))
    }

    pub(super) async fn join(
        &self,
        session: &mut Session,
        name: RoomName,
    ) -> Result<String, Error> {
        let room = self.find_room(&name).await?;
        let history = self.enter(session, room.clone()).await?;
        Ok(format!("Joined room: {}\n{history}", room.name))
    }

    pub(super) async fn leave(&self, session: &mut Session) -> Result<String, Error> {
        let room = self.leave_room(session).await.ok_or(Error::NotInRoom)?;
        Ok(format!("Left room: {}", room.name))
    }

    /// Moves the session into `room` (out of its previous one) and renders its history block:
    /// for a live session, the block and its membership are one step, so it is shown every
    /// message after the block exactly once.
    async fn enter(&self, session: &mut Session, room: Room) -> Result<String, Error> {
        let user = session.user.clone().ok_or(Error::UnknownSession)?;
        if session.room.as_ref() == Some(&room) {
            // Already there: the block again, nothing else changes. A live session's block ends
            // where its view is: what came after is in its queue and is shown next, once.
            let history = match &session.outbox {
                Some(_) => {
                    let seen = session.view.seen();
                    self.feeds.history_until(&room, seen).await?
                }
                None => self.feeds.history(&room).await?.0,
            };
            return Ok(render_history(&history));
        }
        self.store.add_member(room.id, user.id).await?;
        self.leave_room(session).await;
        let (history, seen) = match &session.outbox {
            Some(outbox) => {
                let (history, seen) = self.feeds.join(&room, outbox.clone()).await?;
                let messages = history
                    .iter()
                    .filter_map(|b| match &b.event {
                        Event::Message(m) => Some(m.clone()),
                        _ => None,
                    })
                    .collect();
                (messages, seen)
            }
            None => self.feeds.history(&room).await?,
        };
        session.view.move_to(Some(room.name.clone()), seen);
        session.room = Some(room.clone());
        self.presence
            .set_room(
                &user.nick,
                session.id,
                Some(&room.name),
                self.holder(session),
            )
            .await;
        self.announce(
            session,
            &room.name,
            format!("{} joined {}", user.nick, room.name),
        );
        Ok(render_history(&history))
    }

    /// Takes the session out of its room, telling the others. Returns the room it left.
    pub(super) async fn leave_room(&self, session: &mut Session) -> Option<Room> {
        let room = session.room.take()?;
        session.view.move_to(None, 0);
        if let Some(outbox) = &session.outbox {
            self.feeds.leave(&room.name, outbox.id);
        }
        if let Some(nick) = session.nick().cloned() {
            self.presence
                .set_room(&nick, session.id, None, self.holder(session))
                .await;
            self.announce(session, &room.name, format!("{nick} left {}", room.name));
        }
        Some(room)
    }

    /// Tells a room's other members, on every pod, about something this session did. Best effort:
    /// a room event lost to a bus outage is logged and counted, not a failure of the command.
    pub(super) fn announce(&self, session: &Session, room: &RoomName, text: String) {
        let event = Envelope::RoomEvent {
            room: room.clone(),
            text,
            about: Some(session.id),
        };
        self.feeds.deliver(event.clone());
        self.publisher.publish_all([event]);
    }

    pub(super) async fn list(&self, session: &Session) -> Result<String, Error> {
        let (label, users) = match &session.room {
            Some(room) => (
                format!("Users in {}", room.name),
                self.presence.room_members(&room.name).await?,
            ),
            None => (
                "Online users".to_owned(),
                self.presence.online_users().await?,
            ),
        };
        let mut names: Vec<&str> = users.iter().map(Nickname::as_str).collect();
        names.sort_by_key(|n| n.to_ascii_lowercase());
        names.dedup_by_key(|n| n.to_ascii_lowercase());
        Ok(format!("{label}: {}", names.join(", ")))
    }

    /// Every room with how many are in it now, by name.
    pub async fn room_list(&self) -> Result<Vec<(Room, usize)>, Error> {
        let rooms = self.store.list_rooms().await?;
        let counts = self.presence.room_counts().await?;
        Ok(rooms
            .into_iter()
            .map(|room| {
                let online = counts.get(&room.name).copied().unwrap_or(0);
                (room, online)
            })
            .collect())
    }

    pub(super) async fn rooms(&self) -> Result<String, Error> {
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

    pub async fn find_room(&self, name: &RoomName) -> Result<Room, Error> {
        self.store
            .find_room(name)
            .await?
            .ok_or(Error::NoSuchRoom(name.to_string()))
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
