//! The pod-local routing table: which of this pod's sessions receive which events.
//!
//! The bus hands every event meant for this pod to [`Hub::deliver`]; the hub feeds the history
//! cache and pushes the shared event into each receiver's bounded [`Outbox`]. Pushing never
//! waits: a receiver whose queue is full is too slow, and is told to disconnect instead of
//! holding up the room.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::history::HistoryCache;
use super::model::{Broadcast, Envelope, Event, SessionId};
use super::names::{Nickname, RoomName};
use crate::telemetry::metric;

/// The sending half of a session's outbound queue.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Arc<Broadcast>>,
    too_slow: CancellationToken,
}

/// The receiving half, owned by the adapter that writes to the session's socket or stream.
pub struct Inbox {
    pub rx: mpsc::Receiver<Arc<Broadcast>>,
    /// Cancelled when the queue overflowed: the adapter must close the connection.
    pub too_slow: CancellationToken,
}

/// A bounded queue of `capacity` events.
pub fn queue(capacity: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let too_slow = CancellationToken::new();
    let outbox = Outbox {
        tx,
        too_slow: too_slow.clone(),
    };
    (outbox, Inbox { rx, too_slow })
}

impl Outbox {
    /// Queues an event without waiting. On overflow the receiver is marked too slow and counted.
    pub fn push(&self, event: &Arc<Broadcast>) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(event.clone())
            && !self.too_slow.is_cancelled()
        {
            self.too_slow.cancel();
            metrics::counter!(metric::DROPPED, "reason" => "slow_consumer").increment(1);
        }
    }
}

struct Member {
    session: SessionId,
    outbox: Outbox,
}

/// An event stream that follows an HTTP session wherever its nickname and room go.
struct Follower {
    stream: SessionId,
    outbox: Outbox,
    nick: Nickname,
    /// Where the stream is; its receiver lets the stream drop events of a room it has left,
    /// announce the new one and skip what the session was already shown of it.
    position: watch::Sender<Position>,
}

/// A followed session's room, and the last seq of it the session has been shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub room: Option<RoomName>,
    pub seen: i64,
}

#[derive(Default)]
struct Routes {
    rooms: HashMap<RoomName, Vec<Member>>,
    users: HashMap<Nickname, Vec<Member>>,
    followers: HashMap<SessionId, Vec<Follower>>,
}

/// Removes a session from `map[key]`; true when that leaves no local member under `key`.
fn detach<K: Eq + Hash>(map: &mut HashMap<K, Vec<Member>>, key: &K, session: SessionId) -> bool {
    let Some(members) = map.get_mut(key) else {
        return false;
    };
    members.retain(|m| m.session != session);
    if members.is_empty() {
        map.remove(key);
        return true;
    }
    false
}

fn attach<K: Eq + Hash>(
    map: &mut HashMap<K, Vec<Member>>,
    key: K,
    session: SessionId,
    outbox: &Outbox,
) {
    let members = map.entry(key).or_default();
    if !members.iter().any(|m| m.session == session) {
        members.push(Member {
            session,
            outbox: outbox.clone(),
        });
    }
}

pub struct Hub {
    // std RwLock: fan-out holds the read lock for a loop of non-blocking pushes, never awaits.
    routes: RwLock<Routes>,
    history: HistoryCache,
}

impl Hub {
    pub fn new(history_size: usize) -> Self {
        Hub {
            routes: RwLock::new(Routes::default()),
            history: HistoryCache::new(history_size),
        }
    }

    pub fn history(&self) -> &HistoryCache {
        &self.history
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Routes> {
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Routes> {
        self.routes.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Routes events for `room` to this session. Returns true when it is the room's first local
    /// member (the bus must start carrying the room to this pod).
    pub fn enter_room(&self, room: &RoomName, session: SessionId, outbox: &Outbox) -> bool {
        let mut routes = self.write();
        let first = !routes.rooms.contains_key(room);
        attach(&mut routes.rooms, room.clone(), session, outbox);
        first
    }

    /// Stops routing `room` to this session. Returns true when no local member is left: the pod
    /// will no longer see the room's messages, so its history ring is dropped too.
    pub fn exit_room(&self, room: &RoomName, session: SessionId) -> bool {
        let last = detach(&mut self.write().rooms, room, session);
        if last {
            self.history.forget(room);
        }
        last
    }

    /// The rooms with at least one local member or stream: what the bus must carry to this pod.
    pub fn local_rooms(&self) -> Vec<RoomName> {
        self.read().rooms.keys().cloned().collect()
    }

    /// Routes direct messages for `nick` to this session.
    pub fn register_user(&self, nick: &Nickname, session: SessionId, outbox: &Outbox) {
        attach(&mut self.write().users, nick.clone(), session, outbox);
    }

    pub fn unregister_user(&self, nick: &Nickname, session: SessionId) {
        detach(&mut self.write().users, nick, session);
    }

    /// Starts routing a session's events to one of its streams (`stream` is the stream's own id).
    /// Returns the receiver of the room the stream carries from now on.
    pub fn follow(
        &self,
        session: SessionId,
        stream: SessionId,
        nick: &Nickname,
        room: Option<&RoomName>,
        outbox: &Outbox,
    ) -> watch::Receiver<Position> {
        let mut routes = self.write();
        attach(&mut routes.users, nick.clone(), stream, outbox);
        if let Some(room) = room {
            attach(&mut routes.rooms, room.clone(), stream, outbox);
        }
        let (position, changes) = watch::channel(Position {
            room: room.cloned(),
            seen: 0,
        });
        let follower = Follower {
            stream,
            outbox: outbox.clone(),
            nick: nick.clone(),
            position,
        };
        routes.followers.entry(session).or_default().push(follower);
        changes
    }

    /// Stops routing to a stream opened with [`Hub::follow`].
    pub fn unfollow(&self, session: SessionId, stream: SessionId) {
        let mut routes = self.write();
        let Some(followers) = routes.followers.get_mut(&session) else {
            return;
        };
        let Some(at) = followers.iter().position(|f| f.stream == stream) else {
            return;
        };
        let follower = followers.swap_remove(at);
        if followers.is_empty() {
            routes.followers.remove(&session);
        }
        detach(&mut routes.users, &follower.nick, stream);
        if let Some(room) = follower.position.borrow().room.as_ref() {
            detach(&mut routes.rooms, room, stream);
        }
    }

    /// Re-routes a session's streams after its nickname or room changed.
    fn apply_session_state(
        &self,
        session: SessionId,
        nick: &Nickname,
        room: Option<&RoomName>,
        seen: i64,
    ) {
        let mut routes = self.write();
        let Routes {
            rooms,
            users,
            followers,
        } = &mut *routes;
        for follower in followers.get_mut(&session).into_iter().flatten() {
            if follower.nick.as_str() != nick.as_str() {
                detach(users, &follower.nick, follower.stream);
                attach(users, nick.clone(), follower.stream, &follower.outbox);
                follower.nick = nick.clone();
            }
            let old = follower.position.borrow().room.clone();
            if old.as_ref() != room {
                if let Some(old) = &old {
                    detach(rooms, old, follower.stream);
                }
                if let Some(new) = room {
                    attach(rooms, new.clone(), follower.stream, &follower.outbox);
                }
                follower.position.send_replace(Position {
                    room: room.cloned(),
                    seen,
                });
            }
        }
    }

    /// Hands what the bus carried to every local session or stream that should see it.
    pub fn deliver(&self, envelope: Envelope) {
        match envelope {
            Envelope::Event(event) => self.deliver_event(event),
            Envelope::SessionState {
                session,
                nick,
                room,
                seen,
            } => self.apply_session_state(session, &nick, room.as_ref(), seen),
        }
    }

    fn deliver_event(&self, event: Arc<Broadcast>) {
        match &event.event {
            Event::Message(message) => {
                self.history.record(message);
                self.fan_out(&message.room, &event, None);
            }
            Event::Room { room, about, .. } => self.fan_out(room, &event, *about),
            Event::Dm { to, .. } => {
                if let Some(members) = self.read().users.get(to) {
                    members.iter().for_each(|m| m.outbox.push(&event));
                }
            }
            // Notices (the drain notice) are written by each adapter to its own connections.
            Event::Notice(_) => {}
        }
    }

    fn fan_out(&self, room: &RoomName, event: &Arc<Broadcast>, except: Option<SessionId>) {
        if let Some(members) = self.read().rooms.get(room) {
            members
                .iter()
                .filter(|m| Some(m.session) != except)
                .for_each(|m| m.outbox.push(event));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dm(to: &Nickname) -> Arc<Broadcast> {
        let from = Nickname::parse("sender").unwrap();
        Broadcast::new(Event::Dm {
            from,
            to: to.clone(),
            content: "hi".into(),
        })
    }

    fn room_event(room: &RoomName, about: Option<SessionId>) -> Arc<Broadcast> {
        Broadcast::new(Event::Room {
            room: room.clone(),
            text: "x".into(),
            about,
        })
    }

    #[tokio::test]
    async fn room_events_skip_the_member_they_are_about() {
        let hub = Hub::new(10);
        let room = RoomName::parse("r").unwrap();
        let (a, b) = (SessionId::random(), SessionId::random());
        let (out_a, mut in_a) = queue(8);
        let (out_b, mut in_b) = queue(8);
        assert!(hub.enter_room(&room, a, &out_a));
        assert!(!hub.enter_room(&room, b, &out_b));
        hub.deliver(Envelope::Event(room_event(&room, Some(a))));
        assert!(in_b.rx.try_recv().is_ok());
        assert!(in_a.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_following_stream_moves_with_its_session() {
        let hub = Hub::new(10);
        let (one, two) = (
            RoomName::parse("one").unwrap(),
            RoomName::parse("two").unwrap(),
        );
        let nick = Nickname::parse("web").unwrap();
        let (session, stream) = (SessionId::random(), SessionId::random());
        let (out, mut inbox) = queue(8);
        let position = hub.follow(session, stream, &nick, Some(&one), &out);
        let state = Envelope::SessionState {
            session,
            nick: nick.clone(),
            room: Some(two.clone()),
            seen: 7,
        };
        hub.deliver(state);
        assert_eq!(
            *position.borrow(),
            Position {
                room: Some(two.clone()),
                seen: 7
            }
        );
        hub.deliver(Envelope::Event(room_event(&one, None)));
        hub.deliver(Envelope::Event(room_event(&two, None)));
        assert!(
            matches!(&inbox.rx.try_recv().unwrap().event, Event::Room { room, .. } if *room == two)
        );
        assert!(inbox.rx.try_recv().is_err());
        hub.unfollow(session, stream);
        hub.deliver(Envelope::Event(room_event(&two, None)));
        assert!(inbox.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn exit_room_reports_the_last_local_member() {
        let hub = Hub::new(10);
        let room = RoomName::parse("r").unwrap();
        let (a, b) = (SessionId::random(), SessionId::random());
        let (out, _in) = queue(8);
        hub.enter_room(&room, a, &out);
        hub.enter_room(&room, b, &out);
        assert!(!hub.exit_room(&room, a));
        assert!(hub.exit_room(&room, b));
    }

    #[tokio::test]
    async fn a_full_queue_marks_the_receiver_too_slow_without_blocking() {
        let hub = Hub::new(10);
        let nick = Nickname::parse("slow").unwrap();
        let (out, inbox) = queue(2);
        hub.register_user(&nick, SessionId::random(), &out);
        for _ in 0..3 {
            hub.deliver(Envelope::Event(dm(&nick)));
        }
        assert!(inbox.too_slow.is_cancelled());
        assert_eq!(inbox.rx.len(), 2);
    }
}
