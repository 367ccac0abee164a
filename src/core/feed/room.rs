//! One room's order on this pod: the state machine of a [`RoomFeed`], with no I/O.
//!
//! Messages reach a pod from three places — its own commits, the bus, and store reads that repair
//! gaps — and in no guaranteed order: two pods committing to one room back to back publish
//! concurrently. The feed hands its members each seq exactly once, in order. A message that
//! arrives after a gap is held; the gap is filled from the store when the missing seqs do not
//! follow within a short hold (the async side, in `feed::mod`, does the reading). The history
//! ring is always the gap-free run ending at the last seq delivered, so a joiner's history block
//! and its live messages meet exactly.
//!
//! A live message goes to every member at once: a member whose queue is full is too slow
//! (SPEC §3). What was held behind a gap, or read back from the store, is not live, and may be
//! thousands of messages at once: a member whose queue has no room for it falls *behind* — the
//! fan-out skips it, and a catch-up from the store brings it level again (the async side) — so
//! nobody waits for the slowest, and nobody is cut off for the server's own bunching.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::PAGE;
use crate::core::model::{Broadcast, ChatMessage, Delivery, Room, SessionId};
use crate::core::outbox::{Offer, Outbox};

/// How long a message after a gap waits for the missing seqs before they are read from the store.
/// Far above the publish skew between replicas (well under a millisecond on an idle machine), far
/// below a delay a reader would notice.
pub const HOLD: Duration = Duration::from_millis(50);

/// Messages held after a gap, at most. Past this the newest are dropped: they are in the store,
/// and the repair reads them back in order.
const MAX_HELD: usize = 10_000;

/// Numbers catch-ups pod-wide, so that one a member no longer needs — it left, or its feed was
/// dropped and made again — stops.
fn next_turn() -> u64 {
    static TURNS: AtomicU64 = AtomicU64::new(0);
    TURNS.fetch_add(1, Ordering::Relaxed) + 1
}

/// What a receiver's position needs before it can be fed live.
#[derive(Debug, PartialEq, Eq)]
pub enum Attach {
    /// Attached: the ring held everything after its position and it has been queued.
    Live,
    /// A member now, but behind: the ring does not reach back to its position, and a catch-up
    /// from the store (this turn of it) must bring it level.
    Behind(u64),
}

/// What a page of a member's catch-up did.
#[derive(Debug, PartialEq, Eq)]
pub enum CaughtUp {
    /// It is level: live from here.
    Level,
    /// Still behind, after this seq: read on from there.
    After(i64),
    /// No longer a member, or another catch-up of it took over: stop.
    Gone,
}

/// A receiver of the room's messages.
struct Member {
    outbox: Outbox,
    /// Set while it is behind: the last seq queued for it, and which catch-up brings it level.
    behind: Option<(i64, u64)>,
}

pub struct RoomFeed {
    pub room: Room,
    /// The last seq handed to members; `None` until the first store read.
    delivered: Option<i64>,
    /// Messages that arrived ahead of `delivered + 1`, by seq.
    held: BTreeMap<i64, Arc<Broadcast>>,
    /// The newest seq the store is known to have (from a tail probe).
    tail: i64,
    /// Since when the oldest unfilled gap has been seen; the hold runs from here.
    gap_since: Option<Instant>,
    /// The newest messages delivered, oldest first, ending at `delivered`, without a gap.
    ring: VecDeque<Arc<Broadcast>>,
    ring_size: usize,
    members: Vec<Member>,
    /// Members that fell behind since the async side last looked, with their catch-up's turn.
    fallen: Vec<(SessionId, u64)>,
    /// A repair (a store read) is running or scheduled: at most one per room.
    pub repairing: bool,
}

impl RoomFeed {
    pub fn new(room: Room, ring_size: usize) -> Self {
        RoomFeed {
            room,
            delivered: None,
            held: BTreeMap::new(),
            tail: 0,
            gap_since: None,
            ring: VecDeque::with_capacity(ring_size),
            ring_size: ring_size.max(1),
            members: Vec::new(),
            fallen: Vec::new(),
            repairing: false,
        }
    }

    /// The last seq delivered, once the feed is loaded.
    pub fn delivered(&self) -> Option<i64> {
        self.delivered
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether every level member's queue would take `n` more deliveries that can wait (a
    /// repair's next page).
    pub fn members_have_room(&self, n: usize) -> bool {
        self.level()
            .all(|m| !m.outbox.is_open() || m.outbox.room_to_offer() >= n)
    }

    /// How many messages a repair reads at once: a page, or half the smallest member's queue if
    /// that is less, so that one page never fills a queue that was empty.
    pub fn step(&self) -> usize {
        let smallest = self.members.iter().map(|m| m.outbox.capacity()).min();
        smallest.map_or(PAGE, |c| (c / 2).clamp(1, PAGE))
    }

    /// The members that fell behind since last asked, with their catch-up's turn.
    pub fn take_fallen(&mut self) -> Vec<(SessionId, u64)> {
        std::mem::take(&mut self.fallen)
    }

    /// The queue of member `id` and the last seq it was given, while catch-up `turn` is the one
    /// to bring it level.
    pub fn behind(&self, id: SessionId, turn: u64) -> Option<(Outbox, i64)> {
        let member = self.members.iter().find(|m| m.outbox.id == id)?;
        match member.behind {
            Some((cursor, t)) if t == turn => Some((member.outbox.clone(), cursor)),
            _ => None,
        }
    }

    /// A page read from the store after `after` for member `id`, behind under catch-up `turn`:
    /// offered up to what the feed has delivered — first a reset, if the store has lost what
    /// comes right after `after` (retention, a restore) — then, if the ring reaches back to
    /// where it is, the ring's rest, and it is level. What its queue has no room for it is
    /// offered next time.
    pub fn catch_up(
        &mut self,
        id: SessionId,
        turn: u64,
        after: i64,
        page: Vec<ChatMessage>,
    ) -> CaughtUp {
        let Some(delivered) = self.delivered else {
            return CaughtUp::Gone;
        };
        let Some(at) = self.members.iter().position(|m| m.outbox.id == id) else {
            return CaughtUp::Gone;
        };
        if self.members[at].behind != Some((after, turn)) {
            return CaughtUp::Gone;
        }
        let reset_at = match page.first().map(|m| m.seq) {
            Some(first) if first != after + 1 => Some(first.min(delivered + 1)),
            // Nothing after it at all, though the room went on: that is gone too.
            None if after < delivered => Some(delivered + 1),
            _ => None,
        };
        let reset = reset_at.map(|next| (next - 1, Delivery::reset(self.room.name.clone(), next)));
        let mut deliveries: Vec<(i64, Delivery)> = reset
            .into_iter()
            .chain(
                page.into_iter()
                    .take_while(|m| m.seq <= delivered)
                    .map(|m| (m.seq, Delivery::Event(Broadcast::message(m)))),
            )
            .collect();
        // Where the page leaves it, if all of it is queued; level too if the ring reaches back
        // to there, with the ring's rest.
        let end = deliveries.last().map_or(after, |(seq, _)| *seq);
        let oldest = self
            .ring
            .front()
            .and_then(|m| m.seq())
            .unwrap_or(delivered + 1);
        let level = oldest <= end + 1;
        if level {
            deliveries.extend(
                self.ring
                    .iter()
                    .filter(|m| m.seq() > Some(end))
                    .map(|m| (m.seq().unwrap_or(end), Delivery::Event(m.clone()))),
            );
        }
        let mut cursor = after;
        for (seq, delivery) in deliveries {
            match self.members[at].outbox.offer(delivery) {
                Offer::Queued => cursor = seq,
                Offer::Full => return self.still_behind(at, cursor, turn),
                Offer::Gone => {
                    self.members.swap_remove(at);
                    return CaughtUp::Gone;
                }
            }
        }
        if !level {
            return self.still_behind(at, cursor, turn);
        }
        self.members[at].behind = None;
        CaughtUp::Level
    }

    fn still_behind(&mut self, at: usize, cursor: i64, turn: u64) -> CaughtUp {
        self.members[at].behind = Some((cursor, turn));
        CaughtUp::After(cursor)
    }

    /// The first store read: the room's newest messages (oldest first) and its last seq. Whatever
    /// arrived meanwhile and follows is delivered now.
    pub fn load(&mut self, recent: Vec<ChatMessage>, last_seq: i64, now: Instant) {
        self.delivered = Some(last_seq);
        self.tail = self.tail.max(last_seq);
        self.ring = recent
            .into_iter()
            .filter(|m| m.seq <= last_seq)
            .map(Broadcast::message)
            .collect();
        while self.ring.len() > self.ring_size {
            self.ring.pop_front();
        }
        // A ring must end at `delivered` without a gap, or be empty.
        if self.ring.back().and_then(|m| m.seq()) != Some(last_seq) {
            self.ring.clear();
        }
        self.release(now);
    }

    /// Admits a message from anywhere. Returns when a gap that needs a repair began (the hold's
    /// end), if this admission opened one.
    pub fn admit(&mut self, message: Arc<Broadcast>, now: Instant) -> Option<Instant> {
        self.admit_as(message, now, false)
    }

    fn admit_as(&mut self, message: Arc<Broadcast>, now: Instant, bulk: bool) -> Option<Instant> {
        let seq = message.seq()?;
        match self.delivered {
            Some(delivered) if seq <= delivered => return None,
            Some(delivered) if seq == delivered + 1 => {
                self.deliver(message, bulk);
                self.release(now);
            }
            _ => {
                if self.held.len() < MAX_HELD {
                    self.held.entry(seq).or_insert(message);
                }
                self.tail = self.tail.max(seq);
            }
        }
        self.gap_opened(now)
    }

    /// Messages read from the store after `delivered`, oldest first.
    pub fn fill(&mut self, messages: Vec<ChatMessage>, now: Instant) {
        for message in messages {
            self.admit_as(Broadcast::message(message), now, true);
        }
    }

    /// A tail probe: the store's newest seq of the room. Returns the hold's end if this shows a
    /// gap nothing else had shown.
    pub fn probed(&mut self, last_seq: i64, now: Instant) -> Option<Instant> {
        self.tail = self.tail.max(last_seq);
        self.gap_opened(now)
    }

    /// The seqs missing now: everything after `.0` up to `.1`.
    pub fn gap(&self) -> Option<(i64, i64)> {
        let delivered = self.delivered?;
        // Held messages always start beyond `delivered + 1`: `release` took the rest.
        if let Some(&first) = self.held.keys().next() {
            return Some((delivered, first - 1));
        }
        (self.tail > delivered).then_some((delivered, self.tail))
    }

    /// Whether a gap has outlived its hold.
    pub fn gap_due(&self, now: Instant) -> bool {
        self.gap().is_some() && self.gap_since.is_some_and(|since| since + HOLD <= now)
    }

    /// The store no longer has `after + 1 ..= up_to` (retention removed them): move past them,
    /// telling members so, rather than wait for ever. (A member behind finds out from its own
    /// catch-up.)
    pub fn skip(&mut self, up_to: i64, now: Instant) {
        let Some(delivered) = self.delivered else {
            return;
        };
        if up_to <= delivered {
            return;
        }
        self.delivered = Some(up_to);
        self.ring.clear();
        let reset = Delivery::reset(self.room.name.clone(), up_to + 1);
        self.members
            .retain(|m| m.behind.is_some() || m.outbox.push(reset.clone()));
        self.release(now);
    }

    /// The newest `n` messages delivered, oldest first.
    pub fn recent(&self, n: usize) -> Vec<Arc<Broadcast>> {
        let skip = self.ring.len().saturating_sub(n);
        self.ring.iter().skip(skip).cloned().collect()
    }

    /// Ends a repair that has nobody left to repair for; a later member starts one afresh.
    pub fn stand_down(&mut self) {
        self.repairing = false;
        self.gap_since = None;
    }

    /// The store's history now ends at `last_seq`, before what this feed delivered (a restore):
    /// members are told their place is gone, and the feed goes on from there. A member behind
    /// before `last_seq` goes on catching up: what it has yet to see is still there.
    pub fn rewind(&mut self, last_seq: i64, now: Instant) {
        self.delivered = Some(last_seq);
        self.tail = last_seq;
        self.held.clear();
        self.ring.clear();
        let reset = Delivery::reset(self.room.name.clone(), last_seq + 1);
        self.members.retain_mut(|m| match m.behind {
            Some((cursor, _)) if cursor < last_seq => true,
            _ => {
                m.behind = None;
                m.outbox.push(reset.clone())
            }
        });
        self.gap_opened(now);
    }

    /// A new member's history block (the newest `history` messages, oldest first) and its
    /// membership, in one step: nothing delivered later is in the block, nothing in it comes again.
    pub fn join(&mut self, member: Outbox, history: usize) -> Vec<Arc<Broadcast>> {
        self.leave(member.id);
        self.members.push(Member {
            outbox: member,
            behind: None,
        });
        self.recent(history)
    }

    /// Makes `member` a member from after `cursor`: live, with what the ring holds after it
    /// queued; or behind, for a catch-up from the store to bring level.
    pub fn attach(&mut self, member: Outbox, cursor: i64) -> Attach {
        self.leave(member.id);
        let Some(delivered) = self.delivered else {
            return self.fall_behind(member, cursor);
        };
        if cursor < delivered {
            let oldest = self
                .ring
                .front()
                .and_then(|m| m.seq())
                .unwrap_or(delivered + 1);
            if oldest > cursor + 1 {
                return self.fall_behind(member, cursor);
            }
            for message in self.ring.iter().filter(|m| m.seq() > Some(cursor)) {
                if !member.push_event(message) {
                    return Attach::Live;
                }
            }
        }
        self.members.push(Member {
            outbox: member,
            behind: None,
        });
        Attach::Live
    }

    fn fall_behind(&mut self, member: Outbox, cursor: i64) -> Attach {
        let turn = next_turn();
        self.members.push(Member {
            outbox: member,
            behind: Some((cursor, turn)),
        });
        Attach::Behind(turn)
    }

    /// Removes a receiver. True when the feed has no member left.
    pub fn leave(&mut self, id: SessionId) -> bool {
        self.members.retain(|m| m.outbox.id != id);
        self.members.is_empty()
    }

    /// A room event, to every member but the session it is about — one behind too: events are
    /// not stored, so it is shown now, ahead of the messages it is still being given.
    pub fn announce(&mut self, event: &Arc<Broadcast>, about: Option<SessionId>) {
        self.members
            .retain(|m| Some(m.outbox.session) == about || m.outbox.push_event(event));
    }

    fn level(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.behind.is_none())
    }

    /// Hands `message`, the next seq, to every level member. Live, a member whose queue is full
    /// is too slow and leaves the room; in bulk (what a gap held, what the store gave back), a
    /// member without room to spare falls behind instead.
    fn deliver(&mut self, message: Arc<Broadcast>, bulk: bool) {
        let seq = message.seq().unwrap_or_default();
        self.delivered = Some(seq);
        self.tail = self.tail.max(seq);
        let fallen = &mut self.fallen;
        self.members.retain_mut(|m| {
            if m.behind.is_some() {
                return true;
            }
            if !bulk {
                return m.outbox.push_event(&message);
            }
            match m.outbox.offer(Delivery::Event(message.clone())) {
                Offer::Queued => true,
                Offer::Gone => false,
                Offer::Full => {
                    let turn = next_turn();
                    m.behind = Some((seq - 1, turn));
                    fallen.push((m.outbox.id, turn));
                    true
                }
            }
        });
        self.ring.push_back(message);
        if self.ring.len() > self.ring_size {
            self.ring.pop_front();
        }
    }

    /// Delivers the held messages that now follow without a gap, in bulk; forgets the ones
    /// already past.
    fn release(&mut self, now: Instant) {
        let Some(mut delivered) = self.delivered else {
            return;
        };
        while let Some(entry) = self.held.first_entry() {
            let seq = *entry.key();
            if seq > delivered + 1 {
                break;
            }
            let message = entry.remove();
            if seq == delivered + 1 {
                self.deliver(message, true);
                delivered = seq;
            }
        }
        if self.gap().is_none() {
            self.gap_since = None;
        } else {
            self.gap_opened(now);
        }
    }

    /// Starts the hold when a gap appears; returns its end then.
    fn gap_opened(&mut self, now: Instant) -> Option<Instant> {
        if self.gap().is_none() {
            self.gap_since = None;
            return None;
        }
        if self.gap_since.is_some() {
            return None;
        }
        self.gap_since = Some(now);
        Some(now + HOLD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{Delivery, Event};
    use crate::core::names::{Nickname, RoomName};
    use crate::core::outbox::{Inbox, queue};
    use time::OffsetDateTime;

    fn room() -> Room {
        Room {
            id: 1,
            name: RoomName::parse("general").unwrap(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn message(seq: i64) -> ChatMessage {
        ChatMessage {
            id: seq,
            room: room().name,
            seq,
            user: Nickname::parse("alice").unwrap(),
            content: format!("m{seq}"),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn member() -> (Outbox, Inbox) {
        let id = SessionId::random();
        queue(id, id, 64)
    }

    /// The seqs queued for a member so far.
    fn received(inbox: &mut Inbox) -> Vec<i64> {
        let mut seqs = Vec::new();
        while let Some(delivery) = inbox.try_recv() {
            match delivery {
                Delivery::Event(e) => seqs.extend(e.seq()),
                Delivery::Reset(_) => seqs.push(-1),
                Delivery::Moved(_) => {}
            }
        }
        seqs
    }

    /// A feed loaded at seq 4 (ring 3, 4) with one member.
    fn at_four() -> (RoomFeed, Inbox, Instant) {
        let now = Instant::now();
        let mut feed = RoomFeed::new(room(), 3);
        feed.load(vec![message(3), message(4)], 4, now);
        let (outbox, inbox) = member();
        feed.join(outbox, 10);
        (feed, inbox, now)
    }

    fn admit(feed: &mut RoomFeed, seq: i64, now: Instant) -> Option<Instant> {
        feed.admit(Broadcast::message(message(seq)), now)
    }

    #[test]
    fn in_order_messages_pass_straight_through_and_duplicates_are_dropped() {
        let (mut feed, mut inbox, now) = at_four();
        assert_eq!(admit(&mut feed, 5, now), None);
        admit(&mut feed, 6, now);
        admit(&mut feed, 6, now);
        admit(&mut feed, 3, now);
        assert_eq!(received(&mut inbox), [5, 6]);
        assert_eq!(feed.delivered(), Some(6));
        assert_eq!(feed.gap(), None);
    }

    #[test]
    fn out_of_order_arrivals_are_held_then_released_in_order() {
        let (mut feed, mut inbox, now) = at_four();
        assert_eq!(admit(&mut feed, 7, now), Some(now + HOLD));
        assert_eq!(admit(&mut feed, 6, now), None, "the hold already runs");
        assert_eq!(received(&mut inbox), Vec::<i64>::new());
        assert_eq!(feed.gap(), Some((4, 5)));
        admit(&mut feed, 5, now);
        assert_eq!(received(&mut inbox), [5, 6, 7]);
        assert_eq!(feed.gap(), None);
        assert!(!feed.gap_due(now + HOLD));
    }

    #[test]
    fn a_gap_is_due_for_repair_after_the_hold_and_a_fill_closes_it() {
        let (mut feed, mut inbox, now) = at_four();
        admit(&mut feed, 8, now);
        assert!(!feed.gap_due(now));
        assert!(feed.gap_due(now + HOLD));
        assert_eq!(feed.gap(), Some((4, 7)));
        feed.fill(vec![message(5), message(6), message(7), message(8)], now);
        assert_eq!(received(&mut inbox), [5, 6, 7, 8]);
        // The bus copy of a filled message arriving late is a repeat.
        admit(&mut feed, 6, now);
        assert_eq!(received(&mut inbox), Vec::<i64>::new());
    }

    #[test]
    fn a_member_without_room_for_what_a_gap_held_falls_behind_and_is_caught_up_from_the_store() {
        let (mut feed, mut first, now) = at_four();
        let id = SessionId::random();
        let (small, mut inbox) = queue(id, id, 4);
        feed.join(small, 0);
        for seq in 6..=12 {
            admit(&mut feed, seq, now);
        }
        admit(&mut feed, 5, now);
        assert_eq!(received(&mut first), (5..=12).collect::<Vec<_>>());
        // 5 came live; of what the gap held, as much as leaves its headroom (1) free.
        assert_eq!(received(&mut inbox), [5, 6, 7]);
        let fallen = feed.take_fallen();
        assert_eq!(fallen.len(), 1);
        let (_, turn) = fallen[0];
        assert_eq!(feed.behind(id, turn).map(|(_, at)| at), Some(7));
        // Skipped while behind; the store gives back what it missed, the ring the rest.
        admit(&mut feed, 13, now);
        assert_eq!(received(&mut inbox), Vec::<i64>::new());
        let page = vec![message(8), message(9)];
        assert_eq!(feed.catch_up(id, turn, 7, page), CaughtUp::After(9));
        assert_eq!(received(&mut inbox), [8, 9]);
        assert_eq!(
            feed.catch_up(id, turn, 7, vec![message(8)]),
            CaughtUp::Gone,
            "a stale page"
        );
        let page = vec![message(10), message(11)];
        assert_eq!(
            feed.catch_up(id, turn, 9, page),
            CaughtUp::After(12),
            "as much as leaves its headroom free, from the ring too"
        );
        assert_eq!(received(&mut inbox), [10, 11, 12]);
        assert_eq!(
            feed.catch_up(id, turn, 12, vec![message(13)]),
            CaughtUp::Level
        );
        assert_eq!(received(&mut inbox), [13]);
        admit(&mut feed, 14, now);
        assert_eq!(received(&mut inbox), [14]);
        assert_eq!(received(&mut first), [13, 14]);
    }

    #[test]
    fn a_member_behind_when_the_store_goes_back_keeps_catching_up_on_what_is_still_there() {
        let (mut feed, _first, now) = at_four();
        for seq in 5..=10 {
            admit(&mut feed, seq, now);
        }
        let (outbox, mut inbox) = member();
        let id = outbox.id;
        let Attach::Behind(turn) = feed.attach(outbox, 2) else {
            panic!("the ring does not reach back to 2");
        };
        // A restore: the store ends at 8.
        feed.rewind(8, now);
        let page = (3..=8).map(message).collect();
        assert_eq!(feed.catch_up(id, turn, 2, page), CaughtUp::Level);
        admit(&mut feed, 9, now);
        assert_eq!(received(&mut inbox), [3, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn a_store_with_nothing_after_a_members_position_resets_it() {
        let (mut feed, _first, now) = at_four();
        let (outbox, mut inbox) = member();
        let id = outbox.id;
        let Attach::Behind(turn) = feed.attach(outbox, 1) else {
            panic!("the ring does not reach back to 1");
        };
        assert_eq!(feed.catch_up(id, turn, 1, Vec::new()), CaughtUp::Level);
        admit(&mut feed, 5, now);
        assert_eq!(received(&mut inbox), [-1, 5]);
    }

    #[test]
    fn a_probe_finds_a_lost_last_message_without_waiting_for_the_next() {
        let (mut feed, mut inbox, now) = at_four();
        assert_eq!(feed.probed(4, now), None);
        assert_eq!(feed.probed(5, now), Some(now + HOLD));
        assert_eq!(feed.gap(), Some((4, 5)));
        feed.fill(vec![message(5)], now);
        assert_eq!(received(&mut inbox), [5]);
        assert_eq!(feed.gap(), None);
    }

    #[test]
    fn messages_arriving_while_loading_are_held_and_released_after_the_store_read() {
        let now = Instant::now();
        let mut feed = RoomFeed::new(room(), 3);
        let (outbox, mut inbox) = member();
        feed.admit(Broadcast::message(message(6)), now);
        feed.admit(Broadcast::message(message(5)), now);
        feed.load(vec![message(4), message(5)], 5, now);
        let history: Vec<i64> = feed
            .join(outbox, 10)
            .iter()
            .filter_map(|m| m.seq())
            .collect();
        assert_eq!(history, [4, 5, 6], "the history ends at the last delivered");
        admit(&mut feed, 7, now);
        assert_eq!(received(&mut inbox), [7]);
    }

    #[test]
    fn a_join_during_a_burst_gets_history_and_live_without_overlap_or_hole() {
        let (mut feed, _first, now) = at_four();
        for seq in 5..=9 {
            admit(&mut feed, seq, now);
        }
        let (outbox, mut inbox) = member();
        let history: Vec<i64> = feed
            .join(outbox, 2)
            .iter()
            .filter_map(|m| m.seq())
            .collect();
        admit(&mut feed, 10, now);
        assert_eq!(history, [8, 9]);
        assert_eq!(received(&mut inbox), [10]);
    }

    #[test]
    fn a_cursor_inside_the_ring_attaches_with_what_follows_it_and_an_older_one_falls_behind() {
        let (mut feed, _first, now) = at_four();
        for seq in 5..=7 {
            admit(&mut feed, seq, now);
        }
        // The ring (size 3) holds 5, 6, 7.
        let (outbox, mut inbox) = member();
        assert_eq!(feed.attach(outbox.clone(), 5), Attach::Live);
        assert_eq!(received(&mut inbox), [6, 7]);
        let (outbox, _inbox) = member();
        assert!(matches!(feed.attach(outbox, 3), Attach::Behind(_)));
        // A cursor at or past the newest (a store read ran ahead) attaches with nothing queued.
        let (outbox, mut inbox) = member();
        assert_eq!(feed.attach(outbox, 9), Attach::Live);
        admit(&mut feed, 8, now);
        assert_eq!(
            received(&mut inbox),
            [8],
            "its own view drops what it has seen"
        );
    }

    #[test]
    fn a_new_member_at_an_old_position_never_rewinds_the_room_for_the_others() {
        let (mut feed, mut first, now) = at_four();
        admit(&mut feed, 5, now);
        let (outbox, _inbox) = member();
        assert!(matches!(feed.attach(outbox, 0), Attach::Behind(_)));
        admit(&mut feed, 6, now);
        assert_eq!(
            received(&mut first),
            [5, 6],
            "nothing replayed to the members"
        );
        assert_eq!(feed.delivered(), Some(6));
    }

    #[test]
    fn messages_the_store_no_longer_has_are_skipped_with_a_reset_not_waited_for() {
        let (mut feed, mut inbox, now) = at_four();
        admit(&mut feed, 9, now);
        feed.skip(8, now);
        assert_eq!(received(&mut inbox), [-1, 9]);
        assert_eq!(feed.gap(), None);
    }

    #[test]
    fn a_store_gone_back_rewinds_the_feed_and_resets_its_members() {
        let (mut feed, mut inbox, now) = at_four();
        admit(&mut feed, 5, now);
        feed.rewind(3, now);
        admit(&mut feed, 4, now);
        assert_eq!(
            received(&mut inbox),
            [5, -1, 4],
            "the new seq 4 is shown after the reset"
        );
    }

    #[test]
    fn a_member_that_cannot_keep_up_is_dropped_from_the_room() {
        let (mut feed, _first, now) = at_four();
        let id = SessionId::random();
        let (slow, inbox) = queue(id, id, 1);
        feed.join(slow, 0);
        admit(&mut feed, 5, now);
        admit(&mut feed, 6, now);
        assert!(inbox.too_slow.is_set());
        assert_eq!(feed.members.len(), 1);
    }

    #[test]
    fn room_events_skip_the_session_they_are_about() {
        let (mut feed, inbox, _) = at_four();
        let about = SessionId::random();
        let (outbox, own) = queue(SessionId::random(), about, 8);
        feed.join(outbox, 0);
        let event = Broadcast::new(Event::Room {
            room: room().name,
            text: "x".into(),
        });
        feed.announce(&event, Some(about));
        assert!(own.try_recv().is_none());
        assert!(inbox.try_recv().is_some());
    }
}
