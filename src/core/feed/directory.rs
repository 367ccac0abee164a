//! Routes that do not belong to one room: direct messages by nickname, and the streams that
//! follow an HTTP session from room to room.

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::model::{Broadcast, SessionId, SessionRecord};
use crate::core::names::{Nickname, RoomName};
use crate::core::outbox::Outbox;

/// Most nicknames and sessions have one receiver, one stream: their lists start with room for
/// one, not the four a first push would make room for (kept by every idle connection).
fn one<T>() -> Vec<T> {
    Vec::with_capacity(1)
}

#[derive(Default)]
pub(super) struct Directory {
    /// Who receives direct messages to a nickname on this pod.
    users: HashMap<Nickname, Vec<Outbox>>,
    /// Streams following a session, by the session's id.
    followers: HashMap<SessionId, Vec<Follower>>,
    /// The latest record of each session with a stream open here, and those streams: enough to
    /// bring the session back if the session store loses it (a Valkey restart) while its streams
    /// are open.
    records: HashMap<SessionId, (SessionRecord, Vec<SessionId>)>,
}

struct Follower {
    outbox: Outbox,
    nick: Nickname,
    room: Option<RoomName>,
    /// The revision of the session's record it follows: an older record's news is stale.
    revision: u64,
    /// Bumped at every move, so that a move still being carried out when the next one comes is
    /// abandoned.
    generation: u64,
}

impl Directory {
    pub fn register(&mut self, nick: &Nickname, outbox: &Outbox) {
        let receivers = self.users.entry(nick.clone()).or_insert_with(one);
        receivers.retain(|r| r.id != outbox.id);
        receivers.push(outbox.clone());
    }

    pub fn unregister(&mut self, nick: &Nickname, id: SessionId) {
        if let Some(receivers) = self.users.get_mut(nick) {
            receivers.retain(|r| r.id != id);
            if receivers.is_empty() {
                self.users.remove(nick);
            }
        }
    }

    /// Queues a direct message for every receiver of `to`.
    pub fn direct(&mut self, to: &Nickname, event: &Arc<Broadcast>) {
        if let Some(receivers) = self.users.get_mut(to) {
            receivers.retain(|r| r.push_event(event));
        }
    }

    /// Keeps `record` (unless a newer one is held) while stream `stream` of its session is open
    /// here.
    pub fn hold(&mut self, record: &SessionRecord, stream: SessionId) {
        let held = self
            .records
            .entry(record.id)
            .or_insert_with(|| (record.clone(), one()));
        if record.supersedes(held.0.revision) {
            held.0 = record.clone();
        }
        held.1.push(stream);
    }

    /// Stream `stream` of `session` closed: its record goes with the session's last stream.
    pub fn release(&mut self, session: SessionId, stream: SessionId) {
        if let Some((_, streams)) = self.records.get_mut(&session) {
            streams.retain(|s| *s != stream);
            if streams.is_empty() {
                self.records.remove(&session);
            }
        }
    }

    /// Starts following `record`'s session with this stream. Returns its generation.
    pub fn follow(&mut self, record: &SessionRecord, outbox: &Outbox) -> u64 {
        self.register(&record.nick, outbox);
        self.followers
            .entry(record.id)
            .or_insert_with(one)
            .push(Follower {
                outbox: outbox.clone(),
                nick: record.nick.clone(),
                room: record.room.as_ref().map(|r| r.name.clone()),
                revision: record.revision,
                generation: 0,
            });
        self.hold(record, outbox.id);
        0
    }

    /// Stops following; returns the room the stream was in.
    pub fn unfollow(&mut self, session: SessionId, id: SessionId) -> Option<RoomName> {
        let followers = self.followers.get_mut(&session)?;
        let at = followers.iter().position(|f| f.outbox.id == id)?;
        let follower = followers.swap_remove(at);
        if followers.is_empty() {
            self.followers.remove(&session);
        }
        self.release(session, id);
        self.unregister(&follower.nick, id);
        follower.room
    }

    /// The session moved: each stream of it takes the new nickname for DMs. Returns, for every
    /// stream whose room changed, its queue, the room it leaves and its new generation. A stream
    /// already following a record as new (two pods' moves crossing on the bus, a keepalive's
    /// read from before a move) is left as it is.
    pub fn moved(&mut self, record: &SessionRecord) -> Vec<(Outbox, Option<RoomName>, u64)> {
        if let Some((held, _)) = self.records.get_mut(&record.id)
            && record.supersedes(held.revision)
        {
            *held = record.clone();
        }
        let Some(followers) = self.followers.get_mut(&record.id) else {
            return Vec::new();
        };
        let new = record.room.as_ref().map(|r| r.name.clone());
        let mut renamed = Vec::new();
        let mut moved = Vec::new();
        for follower in followers.iter_mut() {
            if !record.supersedes(follower.revision) {
                continue;
            }
            follower.revision = record.revision;
            if follower.nick.as_str() != record.nick.as_str() {
                renamed.push((follower.nick.clone(), follower.outbox.clone()));
                follower.nick = record.nick.clone();
            }
            if follower.room != new {
                follower.generation += 1;
                let old = std::mem::replace(&mut follower.room, new.clone());
                moved.push((follower.outbox.clone(), old, follower.generation));
            }
        }
        for (old, outbox) in renamed {
            self.unregister(&old, outbox.id);
            self.register(&record.nick, &outbox);
        }
        moved
    }

    /// The current generation of a follower, if it is still there.
    pub fn generation(&self, session: SessionId, id: SessionId) -> Option<u64> {
        self.followers
            .get(&session)?
            .iter()
            .find(|f| f.outbox.id == id)
            .map(|f| f.generation)
    }

    pub fn held(&self) -> Vec<SessionRecord> {
        self.records
            .values()
            .map(|(record, _)| record.clone())
            .collect()
    }
}
