//! The in-process bus, presence and sessions: correct for exactly one replica; `VALKEY_URL`
//! selects the shared ones. There is no other pod to publish to, and nothing is ever lost.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::core::model::{Envelope, SessionId, SessionRecord};
use crate::core::names::{Nickname, RoomName};
use crate::core::ports::{
    Bus, BusError, Claim, Holder, Inbound, Presence, SessionLock, Sessions, Stored,
};

#[derive(Default)]
pub struct LocalBus {
    // std Mutex: short critical sections, never held across an await.
    state: Mutex<State>,
    /// Wakes requests waiting for a session's lock.
    unlocked: Notify,
    /// Kept so that the inbound stream stays open (and empty) for the life of the pod.
    inbound: Mutex<Option<mpsc::Sender<Inbound>>>,
    revoked: Mutex<Option<mpsc::UnboundedSender<SessionId>>>,
    /// Sessions' allowances; made on first use, with the quota the chat asks for.
    allowances: OnceLock<DefaultKeyedRateLimiter<SessionId>>,
}

#[derive(Default)]
struct State {
    /// Claimed nickname → (its spelling, the owning session).
    nicks: HashMap<Nickname, (Nickname, SessionId)>,
    rooms: HashMap<RoomName, HashSet<Nickname>>,
    sessions: HashMap<SessionId, (SessionRecord, u64, Instant)>,
    locks: HashMap<SessionId, (String, Instant)>,
}

impl LocalBus {
    pub fn new() -> Self {
        LocalBus::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    // No other pod: the core has already delivered to this one.
    async fn publish(&self, _envelopes: &[Envelope]) -> Result<(), BusError> {
        Ok(())
    }

    fn subscribe(&self) -> mpsc::Receiver<Inbound> {
        let (tx, rx) = mpsc::channel(1);
        *self.inbound.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }
}

#[async_trait]
impl Presence for LocalBus {
    async fn claim(
        &self,
        nick: &Nickname,
        session: SessionId,
        _holder: Holder,
    ) -> Result<Claim, BusError> {
        let mut state = self.state();
        match state.nicks.get(nick) {
            Some((_, owner)) if *owner != session => Ok(Claim::Taken),
            // New, or re-claimed by its owner (perhaps with another spelling).
            _ => {
                state.nicks.insert(nick.clone(), (nick.clone(), session));
                Ok(Claim::Granted)
            }
        }
    }

    async fn reclaim(
        &self,
        nick: &Nickname,
        session: SessionId,
        holder: Holder,
    ) -> Result<Claim, BusError> {
        self.claim(nick, session, holder).await
    }

    async fn release(&self, nick: &Nickname, session: SessionId) {
        let mut state = self.state();
        if state
            .nicks
            .get(nick)
            .is_some_and(|(_, owner)| *owner == session)
        {
            state.nicks.remove(nick);
            for members in state.rooms.values_mut() {
                members.remove(nick);
            }
            state.rooms.retain(|_, members| !members.is_empty());
        }
    }

    async fn set_room(
        &self,
        nick: &Nickname,
        _session: SessionId,
        room: Option<&RoomName>,
        _holder: Holder,
    ) {
        let mut state = self.state();
        for members in state.rooms.values_mut() {
            members.remove(nick);
        }
        if let Some(room) = room {
            state
                .rooms
                .entry(room.clone())
                .or_default()
                .insert(nick.clone());
        }
        state.rooms.retain(|_, members| !members.is_empty());
    }

    async fn find_online(&self, nick: &Nickname) -> Result<Option<Nickname>, BusError> {
        Ok(self
            .state()
            .nicks
            .get(nick)
            .map(|(spelling, _)| spelling.clone()))
    }

    async fn online_users(&self) -> Result<Vec<Nickname>, BusError> {
        Ok(self
            .state()
            .nicks
            .values()
            .map(|(n, _)| n.clone())
            .collect())
    }

    async fn room_members(&self, room: &RoomName) -> Result<Vec<Nickname>, BusError> {
        Ok(self
            .state()
            .rooms
            .get(room)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn room_counts(&self) -> Result<HashMap<RoomName, usize>, BusError> {
        Ok(self
            .state()
            .rooms
            .iter()
            .map(|(r, m)| (r.clone(), m.len()))
            .collect())
    }

    fn revoked(&self) -> mpsc::UnboundedReceiver<SessionId> {
        // One process: every claim is its own, and is never lost.
        let (tx, rx) = mpsc::unbounded_channel();
        *self.revoked.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }
}

#[async_trait]
impl Sessions for LocalBus {
    async fn create(&self, record: &SessionRecord, ttl: Duration) -> Result<(), BusError> {
        self.state()
            .sessions
            .insert(record.id, (record.clone(), 1, Instant::now() + ttl));
        Ok(())
    }

    async fn restore(&self, record: &SessionRecord, ttl: Duration) -> Result<bool, BusError> {
        let mut state = self.state();
        let version = match state.sessions.get(&record.id) {
            Some((stored, _, _)) if stored.revision >= record.revision => return Ok(false),
            Some((_, version, _)) => version + 1,
            None => 1,
        };
        let expires = Instant::now() + ttl;
        state
            .sessions
            .insert(record.id, (record.clone(), version, expires));
        Ok(true)
    }

    async fn load(&self, id: SessionId) -> Result<Option<Stored>, BusError> {
        let state = self.state();
        Ok(state
            .sessions
            .get(&id)
            .filter(|(_, _, expires)| *expires > Instant::now())
            .map(|(record, version, _)| Stored {
                record: record.clone(),
                version: *version,
            }))
    }

    async fn save(
        &self,
        record: &SessionRecord,
        version: u64,
        ttl: Duration,
    ) -> Result<bool, BusError> {
        let mut state = self.state();
        match state.sessions.get_mut(&record.id) {
            Some((stored, current, expires)) if *current == version => {
                *stored = record.clone();
                *current += 1;
                *expires = Instant::now() + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn touch(&self, id: SessionId, ttl: Duration) -> Result<Option<SessionRecord>, BusError> {
        let now = Instant::now();
        match self.state().sessions.get_mut(&id) {
            Some((record, _, expires)) if *expires > now => {
                *expires = now + ttl;
                Ok(Some(record.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn delete(&self, id: SessionId) -> Result<(), BusError> {
        self.state().sessions.remove(&id);
        Ok(())
    }

    async fn lock(
        &self,
        id: SessionId,
        wait: Duration,
        lease: Duration,
    ) -> Result<Option<SessionLock>, BusError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.unlocked.notified();
            {
                let mut state = self.state();
                let now = Instant::now();
                let free = state.locks.get(&id).is_none_or(|(_, until)| *until <= now);
                if free {
                    let token = uuid::Uuid::new_v4().to_string();
                    state.locks.insert(id, (token.clone(), now + lease));
                    return Ok(Some(SessionLock { session: id, token }));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    async fn unlock(&self, lock: SessionLock) {
        let mut state = self.state();
        if state
            .locks
            .get(&lock.session)
            .is_some_and(|(token, _)| *token == lock.token)
        {
            state.locks.remove(&lock.session);
        }
        drop(state);
        self.unlocked.notify_waiters();
    }

    async fn take_expired(&self) -> Result<Vec<SessionRecord>, BusError> {
        if let Some(allowances) = self.allowances.get() {
            allowances.retain_recent();
        }
        let now = Instant::now();
        let mut state = self.state();
        let expired: Vec<SessionId> = state
            .sessions
            .iter()
            .filter(|(_, (_, _, expires))| *expires <= now)
            .map(|(id, _)| *id)
            .collect();
        Ok(expired
            .into_iter()
            .filter_map(|id| state.sessions.remove(&id))
            .map(|(record, _, _)| record)
            .collect())
    }

    async fn spend(&self, id: SessionId, quota: Quota) -> Result<bool, BusError> {
        let allowances = self
            .allowances
            .get_or_init(|| DefaultKeyedRateLimiter::keyed(quota));
        Ok(allowances.check_key(&id).is_ok())
    }
}
