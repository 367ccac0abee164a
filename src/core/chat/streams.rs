//! Event streams for clients that cannot hold a socket open both ways (SSE): one room's events,
//! or everything an HTTP session would see, and where each starts — live, resumed after the last
//! seq the client saw, or, when that position does not exist in the room, from a reset.
//!
//! A resume never silently skips (SPEC §4): a position beyond the room's last seq, below the
//! oldest still stored, from another history of the store (its epoch changed: a restore), or
//! (for a session's stream) from before the session joined its room gets a reset, then the
//! room's history, then the live stream.

use std::sync::Arc;

use super::Chat;
use crate::core::error::Error;
use crate::core::feed::Feeds;
use crate::core::model::{Delivery, Position, Room, SessionId, SessionRecord};
use crate::core::names::RoomName;
use crate::core::outbox::{Inbox, Outbox, queue};

/// A resume further behind than this starts from a reset instead of replaying everything.
const MAX_CATCH_UP: i64 = 10_000;

/// Where a client resumes: after this seq — in the store history it was seen in, and (a
/// session's stream) the session's state the stream started in, when the client says.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    pub after: Option<i64>,
    pub epoch: Option<String>,
    /// The [`SessionRecord::mark`] a session's stream started with last time. A position kept
    /// by a stream that started in another state — another room, or one it has followed its
    /// session out of and back into — may belong to another room: it is not trusted.
    pub mark: Option<String>,
}

pub struct EventStream {
    pub inbox: Inbox,
    /// The room it starts in and the last seq there counted as shown (the `connected` event).
    pub start: Position,
    /// The store's history the stream's seqs belong to; a client keeps it to resume with.
    pub epoch: String,
    /// The session the stream was opened by.
    session: SessionId,
    route: Route,
}

/// Removes the stream's routes when the stream is dropped (the client went away, or the server
/// is draining), whatever the reason.
enum Route {
    Room {
        feeds: Arc<Feeds>,
        room: RoomName,
        session: SessionId,
        id: SessionId,
    },
    Session {
        feeds: Arc<Feeds>,
        session: SessionId,
        id: SessionId,
    },
}

impl Drop for Route {
    fn drop(&mut self) {
        match self {
            Route::Room {
                feeds,
                room,
                session,
                id,
            } => {
                feeds.leave(room, *id);
                feeds.release(*session, *id);
            }
            Route::Session { feeds, session, id } => feeds.unfollow(*session, *id),
        }
    }
}

impl Chat {
    /// Keeps an open stream's session alive (false when it has ended). A stream that follows its
    /// session also checks where the session is: a move whose announcement the bus lost is
    /// caught up with here, within one keepalive.
    pub async fn keep_alive(&self, stream: &EventStream) -> Result<bool, Error> {
        let session = stream.session;
        let Some(record) = self
            .sessions
            .touch(session, self.limits.session_idle)
            .await?
        else {
            return Ok(false);
        };
        if let Route::Session { .. } = &stream.route {
            self.feeds
                .deliver(crate::core::model::Envelope::SessionMoved(record));
        }
        Ok(true)
    }

    /// A stream of one room's messages and events for `viewer`; with `resume`, first every message
    /// after that seq.
    pub async fn open_room_stream(
        &self,
        viewer: &SessionRecord,
        room: &Room,
        resume: Resume,
    ) -> Result<EventStream, Error> {
        let (outbox, inbox) = queue(SessionId::random(), viewer.id, self.limits.send_queue);
        self.feeds.hold(viewer, outbox.id);
        let route = Route::Room {
            feeds: self.feeds.clone(),
            room: room.name.clone(),
            session: viewer.id,
            id: outbox.id,
        };
        let epoch = self.store.epoch().await?;
        let from = match resume.after {
            None => self.feeds.position(room).await?,
            Some(after) => {
                let same = resume.epoch.is_none_or(|e| e == epoch);
                self.resume_at(room, after, None, same, &outbox).await?
            }
        };
        self.feeds.attach(room, outbox, from).await?;
        Ok(EventStream {
            inbox,
            start: Position {
                room: Some(room.name.clone()),
                seen: from,
            },
            epoch,
            session: viewer.id,
            route,
        })
    }

    /// A stream of everything an HTTP session would see on TCP: its room's messages and events
    /// (following it from room to room), and its direct messages. Without `resume` it starts
    /// where the session's join left it.
    pub async fn open_session_stream(
        &self,
        record: &SessionRecord,
        resume: Resume,
    ) -> Result<EventStream, Error> {
        let (outbox, inbox) = queue(SessionId::random(), record.id, self.limits.send_queue);
        let route = Route::Session {
            feeds: self.feeds.clone(),
            session: record.id,
            id: outbox.id,
        };
        let epoch = self.store.epoch().await?;
        let from = match &record.room {
            Some(room) => {
                let after = resume.after.unwrap_or(record.seen);
                // The session's own join position is this room's. A client's is a number, and
                // another room's can equal anything of this one's — the join position too: only
                // the mark tells which room it is of.
                let this_room =
                    resume.after.is_none() || resume.mark.is_none_or(|m| m == record.mark());
                let same = resume.epoch.is_none_or(|e| e == epoch) && this_room;
                self.resume_at(room, after, Some(record.seen), same, &outbox)
                    .await?
            }
            None => 0,
        };
        self.feeds.follow(record, from, outbox).await?;
        Ok(EventStream {
            inbox,
            start: Position {
                room: record.room.as_ref().map(|r| r.name.clone()),
                seen: from,
            },
            epoch,
            session: record.id,
            route,
        })
    }

    /// Where a stream resuming after `after` in `room` starts: `after` itself when the room can
    /// have it (in the same history of the store, not below `lowest`, nor below the oldest
    /// message still stored, nor past the last, nor too far behind); otherwise a reset is queued
    /// and it starts from the room's history.
    async fn resume_at(
        &self,
        room: &Room,
        after: i64,
        lowest: Option<i64>,
        same_history: bool,
        outbox: &Outbox,
    ) -> Result<i64, Error> {
        let tail = self
            .store
            .room_tails(&[room.id])
            .await?
            .into_iter()
            .next()
            .ok_or(Error::NoSuchRoom(room.name.to_string()))?;
        let possible = same_history
            && after <= tail.last_seq
            && after >= tail.first_seq - 1
            && after >= lowest.unwrap_or(0)
            && tail.last_seq - after <= MAX_CATCH_UP;
        if possible {
            return Ok(after);
        }
        // The room's history, then live: the newest HISTORY_SIZE that are still stored.
        let history = self.feeds.history(room).await?.0;
        let next = history
            .first()
            .map_or(tail.last_seq + 1, |m| m.seq)
            .max(tail.first_seq);
        outbox.push(Delivery::reset(room.name.clone(), next));
        Ok(next - 1)
    }
}
