//! One user's conversation state, whatever the transport: who they are, which room they are in,
//! their rate limiter, and which room messages they have already been shown.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota};

use super::hub::Outbox;
use super::model::{Event, Room, SessionId, SessionRecord, UserId};
use super::names::{Nickname, RoomName};

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

/// What a receiver is looking at: the room whose events it shows, and the highest seq of that
/// room it has shown (history or live), so a message that reaches it both ways shows once.
#[derive(Debug, Default, Clone)]
pub struct View {
    room: Option<RoomName>,
    cursor: i64,
}

impl View {
    pub fn new(room: Option<RoomName>) -> Self {
        View { room, cursor: 0 }
    }

    pub fn room(&self) -> Option<&RoomName> {
        self.room.as_ref()
    }

    /// The last seq of the current room shown.
    pub fn seen(&self) -> i64 {
        self.cursor
    }

    /// Switches to another room (or none); nothing of it has been shown yet.
    pub fn move_to(&mut self, room: Option<RoomName>) {
        self.room = room;
        self.cursor = 0;
    }

    /// Records that everything up to `seq` of the current room has been shown.
    pub fn shown_up_to(&mut self, seq: i64) {
        self.cursor = self.cursor.max(seq);
    }

    /// Whether an event should be shown now: events of a room the receiver has left since they
    /// were queued, and messages already shown, are not.
    pub fn admit(&mut self, event: &Event) -> bool {
        match event {
            Event::Message(m) => {
                if Some(&m.room) != self.room.as_ref() || m.seq <= self.cursor {
                    return false;
                }
                self.cursor = m.seq;
                true
            }
            Event::Room { room, .. } => Some(room) == self.room.as_ref(),
            Event::Dm { .. } | Event::Notice(_) => true,
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
}

impl Session {
    pub(super) fn live(
        transport: Transport,
        outbox: Outbox,
        per_sec: NonZeroU32,
        burst: NonZeroU32,
    ) -> Self {
        Session {
            id: SessionId::random(),
            transport,
            user: None,
            room: None,
            view: View::default(),
            outbox: Some(outbox),
            limiter: Some(DefaultDirectRateLimiter::direct(
                Quota::per_second(per_sec).allow_burst(burst),
            )),
        }
    }

    pub(super) fn detached(record: SessionRecord) -> Self {
        Session {
            id: record.id,
            transport: Transport::Http,
            user: Some(User {
                id: record.user_id,
                nick: record.nick,
            }),
            view: View::new(record.room.as_ref().map(|r| r.name.clone())),
            room: record.room,
            outbox: None,
            limiter: None,
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
        })
    }

    pub fn nick(&self) -> Option<&Nickname> {
        self.user.as_ref().map(|u| &u.nick)
    }

    pub fn room(&self) -> Option<&Room> {
        self.room.as_ref()
    }

    /// See [`View::admit`].
    pub fn admit(&mut self, event: &Event) -> bool {
        self.view.admit(event)
    }
}
