//! The values that flow through the core: rooms, stored chat messages and the events delivered to
//! sessions. Events are shared (`Arc`) between receivers and render their text line once.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::names::{Nickname, RoomName};

/// Identifies one connected session (a TCP connection or an HTTP session), cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionId(pub uuid::Uuid);

impl SessionId {
    /// 128 random bits: session ids are bearer tokens, so all of them are unguessable.
    pub fn random() -> Self {
        SessionId(uuid::Uuid::from_u128(rand::random()))
    }

    /// Parses the 32-hex-digit form (hyphenated UUIDs are accepted too).
    pub fn parse(raw: &str) -> Option<Self> {
        uuid::Uuid::try_parse(raw.trim()).ok().map(SessionId)
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.simple().fmt(f)
    }
}

pub type UserId = i64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    pub id: i64,
    pub name: RoomName,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A message accepted from a user, not yet stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room_id: i64,
    pub room: RoomName,
    pub user_id: UserId,
    pub user: Nickname,
    pub content: String,
    /// When the server accepted it: the start of the delivery-latency measurement.
    pub created_at: OffsetDateTime,
}

/// A message committed to the store, with its place (`seq`) in its room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub id: i64,
    pub room: RoomName,
    pub seq: i64,
    pub user: Nickname,
    pub content: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl ChatMessage {
    /// `[<room>] <nick>: <content>`: how the message reads on TCP, in history blocks and in
    /// `/api/command` replies.
    pub fn line(&self) -> String {
        format!("[{}] {}: {}", self.room, self.user, self.content)
    }

    pub fn stored(new: NewMessage, id: i64, seq: i64) -> Self {
        ChatMessage {
            id,
            room: new.room,
            seq,
            user: new.user,
            content: new.content,
            created_at: new.created_at,
        }
    }
}

/// Something a session sees without having asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A chat message in a room.
    Message(ChatMessage),
    /// A room event (join, leave, rename), shown to the room's members except `about`.
    Room {
        room: RoomName,
        text: String,
        about: Option<SessionId>,
    },
    /// A direct message, as its recipient sees it.
    Dm {
        from: Nickname,
        to: Nickname,
        content: String,
    },
    /// A notice from the server itself.
    Notice(String),
}

impl Event {
    /// The line a TCP user reads (without line ending); `/api/command` replies use the same words.
    pub fn text(&self) -> String {
        match self {
            Event::Message(m) => m.line(),
            Event::Room { text, .. } | Event::Notice(text) => format!("[system] {text}"),
            Event::Dm { from, content, .. } => format!("[DM from {from}] {content}"),
        }
    }
}

/// An HTTP session as every replica sees it: kept in the shared session store between requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    pub user_id: UserId,
    pub nick: Nickname,
    pub room: Option<Room>,
}

/// What the bus carries between pods.
#[derive(Debug, Clone)]
pub enum Envelope {
    /// Something sessions see.
    Event(Arc<Broadcast>),
    /// An HTTP session's nickname or room changed: pods holding its event streams re-route them.
    /// `seen` is the last seq of `room` the session was shown (its join's history block): its
    /// streams carry on from the next one.
    SessionState {
        session: SessionId,
        nick: Nickname,
        room: Option<RoomName>,
        seen: i64,
    },
}

/// An event on its way to many receivers.
///
/// Shared by reference: a room of N members costs one allocation and one rendering per message
/// and wire format, not N.
#[derive(Debug)]
pub struct Broadcast {
    pub event: Event,
    line: OnceLock<Bytes>,
    sse: OnceLock<Bytes>,
}

impl Broadcast {
    pub fn new(event: Event) -> Arc<Self> {
        Arc::new(Broadcast {
            event,
            line: OnceLock::new(),
            sse: OnceLock::new(),
        })
    }

    /// The event as a Server-Sent Events frame, rendered by `render` for the first receiver.
    pub fn sse_frame(&self, render: impl FnOnce(&Event) -> Bytes) -> &Bytes {
        self.sse.get_or_init(|| render(&self.event))
    }

    /// The event's text line with its LF, rendered by the first receiver that needs it.
    pub fn line(&self) -> &Bytes {
        self.line.get_or_init(|| {
            let mut text = self.event.text();
            text.push('\n');
            Bytes::from(text)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_render_the_spec_line_formats() {
        let nick = |n| Nickname::parse(n).unwrap();
        let room = RoomName::parse("general").unwrap();
        let msg = ChatMessage {
            id: 1,
            room: room.clone(),
            seq: 1,
            user: nick("alice"),
            content: "Hello world!".into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(Event::Message(msg).text(), "[general] alice: Hello world!");
        let dm = Event::Dm {
            from: nick("bob"),
            to: nick("alice"),
            content: "hi".into(),
        };
        assert_eq!(dm.text(), "[DM from bob] hi");
        let joined = Event::Room {
            room,
            text: "bob joined general".into(),
            about: None,
        };
        assert_eq!(
            Broadcast::new(joined).line().as_ref(),
            b"[system] bob joined general\n"
        );
    }
}
