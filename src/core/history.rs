//! The pod-local history cache: the last HISTORY_SIZE messages of each room a join has asked for,
//! kept current by the delivery path so that most joins never touch the store.
//!
//! Coherence rule: a ring only ever holds a gap-free run of seqs ending at the newest message this
//! pod has seen. A message that does not extend the run by exactly one (a gap, say after a missed
//! bus message) makes the ring cold; the next join reloads it from the store.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::model::ChatMessage;
use super::names::RoomName;

pub struct HistoryCache {
    size: usize,
    // std Mutex: short critical sections, never held across an await.
    rings: Mutex<HashMap<RoomName, Ring>>,
}

struct Ring {
    /// The newest seq of the room known when the ring was filled or last extended.
    last_seq: i64,
    messages: VecDeque<ChatMessage>,
}

impl HistoryCache {
    pub fn new(size: usize) -> Self {
        HistoryCache {
            size,
            rings: Mutex::new(HashMap::new()),
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, Ring>> {
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached last messages of a room, oldest first; `None` when the room is cold.
    pub fn get(&self, room: &RoomName) -> Option<Vec<ChatMessage>> {
        self.rings()
            .get(room)
            .map(|ring| ring.messages.iter().cloned().collect())
    }

    /// Warms a room from a store read (oldest first). A ring that already holds newer messages —
    /// filled by a concurrent join or extended by the delivery path meanwhile — is kept.
    pub fn fill(&self, room: &RoomName, messages: &[ChatMessage]) {
        let last_seq = messages.last().map_or(0, |m| m.seq);
        let mut rings = self.rings();
        if rings.get(room).is_some_and(|r| r.last_seq >= last_seq) {
            return;
        }
        let skip = messages.len().saturating_sub(self.size);
        let ring = Ring {
            last_seq,
            messages: messages[skip..].iter().cloned().collect(),
        };
        rings.insert(room.clone(), ring);
    }

    /// Feeds a delivered message into its room's ring, if the room is warm.
    pub fn record(&self, message: &ChatMessage) {
        let mut rings = self.rings();
        let Some(ring) = rings.get_mut(&message.room) else {
            return;
        };
        if message.seq <= ring.last_seq {
            return; // already seen (a duplicate or a store read that raced ahead)
        }
        if message.seq != ring.last_seq + 1 {
            rings.remove(&message.room);
            return;
        }
        ring.last_seq = message.seq;
        ring.messages.push_back(message.clone());
        if ring.messages.len() > self.size {
            ring.messages.pop_front();
        }
    }

    /// Drops a room's ring: this pod will stop seeing the room's messages.
    pub fn forget(&self, room: &RoomName) {
        self.rings().remove(room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::names::Nickname;
    use time::OffsetDateTime;

    fn msg(seq: i64) -> ChatMessage {
        ChatMessage {
            id: seq,
            room: RoomName::parse("r").unwrap(),
            seq,
            user: Nickname::parse("u").unwrap(),
            content: seq.to_string(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn seqs(cache: &HistoryCache) -> Option<Vec<i64>> {
        cache
            .get(&RoomName::parse("r").unwrap())
            .map(|v| v.iter().map(|m| m.seq).collect())
    }

    #[test]
    fn a_cold_room_is_a_miss_and_recording_does_not_warm_it() {
        let cache = HistoryCache::new(3);
        cache.record(&msg(1));
        assert_eq!(seqs(&cache), None);
    }

    #[test]
    fn a_warm_ring_keeps_the_newest_n_in_order() {
        let cache = HistoryCache::new(3);
        cache.fill(&RoomName::parse("r").unwrap(), &[msg(1), msg(2)]);
        for seq in 3..=5 {
            cache.record(&msg(seq));
        }
        assert_eq!(seqs(&cache), Some(vec![3, 4, 5]));
    }

    #[test]
    fn an_empty_room_is_warm_and_empty() {
        let cache = HistoryCache::new(3);
        cache.fill(&RoomName::parse("r").unwrap(), &[]);
        assert_eq!(seqs(&cache), Some(vec![]));
        cache.record(&msg(1));
        assert_eq!(seqs(&cache), Some(vec![1]));
    }

    #[test]
    fn duplicates_are_ignored_and_a_gap_makes_the_room_cold() {
        let cache = HistoryCache::new(3);
        cache.fill(&RoomName::parse("r").unwrap(), &[msg(1)]);
        cache.record(&msg(1));
        assert_eq!(seqs(&cache), Some(vec![1]));
        cache.record(&msg(3));
        assert_eq!(seqs(&cache), None);
    }

    #[test]
    fn a_stale_fill_does_not_overwrite_a_newer_ring() {
        let cache = HistoryCache::new(3);
        let room = RoomName::parse("r").unwrap();
        cache.fill(&room, &[msg(1), msg(2)]);
        cache.fill(&room, &[msg(1)]);
        assert_eq!(seqs(&cache), Some(vec![1, 2]));
        cache.fill(&room, &[msg(1), msg(2), msg(3), msg(4)]);
        assert_eq!(seqs(&cache), Some(vec![2, 3, 4]));
    }
}
