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

/// Identifies a message across retries: a retried send with the same key is stored once.
pub type MessageKey = uuid::Uuid;

/// A message accepted from a user, not yet stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub key: MessageKey,
    /// The key came from the client (a client message id): an earlier attempt may have stored
    /// it, so a failure of this one cannot say it was not stored.
    pub client_keyed: bool,
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

/// What travels between pods: everything a pod may need to show its receivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Envelope {
    /// A committed chat message: the one kind with a place in an order (its room's seq).
    Message(ChatMessage),
    /// A room event (join, leave, rename), shown to the room's members except the session
    /// it is `about`.
    RoomEvent {
        room: RoomName,
        text: String,
        about: Option<SessionId>,
    },
    /// A direct message.
    Dm {
        from: Nickname,
        to: Nickname,
        content: String,
    },
    /// An HTTP session's nickname or room changed: its event streams, on whatever pod, follow
    /// (from `seen`, the last seq of its room it was shown: its join's history block).
    SessionMoved(SessionRecord),
}

/// Something a receiver is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A chat message in a room.
    Message(ChatMessage),
    /// A room event: `[system] <text>`.
    Room { room: RoomName, text: String },
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
    /// The last seq of `room` shown to the session when it joined (its history block): where its
    /// event streams start, and the lowest position a resuming stream of it can have there.
    #[serde(default)]
    pub seen: i64,
    /// Orders the session's saved records, newer higher: two pods' announcements of its moves
    /// can arrive out of order, and a stream must follow only the newest. 0 from a pod of an
    /// older release, which did not stamp them.
    #[serde(default)]
    pub revision: u64,
    /// The revision at which the session last joined a room (or left one): what a stream's
    /// position belongs to. A rename leaves it.
    #[serde(default)]
    pub joined: u64,
}

impl SessionRecord {
    /// Stamps a changed record newer than the one it was loaded as: the clock in µs, or one
    /// past the last stamp when the clock is behind it. Strictly increasing per session (saves
    /// are compare-and-set), and still increasing after a pod of an older release saved the
    /// record unstamped.
    pub fn revise(&mut self) {
        let now = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000;
        self.revision = (self.revision + 1).max(u64::try_from(now).unwrap_or(0));
    }

    /// Stamps a changed record (see [`SessionRecord::revise`]), and notes a join or leave —
    /// `before` was in another room, or shown another history block — as this revision's.
    pub fn revise_from(&mut self, before: Option<&SessionRecord>) {
        self.revise();
        let moved = before.is_none_or(|b| (&b.room, b.seen) != (&self.room, self.seen));
        if moved {
            self.joined = self.revision;
        }
    }

    /// Names the room visit a stream opened now starts in: its room and the revision of the
    /// join. Kept by the client (a cookie) and sent back when it resumes: a stream resumed with
    /// another mark may have followed its session through rooms since, and its last id may be
    /// another room's.
    pub fn mark(&self) -> String {
        let room = self.room.as_ref().map_or("", |r| r.name.as_str());
        format!("{room}.{}", self.joined)
    }

    /// Whether this record should replace one of revision `held`, seen before: a newer
    /// revision, or an unstamped one (from a pod of an older release: taken as newer, as before
    /// stamps).
    pub fn supersedes(&self, held: u64) -> bool {
        self.revision == 0 || self.revision > held
    }
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

    pub fn message(message: ChatMessage) -> Arc<Self> {
        Broadcast::new(Event::Message(message))
    }

    /// The seq of a chat message; `None` for other events.
    pub fn seq(&self) -> Option<i64> {
        match &self.event {
            Event::Message(m) => Some(m.seq),
            _ => None,
        }
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

/// Where a receiver's view is: a room (or none) and the last seq of it shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub room: Option<RoomName>,
    pub seen: i64,
}

/// One item of a receiver's queue, in the order the receiver must show them.
///
/// Two words: a receiver's queue allocates its slots 32 at a time, on creation, for every
/// connection — the rare kinds are boxed so that the common one sets the size.
#[derive(Debug, Clone)]
pub enum Delivery {
    Event(Arc<Broadcast>),
    /// The receiver's view moved (a followed session changed rooms): show `room` from after `seen`.
    Moved(Box<Position>),
    /// The receiver's position no longer exists (or never did) in its room.
    Reset(Box<StartOver>),
}

/// What follows in `room` starts over at seq `next`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOver {
    pub room: RoomName,
    pub next: i64,
}

impl Delivery {
    pub fn moved(position: Position) -> Delivery {
        Delivery::Moved(Box::new(position))
    }

    pub fn reset(room: RoomName, next: i64) -> Delivery {
        Delivery::Reset(Box::new(StartOver { room, next }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_two_words() {
        assert_eq!(
            std::mem::size_of::<Delivery>(),
            2 * std::mem::size_of::<usize>()
        );
    }

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
        };
        assert_eq!(
            Broadcast::new(joined).line().as_ref(),
            b"[system] bob joined general\n"
        );
    }
}
