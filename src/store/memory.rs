//! An in-memory `Store`: the default when `DATABASE_URL` is unset, and the store of unit tests.
//!
//! It keeps at most `retention` messages per room, so a long-running `cargo run` does not grow
//! without bound. Nothing survives a restart.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::core::model::{ChatMessage, MessageKey, NewMessage, Room, UserId};
use crate::core::names::{Nickname, RoomName};
use crate::core::ports::{RoomTail, Store, StoreError};

pub struct MemoryStore {
    retention: usize,
    /// Nothing survives the process: each one is a history of its own.
    epoch: String,
    // std Mutex: every critical section is short and never awaits.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    users: HashMap<Nickname, UserId>,
    rooms: HashMap<RoomName, Room>,
    members: HashSet<(i64, UserId)>,
    messages: HashMap<i64, RoomLog>,
    /// Each stored message's key, so a retried append stores nothing new.
    keys: HashMap<MessageKey, ChatMessage>,
    next_id: i64,
}

#[derive(Default)]
struct RoomLog {
    last_seq: i64,
    messages: VecDeque<(MessageKey, ChatMessage)>,
}

impl MemoryStore {
    pub fn new(retention: usize) -> Self {
        MemoryStore {
            retention: retention.max(1),
            epoch: uuid::Uuid::new_v4().simple().to_string(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // more than refusing all further service would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn upsert_user(&self, nick: &Nickname) -> Result<UserId, StoreError> {
        let mut state = self.state();
        if let Some(id) = state.users.get(nick) {
            return Ok(*id);
        }
        let id = state.next_id();
        state.users.insert(nick.clone(), id);
        Ok(id)
    }

    async fn create_room(&self, name: &RoomName) -> Result<Option<Room>, StoreError> {
        let mut state = self.state();
        if state.rooms.contains_key(name) {
            return Ok(None);
        }
        let room = Room {
            id: state.next_id(),
            name: name.clone(),
            created_at: OffsetDateTime::now_utc(),
        };
        state.rooms.insert(name.clone(), room.clone());
        Ok(Some(room))
    }

    async fn find_room(&self, name: &RoomName) -> Result<Option<Room>, StoreError> {
        Ok(self.state().rooms.get(name).cloned())
    }

    async fn list_rooms(&self) -> Result<Vec<Room>, StoreError> {
        let mut rooms: Vec<Room> = self.state().rooms.values().cloned().collect();
        rooms.sort_by_key(|r| r.name.key());
        Ok(rooms)
    }

    async fn add_member(&self, room_id: i64, user_id: UserId) -> Result<(), StoreError> {
        self.state().members.insert((room_id, user_id));
        Ok(())
    }

    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<ChatMessage>, StoreError> {
        let mut state = self.state();
        let mut stored = Vec::with_capacity(batch.len());
        for new in batch {
            if let Some(existing) = state.keys.get(&new.key) {
                stored.push(existing.clone());
                continue;
            }
            let id = state.next_id();
            let log = state.messages.entry(new.room_id).or_default();
            log.last_seq += 1;
            let message = ChatMessage::stored(new.clone(), id, log.last_seq);
            log.messages.push_back((new.key, message.clone()));
            let removed = (log.messages.len() > self.retention)
                .then(|| log.messages.pop_front())
                .flatten();
            if let Some((key, _)) = removed {
                state.keys.remove(&key);
            }
            state.keys.insert(new.key, message.clone());
            stored.push(message);
        }
        Ok(stored)
    }

    async fn message_by_key(&self, key: MessageKey) -> Result<Option<ChatMessage>, StoreError> {
        Ok(self.state().keys.get(&key).cloned())
    }

    async fn messages_before(
        &self,
        room_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let state = self.state();
        let Some(log) = state.messages.get(&room_id) else {
            return Ok(Vec::new());
        };
        let before = before.unwrap_or(i64::MAX);
        let mut page: Vec<ChatMessage> = log
            .messages
            .iter()
            .rev()
            .map(|(_, m)| m)
            .filter(|m| m.seq < before)
            .take(limit)
            .cloned()
            .collect();
        page.reverse();
        Ok(page)
    }

    async fn messages_after(
        &self,
        room_id: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let state = self.state();
        let Some(log) = state.messages.get(&room_id) else {
            return Ok(Vec::new());
        };
        Ok(log
            .messages
            .iter()
            .map(|(_, m)| m)
            .filter(|m| m.seq > after)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn epoch(&self) -> Result<String, StoreError> {
        Ok(self.epoch.clone())
    }

    async fn room_tails(&self, room_ids: &[i64]) -> Result<Vec<RoomTail>, StoreError> {
        let state = self.state();
        Ok(room_ids
            .iter()
            .filter(|id| state.rooms.values().any(|r| r.id == **id))
            .map(|&room_id| {
                let log = state.messages.get(&room_id);
                let last_seq = log.map_or(0, |l| l.last_seq);
                let first_seq = log
                    .and_then(|l| l.messages.front())
                    .map_or(last_seq + 1, |(_, m)| m.seq);
                RoomTail {
                    room_id,
                    last_seq,
                    first_seq,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn room(store: &MemoryStore, name: &str) -> Room {
        store
            .create_room(&RoomName::parse(name).unwrap())
            .await
            .unwrap()
            .unwrap()
    }

    fn new_message(room: &Room, content: &str) -> NewMessage {
        NewMessage {
            key: MessageKey::new_v4(),
            client_keyed: false,
            room_id: room.id,
            room: room.name.clone(),
            user_id: 1,
            user: Nickname::parse("alice").unwrap(),
            content: content.into(),
            created_at: OffsetDateTime::now_utc(),
        }
    }

    #[tokio::test]
    async fn seq_is_per_room_and_gapless_across_batches() {
        let store = MemoryStore::new(100);
        let (a, b) = (room(&store, "a").await, room(&store, "b").await);
        let first = store
            .append_messages(&[
                new_message(&a, "1"),
                new_message(&b, "1"),
                new_message(&a, "2"),
            ])
            .await
            .unwrap();
        let second = store
            .append_messages(&[new_message(&a, "3")])
            .await
            .unwrap();
        let seqs: Vec<i64> = first.iter().chain(&second).map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 1, 2, 3]);
    }

    #[tokio::test]
    async fn a_retried_key_returns_the_stored_message_and_stores_nothing() {
        let store = MemoryStore::new(100);
        let r = room(&store, "r").await;
        let first = new_message(&r, "once");
        let stored = store
            .append_messages(std::slice::from_ref(&first))
            .await
            .unwrap();
        let again = store
            .append_messages(&[new_message(&r, "next"), first])
            .await
            .unwrap();
        assert_eq!(again[1], stored[0]);
        assert_eq!(again[0].seq, 2);
        let tail = store.room_tails(&[r.id]).await.unwrap();
        assert_eq!(
            tail,
            [RoomTail {
                room_id: r.id,
                last_seq: 2,
                first_seq: 1
            }]
        );
    }

    #[tokio::test]
    async fn rooms_are_unique_case_insensitively() {
        let store = MemoryStore::new(10);
        room(&store, "General").await;
        assert_eq!(
            store
                .create_room(&RoomName::parse("gEnErAl").unwrap())
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn retention_keeps_the_newest_and_paging_goes_backwards_oldest_first() {
        let store = MemoryStore::new(5);
        let r = room(&store, "r").await;
        for i in 1..=8 {
            store
                .append_messages(&[new_message(&r, &i.to_string())])
                .await
                .unwrap();
        }
        let seqs = |page: Vec<ChatMessage>| page.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(store.messages_before(r.id, None, 10).await.unwrap()),
            [4, 5, 6, 7, 8]
        );
        assert_eq!(
            seqs(store.messages_before(r.id, Some(7), 2).await.unwrap()),
            [5, 6]
        );
    }
}
