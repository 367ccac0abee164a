//! One user's conversation state, whatever the transport: who they are, which room they are in,
//! their rate limiter, and what of their room they have been shown.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota};
use tokio_util::sync::CancellationToken;

use super::model::{
    Broadcast, Delivery, Event, Position, Room, SessionId, SessionRecord, StartOver, UserId,
};
use super::names::{Nickname, RoomName};
use super::outbox::Outbox;

/// Which adapter a session came through; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Http,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Http => "http",
        }
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub nick: Nickname,
}

/// What a receiver is looking at: the room whose events it shows, and the highest seq of it
/// shown (history or live) — its cursor. What reaches it twice, or from a room it has left since
/// the event was queued, is not shown.
#[derive(Debug, Default, Clone)]
pub struct View {
    room: Option<RoomName>,
    cursor: i64,
}

/// What a receiver shows for one delivery.
#[derive(Debug)]
pub enum Show<'a> {
    Event(&'a Arc<Broadcast>),
    /// It now shows another room (or none), from after `seen`.
    Moved(&'a Position),
    /// Its place in the room is gone: what follows starts over.
    Reset {
        room: &'a RoomName,
        next: i64,
    },
}

impl View {
    pub fn new(room: Option<RoomName>, cursor: i64) -> Self {
        View { room, cursor }
    }

    pub fn room(&self) -> Option<&RoomName> {
        self.room.as_ref()
    }

    /// The last seq of the current room shown.
    pub fn seen(&self) -> i64 {
        self.cursor
    }

    /// Switches to another room (or none), having shown it up to `seen`.
    pub fn move_to(&mut self, room: Option<RoomName>, seen: i64) {
        self.room = room;
        self.cursor = seen;
    }

    /// What to show for a delivery, if anything; the view moves along with it.
    pub fn admit<'a>(&mut self, delivery: &'a Delivery) -> Option<Show<'a>> {
        match delivery {
            Delivery::Event(event) => match &event.event {
                Event::Message(m) => {
                    if Some(&m.room) != self.room.as_ref() || m.seq <= self.cursor {
                        return None;
                    }
                    self.cursor = m.seq;
                    Some(Show::Event(event))
                }
                Event::Room { room, .. } => {
                    (Some(room) == self.room.as_ref()).then_some(Show::Event(event))
                }
                Event::Dm { .. } | Event::Notice(_) => Some(Show::Event(event)),
            },
            Delivery::Moved(position) => {
                self.move_to(position.room.clone(), position.seen);
                Some(Show::Moved(position))
            }
            Delivery::Reset(start) => {
                let StartOver { room, next } = &**start;
                if Some(room) != self.room.as_ref() {
                    return None;
                }
                self.cursor = next - 1;
                Some(Show::Reset { room, next: *next })
            }
        }
    }
}

pub struct Session {
    pub id: SessionId,
    pub transport: Transport,
    pub(super) user: Option<User>,
    pub(super) room: Option<Room>,
    pub(super) view: View,
    /// Live sessions (TCP) receive their events here, on this pod. Detached sessions (HTTP) have
    /// none: their events go to whatever streams follow them, on any pod.
    pub(super) outbox: Option<Outbox>,
    /// A live session's own limiter; detached sessions share the pod's keyed one.
    pub(super) limiter: Option<DefaultDirectRateLimiter>,
    /// A detached session's stored version, for its compare-and-set save.
    pub(super) version: u64,
    /// A detached session's record's `(revision, joined)`, as loaded (see
    /// [`SessionRecord::revision`]).
    pub(super) stamps: (u64, u64),
    /// A live session: cancelled when the pod can no longer vouch for its nickname (the session
    /// is kicked) or when the pod stops — one token, a child of the pod's, so that a connection
    /// waits on one signal of its own instead of also polling the one every connection shares.
    pub ended: CancellationToken,
    /// A detached session: nicknames it gave up during this request, released once it is saved.
    pub(super) given_up: Vec<Nickname>,
}

impl Session {
    pub(super) fn live(
        transport: Transport,
        outbox: Outbox,
        per_sec: NonZeroU32,
        burst: NonZeroU32,
        ended: CancellationToken,
    ) -> Self {
        Session {
            id: outbox.session,
            transport,
            user: None,
            room: None,
            view: View::default(),
            outbox: Some(outbox),
            limiter: Some(DefaultDirectRateLimiter::direct(
                Quota::per_second(per_sec).allow_burst(burst),
            )),
            version: 0,
            stamps: (0, 0),
            ended,
            given_up: Vec::new(),
        }
    }

    pub(super) fn detached(record: SessionRecord, version: u64) -> Self {
        Session {
            id: record.id,
            transport: Transport::Http,
            user: Some(User {
                id: record.user_id,
                nick: record.nick,
            }),
            view: View::new(record.room.as_ref().map(|r| r.name.clone()), record.seen),
            room: record.room,
            outbox: None,
            limiter: None,
            version,
            stamps: (record.revision, record.joined),
            ended: CancellationToken::new(),
            given_up: Vec::new(),
        }
    }

    /// The shareable form of a logged-in session.
    pub fn record(&self) -> Option<SessionRecord> {
        let user = self.user.as_ref()?;
        Some(SessionRecord {
            id: self.id,
            user_id: user.id,
            nick: user.nick.clone(),
            room: self.room.clone(),
            seen: self.view.seen(),
            revision: self.stamps.0,
            joined: self.stamps.1,
        })
    }

    pub fn nick(&self) -> Option<&Nickname> {
        self.user.as_ref().map(|u| &u.nick)
    }

    pub fn room(&self) -> Option<&Room> {
        self.room.as_ref()
    }

    /// The last seq of its room it has been shown.
    pub fn seen(&self) -> i64 {
        self.view.seen()
    }

    /// See [`View::admit`].
    pub fn admit<'a>(&mut self, delivery: &'a Delivery) -> Option<Show<'a>> {
        self.view.admit(delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::ChatMessage;
    use time::OffsetDateTime;

    fn message(room: &str, seq: i64) -> Delivery {
        Delivery::Event(Broadcast::message(ChatMessage {
            id: seq,
            room: RoomName::parse(room).unwrap(),
            seq,
            user: Nickname::parse("u").unwrap(),
            content: String::new(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }))
    }

    #[test]
    fn a_view_shows_its_rooms_messages_once_in_order_and_follows_a_move() {
        let mut view = View::new(Some(RoomName::parse("a").unwrap()), 4);
        assert!(
            view.admit(&message("a", 4)).is_none(),
            "shown in its history"
        );
        assert!(view.admit(&message("a", 5)).is_some());
        assert!(view.admit(&message("b", 6)).is_none(), "another room");
        let moved = Delivery::moved(Position {
            room: Some(RoomName::parse("b").unwrap()),
            seen: 6,
        });
        assert!(matches!(view.admit(&moved), Some(Show::Moved(_))));
        assert!(view.admit(&message("a", 6)).is_none(), "the room it left");
        assert!(view.admit(&message("b", 7)).is_some());
        let reset = Delivery::reset(RoomName::parse("b").unwrap(), 3);
        assert!(view.admit(&reset).is_some());
        assert!(
            view.admit(&message("b", 3)).is_some(),
            "a reset starts over"
        );
    }
}
