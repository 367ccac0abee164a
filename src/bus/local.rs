//! The in-process `Bus`: publishing is a direct call into this pod's hub, presence is a map.
//! Correct for exactly one replica; `VALKEY_URL` selects the shared one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{Bus, BusError, Holder};
use crate::core::hub::Hub;
use crate::core::model::{Envelope, SessionId, SessionRecord};
use crate::core::names::{Nickname, RoomName};

pub struct LocalBus {
    hub: Arc<Hub>,
    // std Mutex: short critical sections, never held across an await.
    presence: Mutex<Presence>,
}

#[derive(Default)]
struct Presence {
    /// Claimed nickname → (its spelling, the owning session).
    nicks: HashMap<Nickname, (Nickname, SessionId)>,
    rooms: HashMap<RoomName, HashSet<Nickname>>,
    sessions: HashMap<SessionId, (SessionRecord, Instant)>,
}

impl LocalBus {
    pub fn new(hub: Arc<Hub>) -> Self {
        LocalBus {
            hub,
            presence: Mutex::new(Presence::default()),
        }
    }

    fn presence(&self) -> std::sync::MutexGuard<'_, Presence> {
        self.presence.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        self.hub.deliver(envelope);
        Ok(())
    }

    // Every event already reaches this (only) pod.
    async fn watch_room(&self, _room: &RoomName) -> Result<(), BusError> {
        Ok(())
    }

    async fn unwatch_room(&self, _room: &RoomName) -> Result<(), BusError> {
        Ok(())
    }

    async fn claim_nick(
        &self,
        nick: &Nickname,
        session: SessionId,
        _holder: Holder,
    ) -> Result<bool, BusError> {
        let mut presence = self.presence();
        match presence.nicks.get(nick) {
            Some((_, owner)) if *owner != session => Ok(false),
            // New, or re-claimed by its owner (perhaps with another spelling).
            _ => {
                presence.nicks.insert(nick.clone(), (nick.clone(), session));
                Ok(true)
            }
        }
    }

    async fn release_nick(&self, nick: &Nickname, session: SessionId) -> Result<(), BusError> {
        let mut presence = self.presence();
        if presence
            .nicks
            .get(nick)
            .is_some_and(|(_, owner)| *owner == session)
        {
            presence.nicks.remove(nick);
        }
        Ok(())
    }

    async fn find_online(&self, nick: &Nickname) -> Result<Option<Nickname>, BusError> {
        Ok(self
            .presence()
            .nicks
            .get(nick)
            .map(|(spelling, _)| spelling.clone()))
    }

    async fn online_users(&self) -> Result<Vec<Nickname>, BusError> {
        Ok(self
            .presence()
            .nicks
            .values()
            .map(|(n, _)| n.clone())
            .collect())
    }

    async fn enter_room(
        &self,
        room: &RoomName,
        nick: &Nickname,
        _holder: Holder,
    ) -> Result<(), BusError> {
        self.presence()
            .rooms
            .entry(room.clone())
            .or_default()
            .insert(nick.clone());
        Ok(())
    }

    async fn exit_room(
        &self,
        room: &RoomName,
        nick: &Nickname,
        _holder: Holder,
    ) -> Result<(), BusError> {
        let mut presence = self.presence();
        if let Some(members) = presence.rooms.get_mut(room) {
            members.remove(nick);
            if members.is_empty() {
                presence.rooms.remove(room);
            }
        }
        Ok(())
    }

    async fn room_members(&self, room: &RoomName) -> Result<Vec<Nickname>, BusError> {
        let presence = self.presence();
        Ok(presence
            .rooms
            .get(room)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn room_counts(&self) -> Result<HashMap<RoomName, usize>, BusError> {
        let presence = self.presence();
        Ok(presence
            .rooms
            .iter()
            .map(|(r, m)| (r.clone(), m.len()))
            .collect())
    }

    async fn save_session(&self, record: &SessionRecord, ttl: Duration) -> Result<(), BusError> {
        let expires = Instant::now() + ttl;
        self.presence()
            .sessions
            .insert(record.id, (record.clone(), expires));
        Ok(())
    }

    async fn load_session(&self, id: SessionId) -> Result<Option<SessionRecord>, BusError> {
        let presence = self.presence();
        let live = presence
            .sessions
            .get(&id)
            .filter(|(_, expires)| *expires > Instant::now());
        Ok(live.map(|(record, _)| record.clone()))
    }

    async fn touch_session(&self, id: SessionId, ttl: Duration) -> Result<bool, BusError> {
        let now = Instant::now();
        let mut presence = self.presence();
        match presence.sessions.get_mut(&id) {
            Some((_, expires)) if *expires > now => {
                *expires = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete_session(&self, id: SessionId) -> Result<(), BusError> {
        self.presence().sessions.remove(&id);
        Ok(())
    }

    async fn take_expired_sessions(&self) -> Result<Vec<SessionRecord>, BusError> {
        let now = Instant::now();
        let mut presence = self.presence();
        let expired: Vec<SessionId> = presence
            .sessions
            .iter()
            .filter(|(_, (_, expires))| *expires <= now)
            .map(|(id, _)| *id)
            .collect();
        Ok(expired
            .into_iter()
            .filter_map(|id| presence.sessions.remove(&id))
            .map(|(record, _)| record)
            .collect())
    }
}
