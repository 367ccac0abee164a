//! Puts each room's messages back in seq order as they arrive from the bus.
//!
//! Two replicas that commit to one room back to back publish concurrently, so seq 6 can reach a
//! pod just before seq 5. Treating every such jump as a loss (and reading the store at once) costs
//! a database round trip on the delivery path for a message that is a millisecond away. Instead a
//! message after a gap is *held* for up to [`HOLD`]; the missing seq almost always arrives in
//! that time and releases it. Only a gap that outlives the hold — a publish really lost: a replica
//! that died between commit and publish, a Valkey outage — is read from the store.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::core::model::ChatMessage;
use crate::core::names::RoomName;

/// How long a message after a gap waits for the missing seqs before they are read from the store.
/// Far above the publish skew between replicas (well under a millisecond when the machine is not
/// saturated), far below a delay a reader would notice.
pub const HOLD: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct Sequencer {
    rooms: HashMap<RoomName, RoomOrder>,
}

struct RoomOrder {
    /// The last seq handed out for delivery.
    delivered: i64,
    /// Messages that arrived after a gap, by seq.
    held: BTreeMap<i64, ChatMessage>,
    /// When the oldest held message has waited long enough.
    deadline: Option<Instant>,
}

/// A gap that outlived the hold: read `after..before` (exclusive) from the store.
#[derive(Debug, PartialEq)]
pub struct Gap {
    pub room: RoomName,
    pub after: i64,
    pub before: i64,
}

impl Sequencer {
    /// Starts ordering `room` from just after `last` (or lowers its position to `last`, to
    /// replay from there: whatever was already delivered is dropped again downstream).
    pub fn start(&mut self, room: &RoomName, last: i64) {
        self.rooms
            .entry(room.clone())
            .and_modify(|order| order.delivered = order.delivered.min(last))
            .or_insert_with(|| RoomOrder::new(last));
    }

    /// Starts ordering `room` from `last` unless it is already ordered.
    pub fn start_unless_known(&mut self, room: &RoomName, last: i64) {
        self.rooms
            .entry(room.clone())
            .or_insert_with(|| RoomOrder::new(last));
    }

    pub fn forget(&mut self, room: &RoomName) {
        self.rooms.remove(room);
    }

    pub fn rooms(&self) -> Vec<RoomName> {
        self.rooms.keys().cloned().collect()
    }

    /// The last seq delivered in `room`, if it is being ordered.
    pub fn position(&self, room: &RoomName) -> Option<i64> {
        self.rooms.get(room).map(|order| order.delivered)
    }

    /// `m` arrived from the bus: what can be delivered now, in order (maybe nothing).
    pub fn admit(&mut self, m: ChatMessage, now: Instant) -> Vec<ChatMessage> {
        let order = self
            .rooms
            .entry(m.room.clone())
            // A room first heard of now (no local position yet): start at its first message.
            .or_insert_with(|| RoomOrder::new(m.seq - 1));
        if m.seq <= order.delivered {
            return Vec::new();
        }
        if m.seq > order.delivered + 1 {
            order.held.entry(m.seq).or_insert(m);
            order.deadline.get_or_insert(now + HOLD);
            return Vec::new();
        }
        order.deliver(m)
    }

    /// `m` was committed by this pod: what can be delivered now, without waiting for it to come
    /// back from the bus. Only the message that directly follows what a room being ordered has
    /// delivered goes this way. Anything else (a gap, a room this pod does not carry) is left to
    /// the copy on the bus, where gaps are held and filled as usual; the copy of a message
    /// delivered here is dropped as already delivered.
    pub fn admit_own(&mut self, m: ChatMessage) -> Vec<ChatMessage> {
        match self.rooms.get_mut(&m.room) {
            Some(order) if m.seq == order.delivered + 1 => order.deliver(m),
            _ => Vec::new(),
        }
    }

    /// When the earliest hold ends, if anything is held.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.rooms.values().filter_map(|order| order.deadline).min()
    }

    /// The gaps whose hold has ended by `now`.
    pub fn expired(&self, now: Instant) -> Vec<Gap> {
        self.rooms
            .iter()
            .filter(|(_, order)| order.deadline.is_some_and(|deadline| deadline <= now))
            .filter_map(|(room, order)| {
                let (&before, _) = order.held.first_key_value()?;
                Some(Gap {
                    room: room.clone(),
                    after: order.delivered,
                    before,
                })
            })
            .collect()
    }

    /// Messages of `room` read from the store (to fill a gap or to catch up): delivers them and
    /// everything held, in seq order, skipping what was already delivered. A gap the store could
    /// not fill is given up on here rather than stalling the room.
    pub fn fill(&mut self, room: &RoomName, fetched: Vec<ChatMessage>) -> Vec<ChatMessage> {
        let Some(order) = self.rooms.get_mut(room) else {
            return Vec::new();
        };
        for m in fetched {
            order.held.entry(m.seq).or_insert(m);
        }
        let ready: Vec<ChatMessage> = std::mem::take(&mut order.held)
            .into_values()
            .filter(|m| m.seq > order.delivered)
            .collect();
        if let Some(last) = ready.last() {
            order.delivered = last.seq;
        }
        order.deadline = None;
        ready
    }
}

impl RoomOrder {
    fn new(delivered: i64) -> Self {
        RoomOrder {
            delivered,
            held: BTreeMap::new(),
            deadline: None,
        }
    }

    /// Delivers `m`, the seq after `delivered`, and whatever held messages follow it.
    fn deliver(&mut self, m: ChatMessage) -> Vec<ChatMessage> {
        self.delivered = m.seq;
        let mut ready = vec![m];
        self.release_contiguous(&mut ready);
        ready
    }

    /// Moves the held messages that now follow `delivered` without a gap into `ready`.
    fn release_contiguous(&mut self, ready: &mut Vec<ChatMessage>) {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() > self.delivered + 1 {
                break;
            }
            let m = entry.remove();
            if m.seq == self.delivered + 1 {
                self.delivered = m.seq;
                ready.push(m);
            }
        }
        if self.held.is_empty() {
            self.deadline = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::names::Nickname;
    use time::OffsetDateTime;

    fn room() -> RoomName {
        RoomName::parse("general").unwrap()
    }

    fn message(seq: i64) -> ChatMessage {
        ChatMessage {
            id: seq,
            room: room(),
            seq,
            user: Nickname::parse("alice").unwrap(),
            content: format!("m{seq}"),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    /// A sequencer that has delivered `general` up to seq 4.
    fn at_four() -> (Sequencer, Instant) {
        let mut order = Sequencer::default();
        order.start(&room(), 4);
        (order, Instant::now())
    }

    fn seqs(messages: &[ChatMessage]) -> Vec<i64> {
        messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn in_order_messages_pass_straight_through_and_repeats_are_dropped() {
        let (mut order, now) = at_four();
        assert_eq!(seqs(&order.admit(message(5), now)), [5]);
        assert_eq!(seqs(&order.admit(message(6), now)), [6]);
        assert!(order.admit(message(6), now).is_empty());
        assert!(order.admit(message(3), now).is_empty());
        assert_eq!(order.next_deadline(), None);
    }

    #[test]
    fn an_own_message_that_follows_is_delivered_at_once_and_its_bus_copy_dropped() {
        let (mut order, now) = at_four();
        assert_eq!(seqs(&order.admit_own(message(5))), [5]);
        assert!(order.admit(message(5), now).is_empty());
        // It also releases what was held behind it.
        order.admit(message(7), now);
        assert_eq!(seqs(&order.admit_own(message(6))), [6, 7]);
        assert_eq!(order.next_deadline(), None);
    }

    #[test]
    fn an_own_message_after_a_gap_or_in_an_unordered_room_is_left_to_the_bus() {
        let (mut order, now) = at_four();
        assert!(order.admit_own(message(6)).is_empty());
        assert_eq!(
            order.next_deadline(),
            None,
            "nothing held: the bus copy will be"
        );
        assert_eq!(seqs(&order.admit(message(5), now)), [5]);
        assert_eq!(seqs(&order.admit(message(6), now)), [6]);
        let mut elsewhere = Sequencer::default();
        assert!(elsewhere.admit_own(message(1)).is_empty());
        assert_eq!(elsewhere.position(&room()), None);
    }

    #[test]
    fn a_message_after_a_gap_waits_for_the_missing_one() {
        let (mut order, now) = at_four();
        assert!(order.admit(message(7), now).is_empty());
        assert!(order.admit(message(6), now).is_empty());
        assert_eq!(order.next_deadline(), Some(now + HOLD));
        assert!(order.expired(now).is_empty());
        assert_eq!(seqs(&order.admit(message(5), now)), [5, 6, 7]);
        assert_eq!(order.next_deadline(), None);
        assert_eq!(order.position(&room()), Some(7));
    }

    #[test]
    fn a_gap_that_outlives_the_hold_is_filled_from_the_store_then_the_held_follow() {
        let (mut order, now) = at_four();
        order.admit(message(8), now);
        assert_eq!(
            order.expired(now + HOLD),
            [Gap {
                room: room(),
                after: 4,
                before: 8
            }]
        );
        let filled = order.fill(&room(), vec![message(5), message(6), message(7)]);
        assert_eq!(seqs(&filled), [5, 6, 7, 8]);
        assert_eq!(order.next_deadline(), None);
        // The pub/sub copy of a filled message arriving late is a repeat.
        assert!(order.admit(message(6), now).is_empty());
    }

    #[test]
    fn a_gap_the_store_cannot_fill_is_skipped_rather_than_stalling_the_room() {
        let (mut order, now) = at_four();
        order.admit(message(7), now);
        assert_eq!(seqs(&order.fill(&room(), Vec::new())), [7]);
        assert_eq!(seqs(&order.admit(message(8), now)), [8]);
    }

    #[test]
    fn a_catch_up_delivers_only_what_was_not_delivered() {
        let (mut order, now) = at_four();
        order.admit(message(5), now);
        let caught_up = order.fill(&room(), vec![message(4), message(5), message(6)]);
        assert_eq!(seqs(&caught_up), [6]);
    }

    #[test]
    fn start_rewinds_a_known_room_and_start_unless_known_does_not() {
        let mut order = Sequencer::default();
        order.start(&room(), 9);
        order.start_unless_known(&room(), 3);
        assert_eq!(order.position(&room()), Some(9));
        order.start(&room(), 3);
        assert_eq!(order.position(&room()), Some(3));
        order.forget(&room());
        assert_eq!(order.position(&room()), None);
    }
}
