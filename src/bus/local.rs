//! The in-process `Bus`: publishing is a direct call into this pod's hub, presence is a map.
//! Correct for exactly one replica; `VALKEY_URL` selects the shared one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Bus, BusError};
use crate::core::hub::Hub;
use crate::core::model::{Broadcast, SessionId};
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
    async fn publish(&self, event: Arc<Broadcast>) -> Result<(), BusError> {
        self.hub.deliver(event);
        Ok(())
    }

    // Every event already reaches this (only) pod.
    async fn watch_room(&self, _room: &RoomName) -> Result<(), BusError> {
        Ok(())
    }

    async fn unwatch_room(&self, _room: &RoomName) -> Result<(), BusError> {
        Ok(())
    }

    async fn claim_nick(&self, nick: &Nickname, session: SessionId) -> Result<bool, BusError> {
        let mut presence = self.presence();
        match presence.nicks.get(nick) {
            Some((_, owner)) => Ok(*owner == session),
            None => {
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

    async fn enter_room(&self, room: &RoomName, nick: &Nickname) -> Result<(), BusError> {
        self.presence()
            .rooms
            .entry(room.clone())
            .or_default()
            .insert(nick.clone());
        Ok(())
    }

    async fn exit_room(&self, room: &RoomName, nick: &Nickname) -> Result<(), BusError> {
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
}
