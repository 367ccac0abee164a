//! One user's conversation state, whatever the transport: who they are, which room they are in,
//! their rate limiter, their outbound queue, and which room messages they have already seen.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota};

use super::hub::Outbox;
use super::model::{Event, Room, SessionId, UserId};
use super::names::Nickname;

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

pub struct Session {
    pub id: SessionId,
    pub transport: Transport,
    pub(super) user: Option<User>,
    pub(super) room: Option<Room>,
    /// The highest seq of the current room this session has been given (history or live), so a
    /// message queued both ways around a join is shown once.
    pub(super) cursor: i64,
    pub(super) outbox: Outbox,
    pub(super) limiter: DefaultDirectRateLimiter,
}

impl Session {
    pub(super) fn new(
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
            cursor: 0,
            outbox,
            limiter: DefaultDirectRateLimiter::direct(
                Quota::per_second(per_sec).allow_burst(burst),
            ),
        }
    }

    pub fn nick(&self) -> Option<&Nickname> {
        self.user.as_ref().map(|u| &u.nick)
    }

    pub fn room(&self) -> Option<&Room> {
        self.room.as_ref()
    }

    /// Whether an event taken from the outbound queue should still be shown, given where the
    /// session is now: it may have left the room since the event was queued, or have seen the
    /// message already in the history block of a join.
    pub fn admit(&mut self, event: &Event) -> bool {
        let current = self.room.as_ref().map(|r| &r.name);
        match event {
            Event::Message(m) => {
                if Some(&m.room) != current || m.seq <= self.cursor {
                    return false;
                }
                self.cursor = m.seq;
                true
            }
            Event::Room { room, .. } => Some(room) == current,
            Event::Dm { .. } | Event::Notice(_) => true,
        }
    }
}
