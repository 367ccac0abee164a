//! Gap repair: a feed whose order has a hole — a message held after a gap past its hold, or a
//! tail probe showing the store ahead — reads the missing seqs from the store, page by page, with
//! back-off while the store fails, until it is contiguous. A page goes out when the members have
//! taken the last one, or a moment later: a member still without room falls behind and catches
//! up on its own, so the room waits for nobody. One repair at a time per room; it runs in a task
//! of its own, never on the delivery path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::room::HOLD;
use super::{Cell, Inner, PAGE_WAIT, backoff, lock};
use crate::core::model::{ChatMessage, Room, SessionId};
use crate::telemetry::metric;

impl Inner {
    /// Starts the room's repair, unless one runs: it waits out the hold, then reads the missing
    /// seqs page by page, with back-off while the store fails, until the feed is contiguous.
    pub(super) fn repair(self: &Arc<Self>, cell: &Arc<Cell>, due: Instant) {
        {
            let mut feed = cell.feed();
            if feed.repairing {
                return;
            }
            feed.repairing = true;
        }
        let (inner, cell) = (self.clone(), cell.clone());
        self.tasks
            .spawn(async move { inner.run_repair(cell, due).await }.in_current_span());
    }

    /// Probes every loaded feed's tail in one store call; a feed behind its tail starts a repair
    /// after the hold.
    pub(super) async fn probe(self: &Arc<Self>) {
        let cells: Vec<Arc<Cell>> = lock(&self.rooms)
            .values()
            .filter(|c| c.loaded.initialized())
            .cloned()
            .collect();
        if cells.is_empty() {
            return;
        }
        // What each had delivered before the store was asked: the store cannot be behind that,
        // unless its history went back. (Messages delivered while the probe runs are newer than
        // its answer, and say nothing.)
        let before: Vec<(i64, Option<i64>)> = cells
            .iter()
            .map(|c| {
                let feed = c.feed();
                (feed.room.id, feed.delivered())
            })
            .collect();
        let ids: Vec<i64> = before.iter().map(|(id, _)| *id).collect();
        let tails = match self.store.room_tails(&ids).await {
            Ok(tails) => tails,
            Err(e) => return tracing::debug!(error = %e, "tail probe failed"),
        };
        let last: HashMap<i64, i64> = tails.iter().map(|t| (t.room_id, t.last_seq)).collect();
        let now = Instant::now();
        for (cell, (_, had)) in cells.into_iter().zip(before) {
            let due = {
                let mut feed = cell.feed();
                let Some(&seq) = last.get(&feed.room.id) else {
                    continue;
                };
                if had.is_some_and(|had| seq < had) {
                    // The store went back (a restore, a failover that lost its last writes):
                    // what this feed delivered past it no longer exists. Start over from there.
                    tracing::warn!(room = %feed.room.name, store = seq, delivered = feed.delivered(), "the store is behind this feed; rewinding it");
                    feed.rewind(seq, now);
                    continue;
                }
                feed.probed(seq, now)
            };
            if let Some(due) = due {
                self.repair(&cell, due);
            }
        }
    }
}

/// What a repair does next.
enum Next {
    /// Nothing is missing (or nobody is left to repair it for): the repair ends.
    Done,
    /// A gap is still within its hold: look again then.
    Wait(Instant),
    /// Read `.2` messages after `.1.0` (the gap ends at `.1.1`) in room `.0`.
    Read(Room, (i64, i64), usize),
}

fn next_step(cell: &Cell) -> Next {
    let mut feed = cell.feed();
    let now = Instant::now();
    match feed.gap() {
        // Nobody left to repair it for: whoever joins next starts a repair afresh.
        Some(_) if feed.is_empty() => {}
        Some(_) if !feed.gap_due(now) => return Next::Wait(now + HOLD),
        Some(gap) => return Next::Read(feed.room.clone(), gap, feed.step()),
        None => {}
    }
    feed.stand_down();
    Next::Done
}

/// Waits (up to PAGE_WAIT) until every level member's queue has room for `n` more: most
/// members then take the next page with the room rather than each catching up on its own.
async fn paced(cell: &Cell, n: usize) {
    let limit = Instant::now() + PAGE_WAIT;
    while !cell.feed().members_have_room(n) && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Puts a page read from the store into the feed. A page that does not start right after the
/// gap's start means the store no longer has those seqs (retention removed them while this pod
/// was behind, or a restore took them): members are told, and the feed moves on. Returns the
/// members that fell behind.
fn fill(
    cell: &Cell,
    room: &Room,
    gap: (i64, i64),
    page: Vec<ChatMessage>,
) -> Vec<(SessionId, u64)> {
    let mut feed = cell.feed();
    let first = page.first().map(|m| m.seq);
    if first != Some(gap.0 + 1) {
        let up_to = first.map_or(gap.1, |f| f - 1);
        tracing::warn!(room = %room.name, after = gap.0, up_to, "messages no longer in the store were skipped");
        metrics::counter!(metric::DROPPED, "reason" => "gap_skipped")
            .increment((up_to - gap.0) as u64);
        feed.skip(up_to, Instant::now());
    } else {
        metrics::counter!(metric::GAP_REPAIRS).increment(1);
        tracing::debug!(room = %room.name, after = gap.0, filled = page.len(), "filled a gap from the store");
    }
    feed.fill(page, Instant::now());
    feed.take_fallen()
}

impl Inner {
    async fn run_repair(self: Arc<Self>, cell: Arc<Cell>, due: Instant) {
        let mut wait_until = due;
        let mut delays = backoff();
        loop {
            if self
                .shutdown
                .run_until_cancelled(tokio::time::sleep_until(wait_until))
                .await
                .is_none()
            {
                return;
            }
            let (room, gap, n) = match next_step(&cell) {
                Next::Done => return,
                Next::Wait(until) => {
                    wait_until = until;
                    continue;
                }
                Next::Read(room, gap, n) => (room, gap, n),
            };
            match self.store.messages_after(room.id, gap.0, n).await {
                Ok(page) => {
                    let fallen = fill(&cell, &room, gap, page);
                    self.bring_up(&room, fallen);
                    delays = backoff();
                    paced(&cell, n).await;
                    wait_until = Instant::now();
                }
                Err(e) => {
                    tracing::warn!(error = %e, room = %room.name, after = gap.0, "gap repair failed; retrying");
                    wait_until = Instant::now() + delays.next().unwrap_or(Duration::from_secs(5));
                }
            }
        }
    }
}
